/**
 * What the dashboard shows, as pure functions of what the controller's API
 * answers: the wire types it reads, operations (failovers, switchovers,
 * migrations) rebuilt from events for the timeline, and the bounded
 * per-container history the charts draw. No DOM here: the unit tests run
 * it under Node (test/unit/dashboard-model.test.ts).
 *
 * The API's own types live in the controller (`HostView`,
 * `ClusterContainerView`, `StoredEvent`); these mirror the fields the page
 * reads, as a client of a stable JSON contract would, so the browser bundle
 * pulls in no server code.
 */

/** A host, from `GET /v1/hosts`. */
export interface HostView {
  name: string;
  address: string;
  labels: Record<string, string>;
  cpuMillis: number;
  memoryBytes: number;
  cordoned: boolean;
  state: 'up' | 'down' | 'unknown';
  lastSeenMs: number | null;
  phi: number | null;
  suspectAfterMs: number | null;
  containers: number;
}

/** A container's protection, from `GET /v1/containers`. */
export interface ProtectionView {
  mode: 'none' | 'restart' | 'checkpoint' | 'continuous';
  intervalMs: number;
  backup: string | null;
  committedEpoch: number | null;
  committedAgeMs: number | null;
  rpoMs: number | null;
  sentBytes: number | null;
  totalBytes: number | null;
  frozenMs: number | null;
  epochMs: number | null;
  lastError: string | null;
  epochRate?: number | null;
  /** Continuous protection: where clients connect, and the output commit. */
  serviceAddress?: string;
  publish?: number[];
  output?: { mode: 'held' | 'passthrough'; connections: number; heldBytes: number; outputDelayMs: number };
}

/** Whether a protection mode replicates epochs to a backup. */
export function replicatedMode(mode: ProtectionView['mode']): boolean {
  return mode === 'checkpoint' || mode === 'continuous';
}

/** A container, from `GET /v1/containers`. */
export interface ContainerView {
  name: string;
  host: string | null;
  state: string;
  desired: 'running' | 'stopped';
  ip: string;
  image: string;
  pid: number;
  generation: number;
  protection: ProtectionView;
  health: string | null;
}

/** An event, from `GET /v1/events` (server-sent when following). */
export interface ClusterEvent {
  seq: number;
  at: string;
  kind: string;
  subject: string;
  data: Record<string, unknown>;
}

/** A part of an operation on the timeline, in milliseconds from the operation's start. */
export interface Segment {
  label: 'detection' | 'decision' | 'pre-copy' | 'handover' | 'transfer' | 'assemble' | 'restore';
  startMs: number;
  durationMs: number;
}

/** A failover, switchover or migration, rebuilt from its events. */
export interface Operation {
  /** The finishing (or failing) event's seq: unique. */
  seq: number;
  kind: 'failover' | 'switchover' | 'migration';
  container: string;
  from: string;
  to: string;
  ok: boolean;
  /** When it began (for a failover: the host's last heartbeat) and ended, epoch milliseconds. */
  startedAt: number;
  endedAt: number;
  segments: Segment[];
  /** How long the container served nobody, as the controller measures it (null when unknown). */
  downtimeMs: number | null;
  /** A line of text: cause, strategy, epoch, error. */
  detail: string;
  /** Pre-copy rounds of a migration (for its chart). */
  rounds: Array<{ round: number; frozenMs: number; sentBytes: number; checkpointBytes: number }>;
}

/** One committed epoch as polling saw it (a chart's bar). */
export interface EpochSample {
  epoch: number;
  at: number;
  frozenMs: number;
  sentBytes: number;
  totalBytes: number;
}

/** Samples kept per container: two minutes at one epoch a second. */
export const MAX_SAMPLES = 120;
/** Operations kept on the timeline, and events in the feed. */
export const MAX_OPERATIONS = 50;
export const MAX_EVENTS = 300;

const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
const str = (v: unknown, otherwise = '?'): string => (typeof v === 'string' ? v : otherwise);

/** The event kinds that finish or fail an operation; everything else leaves the timeline alone. */
export const OPERATION_KINDS: ReadonlySet<string> = new Set([
  'container.failed-over',
  'container.failover-failed',
  'container.switched-over',
  'container.switchover-failed',
  'container.migrated',
  'container.migration-failed',
]);

