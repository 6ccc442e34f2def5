import { FailedPreconditionError } from '../../core/errors.js';
import { printJson, requireName, type Command } from '../command.js';

const usage = 'haven failover NAME [--json]';

/** What the controller reports of a switchover (see `SwitchoverReport` in controller.ts). */
interface SwitchoverReport {
  name: string;
  from: string;
  to: string;
  epoch: number;
  frozenMs: number;
  finalEpochBytes: number;
  handoverMs: number;
  restoreMs: number;
  totalMs: number;
  connections: string;
}

/**
 * `haven failover NAME`: a planned switchover of a `--ha checkpoint`
 * container to its backup host — final epoch with the container stopped,
 * shipped, restored there with its connections and address; then a new
 * backup. Needs a cluster.
 */
export const failoverCommand: Command = {
  name: 'failover',
  summary: 'switch a protected container over to its backup host (no write lost, connections kept)',
  usage,
  options: { json: { type: 'boolean' } },
  async run(inv) {
    const name = requireName(inv, usage);
    const cluster = inv.cluster();
    if (!cluster) throw new FailedPreconditionError('haven failover needs a cluster (no controller found)');
    const report = await cluster.call<SwitchoverReport>(
      `/v1/containers/${encodeURIComponent(name)}/failover`,
      {
        method: 'POST',
        body: {},
        timeoutMs: 600_000,
      },
    );
    if (inv.values.json) printJson(report);
    else
      process.stdout.write(
        `${report.name}: ${report.from} → ${report.to} in ${report.totalMs} ms ` +
          `(final epoch ${report.finalEpochBytes} bytes sent, frozen ${report.frozenMs} ms, ` +
          `handover ${report.handoverMs} ms, restore ${report.restoreMs} ms; connections ${report.connections})\n`,
      );
    return 0;
  },
};
