import type { IncomingMessage } from 'node:http';
import { InvalidArgumentError } from '../../core/errors.js';
import { openRequest } from '../../core/http-client.js';
import { RecordSplitter } from '../../core/records.js';
import type { MigrationReport } from '../../controller/migration.js';
import type { StoredEvent } from '../../controller/store.js';
import type { ClusterClient } from '../cluster-client.js';
import { printJson, requireName, type Command, type Invocation } from '../command.js';
import { requireCluster } from './host.js';
import { parseCompressSetting } from '../../replication/compression.js';
import { parseDuration } from './run.js';

const usage =
  'haven migrate NAME [--to HOST] [--strategy auto|stop-copy|pre-copy|post-copy|hybrid] [--max-downtime 300ms] [--max-rounds N] [--compress auto|none|lz4|zstd|gzip] [--json]';

/** The migration options shared by `migrate` and `drain`, from the flags. */
export function migrationOptionsOf(inv: Invocation): Record<string, unknown> {
  const options: Record<string, unknown> = {};
  const strategy = inv.values.strategy;
  if (typeof strategy === 'string') {
    if (!['auto', 'stop-copy', 'pre-copy', 'post-copy', 'hybrid'].includes(strategy))
      throw new InvalidArgumentError(
        `invalid --strategy "${strategy}": auto, stop-copy, pre-copy, post-copy or hybrid`,
      );
    options.strategy = strategy;
  }
  if (typeof inv.values['max-downtime'] === 'string')
    options.maxDowntimeMs = parseDuration(inv.values['max-downtime']);
  const rounds = inv.values['max-rounds'];
  if (typeof rounds === 'string') {
    if (!/^\d+$/.test(rounds) || Number(rounds) < 1 || Number(rounds) > 30)
      throw new InvalidArgumentError(`invalid --max-rounds "${rounds}": 1 to 30`);
    options.maxRounds = Number(rounds);
  }
  if (typeof inv.values.compress === 'string') options.compress = parseCompressSetting(inv.values.compress);
  return options;
}

/** Flags of `migrate` and `drain`. */
export const migrationFlags = {
  strategy: { type: 'string' },
  'max-downtime': { type: 'string' },
  'max-rounds': { type: 'string' },
  compress: { type: 'string' },
  json: { type: 'boolean' },
} as const;

const mb = (bytes: unknown): string => `${(Number(bytes ?? 0) / 1e6).toFixed(1)} MB`;

/** One progress line for a migration event (phase, round, bytes sent/left, stall), or undefined. */
export function progressLine(event: StoredEvent): string | undefined {
  const d = event.data;
  const who = event.subject;
  switch (event.kind) {
    case 'container.migration-started':
      return `${who}: ${String(d.from)} → ${String(d.to)}, strategy ${String(d.strategy)}, target downtime ${String(d.maxDowntimeMs)} ms`;
    case 'container.migration-strategy':
      return `${who}: auto chose ${String(d.strategy)}: ${String(d.why)}`;
    case 'container.migration-progress': {
      if (d.phase === 'prepare') return `${who}: prepare (image on ${String(d.to)}, protection paused)`;
      if (d.phase === 'restore')
        return `${who}: restore on ${String(d.to)}${d.postCopy ? ' (lazy pages)' : ''}`;
      if (d.frozen && d.postCopy)
        return `${who}: final round ${String(d.round)}: frozen, sending all but the memory pages (post-copy)`;
      if (d.frozen) return `${who}: final round ${String(d.round)}: frozen, sending the rest`;
      if (d.phase === 'post-copy') {
        if (typeof d.downtimeMs === 'number')
          return `${who}: post-copy: runs on ${String(d.runsOn)} after ${d.downtimeMs} ms; pulling ~${mb(d.leftBytes)} of pages`;
        const eta = typeof d.etaMs === 'number' ? `, ETA ${(d.etaMs / 1000).toFixed(1)} s` : '';
        return (
          `${who}: post-copy: ${String(d.pagesArrived)}/${String(d.pages)} pages, sent ${mb(d.sentBytes)}, ` +
          `left ${mb(d.leftBytes)} at ${mb(d.bytesPerSecond)}/s${eta}`
        );
      }
      const round = `${d.phase === 'final' ? 'final round' : 'round'} ${String(d.round)}`;
      return (
        `${who}: ${round}: sent ${mb(d.sentBytes)} of ${mb(d.checkpointBytes)}, left ~${mb(d.leftBytes)}, ` +
        `stall ${String(d.stallMs)} ms` +
        (typeof d.next === 'string' ? `; next: ${d.next} (${String(d.why)})` : '')
      );
    }
    case 'container.migration-failed':
      return (
        `${who}: FAILED in ${String(d.phase)}${typeof d.round === 'number' ? ` (round ${d.round})` : ''}: ` +
        `${String(d.error)}${d.rolledBack ? ' — rolled back' : ''}` +
        (typeof d.lostOnDestination === 'string' ? `; lost on the destination: ${d.lostOnDestination}` : '')
      );
    case 'container.migrated':
      return `${who}: migrated ${String(d.from)} → ${String(d.to)}`;
    default:
      return undefined;
  }
}

