import { HavenError, InvalidArgumentError } from '../../core/errors.js';
import type { HostView } from '../../controller/controller.js';
import { printJson, printTable, type Command, type Invocation } from '../command.js';
import type { ClusterClient } from '../cluster-client.js';

const usage = 'haven host ls [--json] | haven host cordon H | haven host uncordon H';

/** The cluster client, or a clear error when no controller is configured or running. */
export function requireCluster(inv: Invocation): ClusterClient {
  const cluster = inv.cluster();
  if (!cluster) {
    throw new HavenError(
      'no Haven controller found: set HAVEN_CONTROLLER, start a lab (haven lab up) or a one-machine cluster (haven up)',
      'unavailable',
    );
  }
  return cluster;
}

/** `haven host`: the cluster's hosts; cordon keeps new containers off a host. */
export const hostCommand: Command = {
  name: 'host',
  summary: "list the cluster's hosts; cordon or uncordon one",
  usage,
  options: { json: { type: 'boolean' } },
  async run(inv) {
    const [verb, name, ...extra] = inv.positionals;
    const cluster = requireCluster(inv);
    if (extra.length > 0)
      throw new InvalidArgumentError(`unexpected arguments: ${extra.join(' ')}\nusage: ${usage}`);
    if (verb === 'ls' || verb === undefined) {
      const hosts = await cluster.call<HostView[]>('/v1/hosts');
      if (inv.values.json) printJson(hosts);
      else
        printTable([
          ['NAME', 'STATE', 'ADDRESS', 'CONTAINERS', 'CPU', 'MEMORY', 'CORDONED', 'LABELS'],
          ...hosts.map((h) => [
            h.name,
            h.state,
            h.address,
            String(h.containers),
            `${h.cpuMillis}m`,
            `${Math.round(h.memoryBytes / 1048576)}Mi`,
            h.cordoned ? 'yes' : 'no',
            Object.entries(h.labels)
              .map(([k, v]) => `${k}=${v}`)
              .join(',') || '-',
          ]),
        ]);
      return 0;
    }
    if ((verb === 'cordon' || verb === 'uncordon') && name) {
      const host = await cluster.call<HostView>(`/v1/hosts/${encodeURIComponent(name)}/${verb}`, {
        method: 'POST',
        body: {},
      });
      if (inv.values.json) printJson(host);
      else process.stdout.write(`${host.name} ${host.cordoned ? 'cordoned' : 'uncordoned'}\n`);
      return 0;
    }
    throw new InvalidArgumentError(`usage: ${usage}`);
  },
};
