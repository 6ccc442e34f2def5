import type { DrainReport } from '../../controller/migration.js';
import { printJson, requireName, type Command } from '../command.js';
import { requireCluster } from './host.js';
import { migrationFlags, migrationOptionsOf, showProgress, summary } from './migrate.js';

const usage =
  'haven drain HOST [--strategy auto|stop-copy|pre-copy|post-copy|hybrid] [--max-downtime 300ms] [--max-rounds N] [--json]';

/**
 * `haven drain HOST`: cordons the host, then migrates every container off
 * it, one at a time, each where placement puts it; progress on stderr, one
 * line per container at the end (`--json`: the report only). A container
 * that cannot move is reported, and the exit code is 1.
 */
export const drainCommand: Command = {
  name: 'drain',
  summary: 'cordon a host and live-migrate every container off it, one at a time',
  usage,
  options: { ...migrationFlags },
  async run(inv) {
    const host = requireName(inv, usage);
    const cluster = requireCluster(inv);
    const json = inv.values.json === true;
    const stop = json ? () => undefined : await showProgress(cluster, []);
    let report: DrainReport;
    try {
      report = await cluster.call<DrainReport>(`/v1/hosts/${encodeURIComponent(host)}/drain`, {
        method: 'POST',
        body: migrationOptionsOf(inv),
        timeoutMs: 24 * 3_600_000,
      });
    } finally {
      await new Promise((resolve) => setTimeout(resolve, json ? 0 : 200));
      stop();
    }
    if (json) printJson(report);
    else {
      for (const m of report.migrated) process.stdout.write(`${summary(m)}\n`);
      for (const f of report.failed) process.stdout.write(`${f.name}: not moved: ${f.error}\n`);
      process.stdout.write(
        `${host}: cordoned; ${report.migrated.length} migrated, ${report.failed.length} not moved\n`,
      );
    }
    return report.failed.length > 0 ? 1 : 0;
  },
};
