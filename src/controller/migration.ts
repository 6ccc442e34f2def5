/**
 * Live migration (`haven migrate NAME --to HOST`, `haven drain HOST`): a
 * running container moves to another host with a short pause, its IP, MAC
 * and established TCP connections kept. The controller decides and records;
 * the data goes agent to agent as content-addressed chunks — the transfer
 * replication uses, into the destination's replica store, where the
 * container is a temporary replica exactly as on a backup.
 *
 * A migration is an operation (`OperationRecord`, kind `migration`),
 * recorded step by step like a switchover, so a controller killed half-way
 * finishes it after its restart:
 *
 * ```
 *   decided ─prepare: the destination fetches the image; protection pauses─▶
 *           ─pre-copy rounds (leave-running; only changed chunks travel)─▶ …
 *           ─final round: frozen, checkpoint stored, the rest sent, epoch committed─▶ shipped
 *           ─the destination restores exactly that epoch, connections kept─▶ promoted
 *           ─intent moves, the source copy goes, protection resumes─▶ done
 *   any failure before `promoted`: rolled back — the source runs on (from its
 *   final checkpoint if it had stopped), the destination's temporary replica
 *   goes, and `container.migration-failed` names the phase
 * ```
 *
 * **Pre-copy on a kernel without dirty-page tracking** (no soft-dirty here,
 * so CRIU's pre-dump cannot work): each round is a full leave-running dump,
 * so it stalls the workload as long as a whole checkpoint does, and only its
 * chunks whose content changed since the previous round travel. Pre-copy
 * shrinks the one part of the downtime that rounds can shrink — the transfer
 * inside the final freeze — and pays for it with one stall per round; every
 * round's stall is measured and reported (`container.migration-progress`).
 * When to stop is {@link nextStep}, a pure function of the rounds so far;
 * `auto` is {@link chooseStrategy}, from one measured round.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { FailedPreconditionError, HavenError, NotFoundError } from '../core/errors.js';
import { UnreachableError } from '../core/http-client.js';
import type { ContainerView } from '../host/container-host.js';
import type { MigrationRoundReport } from '../replication/migration-source.js';
import { LAZY_STALL_MS, type LazyOutcome } from '../replication/post-copy.js';
import { place, type ClusterSnapshot, type PlacementRequest } from './placement.js';
import type { CompressSetting } from '../replication/compression.js';
import type { SyncRoundReport } from '../replication/fs-sync.js';
import { replicated } from './schemas.js';
import type { ClusterStore, ContainerIntent, HostRecord, OperationRecord, StoredEvent } from './store.js';
import { trace } from '../core/exec.js';

/** How a container moves. */
export type MigrationStrategy = 'stop-copy' | 'pre-copy' | 'post-copy' | 'hybrid' | 'auto';

/** What a migration did in the end (`auto` resolved). */
export type ResolvedStrategy = 'stop-copy' | 'pre-copy' | 'post-copy';

/** What a migration is asked to do (see `migrateRequestSchema`). */
export interface MigrationRequest {
  /** Destination; placement chooses when absent (drain). */
  to?: string;
  strategy: MigrationStrategy;
  /** The pause the operator accepts: pre-copy rounds go on until what is left fits it. */
  maxDowntimeMs: number;
  /** Pre-copy rounds at most (the final round not counted). */
  maxRounds: number;
  /** Compression of every round's chunk stream; absent: none. */
  compress?: CompressSetting;
}

/** What a finished migration reports (and `container.migrated` carries). */
export interface MigrationReport {
  name: string;
  from: string;
  to: string;
  strategy: ResolvedStrategy;
  /** Why that strategy (auto), or "asked". */
  why: string;
  /** Pre-copy rounds, each with its stall. */
  rounds: Array<Pick<RoundStats, 'round' | 'frozenMs' | 'checkpointBytes' | 'sentBytes' | 'wallMs'>>;
  /** Why the rounds stopped (pre-copy). */
  stopped: string;
  /** The final round: frozen (checkpoint stored), bytes sent then, and the whole checkpoint. */
  finalFrozenMs: number;
  /** The final round from its order to its answer (checkpoint, hashing, sending, commit). */
  finalRoundMs: number;
  finalSentBytes: number;
  checkpointBytes: number;
  /** Bytes sent over every round. */
  totalSentBytes: number;
  /** On the destination: assembling the epoch from chunks, and the restore. */
  assembleMs: number;
  restoreMs: number;
  /**
   * The container's downtime as the controller measures it: from the final
   * checkpoint's start to the destination's restore done (a client also
   * waits for its next TCP retransmission).
   */
  downtimeMs: number;
  totalMs: number;
  connections: 'kept';
  /**
   * Post-copy: from the destination's restore to its last page, the pages
   * it pulled, and the part of the downtime before the images were ready.
   */
  postCopy?: { pagesMs: number; pages: number };
  /** The file sync rounds before the final round, while the container ran (`replication/fs-sync.ts`). */
  fileSync?: SyncRoundReport[];
  /** With `--compress`: the final round's codecs (and `auto`'s decisions), and its bytes on the wire. */
  compression?: unknown;
  finalWireBytes?: number;
  resumed?: boolean;
}

// ------------------------------------------------------------------ decisions (pure)

/** One pre-copy round as the decisions see it (from the source's round report). */
export interface RoundStats {
  round: number;
  /** The workload's stall in this round (its checkpoint's freeze). */
  frozenMs: number;
  /** The whole checkpoint call (freeze, dump, hashing, store): how long a final round's freeze lasts. */
  checkpointMs: number;
  /** Cutting it into chunks (hashing): also inside a final round's downtime. */
  chunkMs: number;
  checkpointBytes: number;
  /** What travelled: the chunks that changed since the previous round (round 1: everything). */
  sentBytes: number;
  sendMs: number;
  wallMs: number;
}

/** Limits of pre-copy. */
export interface PrecopyLimits {
  maxDowntimeMs: number;
  maxRounds: number;
}

