import { printJson, requireName, type Command } from '../command.js';

const usage = 'haven restore NAME [--checkpoint ID] [--tcp-close] [--json]';

/** `haven restore`: bring a container back from a checkpoint. */
export const restoreCommand: Command = {
  name: 'restore',
  summary: 'restore a container from its newest (or a given) checkpoint',
  usage,
  options: { checkpoint: { type: 'string' }, 'tcp-close': { type: 'boolean' }, json: { type: 'boolean' } },
  async run(inv) {
    const report = await inv.host().restore(requireName(inv, usage), {
      ...(typeof inv.values.checkpoint === 'string' ? { checkpoint: inv.values.checkpoint } : {}),
      tcpClose: inv.values['tcp-close'] === true,
    });
    if (inv.values.json) printJson(report);
    else process.stdout.write(`restored from ${report.checkpoint} in ${report.wallMs.toFixed(0)} ms\n`);
    return 0;
  },
};
