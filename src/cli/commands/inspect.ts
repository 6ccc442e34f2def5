import { printJson, requireName, type Command } from '../command.js';

const usage = 'haven inspect NAME [--json]';

/** `haven inspect`: one container in detail. */
export const inspectCommand: Command = {
  name: 'inspect',
  summary: 'show one container (name, state, ip, host, checkpoints)',
  usage,
  options: { json: { type: 'boolean' } },
  async run(inv) {
    const name = requireName(inv, usage);
    const cluster = inv.cluster();
    const view: object = cluster
      ? await cluster.call<object>(`/v1/containers/${encodeURIComponent(name)}`)
      : await inv.host().inspect(name);
    if (inv.values.json) printJson(view);
    else {
      for (const [k, v] of Object.entries(view)) {
        process.stdout.write(`${k.padEnd(12)} ${typeof v === 'object' ? JSON.stringify(v) : String(v)}\n`);
      }
    }
    return 0;
  },
};
