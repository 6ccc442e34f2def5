/**
 * Live migration, the source host's part: rounds ordered by the controller
 * (`POST /v1/containers/:name/migrate`), each a checkpoint of the container
 * cut into chunks of which only those the destination lacks travel — the
 * transfer replication uses, into the destination's replica store, where the
 * container is a temporary replica exactly as on a backup.
 *
 *   pre-copy round   checkpoint with leave-running (the container stalls for
 *                    the dump, then runs on) ─▶ chunks the destination lacks
 *   final round      checkpoint that stops the container (frozen, network
 *                    locked, until the checkpoint is stored; then killed) ─▶
 *                    the chunks that changed ─▶ epoch committed on the destination
 *
 * This kernel has no soft-dirty tracking, so every round dumps all memory
 * (its stall is that of a full dump); what pre-copy saves is the transfer:
 * the final round, the one inside the downtime, sends only what changed
 * since the previous round. The controller decides how many rounds.
 *
 * Rollback: a final round that fails after the container stopped — the
 * destination dies, the link is cut, its disk is full — restores the
 * container here from the checkpoint it just took, connections kept. Until
 * the destination has restored it, that checkpoint stays: the controller
 * rolls back to it (see `controller/migration.ts`) if anything later fails.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FailedPreconditionError, HavenError } from '../core/errors.js';
import type { ContainerHost, LazySource } from '../host/container-host.js';
import { chunkDirectory, chunkHashes, EPOCH_MANIFEST_VERSION, type EpochManifest } from './chunks.js';
import type { CompressSetting } from './compression.js';
import { FileTracker, syncFiles, type SyncRoundReport } from './fs-sync.js';
import { sampleDirtyRate, type DirtySample } from './post-copy-sampler.js';
import { announceDestination, commitEpoch, sendChunks, type TransferResult } from './transfer.js';
import { trace } from '../core/exec.js';

/**
 * Silence on a migration transfer after which it is given up: a dead
 * destination or a cut link sends no reset, and every second the container
 * is frozen in a final round counts as downtime.
 */
export const MIGRATION_IDLE_MS = 5000;

/** One round as ordered. */
export interface MigrationRoundOrder {
  /** The migration's ID (the controller's operation): a final round ordered again with it joins or reports. */
  id: string;
  round: number;
  final: boolean;
  to: { host: string; address: string };
  /** Compression of this round's chunk stream; absent: none (frame format 1). */
  compress?: CompressSetting;
  /**
   * Final round only: post-copy — no page is written or sent; this host's
   * page server, listening on `address:port`, serves them to the
   * destination from the frozen container (see `post-copy.ts`).
   */
  postCopy?: { address: string; port: number };
}

/** What one round did (milliseconds and bytes). */
export interface MigrationRoundReport {
  id: string;
  round: number;
  final: boolean;
  checkpointId: string;
  /** When the checkpoint began. */
  takenAt: string;
  /** How long the container was frozen by this round's checkpoint. */
  frozenMs: number;
  /** The whole checkpoint, and what of it travelled (the chunks the destination lacked: what changed). */
  checkpointBytes: number;
  sentBytes: number;
  sentChunks: number;
  /** Final round: the file sync rounds that ran before it, while the container ran. */
  fileSync?: SyncRoundReport[];
  /** With compression: the bytes on the wire, and how the chunks travelled (codecs, `auto`'s decisions). */
  wireBytes?: number;
  compression?: Pick<TransferResult, 'compress' | 'codecs' | 'decisions' | 'linkBps'>;
  /** Where the time went: checkpoint, chunking (hashing), the transfer, the commit (final only). */
  checkpointMs: number;
  chunkMs: number;
  sendMs: number;
  commitMs: number;
  wallMs: number;
  /** Final round: the epoch committed on the destination, to be restored there. */
  epoch?: number;
  /** Reported from an earlier order with the same ID (a controller that restarted). */
  already?: boolean;
  /** Post-copy: the container is frozen here, serving its pages, until `migrate-end`. */
  postCopy?: { address: string; port: number; pagesBytes: number | undefined };
}

/** A migration's rounds on its source host. */
export class MigrationSource {
  private readonly inFlight = new Map<
    string,
    { id: string; final: boolean; work: Promise<MigrationRoundReport> }
  >();
  /** Post-copy sources frozen here, by container: their pages are being served. */
  private readonly lazy = new Map<string, { id: string; source: LazySource }>();

