import type { ClusterContainerView } from '../../controller/controller.js';
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
          ['NAME', 'STATE', 'HOST', 'IP', 'PID', 'DESIRED'],
          ...placed.map((c) => [c.name, c.state, c.host ?? '-', c.ip, String(c.pid || '-'), c.desired]),
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
