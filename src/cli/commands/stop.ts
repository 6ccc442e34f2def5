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
    const view = await inv.host().stop(requireName(inv, usage), seconds * 1000);
    process.stdout.write(`${view.name} ${view.state}\n`);
    return 0;
  },
};
