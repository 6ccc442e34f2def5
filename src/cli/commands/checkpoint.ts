import { InvalidArgumentError } from '../../core/errors.js';
import { printJson, requireName, type Command } from '../command.js';

const usage =
  'haven checkpoint NAME [--leave-running] [--keep N] [--export FILE [--compress none|gzip|zstd] [--keep-local]] [--json]';

/** `haven checkpoint`: dump a container's memory, files and volumes; optionally into a portable archive. */
export const checkpointCommand: Command = {
  name: 'checkpoint',
  summary: 'checkpoint a container (it stops unless --leave-running); --export writes a portable archive',
  usage,
  options: {
    'leave-running': { type: 'boolean' },
    keep: { type: 'string' },
    export: { type: 'string' },
    'keep-local': { type: 'boolean' },
    compress: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run(inv) {
    const name = requireName(inv, usage);
    const keep = typeof inv.values.keep === 'string' ? Number(inv.values.keep) : undefined;
    if (keep !== undefined && (!Number.isInteger(keep) || keep < 1 || keep > 1000)) {
      throw new InvalidArgumentError(
        `invalid --keep "${String(inv.values.keep)}": a whole number from 1 to 1000`,
      );
    }
    const cluster = inv.cluster();
    if (cluster) {
      if (typeof inv.values.export === 'string') {
        throw new InvalidArgumentError(
          "--export writes a file on the container's host: use it with --state-dir (local mode)",
        );
      }
      const report = await cluster.call<{ id: string; frozenMs: number; wallMs: number }>(
        `/v1/containers/${encodeURIComponent(name)}/checkpoint`,
        {
          method: 'POST',
          timeoutMs: 600_000,
          body: { leaveRunning: inv.values['leave-running'] === true, ...(keep ? { keep } : {}) },
        },
      );
      if (inv.values.json) printJson(report);
      else
        process.stdout.write(
          `checkpoint ${report.id}: frozen ${report.frozenMs.toFixed(1)} ms, total ${report.wallMs.toFixed(0)} ms\n`,
        );
      return 0;
    }
    const started = performance.now();
    const report = await inv.host().checkpoint(name, {
      leaveRunning: inv.values['leave-running'] === true,
      ...(keep !== undefined ? { keep } : {}),
      ...(typeof inv.values.export === 'string'
        ? {
            exportTo: {
              file: inv.values.export,
              keepLocal: inv.values['keep-local'] === true,
              ...(typeof inv.values.compress === 'string' ? { compression: inv.values.compress } : {}),
            },
          }
        : {}),
    });
    const exported = report.exported
      ? { ...report.exported, wallMs: performance.now() - started }
      : undefined;
    if (inv.values.json) printJson(report);
    else {
      const criu = report.stats ? `, by CRIU's count ${report.stats.frozenMs.toFixed(1)} ms` : '';
      process.stdout.write(
        `checkpoint ${report.id}: frozen ${report.frozenMs.toFixed(1)} ms${criu}, total ${report.wallMs.toFixed(0)} ms\n`,
      );
      if (exported) {
        process.stdout.write(
          `exported to ${exported.file} (${(exported.bytes / 1048576).toFixed(1)} MiB); checkpoint and export took ${exported.wallMs.toFixed(0)} ms\n`,
        );
      }
    }
    return 0;
  },
};
