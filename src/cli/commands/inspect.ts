import type { ProtectionView } from '../../controller/controller.js';
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
        if (k === 'protection' && isProtection(v) && v.mode === 'continuous') {
          process.stdout.write(continuousText(v));
          continue;
        }
        process.stdout.write(`${k.padEnd(12)} ${typeof v === 'object' ? JSON.stringify(v) : String(v)}\n`);
      }
    }
    return 0;
  },
};

function isProtection(value: unknown): value is ProtectionView {
  return typeof value === 'object' && value !== null && 'mode' in value && 'intervalMs' in value;
}

const mb = (bytes: number | null): string => (bytes === null ? '?' : `${(bytes / 1e6).toFixed(1)} MB`);

/**
 * Continuous protection in a few lines: where clients connect, the epochs
 * (rate, freeze, bytes), and the output commit (held or not, its delay).
 */
export function continuousText(p: ProtectionView): string {
  const where = p.serviceAddress
    ? `${p.serviceAddress}:${(p.publish ?? []).join(',')}`
    : '(no service address)';
  const lines = [
    `protection   continuous -> ${p.backup ?? 'no backup'}, epoch every ${p.intervalMs} ms; clients connect to ${where}`,
  ];
  if (p.committedEpoch !== null) {
    lines.push(
      `  epochs     ${p.epochRate ?? '?'}/s committed, freeze ${p.frozenMs ?? '?'} ms, ` +
        `${mb(p.sentBytes)} sent of ${mb(p.totalBytes)}, ${p.epochMs ?? '?'} ms end to end, ` +
        `newest ${((p.committedAgeMs ?? 0) / 1000).toFixed(1)} s old`,
    );
    if (p.phases) {
      lines.push(
        `  epoch time checkpoint ${p.phases.checkpointMs} ms (freeze included), chunking ${p.phases.chunkMs} ms, ` +
          `transfer to the backup's acknowledgement ${p.phases.transferMs} ms`,
      );
    }
  } else {
    lines.push('  epochs     none committed yet');
  }
  if (!p.backup || p.output?.mode === 'passthrough') {
    lines.push(
      '  output     NOT HELD: no backup holds an epoch, so replies pass straight through and a host failure now loses state',
    );
  } else if (p.output) {
    lines.push(
      `  output     held until committed: delay now ${p.output.outputDelayMs} ms, ` +
        `${p.output.heldBytes} bytes held, ${p.output.connections} connection(s)`,
    );
  } else {
    lines.push('  output     held until committed (no report from the primary yet)');
  }
  if (p.lastError) lines.push(`  last error ${p.lastError}`);
  return `${lines.join('\n')}\n`;
}
