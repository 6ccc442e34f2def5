import type { ClusterContainerView, ProtectionView } from '../../controller/controller.js';
import { printJson, printTable, type Command } from '../command.js';

/** `haven ps`: list containers. */
export const psCommand: Command = {
  name: 'ps',
  summary: 'list containers',
  usage: 'haven ps [--json]',
  options: { json: { type: 'boolean' } },
  async run(inv) {
    const cluster = inv.cluster();
    if (cluster) {
      const placed = await cluster.call<ClusterContainerView[]>('/v1/containers');
      if (inv.values.json) printJson(placed);
      else
        printTable([
          ['NAME', 'STATE', 'HOST', 'IP', 'PID', 'DESIRED', 'PROTECTION'],
          ...placed.map((c) => [
            c.name,
            c.state,
            c.host ?? '-',
            c.ip,
            String(c.pid || '-'),
            c.desired,
            protectionText(c.protection),
          ]),
        ]);
      return 0;
    }
    const views = await inv.host().list();
    if (inv.values.json) {
      printJson(views);
      return 0;
    }
    const rows = [['NAME', 'STATE', 'HOST', 'IP', 'PID', 'CHECKPOINTS']];
    for (const v of views)
      rows.push([v.name, v.state, v.host, v.ip, String(v.pid || '-'), String(v.checkpoints.length)]);
    printTable(rows);
    return 0;
  },
};

/** `checkpoint -> h2, epoch 0.4s old` (or `continuous -> …`) — one cell of `ps`. */
function protectionText(p: ProtectionView): string {
  if (p.mode !== 'checkpoint' && p.mode !== 'continuous') return p.mode;
  const age =
    p.committedAgeMs === null ? 'no epoch yet' : `epoch ${(p.committedAgeMs / 1000).toFixed(1)}s old`;
  return `${p.mode} -> ${p.backup ?? 'no backup'}, ${age}`;
}