/** The next step of a pre-copy, and why. */
export interface StepDecision {
  next: 'round' | 'final';
  why: string;
  /** Estimated downtime of a final round now, and its parts (milliseconds). */
  estimate: DowntimeEstimate;
}

/** A final round's downtime, estimated. */
export interface DowntimeEstimate {
  /** What no round can shrink: the final checkpoint (freeze to stored), hashing it, restore. */
  fixedMs: number;
  /** Sending what is left. */
  transferMs: number;
  totalMs: number;
}

/** A link assumed when nothing has measured one yet: 1 Gbit/s, in bytes per millisecond. */
export const DEFAULT_LINK_BYTES_PER_MS = 125_000;

/**
 * The destination's part of the downtime, estimated before it is measured:
 * assembling the epoch and `runc restore` (~0.4 s for Redis in the lab
 * switchover test) plus ~2 ms per MB of checkpoint.
 */
export function restoreEstimateMs(checkpointBytes: number): number {
  return 350 + (2 * checkpointBytes) / 1e6;
}

/**
 * Bytes per millisecond the link carried, from the rounds that sent enough
 * to tell (≥ 1 MB); the best of them (a round slowed by its own hashing
 * understates the link, never overstates it). Default: 1 Gbit/s.
 */
export function measuredLinkRate(rounds: readonly RoundStats[]): number {
  const rates = rounds.filter((r) => r.sentBytes >= 1e6 && r.sendMs > 0).map((r) => r.sentBytes / r.sendMs);
  return rates.length > 0 ? Math.max(...rates) : DEFAULT_LINK_BYTES_PER_MS;
}

/** Estimated downtime of a final round that must send `leftBytes`. */
export function estimateDowntime(
  last: RoundStats,
  leftBytes: number,
  linkBytesPerMs: number,
): DowntimeEstimate {
  const fixedMs = last.checkpointMs + last.chunkMs + restoreEstimateMs(last.checkpointBytes);
  const transferMs = leftBytes / Math.max(1, linkBytesPerMs);
  return { fixedMs, transferMs, totalMs: fixedMs + transferMs };
}

/** Rounds whose changed bytes shrink by less than this are not converging. */
const CONVERGING = 0.9;
/** A transfer this small beside the fixed part is not worth another round's stall. */
const NEGLIGIBLE = 0.1;

/**
 * After a pre-copy round: another round, or the final one? What the final
 * round will send is estimated by what the last round sent (what changed in
 * one round's time). Stop when
 *   - the estimated downtime fits the target;
 *   - the transfer left is negligible beside the fixed part (final
 *     checkpoint and restore), which no round can shrink: another round
 *     would only add a stall;
 *   - rounds stop converging (a round sent ≥ 90% of the one before);
 *   - the round limit is reached.
 */
export function nextStep(rounds: readonly RoundStats[], limits: PrecopyLimits): StepDecision {
  const last = rounds.at(-1);
  if (!last) {
    return { next: 'round', why: 'no round yet', estimate: { fixedMs: 0, transferMs: 0, totalMs: 0 } };
  }
  const link = measuredLinkRate(rounds);
  const estimate = estimateDowntime(last, last.sentBytes, link);
  const ms = (n: number): string => `${Math.round(n)} ms`;
  if (estimate.totalMs <= limits.maxDowntimeMs)
    return {
      next: 'final',
      why: `fits: estimated downtime ${ms(estimate.totalMs)} ≤ ${ms(limits.maxDowntimeMs)}`,
      estimate,
    };
  if (rounds.length >= 2 && estimate.transferMs <= NEGLIGIBLE * estimate.fixedMs)
    return {
      next: 'final',
      why:
        `what is left sends in ${ms(estimate.transferMs)}, little beside the ${ms(estimate.fixedMs)} ` +
        `no round can shrink (final checkpoint, restore): another round would only stall the workload`,
      estimate,
    };
  const previous = rounds.at(-2);
  if (previous && last.sentBytes >= CONVERGING * previous.sentBytes)
    return {
      next: 'final',
      why: `not converging: round ${last.round} changed ${last.sentBytes} bytes, round ${previous.round} ${previous.sentBytes}`,
      estimate,
    };
  if (rounds.length >= limits.maxRounds)
    return { next: 'final', why: `round limit (${limits.maxRounds})`, estimate };
  return {
    next: 'round',
    why: `estimated downtime ${ms(estimate.totalMs)} > ${ms(limits.maxDowntimeMs)}`,
    estimate,
  };
}

/**
 * `auto`, from one measured leave-running round (its stall is that of a
 * full dump on this kernel): stop-and-copy when sending the whole checkpoint
 * inside the freeze would fit the target, or cost little beside the part no
 * round can shrink — more rounds would only add stalls; otherwise pre-copy.
 */
export function chooseStrategy(
  measured: RoundStats,
  maxDowntimeMs: number,
): { strategy: 'stop-copy' | 'pre-copy'; why: string; estimate: DowntimeEstimate } {
  const link = measuredLinkRate([measured]);
  const all = estimateDowntime(measured, measured.checkpointBytes, link);
  const facts =
    `checkpoint ${(measured.checkpointBytes / 1e6).toFixed(1)} MB, round stall ${Math.round(measured.frozenMs)} ms, ` +
    `link ${((link * 1000) / 1e6).toFixed(0)} MB/s${measured.sentBytes >= 1e6 ? '' : ' (assumed: too little sent to measure)'}, ` +
    `no dirty-page tracking on this kernel (each round is a full dump)`;
  if (all.totalMs <= maxDowntimeMs)
    return {
      strategy: 'stop-copy',
      why: `${facts}: sending all of it frozen fits (${Math.round(all.totalMs)} ms ≤ ${maxDowntimeMs} ms)`,
      estimate: all,
    };
  if (all.transferMs <= NEGLIGIBLE * all.fixedMs)
    return {
      strategy: 'stop-copy',
      why: `${facts}: the transfer (${Math.round(all.transferMs)} ms) is small beside what no round can shrink (${Math.round(all.fixedMs)} ms)`,
      estimate: all,
    };
  return {
    strategy: 'pre-copy',
    why: `${facts}: sending all of it frozen would take ${Math.round(all.transferMs)} ms; rounds shrink that`,
    estimate: all,
  };
}