/**
 * Follows the controller's events from now on (server-sent events; the
 * controller fixes "now" before its answer's headers, which this awaits) and
 * hands each to `onEvent` until the returned stop function is called.
 */
export async function followEvents(
  cluster: ClusterClient,
  onEvent: (event: StoredEvent) => void,
): Promise<() => void> {
  let res: IncomingMessage | undefined;
  try {
    res = await openRequest(cluster.target.endpoint, '/v1/events?follow=true', cluster.target.token, {
      timeoutMs: 0,
      headers: { accept: 'text/event-stream' },
    });
  } catch {
    return () => undefined; // progress is a nicety: the migration's answer still comes
  }
  const stream = res;
  if ((stream.statusCode ?? 500) !== 200) {
    stream.resume();
    return () => undefined;
  }
  stream.setEncoding('utf8');
  const blocks = new RecordSplitter((block) => {
    const data = block.split('\n').find((l) => l.startsWith('data: '));
    if (data) onEvent(JSON.parse(data.slice(6)) as StoredEvent);
  }, '\n\n');
  stream.on('data', (chunk: string) => blocks.push(chunk));
  stream.on('error', () => undefined);
  return () => stream.destroy();
}

/**
 * Prints migration progress of the containers `names` (all when empty) to
 * stderr. Resolves once the controller follows: every event from then on.
 */
export function showProgress(cluster: ClusterClient, names: readonly string[]): Promise<() => void> {
  return followEvents(cluster, (event) => {
    if (names.length > 0 && !names.includes(event.subject)) return;
    const line = progressLine(event);
    if (line) process.stderr.write(`${line}\n`);
  });
}

/** The summary of one migration for people. */
export function summary(r: MigrationReport): string {
  const rounds = r.rounds.map((x) => `${x.round}: ${mb(x.sentBytes)}, stall ${x.frozenMs} ms`).join('; ');
  return (
    `${r.name}: ${r.from} → ${r.to} (${r.strategy}) in ${r.totalMs} ms; downtime ${r.downtimeMs} ms ` +
    `(final round frozen ${r.finalFrozenMs} ms, ${mb(r.finalSentBytes)} sent then; restore ${r.restoreMs} ms); ` +
    `${mb(r.totalSentBytes)} sent of a ${mb(r.checkpointBytes)} checkpoint` +
    (rounds ? `; pre-copy rounds ${rounds}; stopped: ${r.stopped}` : '') +
    (r.postCopy
      ? `; post-copy: ${r.postCopy.pages} pages pulled in ${r.postCopy.pagesMs} ms after the switch`
      : '') +
    `; connections ${r.connections}`
  );
}

/**
 * `haven migrate NAME --to HOST`: live migration through the controller,
 * with its progress (phase, round, bytes sent and left, each round's stall)
 * on stderr from the event stream; `--json` prints only the final report.
 */
export const migrateCommand: Command = {
  name: 'migrate',
  summary:
    'move a running container to another host (IP, MAC and TCP connections kept; rolls back on failure)',
  usage,
  options: { to: { type: 'string' }, ...migrationFlags },
  async run(inv) {
    const name = requireName(inv, usage);
    const cluster = requireCluster(inv);
    const body = {
      ...(typeof inv.values.to === 'string' ? { to: inv.values.to } : {}),
      ...migrationOptionsOf(inv),
    };
    const json = inv.values.json === true;
    const stop = json ? () => undefined : await showProgress(cluster, [name]);
    try {
      const report = await cluster.call<MigrationReport>(
        `/v1/containers/${encodeURIComponent(name)}/migrate`,
        {
          method: 'POST',
          body,
          timeoutMs: 1_800_000,
        },
      );
      if (json) printJson(report);
      else process.stdout.write(`${summary(report)}\n`);
    } finally {
      // The last progress lines may still be on their way: a moment for them.
      await new Promise((resolve) => setTimeout(resolve, json ? 0 : 200));
      stop();
    }
    return 0;
  },
};
