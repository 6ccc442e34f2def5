import { printJson, requireName, type Command } from '../command.js';

const usage = 'haven checkpoint NAME [--leave-running] [--json]';

/** `haven checkpoint`: dump a container's memory, files and volumes. */
export const checkpointCommand: Command = {
  name: 'checkpoint',
  summary: 'checkpoint a container (it stops unless --leave-running)',
  usage,
  options: { 'leave-running': { type: 'boolean' }, json: { type: 'boolean' } },
  async run(inv) {
    const report = await inv
      .host()
      .checkpoint(requireName(inv, usage), { leaveRunning: inv.values['leave-running'] === true });
    if (inv.values.json) printJson(report);
    else {
      const frozen = report.stats ? `, by CRIU's count ${report.stats.frozenMs.toFixed(1)} ms` : '';
      process.stdout.write(
        `checkpoint ${report.id}: frozen ${report.frozenMs.toFixed(1)} ms${frozen}, total ${report.wallMs.toFixed(0)} ms\n`,
      );
    }
    return 0;
  },
};