/**
 * The operation an event finishes, or undefined. Times are rebuilt
 * backwards from the event's own time and the durations it carries:
 *
 * ```
 *  failover:   last beat ─detection (detectMs)─▶ decided ─order─▶ assemble ─▶ restore ─▶ done (event)
 *                                                 └────────────── failoverMs ──────────────┘
 *  switchover: decided ─handover (final epoch: frozen, sent)─▶ assemble ─▶ restore ─▶ done
 *  migration:  decided ─pre-copy rounds─▶ final round ─┬ downtimeMs ┐ ─▶ done
 *                                         (frozen, the rest sent, assemble, restore)
 * ```
 */
export function operationOf(event: ClusterEvent): Operation | undefined {
  if (!OPERATION_KINDS.has(event.kind)) return undefined;
  const d = event.data;
  const endedAt = Date.parse(event.at);
  const base = {
    seq: event.seq,
    container: event.subject,
    from: str(d.from),
    to: str(d.to),
    endedAt,
    rounds: [] as Operation['rounds'],
  };
  switch (event.kind) {
    case 'container.failed-over': {
      const detect = num(d.detectMs);
      const total = num(d.failoverMs);
      const assemble = num(d.assembleMs);
      const restore = num(d.restoreMs);
      const order = Math.max(0, total - assemble - restore);
      const epoch = typeof d.epoch === 'number' ? `, epoch ${formatEpoch(d.epoch)}` : '';
      return {
        ...base,
        kind: 'failover',
        ok: true,
        startedAt: endedAt - total - detect,
        segments: [
          { label: 'detection', startMs: 0, durationMs: detect },
          { label: 'decision', startMs: detect, durationMs: order },
          { label: 'assemble', startMs: detect + order, durationMs: assemble },
          { label: 'restore', startMs: detect + order + assemble, durationMs: restore },
        ],
        downtimeMs: detect + total,
        detail: `${str(d.reason, 'failure')} (${str(d.mode, 'restart')}${epoch})`,
      };
    }
    case 'container.switched-over': {
      const total = num(d.totalMs);
      const handover = num(d.handoverMs);
      const assemble = num(d.assembleMs);
      const restore = num(d.restoreMs);
      const takenAt = Date.parse(str(d.takenAt, ''));
      const startedAt = endedAt - total;
      return {
        ...base,
        kind: 'switchover',
        ok: true,
        startedAt,
        segments: [
          { label: 'handover', startMs: 0, durationMs: handover },
          { label: 'assemble', startMs: handover, durationMs: assemble },
          { label: 'restore', startMs: handover + assemble, durationMs: restore },
        ],
        // The container stopped when its final epoch began and runs again once restored.
        downtimeMs: Number.isFinite(takenAt)
          ? Math.max(0, handover + assemble + restore - (takenAt - startedAt))
          : null,
        detail: `planned, epoch ${formatEpoch(num(d.epoch))}, final epoch frozen ${Math.round(num(d.frozenMs))} ms, connections kept`,
      };
    }
    case 'container.migrated': {
      const total = num(d.totalMs);
      const downtime = num(d.downtimeMs);
      const assemble = num(d.assembleMs);
      const restore = num(d.restoreMs);
      const precopy = Math.max(0, total - downtime);
      const transfer = Math.max(0, downtime - assemble - restore);
      const rounds = Array.isArray(d.rounds)
        ? d.rounds.map((r: unknown) => {
            const round = (r ?? {}) as Record<string, unknown>;
            return {
              round: num(round.round),
              frozenMs: num(round.frozenMs),
              sentBytes: num(round.sentBytes),
              checkpointBytes: num(round.checkpointBytes),
            };
          })
        : [];
      return {
        ...base,
        kind: 'migration',
        ok: true,
        startedAt: endedAt - total,
        segments: [
          { label: 'pre-copy', startMs: 0, durationMs: precopy },
          { label: 'transfer', startMs: precopy, durationMs: transfer },
          { label: 'assemble', startMs: precopy + transfer, durationMs: assemble },
          { label: 'restore', startMs: precopy + transfer + assemble, durationMs: restore },
        ],
        downtimeMs: downtime,
        detail: `${str(d.strategy)}, ${rounds.length} pre-copy round${rounds.length === 1 ? '' : 's'}, ${formatBytes(num(d.totalSentBytes))} sent`,
        rounds,
      };
    }
    default: {
      // A failed operation: a marker at its time, with the error.
      const kind =
        event.kind === 'container.failover-failed'
          ? 'failover'
          : event.kind === 'container.switchover-failed'
            ? 'switchover'
            : 'migration';
      const phase = typeof d.phase === 'string' ? ` in ${d.phase}` : '';
      return {
        ...base,
        kind,
        ok: false,
        startedAt: endedAt,
        segments: [],
        downtimeMs: null,
        detail: `failed${phase}: ${str(d.error, 'unknown error')}${d.rolledBack === true ? ' (rolled back)' : ''}`,
      };
    }
  }
}

