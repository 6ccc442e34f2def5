import { InvalidArgumentError } from '../../core/errors.js';
import { printJson, requireName, type Command } from '../command.js';

const usage =
  'haven restore NAME [--checkpoint ID] [--tcp-close] [--json]\n       haven restore --import FILE [--name NEW] [--json]';

/** `haven restore`: bring a container back from a checkpoint or from an exported archive. */
export const restoreCommand: Command = {
  name: 'restore',
  summary: 'restore a container from its newest (or a given) checkpoint, or --import an archive',
  usage,
  options: {
    checkpoint: { type: 'string' },
    'tcp-close': { type: 'boolean' },
    import: { type: 'string' },
    name: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run(inv) {
    const host = inv.host();
    let report;
    if (typeof inv.values.import === 'string') {
      if (inv.positionals.length > 0)
        throw new InvalidArgumentError(`--import takes no NAME; use --name\nusage: ${usage}`);
      report = await host.importArchive(inv.values.import, {
        ...(typeof inv.values.name === 'string' ? { as: inv.values.name } : {}),
      });
    } else {
      report = {
        name: requireName(inv, usage),
        ...(await host.restore(requireName(inv, usage), {
          ...(typeof inv.values.checkpoint === 'string' ? { checkpoint: inv.values.checkpoint } : {}),
          tcpClose: inv.values['tcp-close'] === true,
        })),
      };
    }
    if (inv.values.json) printJson(report);
    else
      process.stdout.write(
        `${report.name} restored from ${report.checkpoint} in ${report.wallMs.toFixed(0)} ms\n`,
      );
    return 0;
  },
};
