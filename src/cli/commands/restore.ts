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
    const cluster = inv.cluster();
    if (cluster) {
      if (typeof inv.values.import === 'string') {
        throw new InvalidArgumentError(
          '--import reads a file on this machine: use it with --state-dir (local mode)',
        );
      }
      const name = requireName(inv, usage);
      const restored = await cluster.call<{ checkpoint: string; wallMs: number }>(
        `/v1/containers/${encodeURIComponent(name)}/restore`,
        {
          method: 'POST',
          timeoutMs: 600_000,
          body: {
            ...(typeof inv.values.checkpoint === 'string' ? { checkpoint: inv.values.checkpoint } : {}),
            tcpClose: inv.values['tcp-close'] === true,
          },
        },
      );
      if (inv.values.json) printJson({ name, ...restored });
      else
        process.stdout.write(
          `${name} restored from ${restored.checkpoint} in ${restored.wallMs.toFixed(0)} ms\n`,
        );
      return 0;
    }
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