/** What the source reports for `auto` and post-copy (see `ContainerHost.migrationFacts`). */
export interface MigrationFacts {
  memoryBytes: number | undefined;
  dirtyTracking: boolean;
  lazyPages: boolean;
  /** Pages written per second, sampled without a stall (`replication/post-copy-sampler.ts`). */
  dirty?: { pagesPerSecond: number; sampledPages: number; changedPages: number };
}

/**
 * Above this many pages written per second, post-copy is not chosen: a
 * workload writing fast at random faults on pages not yet there, and CRIU's
 * lazy-pages daemon pulls the rest only while no fault waits. Measured on
 * the lab at 1 GB (docs/BENCHMARKS.md): 1,000 pages/s ran on unhindered,
 * 10,000 pages/s stalled for minutes. The threshold sits between the two.
 */
export const POST_COPY_MAX_DIRTY_PAGES_PER_SECOND = 3000;

/**
 * The fixed part of a stop-and-copy's downtime before anything is measured:
 * the freeze chain's ~150 ms plus ~0.5 ms per MB dumped (DESIGN.md §2), and
 * the destination's restore ({@link restoreEstimateMs}).
 */
export function stopCopyFixedMs(memoryBytes: number): number {
  return 150 + (0.5 * memoryBytes) / 1e6 + restoreEstimateMs(memoryBytes);
}

/**
 * `auto`, decided before anything stalls the workload, from the container's
 * memory, the link, the downtime target and what the kernel can do:
 *   - stop-and-copy when dumping and sending it all frozen fits the target;
 *   - otherwise post-copy where lazy pages work: its downtime does not grow
 *     with memory or dirty rate (only the images without pages travel
 *     frozen), and the frozen source stays the rollback copy;
 *   - otherwise pre-copy.
 * The dirty rate is not measured first: without dirty-page tracking the only
 * way to measure it is a full dump, which stalls the workload as long as a
 * stop-and-copy's freeze — the very cost `auto` must avoid. Where the kernel
 * tracks dirty pages, pre-copy's rounds are cheap and it is preferred over
 * post-copy (no window in which a destination failure loses work) when its
 * memory would be sent within ten targets.
 */
export function chooseAuto(
  facts: MigrationFacts,
  maxDowntimeMs: number,
  linkBytesPerMs = DEFAULT_LINK_BYTES_PER_MS,
): { strategy: ResolvedStrategy; why: string; estimatedDowntimeMs: number } {
  const memory = facts.memoryBytes ?? 0;
  const sendMs = memory / Math.max(1, linkBytesPerMs);
  const stopCopyMs = stopCopyFixedMs(memory) + sendMs;
  const dirty = facts.dirty?.pagesPerSecond;
  const facts$ =
    `memory ${(memory / 1e6).toFixed(0)} MB${facts.memoryBytes === undefined ? ' (unknown)' : ''}, ` +
    `link ${((linkBytesPerMs * 1000) / 1e6).toFixed(0)} MB/s, ` +
    `dirty rate ${dirty === undefined ? 'unknown' : `~${dirty} pages/s (sampled)`}, ` +
    `dirty-page tracking ${facts.dirtyTracking ? 'yes' : 'no'}, ` +
    `lazy pages ${facts.lazyPages ? 'yes' : 'no'}`;
  if (stopCopyMs <= maxDowntimeMs)
    return {
      strategy: 'stop-copy',
      why: `${facts$}: stop-and-copy fits (~${Math.round(stopCopyMs)} ms ≤ ${maxDowntimeMs} ms)`,
      estimatedDowntimeMs: stopCopyMs,
    };
  // Dirty-page tracking does not change the choice yet: pre-copy's rounds are
  // full leave-running dumps on every kernel (CRIU pre-dump chains, which
  // would make them cheap where soft-dirty exists, are not built).
  if (facts.lazyPages && dirty !== undefined && dirty > POST_COPY_MAX_DIRTY_PAGES_PER_SECOND) {
    // Pre-copy's rounds converge only while the link outruns the writes.
    const converges = dirty * 4096 < 0.5 * linkBytesPerMs * 1000;
    return {
      strategy: converges ? 'pre-copy' : 'stop-copy',
      why:
        `${facts$}: stop-and-copy ~${Math.round(stopCopyMs)} ms > ${maxDowntimeMs} ms, but post-copy would fault ` +
        `on pages written faster than ${POST_COPY_MAX_DIRTY_PAGES_PER_SECOND}/s; ` +
        (converges ? 'pre-copy rounds can converge' : 'the writes outrun the link: pre-copy cannot converge'),
      estimatedDowntimeMs: stopCopyMs,
    };
  }
  if (facts.lazyPages) {
    const postMs = restoreEstimateMs(0) + 150;
    return {
      strategy: 'post-copy',
      why:
        `${facts$}: stop-and-copy ~${Math.round(stopCopyMs)} ms > ${maxDowntimeMs} ms; post-copy's pause does not grow ` +
        `with memory or dirty rate (~${Math.round(postMs)} ms), and the frozen source is the rollback copy`,
      estimatedDowntimeMs: postMs,
    };
  }
  return {
    strategy: 'pre-copy',
    why: `${facts$}: stop-and-copy ~${Math.round(stopCopyMs)} ms > ${maxDowntimeMs} ms and no lazy pages here`,
    estimatedDowntimeMs: stopCopyMs,
  };
}

