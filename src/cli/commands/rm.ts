import { requireName, type Command } from '../command.js';

const usage = 'haven rm NAME [--force]';

/** `haven rm`: remove a container and its checkpoints (volumes stay). */
export const rmCommand: Command = {
  name: 'rm',
  summary: 'remove a container and its checkpoints (volumes are kept)',
  usage,
  options: { force: { type: 'boolean', short: 'f' } },
  async run(inv) {
    const name = requireName(inv, usage);
    const cluster = inv.cluster();
    if (cluster) {
      const force = inv.values.force === true ? '?force=true' : '';
      await cluster.call(`/v1/containers/${encodeURIComponent(name)}${force}`, {
        method: 'DELETE',
        timeoutMs: 120_000,
      });
    } else await inv.host().remove(name, { force: inv.values.force === true });
    process.stdout.write(`${name} removed\n`);
    return 0;
  },
};
