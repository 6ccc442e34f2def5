import { requireName, type Command } from '../command.js';

const usage = 'haven logs NAME';

/** `haven logs`: the container's stdout and stderr. */
export const logsCommand: Command = {
  name: 'logs',
  summary: "print a container's captured stdout and stderr",
  usage,
  options: {},
  async run(inv) {
    process.stdout.write(await inv.host().logs(requireName(inv, usage)));
    return 0;
  },
};