/** Why hybrid cannot run here, or undefined if it can. */
export function hybridRefusal(
  facts: Pick<MigrationFacts, 'dirtyTracking' | 'lazyPages'>,
): string | undefined {
  if (!facts.lazyPages) return 'hybrid needs lazy pages (userfaultfd), which this host lacks';
  if (!facts.dirtyTracking)
    return (
      "hybrid needs dirty-page tracking: its post-copy part reads the pre-copy rounds' pages as parent images " +
      '(CRIU pre-dump), which this kernel cannot make (no soft-dirty); without it the lazy dump marks every page ' +
      'lazy and the rounds would only stall the workload. Use post-copy'
    );
  return 'hybrid (pre-dump rounds, then lazy pages over their parent images) is not built yet';
}

/** A round report as the decisions see it. */
export function statsOf(report: MigrationRoundReport): RoundStats {
  return {
    round: report.round,
    frozenMs: report.frozenMs,
    checkpointMs: report.checkpointMs,
    chunkMs: report.chunkMs,
    checkpointBytes: report.checkpointBytes,
    sentBytes: report.sentBytes,
    sendMs: report.sendMs,
    wallMs: report.wallMs,
  };
}

// ------------------------------------------------------------------ the operation

/** What the controller lends the migration logic (its store, agents, liveness, events, shared steps). */
export interface MigrationContext {
  store: ClusterStore;
  /** The controller's `AgentCaller`. */
  callAgent: <T>(
    host: HostRecord,
    path: string,
    options?: { method?: string; body?: unknown; timeoutMs?: number },
  ) => Promise<T>;
  now: () => number;
  emit(kind: string, subject: string, data: Record<string, unknown>): Promise<StoredEvent>;
  /** Whether the controller sees the host up. */
  isUp(host: string): boolean;
  /**
   * When host `host`, if cut off since its last heartbeat, has frozen the
   * copies it was not yet told it may run (its lease from then, plus a margin).
   */
  leaseEnd(host: string): number;
  /** A host the step needs, waited for (after a restart) or a retryable error. */
  upHost(name: string): Promise<HostRecord>;
  /** Claims a container for an operation; undefined if one already holds it. */
  claim(name: string): (() => void) | undefined;
  snapshot(): Promise<ClusterSnapshot>;
  placementOf(intent: ContainerIntent): PlacementRequest;
  /** The name a container's backup reserves room under on its backup host. */
  backupSlot(name: string): string;
  moveIntent(op: OperationRecord): Promise<ContainerIntent | undefined>;
  removeCopy(host: HostRecord, name: string): Promise<void>;
  orderProtection(intent: ContainerIntent): Promise<void>;
  reprotect(name: string): Promise<void>;
  orderProbe(intent: ContainerIntent): Promise<void>;
  noteReported(host: string, container: Pick<ContainerView, 'name' | 'state' | 'pid' | 'ip'>): void;
  setCordon(name: string, cordoned: boolean): Promise<unknown>;
  failpoint(step: string): void;
}

/**
 * A migration that failed and was rolled back (and reported as
 * `container.migration-failed`): the container runs on its source.
 */
export class MigrationFailedError extends HavenError {
  constructor(
    readonly phase: string,
    readonly round: number,
    from: string,
    cause: unknown,
  ) {
    const message = cause instanceof Error ? cause.message : String(cause);
    super(
      `migration failed in phase ${phase}${round > 0 ? ` (round ${round})` : ''}: ${message}; ` +
        `rolled back: it runs on ${from}`,
      // Never a 500 code: the API would hide the message, and this one is for the operator.
      cause instanceof HavenError && cause.retryable ? 'unavailable' : 'failed_precondition',
      false,
    );
  }
}

/** What `haven drain` reports per container. */
export interface DrainReport {
  host: string;
  migrated: MigrationReport[];
  failed: Array<{ name: string; error: string }>;
}

/** Live migrations, driven for the {@link Controller}. */
export class Migrations {
  constructor(private readonly ctx: MigrationContext) {}

  /**
   * Migrates `name` (see the module comment). Resolves when it runs on the
   * destination; rejects — after the rollback — with the phase that failed.
   */
  async migrate(name: string, request: MigrationRequest): Promise<MigrationReport> {
    const release = this.ctx.claim(name);
    if (!release) throw new FailedPreconditionError(`an operation on "${name}" is already in progress`);
    try {
      const { ctx } = this;
      const intent = await ctx.store.getContainer(name);
      if (!intent) throw new NotFoundError(`container "${name}" does not exist in the cluster`);
      if (!intent.host || intent.desired !== 'running')
        throw new FailedPreconditionError(`"${name}" is not meant to be running: nothing to migrate`);
      const from = intent.host;
      if (!ctx.isUp(from)) throw new HavenError(`host "${from}" of "${name}" is not up`, 'unavailable', true);
      if (request.to === from) throw new FailedPreconditionError(`"${name}" already runs on ${from}`);
      const to = await this.destination(intent, request.to);
      const op = await ctx.store.putOperation({
        container: name,
        kind: 'migration',
        from,
        to,
        step: 'decided',
        generation: intent.generation,
        epoch: null,
        detail: {
          id: `m-${ctx.now().toString(36)}-${randomBytes(3).toString('hex')}`,
          strategy: request.strategy,
          maxDowntimeMs: request.maxDowntimeMs,
          maxRounds: request.maxRounds,
          compress: request.compress ?? null,
          backup: typeof intent.spec.backup === 'string' ? intent.spec.backup : null,
        },
        startedAt: new Date(ctx.now()).toISOString(),
      });
      await ctx.emit('container.migration-started', name, {
        from,
        to,
        strategy: request.strategy,
        maxDowntimeMs: request.maxDowntimeMs,
      });
      ctx.failpoint('migration.decided');
      return await this.drive(op, false);
    } finally {
      release();
    }
  }

