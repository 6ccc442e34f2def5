import { InvalidArgumentError } from '../../core/errors.js';
import { requireName, type Command } from '../command.js';

const usage = 'haven stop NAME [--time SECONDS]';

/** `haven stop`: SIGTERM, then SIGKILL after a grace period. */
export const stopCommand: Command = {
  name: 'stop',
  summary: 'stop a container (SIGTERM, then SIGKILL)',
  usage,
  options: { time: { type: 'string' } },
  async run(inv) {
    const seconds = typeof inv.values.time === 'string' ? Number(inv.values.time) : 10;
    if (!Number.isFinite(seconds) || seconds < 0)
      throw new InvalidArgumentError(`invalid --time "${String(inv.values.time)}"`);
    const name = requireName(inv, usage);
    const cluster = inv.cluster();
    const view = cluster
      ? await cluster.call<{ name: string; state: string }>(
          `/v1/containers/${encodeURIComponent(name)}/stop`,
          {
            method: 'POST',
            body: { graceSeconds: seconds },
            timeoutMs: (seconds + 30) * 1000,
          },
        )
      : await inv.host().stop(name, seconds * 1000);
    process.stdout.write(`${view.name} ${view.state}\n`);
    return 0;
  },
};
