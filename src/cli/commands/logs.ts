import { requireName, type Command } from '../command.js';

const usage = 'haven logs NAME';

/** `haven logs`: the container's stdout and stderr. */
export const logsCommand: Command = {
  name: 'logs',
  summary: "print a container's captured stdout and stderr",
  usage,
  options: {},
  async run(inv) {
    const name = requireName(inv, usage);
    const cluster = inv.cluster();
    process.stdout.write(
      cluster
        ? await cluster.call<string>(`/v1/containers/${encodeURIComponent(name)}/logs`)
        : await inv.host().logs(name),
    );
    return 0;
  },
};