  /**
   * The destination: the one asked for, if placement allows it there, or the
   * one placement chooses. The container's own room (on its host) and its
   * backup's reservation (if the destination is its backup) are not counted
   * against it: both move with it.
   */
  private async destination(intent: ContainerIntent, asked: string | undefined): Promise<string> {
    const snapshot = await this.ctx.snapshot();
    const mine = new Set([intent.name, this.ctx.backupSlot(intent.name)]);
    const decision = place(
      { ...snapshot, containers: snapshot.containers.filter((c) => !mine.has(c.name)) },
      {
        ...this.ctx.placementOf(intent),
        ...(asked ? { host: asked } : {}),
        excludeHosts: [intent.host!],
        // Refused here, before anything stops, if the destination cannot run its checkpoints.
        origin: intent.host!,
      },
    );
    if (!decision.ok) {
      const why = Object.entries(decision.reasons)
        .filter(([h]) => h !== intent.host)
        .map(([h, r]) => `${h}: ${r}`)
        .join('; ');
      throw new FailedPreconditionError(
        asked
          ? `cannot migrate "${intent.name}" to ${asked}: ${why}`
          : `no host can take "${intent.name}": ${why || 'no other host'}`,
      );
    }
    return decision.host;
  }

  /** Runs a migration from the step it reached (`resumed`: by a restarted controller). */
  async drive(operation: OperationRecord, resumed: boolean): Promise<MigrationReport> {
    const { ctx } = this;
    const { store } = ctx;
    let op = operation;
    const name = op.container;
    const id = String(op.detail.id);
    let strategy: ResolvedStrategy =
      op.detail.strategy === 'post-copy' || op.detail.resolved === 'post-copy'
        ? 'post-copy'
        : op.detail.strategy === 'pre-copy' || op.detail.resolved === 'pre-copy'
          ? 'pre-copy'
          : 'stop-copy';
    let why =
      op.detail.strategy !== 'auto' ? 'asked' : typeof op.detail.why === 'string' ? op.detail.why : '';
    const rounds: RoundStats[] = [];
    let stopped = '';
    if (op.step === 'decided') {
      let phase = 'prepare';
      let round = 0;
      try {
        const from = await ctx.upHost(op.from);
        const to = await ctx.upHost(op.to);
        const intent = await store.getContainer(name);
        if (!intent) throw new NotFoundError(`"${name}" was removed`);
        await this.progress(name, { phase, from: op.from, to: op.to });
        // Protection pauses: its epochs would dump the container beside the rounds.
        if (replicated(intent.spec.ha))
          await ctx.callAgent(from, `/v1/containers/${encodeURIComponent(name)}/protect`, {
            method: 'POST',
            body: { backup: null },
          });
        const asked = String(op.detail.strategy);
        const decides = !resumed && (asked === 'auto' || asked === 'hybrid' || asked === 'post-copy');
        // Side by side: the image on the destination now, so that no final
        // round waits on its download; and what the strategy is decided on,
        // before anything stalls the workload (see chooseAuto).
        const [, facts] = await Promise.all([
          ctx.callAgent(to, `/v1/replicas/${encodeURIComponent(name)}/prepare`, {
            method: 'POST',
            body: {
              image: intent.spec.image,
              ...(typeof intent.spec.ip === 'string' && intent.spec.ip.includes('/')
                ? { network: intent.spec.ip }
                : {}),
            },
            timeoutMs: 600_000,
          }),
          decides
            ? ctx.callAgent<MigrationFacts>(
                from,
                `/v1/containers/${encodeURIComponent(name)}/migrate-facts`,
                // The dirty rate's sample takes ~0.4 s: only auto weighs it.
                { method: 'POST', body: { sampleDirtyRate: asked === 'auto' } },
              )
            : undefined,
        ]);
        if (facts) {
          if (asked === 'hybrid') throw new FailedPreconditionError(hybridRefusal(facts) ?? 'hybrid refused');
          if (asked === 'post-copy' && !facts.lazyPages)
            throw new FailedPreconditionError(
              `post-copy needs lazy pages (CRIU's non-cooperative userfaultfd, fs.pipe-max-size ≥ 4194304), which ${op.from} lacks`,
            );
          if (asked === 'auto') {
            const choice = chooseAuto(facts, Number(op.detail.maxDowntimeMs));
            strategy = choice.strategy;
            why = choice.why;
            await ctx.emit('container.migration-strategy', name, {
              strategy,
              why,
              estimatedDowntimeMs: Math.round(choice.estimatedDowntimeMs),
            });
          }
          op = await store.putOperation({ ...op, detail: { ...op.detail, resolved: strategy, why } });
        }
        const postCopyPort = 20000 + Math.floor(Math.random() * 10000);
        const order = (final: boolean): Promise<MigrationRoundReport> =>
          ctx.callAgent<MigrationRoundReport>(from, `/v1/containers/${encodeURIComponent(name)}/migrate`, {
            method: 'POST',
            body: {
              id,
              round,
              final,
              to: { host: to.name, address: to.address },
              ...(typeof op.detail.compress === 'string' ? { compress: op.detail.compress } : {}),
              ...(final && strategy === 'post-copy'
                ? { postCopy: { address: new URL(from.address).hostname, port: postCopyPort } }
                : {}),
            },
            timeoutMs: 600_000,
          });
        // A resumed migration does not start rounds over: it goes to its final round
        // (which the source joins, or reports, if it began it already).
        if (!resumed && strategy === 'pre-copy') {
          const limits = {
            maxDowntimeMs: Number(op.detail.maxDowntimeMs),
            maxRounds: Number(op.detail.maxRounds),
          };
          for (;;) {
            phase = 'pre-copy';
            round++;
            const report = statsOf(await order(false));
            rounds.push(report);
            const decision = nextStep(rounds, limits);
            await this.progress(name, {
              phase,
              round,
              stallMs: Math.round(report.frozenMs),
              sentBytes: report.sentBytes,
              checkpointBytes: report.checkpointBytes,
              leftBytes: report.sentBytes,
              roundMs: Math.round(report.wallMs),
              estimatedDowntimeMs: Math.round(decision.estimate.totalMs),
              next: decision.next,
              why: decision.why,
            });
            if (decision.next === 'final') {
              stopped = decision.why;
              break;
            }
          }
        }
        phase = 'final';
        round++;
        await this.progress(name, {
          phase,
          round,
          frozen: true,
          ...(strategy === 'post-copy' ? { postCopy: true } : {}),
        });
        const finalStarted = performance.now();
        const final = await order(true);
        trace(`migration ${name}: final round answered`, finalStarted);
        op = await store.putOperation({
          ...op,
          step: 'shipped',
          epoch: final.epoch ?? null,
          detail: {
            ...op.detail,
            strategy,
            why,
            stopped,
            rounds: rounds.map((r) => ({
              round: r.round,
              frozenMs: Math.round(r.frozenMs),
              checkpointBytes: r.checkpointBytes,
              sentBytes: r.sentBytes,
              wallMs: Math.round(r.wallMs),
            })),
            takenAt: final.takenAt,
            finalFrozenMs: Math.round(final.frozenMs),
            finalSentBytes: final.sentBytes,
            checkpointBytes: final.checkpointBytes,
            finalRoundMs: Math.round(final.wallMs),
            totalSentBytes: rounds.reduce((s, r) => s + r.sentBytes, 0) + final.sentBytes,
            ...(final.postCopy
              ? { postCopy: { ...final.postCopy, pagesBytes: final.postCopy.pagesBytes ?? null } }
              : {}),
            ...(final.fileSync ? { fileSync: final.fileSync } : {}),
            ...(final.compression ? { compression: final.compression, finalWireBytes: final.wireBytes } : {}),
          },
        });
        trace(`migration ${name}: shipped recorded`, finalStarted);
        await this.progress(name, {
          phase,
          round,
          stallMs: Math.round(final.frozenMs),
          roundMs: Math.round(final.wallMs),
          // Where the final round's time went (all of it is downtime).
          parts: {
            checkpointMs: Math.round(final.checkpointMs),
            chunkMs: Math.round(final.chunkMs),
            sendMs: Math.round(final.sendMs),
            commitMs: Math.round(final.commitMs),
          },
          sentBytes: final.sentBytes,
          checkpointBytes: final.checkpointBytes,
          leftBytes: final.postCopy?.pagesBytes ?? 0,
        });
      } catch (error) {
        await this.rollBack(op, phase, round, error);
        throw new MigrationFailedError(phase, round, op.from, error);
      }
      if (!resumed) ctx.failpoint('migration.shipped');
    }
    if (op.step === 'shipped' && op.detail.postCopy) {
      op = await this.postCopy(op);
      if (!resumed) ctx.failpoint('migration.promoted');
    }
    if (op.step === 'shipped') {
      const to = await ctx.upHost(op.to);
      await this.progress(name, { phase: 'restore', to: op.to });
      let promoted: { assembleMs: number; restoreMs: number; view: ContainerView };
      try {
        promoted = await this.whileUp(
          op.to,
          ctx.callAgent(to, `/v1/replicas/${encodeURIComponent(name)}/promote`, {
            method: 'POST',
            // Provisional: until the intent moves, a destination cut off from us freezes it.
            body: { tcpClose: false, epoch: op.epoch, provisional: true },
            timeoutMs: 600_000,
          }),
        );
      } catch (error) {
        // Not restored there — or restored, and the answer lost: it must not run
        // there either before the source runs again.
        // (A host seen down is not asked: the connection alone would wait its minute out.)
        const removed =
          ctx.isUp(op.to) &&
          (await this.whileUp(op.to, ctx.removeCopy(to, name)).then(
            () => true,
            (e: unknown) => {
              if (ctx.isUp(op.to)) throw e; // alive and refusing: try again later, never two copies
              return false;
            },
          ));
        // Down is not dead: a host cut off may run the copy it restored. Its agent
        // freezes that copy (provisional) once its lease runs out: waited for.
        if (!removed) await sleep(Math.max(0, ctx.leaseEnd(op.to) - ctx.now()));
        await this.rollBack(op, 'restore', 0, error, {
          lostOnDestination: removed
            ? 'nothing: its copy there, if any, was removed before the source ran again'
            : `whatever its copy on ${op.to} did, if the restore there went through, until its host froze it ` +
              '(a host cut off freezes a copy not yet placed there once its lease runs out)',
        });
        throw new MigrationFailedError('restore', 0, op.from, error);
      }
      ctx.noteReported(to.name, {
        name,
        state: promoted.view.state,
        pid: promoted.view.pid,
        ip: promoted.view.ip,
      });
      op = await store.putOperation({
        ...op,
        step: 'promoted',
        detail: {
          ...op.detail,
          assembleMs: Math.round(promoted.assembleMs),
          restoreMs: Math.round(promoted.restoreMs),
          downtimeMs: ctx.now() - Date.parse(String(op.detail.takenAt)),
        },
      });
      if (!resumed) ctx.failpoint('migration.promoted');
    }
    const moved = await ctx.moveIntent(op);
    if (!moved)
      throw new FailedPreconditionError(`the migration of "${name}" was overtaken by another change`);
    // Its copy there is no longer provisional. Not waited for: lost, the host's next
    // report's answer (the containers it may run) says the same.
    const placedOn = await store.getHost(op.to);
    if (placedOn)
      void ctx
        .callAgent(placedOn, `/v1/containers/${encodeURIComponent(name)}/placed`, {
          method: 'POST',
          body: {},
          timeoutMs: 3000,
        })
        .catch(() => undefined);
    const from = await store.getHost(op.from);
    if (from && ctx.isUp(from.name)) await ctx.removeCopy(from, name);
    const d = op.detail;
    const report: MigrationReport = {
      name,
      from: op.from,
      to: op.to,
      strategy: strategy,
      why: typeof d.why === 'string' ? d.why : '',
      rounds: Array.isArray(d.rounds) ? (d.rounds as MigrationReport['rounds']) : [],
      stopped: typeof d.stopped === 'string' ? d.stopped : '',
      finalFrozenMs: num(d.finalFrozenMs),
      finalRoundMs: num(d.finalRoundMs),
      finalSentBytes: num(d.finalSentBytes),
      checkpointBytes: num(d.checkpointBytes),
      totalSentBytes: num(d.totalSentBytes),
      assembleMs: num(d.assembleMs),
      restoreMs: num(d.restoreMs),
      downtimeMs: num(d.downtimeMs),
      totalMs: ctx.now() - Date.parse(op.startedAt),
      connections: 'kept',
      ...(d.pagesMs !== undefined ? { postCopy: { pagesMs: num(d.pagesMs), pages: num(d.pages) } } : {}),
      ...(Array.isArray(d.fileSync) ? { fileSync: d.fileSync as SyncRoundReport[] } : {}),
      ...(d.compression ? { compression: d.compression, finalWireBytes: num(d.finalWireBytes) } : {}),
      ...(resumed ? { resumed: true } : {}),
    };
    await ctx.emit('container.migrated', name, { ...report });
    await store.deleteOperation(name);
    await ctx.orderProbe(moved);
    await this.protectAfter(moved, d.backup);
    return report;
  }

