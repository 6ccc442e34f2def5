import { InvalidArgumentError } from '../../core/errors.js';
import { parseEnv, parseMemorySize } from '../../core/names.js';
import { parseVolumeFlag } from '../../host/container-host.js';
import { printJson, requireName, type Command } from '../command.js';

const usage =
  'haven run NAME --image IMG [--volume V:/path]... [--ip ADDR/PREFIX] [--memory 512m] [--env K=V]... [--json] -- CMD ARGS...';

/** `haven run`: create and start a container. */
export const runCommand: Command = {
  name: 'run',
  summary: 'create and start a container',
  usage,
  options: {
    image: { type: 'string' },
    volume: { type: 'string', multiple: true },
    ip: { type: 'string' },
    memory: { type: 'string' },
    env: { type: 'string', multiple: true },
    json: { type: 'boolean' },
  },
  async run(inv) {
    const name = requireName(inv, usage);
    const image = inv.values.image;
    if (typeof image !== 'string') throw new InvalidArgumentError(`--image is required\nusage: ${usage}`);
    const volumes = ((inv.values.volume as string[] | undefined) ?? []).map(parseVolumeFlag);
    const env = parseEnv((inv.values.env as string[] | undefined) ?? []);
    const memory = typeof inv.values.memory === 'string' ? parseMemorySize(inv.values.memory) : undefined;
    const view = await inv.host().run({
      name,
      image,
      args: inv.rest,
      env,
      volumes,
      ...(typeof inv.values.ip === 'string' ? { ip: inv.values.ip } : {}),
      ...(memory ? { memoryBytes: memory } : {}),
    });
    if (inv.values.json) printJson(view);
    else process.stdout.write(`${view.name} running on ${view.host} at ${view.ip} (pid ${view.pid})\n`);
    return 0;
  },
};