/** Adds an event's operation (if any) to the newest-first list, bounded. */
export function addOperation(operations: readonly Operation[], event: ClusterEvent): Operation[] {
  const op = operationOf(event);
  if (!op || operations.some((o) => o.seq === op.seq)) return operations as Operation[];
  return [op, ...operations].sort((a, b) => b.seq - a.seq).slice(0, MAX_OPERATIONS);
}

/**
 * Records each container's newest committed epoch, once per epoch, from a
 * poll of `GET /v1/containers`. Epochs between two polls are not seen
 * (agents report every tenth beat), so a chart is of sampled epochs.
 */
export function recordSamples(
  history: ReadonlyMap<string, readonly EpochSample[]>,
  containers: readonly ContainerView[],
  now: number,
): Map<string, EpochSample[]> {
  const next = new Map<string, EpochSample[]>();
  for (const c of containers) {
    const old = history.get(c.name) ?? [];
    const p = c.protection;
    const last = old[old.length - 1];
    if (p.committedEpoch !== null && p.frozenMs !== null && (!last || last.epoch !== p.committedEpoch)) {
      // An epoch number going back means a new primary counting afresh (a failover): start over.
      const kept = last && p.committedEpoch < last.epoch ? [] : old;
      next.set(
        c.name,
        [
          ...kept,
          {
            epoch: p.committedEpoch,
            at: now,
            frozenMs: p.frozenMs,
            sentBytes: p.sentBytes ?? 0,
            totalBytes: p.totalBytes ?? 0,
          },
        ].slice(-MAX_SAMPLES),
      );
    } else next.set(c.name, [...old]);
  }
  return next;
}

/**
 * An epoch as a person reads it: epochs are numbered by the time their
 * checkpoint began (milliseconds since 1970), so that time, to the
 * millisecond; a small number as itself.
 */
export function formatEpoch(epoch: number | null): string {
  if (epoch === null) return '–';
  if (epoch < 1e12) return `#${epoch}`;
  return new Date(epoch).toISOString().slice(11, 23);
}

/** `1.5 MB`, `320 kB`, `12 B` (decimal units, as network rates are read). */
export function formatBytes(bytes: number | null): string {
  if (bytes === null) return '–';
  if (bytes < 1000) return `${bytes} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 'B';
  for (const u of units) {
    if (value < 1000) break;
    value /= 1000;
    unit = u;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${unit}`;
}

/** `850 ms`, `2.3 s`, `4 min`. */
export function formatMs(ms: number | null): string {
  if (ms === null) return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  return `${Math.round(ms / 60_000)} min`;
}

/** A one-line summary of an event's data for the feed (the fields a person reads first). */
export function describeEvent(event: ClusterEvent): string {
  const d = event.data;
  const parts: string[] = [];
  const from = typeof d.from === 'string' ? d.from : undefined;
  const to = typeof d.to === 'string' ? d.to : undefined;
  if (from && to) parts.push(`${from} → ${to}`);
  else if (typeof d.host === 'string') parts.push(`on ${d.host}`);
  for (const key of ['silentMs', 'detectMs', 'failoverMs', 'downtimeMs', 'totalMs', 'restoreMs'] as const) {
    if (typeof d[key] === 'number') parts.push(`${key.replace(/Ms$/, '')} ${formatMs(d[key])}`);
  }
  if (typeof d.backup === 'string') parts.push(`backup ${d.backup}`);
  if (typeof d.strategy === 'string' && !(from && to && typeof d.totalMs === 'number'))
    parts.push(d.strategy);
  if (typeof d.round === 'number') parts.push(`round ${d.round}`);
  if (typeof d.reason === 'string') parts.push(d.reason);
  if (typeof d.error === 'string') parts.push(`error: ${d.error}`);
  return parts.join(', ');
}

/** Splits a server-sent-events text stream into events' `data` payloads; returns them and what is left over. */
export function parseSse(buffer: string): { data: string[]; rest: string } {
  const data: string[] = [];
  const blocks = buffer.split('\n\n');
  const rest = blocks.pop() ?? '';
  for (const block of blocks) {
    const lines = block.split('\n').filter((l) => l.startsWith('data:'));
    if (lines.length > 0) data.push(lines.map((l) => l.slice(5).replace(/^ /, '')).join('\n'));
  }
  return { data, rest };
}
