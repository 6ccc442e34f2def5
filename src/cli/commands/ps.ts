import { printJson, type Command } from '../command.js';

/** `haven ps`: list containers. */
export const psCommand: Command = {
  name: 'ps',
  summary: 'list containers',
  usage: 'haven ps [--json]',
  options: { json: { type: 'boolean' } },
  async run(inv) {
    const views = await inv.host().list();
    if (inv.values.json) {
      printJson(views);
      return 0;
    }
    const rows = [['NAME', 'STATE', 'HOST', 'IP', 'PID', 'CHECKPOINTS']];
    for (const v of views)
      rows.push([v.name, v.state, v.host, v.ip, String(v.pid || '-'), String(v.checkpoints.length)]);
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
    for (const r of rows)
      process.stdout.write(
        `${r
          .map((c, i) => c.padEnd(widths[i] ?? 0))
          .join('  ')
          .trimEnd()}\n`,
      );
    return 0;
  },
};