  /**
   * Before a final round, while the container still runs: its writable
   * layer, /dev/shm and volumes synced to the destination in rounds
   * (`fs-sync.ts`), so the frozen transfer carries only files changed since.
   * Best effort: a failure only leaves more for the final round to send.
   */
  private async syncFiles(name: string, order: MigrationRoundOrder): Promise<SyncRoundReport[] | undefined> {
    try {
      const trees = await this.host.liveTrees(name);
      return await syncFiles(
        new FileTracker(),
        trees,
        { address: order.to.address, token: this.token, name },
        { idleTimeoutMs: MIGRATION_IDLE_MS, ...(order.compress ? { compress: order.compress } : {}) },
      );
    } catch (error) {
      this.log(
        `migration of ${name}: file sync before the final round failed (${String(error)}); the final round sends it all`,
      );
      return undefined;
    }
  }

  constructor(
    private readonly host: ContainerHost,
    private readonly token: string,
    private readonly log: (line: string) => void = (l) => process.stderr.write(`${l}\n`),
  ) {}

  private doneFile(name: string): string {
    return join(this.host.config.stateDir, 'migrations', `${name}.json`);
  }

  /**
   * Runs one round. One round at a time per container; a final round ordered
   * again with the same ID joins the one in flight, or reports the one done
   * while the container is still stopped by it. A final round ordered while
   * an earlier round of the same migration runs (a restarted controller goes
   * straight to its final round) waits for that round, then runs.
   */
  async round(name: string, order: MigrationRoundOrder): Promise<MigrationRoundReport> {
    const running = this.inFlight.get(name);
    if (running) {
      if (!order.final || running.id !== order.id)
        throw new FailedPreconditionError(`a migration round of "${name}" is already running`);
      if (running.final) return { ...(await running.work), already: true };
      await running.work.catch(() => undefined);
      return this.round(name, order);
    }
    if (order.final) {
      const done = await readFile(this.doneFile(name), 'utf8')
        .then((text) => JSON.parse(text) as MigrationRoundReport)
        .catch(() => undefined);
      const view = await this.host.inspect(name).catch(() => undefined);
      if (done?.id === order.id && view?.state === 'checkpointed') return { ...done, already: true };
    }
    if (order.final && order.postCopy) {
      const serving = this.lazy.get(name);
      if (serving)
        throw new FailedPreconditionError(`"${name}" is already serving its pages (${serving.id})`);
    }
    const work = (
      order.final && order.postCopy
        ? this.runPostCopyRound(name, order, order.postCopy)
        : this.runRound(name, order)
    ).finally(() => this.inFlight.delete(name));
    this.inFlight.set(name, { id: order.id, final: order.final, work });
    return work;
  }

  private async runRound(name: string, order: MigrationRoundOrder): Promise<MigrationRoundReport> {
    const view = await this.host.inspect(name);
    if (view.state !== 'running')
      throw new FailedPreconditionError(`"${name}" is ${view.state}, not running: nothing to migrate`);
    const fileSync = order.final ? await this.syncFiles(name, order) : undefined;
    const started = performance.now();
    const takenAt = new Date().toISOString();
    const checkpoint = await this.host
      .checkpoint(name, { leaveRunning: !order.final, keep: 2 })
      .catch((error: unknown) => {
        throw reportable(error);
      });
    const checkpointMs = performance.now() - started;
    try {
      if (!checkpoint.dir) throw new Error('the checkpoint was not kept locally');
      const chunking = performance.now();
      const chunked = await chunkDirectory(checkpoint.dir);
      const manifest: EpochManifest = {
        version: EPOCH_MANIFEST_VERSION,
        container: name,
        epoch: Date.now(),
        checkpointId: checkpoint.id,
        takenAt,
        createdAt: new Date().toISOString(),
        record: await this.host.record(name),
        skeleton: chunked.skeleton,
        files: chunked.files,
      };
      const chunkMs = performance.now() - chunking;
      const sent = await sendChunks(order.to.address, this.token, name, chunkHashes(manifest), chunked.read, {
        idleTimeoutMs: MIGRATION_IDLE_MS,
        ...(order.compress ? { compress: order.compress } : {}),
      });
      let commitMs = 0;
      if (order.final) {
        const committing = performance.now();
        // Not synced there: a migration's epoch need not outlive the destination (see ReplicaStore.commit).
        await commitEpoch(order.to.address, this.token, manifest, MIGRATION_IDLE_MS * 4, { durable: false });
        commitMs = performance.now() - committing;
      }
      const report: MigrationRoundReport = {
        id: order.id,
        round: order.round,
        final: order.final,
        checkpointId: checkpoint.id,
        takenAt,
        frozenMs: checkpoint.frozenMs,
        checkpointBytes: manifest.files.reduce((s, f) => s + f.size, 0),
        sentBytes: sent.sentBytes,
        sentChunks: sent.sentChunks,
        ...compressionOf(sent),
        checkpointMs,
        chunkMs,
        sendMs: sent.askMs + sent.sendMs,
        commitMs,
        wallMs: performance.now() - started,
        ...(order.final ? { epoch: manifest.epoch } : {}),
        ...(fileSync ? { fileSync } : {}),
      };
      if (order.final) {
        await mkdir(join(this.host.config.stateDir, 'migrations'), { recursive: true });
        await writeFile(this.doneFile(name), JSON.stringify(report));
      }
      return report;
    } catch (error) {
      if (order.final) await this.rollBack(name, error);
      throw reportable(error);
    }
  }

