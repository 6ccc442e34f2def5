import { InvalidArgumentError } from '../../core/errors.js';
import type { RegistryImage } from '../../controller/image-registry.js';
import { printJson, printTable, type Command } from '../command.js';
import { requireCluster } from './host.js';

const usage = 'haven image push PATH [--name NAME] [--json] | haven image ls [--json]';

/** `haven image`: upload a root filesystem (directory or tar) into the cluster, list what is there. */
export const imageCommand: Command = {
  name: 'image',
  summary: "push an image (directory or tar) into the cluster; list the cluster's images",
  usage,
  options: { name: { type: 'string' }, json: { type: 'boolean' } },
  async run(inv) {
    const cluster = requireCluster(inv);
    const [verb, path, ...extra] = inv.positionals;
    if (extra.length > 0)
      throw new InvalidArgumentError(`unexpected arguments: ${extra.join(' ')}\nusage: ${usage}`);
    if (verb === 'push' && path) {
      const image = await cluster.pushImage(
        path,
        typeof inv.values.name === 'string' ? inv.values.name : undefined,
      );
      if (inv.values.json) printJson(image);
      else
        process.stdout.write(
          `${image.id}${image.names.length ? ` (${image.names.join(', ')})` : ''} ${image.bytes} bytes\n`,
        );
      return 0;
    }
    if (verb === 'ls' && !path) {
      const images = await cluster.call<RegistryImage[]>('/v1/images');
      if (inv.values.json) printJson(images);
      else
        printTable([
          ['ID', 'NAMES', 'SIZE'],
          ...images.map((i) => [
            i.id.slice(0, 19),
            i.names.join(',') || '-',
            `${(i.bytes / 1048576).toFixed(1)}Mi`,
          ]),
        ]);
      return 0;
    }
    throw new InvalidArgumentError(`usage: ${usage}`);
  },
};
