import { printJson, requireName, type Command } from '../command.js';

const usage = 'haven checkpoint NAME [--leave-running] [--export FILE [--compress none|gzip|zstd]] [--json]';

/** `haven checkpoint`: dump a container's memory, files and volumes; optionally into a portable archive. */
export const checkpointCommand: Command = {
  name: 'checkpoint',
  summary: 'checkpoint a container (it stops unless --leave-running); --export writes a portable archive',
  usage,
  options: {
    'leave-running': { type: 'boolean' },
    export: { type: 'string' },
    compress: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run(inv) {
    const name = requireName(inv, usage);
    const host = inv.host();
    const report = await host.checkpoint(name, { leaveRunning: inv.values['leave-running'] === true });
    const exported =
      typeof inv.values.export === 'string'
        ? await host.exportCheckpoint(name, inv.values.export, {
            checkpoint: report.id,
            ...(typeof inv.values.compress === 'string' ? { compression: inv.values.compress } : {}),
          })
        : undefined;
    if (inv.values.json) printJson({ ...report, ...(exported ? { export: exported } : {}) });
    else {
      const criu = report.stats ? `, by CRIU's count ${report.stats.frozenMs.toFixed(1)} ms` : '';
      process.stdout.write(
        `checkpoint ${report.id}: frozen ${report.frozenMs.toFixed(1)} ms${criu}, total ${report.wallMs.toFixed(0)} ms\n`,
      );
      if (exported) {
        process.stdout.write(
          `exported to ${exported.file} (${(exported.bytes / 1048576).toFixed(1)} MiB) in ${exported.wallMs.toFixed(0)} ms\n`,
        );
      }
    }
    return 0;
  },
};