  /**
   * Post-copy's final round: the container freezes, its images without the
   * pages and its files go to the destination as an epoch, and it stays
   * frozen here — the rollback copy — serving its pages until
   * {@link end}. A failure before the answer thaws it at once (nothing runs
   * elsewhere yet).
   */
  private async runPostCopyRound(
    name: string,
    order: MigrationRoundOrder,
    listen: { address: string; port: number },
  ): Promise<MigrationRoundReport> {
    const fileSync = await this.syncFiles(name, order);
    const started = performance.now();
    const takenAt = new Date().toISOString();
    // Frozen and locked: the destination's network, made ahead, takes the
    // address now, so that what clients send from here on is held there
    // for the restored sockets rather than lost at this locked copy.
    const onLocked = (): void => {
      const announcing = performance.now();
      void announceDestination(order.to.address, this.token, name).then(
        (announced) =>
          trace(
            `migration ${name}: destination ${announced ? 'announced' : 'had no network made ahead'}`,
            announcing,
          ),
        (error: unknown) =>
          trace(`migration ${name}: announcing the destination failed: ${String(error)}`, announcing),
      );
    };
    const source = await this.host
      .checkpointLazy(name, { ...listen, netnsPath: `/proc/${process.pid}/ns/net`, onLocked })
      .catch((error: unknown) => {
        throw reportable(error);
      });
    const checkpointMs = performance.now() - started;
    trace(`migration ${name}: lazy checkpoint written`, started);
    try {
      const chunking = performance.now();
      const chunked = await chunkDirectory(source.dir);
      const manifest: EpochManifest = {
        version: EPOCH_MANIFEST_VERSION,
        container: name,
        epoch: Date.now(),
        checkpointId: source.id,
        takenAt: new Date(source.frozenAt || Date.parse(takenAt)).toISOString(),
        createdAt: new Date().toISOString(),
        record: await this.host.record(name),
        skeleton: chunked.skeleton,
        files: chunked.files,
      };
      const chunkMs = performance.now() - chunking;
      trace(`migration ${name}: chunked`, chunking);
      const sending = performance.now();
      const sent = await sendChunks(order.to.address, this.token, name, chunkHashes(manifest), chunked.read, {
        idleTimeoutMs: MIGRATION_IDLE_MS,
        ...(order.compress ? { compress: order.compress } : {}),
      });
      trace(`migration ${name}: sent (ask ${sent.askMs.toFixed(1)} ms)`, sending);
      const committing = performance.now();
      await commitEpoch(order.to.address, this.token, manifest, MIGRATION_IDLE_MS * 4, { durable: false });
      const commitMs = performance.now() - committing;
      trace(`migration ${name}: committed`, committing);
      this.lazy.set(name, { id: order.id, source });
      const facts = await this.host.migrationFacts(name).catch(() => undefined);
      return {
        id: order.id,
        round: order.round,
        final: true,
        checkpointId: source.id,
        takenAt: manifest.takenAt,
        // Frozen until the end: what is known now is the time to the images.
        frozenMs: source.readyMs,
        checkpointBytes: manifest.files.reduce((s, f) => s + f.size, 0),
        sentBytes: sent.sentBytes,
        sentChunks: sent.sentChunks,
        ...compressionOf(sent),
        checkpointMs,
        chunkMs,
        sendMs: sent.askMs + sent.sendMs,
        commitMs,
        wallMs: performance.now() - started,
        epoch: manifest.epoch,
        postCopy: { ...listen, pagesBytes: facts?.memoryBytes },
        ...(fileSync ? { fileSync } : {}),
      };
    } catch (error) {
      await source.end('rollback');
      throw reportable(error);
    }
  }