  /**
   * Post-copy after its final round (the source frozen, serving its pages;
   * the images without pages committed on the destination): the destination
   * restores and runs at once, pulling pages; once it holds every page the
   * frozen source is killed and the operation is `promoted`. If the
   * destination or the link dies first, the destination copy is made sure
   * gone — removed, or dead with its host, or killed by its own agent when
   * its pages stopped arriving ({@link LAZY_STALL_MS}) — and only then the
   * source thaws, its state as at the freeze: what the container did on the
   * destination since the switch is lost, and the event says so.
   */
  private async postCopy(operation: OperationRecord): Promise<OperationRecord> {
    const { ctx } = this;
    let op = operation;
    const name = op.container;
    const pc = op.detail.postCopy as { address: string; port: number; pagesBytes: number | null };
    const path = `/v1/replicas/${encodeURIComponent(name)}`;
    // Switched already (a restarted controller resumes here): the destination runs it and
    // pulls its pages; ordering the restore again would fail, so it is waited on instead.
    let phase = op.detail.switched === true ? 'post-copy' : 'restore';
    try {
      const to = await ctx.upHost(op.to);
      if (phase === 'restore') {
        await this.progress(name, { phase, to: op.to, postCopy: true });
        const promoting = performance.now();
        trace(`migration ${name}: promote ordered`, promoting);
        const promoted = await ctx.callAgent<{ view: ContainerView; assembleMs: number; restoreMs: number }>(
          to,
          `${path}/promote-lazy`,
          {
            method: 'POST',
            body: { epoch: op.epoch, from: { address: pc.address, port: pc.port } },
            timeoutMs: 120_000,
          },
        );
        ctx.noteReported(to.name, {
          name,
          state: promoted.view.state,
          pid: promoted.view.pid,
          ip: promoted.view.ip,
        });
        const downtimeMs = ctx.now() - Date.parse(String(op.detail.takenAt));
        trace(`migration ${name}: promoted (downtime ${downtimeMs} ms)`, promoting);
        phase = 'post-copy';
        op = await ctx.store.putOperation({
          ...op,
          detail: {
            ...op.detail,
            switched: true,
            assembleMs: Math.round(promoted.assembleMs),
            restoreMs: Math.round(promoted.restoreMs),
            downtimeMs,
          },
        });
        await this.progress(name, { phase, runsOn: op.to, downtimeMs, leftBytes: pc.pagesBytes });
      }
      const pulling = ctx.now();
      let outcome: LazyOutcome;
      for (;;) {
        outcome = await ctx.callAgent<LazyOutcome>(to, `${path}/lazy-wait`, {
          method: 'POST',
          body: { timeoutMs: 1000 },
          timeoutMs: 1000 + LAZY_STALL_MS + 2000,
        });
        if (!outcome.pending) break;
        const [got, all] = outcome.transferred ?? [0, 0];
        const elapsed = Math.max(1, ctx.now() - pulling);
        const rate = (got * 4096) / elapsed; // bytes per millisecond
        await this.progress(name, {
          phase,
          runsOn: op.to,
          pagesArrived: got,
          pages: all,
          sentBytes: got * 4096,
          leftBytes: (all - got) * 4096,
          bytesPerSecond: Math.round(rate * 1000),
          etaMs: rate > 0 ? Math.round(((all - got) * 4096) / rate) : null,
        });
      }
      if (!outcome.complete)
        throw new HavenError(
          `pages missing on ${op.to}: ${outcome.errors.join('; ') || 'the lazy-pages daemon failed'}`,
          'unavailable',
          true,
        );
      await this.endSource(op, 'complete');
      return await ctx.store.putOperation({
        ...op,
        step: 'promoted',
        detail: {
          ...op.detail,
          pagesMs: Math.round(outcome.ms),
          pages: outcome.transferred?.[1] ?? 0,
        },
      });
    } catch (error) {
      const gone = await this.dropDestination(op);
      await this.endSource(op, 'rollback', gone);
      await this.rollBack(op, phase, 0, error, {
        lostOnDestination:
          phase === 'post-copy'
            ? `it ran on ${op.to} from the switch until the failure; what it did there is lost: it resumed on ${op.from} with its state at the freeze`
            : 'nothing: it had not run on the destination',
      });
      throw new MigrationFailedError(phase, 0, op.from, error);
    }
  }