  /**
   * Ends a post-copy source: `complete` (the destination holds every page)
   * kills the frozen container; `rollback` thaws it, its state as at the
   * freeze — to be ordered only once the destination copy is gone. Ordered
   * again, it answers the same.
   */
  async end(
    name: string,
    order: { id: string; outcome: 'complete' | 'rollback'; destinationGone?: boolean },
  ): Promise<{ ended: string }> {
    const serving = this.lazy.get(name);
    if (!serving || serving.id !== order.id) {
      const view = await this.host.inspect(name).catch(() => undefined);
      return { ended: view ? `nothing to end: "${name}" is ${view.state} here` : `"${name}" is not here` };
    }
    if (order.outcome === 'rollback' && order.destinationGone === false) {
      // Every page served means the destination copy is whole: thawing here could make two.
      const served = await Promise.race([
        serving.source.done.then((d) => d.code === 0),
        new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 50)),
      ]);
      if (served)
        throw new FailedPreconditionError(
          `"${name}" served every page to its destination, whose copy may be running: not thawing it here`,
        );
    }
    await serving.source.end(order.outcome);
    this.lazy.delete(name);
    if (order.outcome === 'rollback')
      this.log(`post-copy of ${name}: rolled back, it runs here from its state at the freeze`);
    return { ended: order.outcome };
  }

  /** What `auto` weighs, from this host (see `ContainerHost.migrationFacts`). */
  async facts(
    name: string,
    options: { sampleDirtyRate?: boolean } = {},
  ): Promise<Awaited<ReturnType<ContainerHost['migrationFacts']>> & { dirty?: DirtySample }> {
    const facts = await this.host.migrationFacts(name);
    // The sample takes ~0.4 s: only `auto` weighs it.
    if (options.sampleDirtyRate === false) return facts;
    // Measured without a stall (see post-copy-sampler.ts): post-copy suits slow writers only.
    const view = await this.host.inspect(name).catch(() => undefined);
    const dirty = view && view.pid > 0 ? await sampleDirtyRate(view.pid) : undefined;
    return { ...facts, ...(dirty ? { dirty } : {}) };
  }

  /**
   * The final round failed after the container stopped: it runs on here from
   * the checkpoint just taken, with its connections (nothing newer exists).
   */
  private async rollBack(name: string, cause: unknown): Promise<void> {
    const view = await this.host.inspect(name).catch(() => undefined);
    if (view?.state !== 'checkpointed') return;
    try {
      await this.host.restore(name, { tcpClose: false });
      this.log(`migration of ${name}: ${String(cause)}; restored here from its final checkpoint`);
    } catch (error) {
      throw new HavenError(
        `migration failed (${String(cause)}) and so did the restore here: ${String(error)}`,
        'failed_precondition',
      );
    }
  }

  /** Forgets a finished migration's record (the container left this host, or runs on here). */
  async forget(name: string): Promise<void> {
    await rm(this.doneFile(name), { force: true });
  }
}

/** A round report's compression fields (none without compression: the report stays as it was). */
function compressionOf(sent: TransferResult): Pick<MigrationRoundReport, 'wireBytes' | 'compression'> {
  if (sent.compress === 'off') return {};
  const { compress, codecs, decisions, linkBps } = sent;
  return {
    wireBytes: sent.wireBytes,
    compression: {
      compress,
      codecs,
      ...(decisions ? { decisions } : {}),
      ...(linkBps !== undefined ? { linkBps } : {}),
    },
  };
}

/**
 * A round's failure as the controller should see it: the agent's API
 * answers unexpected errors with "internal error" only, but a migration's
 * failure (CRIU's refusal, a cut transfer) is the operator's to read, in
 * `container.migration-failed`. CRIU's error lines are kept, its log not.
 */
function reportable(error: unknown): HavenError {
  if (error instanceof HavenError && ['unavailable', 'failed_precondition', 'not_found'].includes(error.code))
    return error;
  const message = error instanceof Error ? error.message : String(error);
  const lines = message.split('\n');
  const kept = [lines[0] ?? '', ...lines.slice(1).filter((l) => /Error|error/.test(l))].join('\n');
  return new HavenError(kept.slice(0, 2000), 'failed_precondition');
}