  /**
   * `call`, given up as soon as the controller sees host `host` down: an
   * order to a host cut off would otherwise wait out its connection's idle
   * timeout (minutes) for an answer that may never come.
   */
  private async whileUp<T>(host: string, call: Promise<T>): Promise<T> {
    call.catch(() => undefined); // failing after it was given up on concerns no one
    let timer: NodeJS.Timeout | undefined;
    const down = new Promise<never>((_, reject) => {
      timer = setInterval(() => {
        if (!this.ctx.isUp(host)) reject(new UnreachableError(`host ${host} went down before it answered`));
      }, 100);
    });
    try {
      return await Promise.race([call, down]);
    } finally {
      clearInterval(timer);
    }
  }

  /** Post-copy's source: kill the frozen copy (`complete`) or thaw it (`rollback`). */
  private async endSource(
    op: OperationRecord,
    outcome: 'complete' | 'rollback',
    destinationGone = true,
  ): Promise<void> {
    const from = await this.ctx.upHost(op.from);
    await this.ctx.callAgent(from, `/v1/containers/${encodeURIComponent(op.container)}/migrate-end`, {
      method: 'POST',
      body: { id: String(op.detail.id), outcome, destinationGone },
      timeoutMs: 30_000,
    });
  }

  /**
   * Makes sure no post-copy copy runs on the destination before the source
   * thaws. Reachable: removed. Down: it died with its host. Up but not
   * answering (a cut link): its own agent kills a copy whose pages stopped
   * arriving after {@link LAZY_STALL_MS}; waiting twice that is the proof
   * — unless its pages did not stop (only the controller is cut off from
   * it): whether the copy is known gone goes to the source, which then
   * refuses to thaw if it served every page.
   */
  private async dropDestination(op: OperationRecord): Promise<boolean> {
    const { ctx } = this;
    const to = await ctx.store.getHost(op.to);
    if (!to || !ctx.isUp(op.to)) return true;
    try {
      await ctx.removeCopy(to, op.container);
      return true;
    } catch {
      const until = ctx.now() + 2 * LAZY_STALL_MS;
      while (ctx.now() < until && ctx.isUp(op.to)) await new Promise((r) => setTimeout(r, 100));
      return !ctx.isUp(op.to);
    }
  }

  /**
   * Protection after the move: the old backup stays if it is still another
   * host than the new primary and up (its chunks are mostly still right);
   * otherwise — the destination was the backup, or it is gone — a new
   * backup is placed. The intent moved with `backup: null`.
   */
  private async protectAfter(intent: ContainerIntent, oldBackup: unknown): Promise<void> {
    if (!replicated(intent.spec.ha)) return;
    const { ctx } = this;
    if (typeof oldBackup === 'string' && oldBackup !== intent.host && ctx.isUp(oldBackup)) {
      const kept = await ctx.store.updateContainer(intent.name, intent.generation, {
        spec: { ...intent.spec, backup: oldBackup },
      });
      if (kept) {
        await ctx.orderProtection(kept);
        await ctx.emit('container.protected', intent.name, { primary: intent.host, backup: oldBackup });
        return;
      }
    }
    await ctx.reprotect(intent.name);
  }

  /**
   * Before `promoted`, any failure rolls back: the source runs on — restored
   * from its final checkpoint, connections kept, if it had stopped — the
   * destination's temporary replica goes (unless it is the backup's), and
   * protection resumes. The source host must be up; if it is not, the
   * operation stays and is tried again.
   */
  private async rollBack(
    op: OperationRecord,
    phase: string,
    round: number,
    cause: unknown,
    extra: Record<string, unknown> = {},
  ): Promise<void> {
    const { ctx } = this;
    const name = op.container;
    const from = await ctx.upHost(op.from);
    const path = `/v1/containers/${encodeURIComponent(name)}`;
    const view = await ctx.callAgent<ContainerView>(from, path);
    let restored = false;
    if (view.state === 'checkpointed') {
      await ctx.callAgent(from, `${path}/restore`, { method: 'POST', body: { tcpClose: false } });
      restored = true;
    }
    if (op.to !== op.detail.backup && ctx.isUp(op.to)) {
      const to = await ctx.store.getHost(op.to);
      // Clean-up only, so briefly: a destination that just died (not yet seen down) held
      // the rollback for its connection timeouts (measured: 73 s).
      if (to)
        await ctx
          .callAgent(to, `/v1/replicas/${encodeURIComponent(name)}`, { method: 'DELETE', timeoutMs: 3000 })
          .catch(() => undefined);
    }
    const intent = await ctx.store.getContainer(name);
    if (intent?.host === op.from && replicated(intent.spec.ha)) await ctx.orderProtection(intent);
    await ctx.store.deleteOperation(name);
    await ctx.emit('container.migration-failed', name, {
      from: op.from,
      to: op.to,
      phase,
      ...(round > 0 ? { round } : {}),
      error: cause instanceof Error ? cause.message : String(cause),
      rolledBack: true,
      restoredFromFinalCheckpoint: restored,
      ...extra,
    });
  }

  private async progress(name: string, data: Record<string, unknown>): Promise<void> {
    await this.ctx.emit('container.migration-progress', name, data);
  }

  /**
   * `haven drain HOST`: cordons it, then migrates every container placed on
   * it, one at a time, each to where placement puts it. A container that
   * cannot move (no room, a rule) is reported and the rest go on.
   */
  async drain(host: string, request: Omit<MigrationRequest, 'to'>): Promise<DrainReport> {
    const { ctx } = this;
    if (!(await ctx.store.getHost(host))) throw new NotFoundError(`host "${host}" is not in the cluster`);
    await ctx.setCordon(host, true);
    await ctx.emit('host.draining', host, {});
    const report: DrainReport = { host, migrated: [], failed: [] };
    const names = (await ctx.store.listContainers())
      .filter((c) => c.host === host && c.desired === 'running')
      .map((c) => c.name)
      .sort();
    for (const name of names) {
      try {
        report.migrated.push(await this.migrate(name, request));
      } catch (error) {
        report.failed.push({ name, error: error instanceof Error ? error.message : String(error) });
      }
    }
    await ctx.emit('host.drained', host, {
      migrated: report.migrated.map((m) => `${m.name}→${m.to}`),
      failed: report.failed,
    });
    return report;
  }
}

function num(value: unknown): number {
  return typeof value === 'number' ? value : 0;
}
