/**
 * The primary's side of checkpoint replication (`--ha checkpoint`): every
 * interval, a leave-running checkpoint of the container is cut into chunks,
 * the backup is asked which it lacks, only those travel (in one framed
 * stream), and the epoch's manifest is committed on the backup, which
 * acknowledges once it holds all of it on disk.
 *
 * A failed epoch (backup down, disk full, transfer cut) changes nothing on
 * the backup — its last committed epoch stays — and the next interval tries
 * again. The controller is not on this path: it learns of commits from the
 * agent's heartbeat reports.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { epochCommitted, epochFailed } from '../agent/metrics.js';
import type { ContainerHost } from '../host/container-host.js';
import {
  chunkDirectory,
  chunkHashes,
  EPOCH_MANIFEST_VERSION,
  type EpochManifest,
  type ServiceClient,
} from './chunks.js';
import { commitEpoch, sendChunks } from './transfer.js';

/** Where and how often a container is protected. */
export interface ProtectionSpec {
  backup: { host: string; address: string };
  intervalMs: number;
  /**
   * `checkpoint` (default): one epoch at a time, every `intervalMs`.
   * `continuous`: epochs are pipelined — the next checkpoint is taken while
   * the previous epoch travels — and each commit releases held output (see
   * {@link EpochHooks}).
   */
  mode?: 'checkpoint' | 'continuous';
}

/**
 * How continuous protection's output commit follows the epochs: `cut` is
 * called right before an epoch's checkpoint begins and returns the output
 * generation that checkpoint covers; `committed` is called with it once the
 * backup has acknowledged the epoch.
 */
export interface EpochHooks {
  cut(): number;
  committed(generation: number): void;
  /** The service's client connections now, listed in the epoch (see {@link EpochManifest.clients}). */
  clients?(): ServiceClient[];
}

/** What the primary reports about a protected container. */
export interface ProtectionStatus extends ProtectionSpec {
  name: string;
  /** Newest epoch the backup acknowledged. */
  committedEpoch: number | null;
  committedAt: string | null;
  /**
   * The local checkpoint that epoch was made from, and when it began: kept
   * here (the newest two are), so a container that dies on a live host can be
   * restored in place without waiting for its backup.
   */
  committedCheckpoint: string | null;
  committedTakenAt: string | null;
  /** Of the newest committed epoch: bytes that travelled, total checkpoint bytes, milliseconds frozen, milliseconds end to end. */
  sentBytes: number;
  totalBytes: number;
  frozenMs: number;
  epochMs: number;
  epochsCommitted: number;
  /** Epochs committed per second over the last few seconds. */
  epochRate: number;
  /**
   * Where the newest committed epoch's time went, in milliseconds: the
   * checkpoint (the freeze is part of it), cutting it into chunks (hashing),
   * and the transfer up to the backup's acknowledgement.
   */
  phases: { checkpointMs: number; chunkMs: number; transferMs: number };
  lastError: string | null;
}

/** What one committed epoch was: its number, when its checkpoint began, bytes sent and in all, milliseconds frozen and end to end. */
export interface EpochResult {
  epoch: number;
  takenAt: string;
  sentBytes: number;
  totalBytes: number;
  frozenMs: number;
  epochMs: number;
}

/** A checkpoint taken and cut into chunks, not yet shipped. */
interface CapturedEpoch {
  manifest: EpochManifest;
  read: Parameters<typeof sendChunks>[4];
  checkpointId: string;
  takenAt: string;
  frozenMs: number;
  started: number;
  /** The output generation this checkpoint covers (continuous mode). */
  generation: number | undefined;
  checkpointMs: number;
  chunkMs: number;
}

/**
 * Chunks of continuous epochs: a write here and there between two epochs
 * (a tenth of a second apart) should resend 32 KiB around each, not 256 KiB.
 */
const CONTINUOUS_CHUNK_BYTES = 32 * 1024;

/** Commits remembered for the epoch rate. */
const RATE_WINDOW = 20;

/**
 * Replicates one container to its backup until stopped.
 *
 *   checkpoint mode:  [capture ─ ship ─ commit] … interval … [capture ─ ship ─ commit]
 *   continuous mode:  [capture N] [capture N+1] [capture N+2] …
 *                               [ship N ─ commit N ─ release N] [ship N+1 …]
 *
 * In continuous mode epochs are pipelined: epoch N travels while N+1 is
 * taken, so the container runs while the previous epoch is on the wire. At
 * most one epoch is in flight: a capture waits for the ship before it, so a
 * slow link slows the epoch rate instead of piling up checkpoints. Commits
 * stay in order.
 */
export class Replicator {
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private readonly commitTimes: number[] = [];
  readonly status: ProtectionStatus;

  constructor(
    private readonly host: ContainerHost,
    readonly name: string,
    readonly spec: ProtectionSpec,
    private readonly token: string,
    private readonly log: (line: string) => void,
    /** Asked before each epoch; false skips it (an application failing its probe is not saved). */
    private readonly healthy: () => Promise<boolean> = () => Promise.resolve(true),
    /** Output commit (continuous mode): cut before each checkpoint, release at each commit. */
    private readonly hooks?: EpochHooks,
  ) {
    this.status = {
      name,
      ...spec,
      committedEpoch: null,
      committedAt: null,
      committedCheckpoint: null,
      committedTakenAt: null,
      sentBytes: 0,
      totalBytes: 0,
      frozenMs: 0,
      epochMs: 0,
      epochsCommitted: 0,
      epochRate: 0,
      phases: { checkpointMs: 0, chunkMs: 0, transferMs: 0 },
      lastError: null,
    };
  }

  private get continuous(): boolean {
    return this.spec.mode === 'continuous';
  }

  /** Starts the epoch loop (the first epoch at once). */
  start(): void {
    if (this.continuous) this.running = this.pipeline();
    else this.schedule(0);
  }

  /**
   * Stops the loop. Waits for the epoch in flight for at most 2 s: one stuck
   * on an unreachable backup must not hold up a removal (its reads then fail
   * harmlessly).
   */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await Promise.race([this.running, sleep(2000)]);
  }

  private failed(error: unknown): void {
    epochFailed();
    const message = error instanceof Error ? error.message : String(error);
    if (message !== this.status.lastError) this.log(`replication of ${this.name}: ${message}`);
    this.status.lastError = message;
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      const started = Date.now();
      this.running = this.epoch()
        .then(
          () => {
            this.status.lastError = null;
          },
          (error: unknown) => this.failed(error),
        )
        .finally(() => this.schedule(Math.max(0, this.spec.intervalMs - (Date.now() - started))));
    }, delayMs);
  }

  /** The continuous loop: capture every interval, ship the previous capture meanwhile. */
  private async pipeline(): Promise<void> {
    let shipping: Promise<void> = Promise.resolve();
    while (!this.stopped) {
      const began = Date.now();
      let captured: CapturedEpoch | undefined;
      try {
        captured = await this.capture();
      } catch (error) {
        this.failed(error);
      }
      // One epoch in flight at most: the previous one's commit comes first.
      await shipping;
      if (captured && !this.stopped) {
        const epoch = captured;
        shipping = this.ship(epoch).then(
          () => {
            this.status.lastError = null;
          },
          (error: unknown) => this.failed(error),
        );
      }
      const rest = this.spec.intervalMs - (Date.now() - began);
      if (rest > 0 && !this.stopped) await sleep(rest);
    }
    await shipping;
  }

  /**
   * One epoch: checkpoint, chunk, send what the backup lacks, commit. A
   * `final` epoch (planned switchover) stops the container: it stays frozen,
   * its network locked, until the checkpoint is stored, and is then killed —
   * nothing it acknowledges after the checkpoint can be lost.
   */
  async epoch(options: { final?: boolean } = {}): Promise<EpochResult> {
    return this.ship(await this.capture(options));
  }

  /** Takes the checkpoint (the container is frozen for part of it) and cuts it into chunks. */
  private async capture(options: { final?: boolean } = {}): Promise<CapturedEpoch> {
    const started = performance.now();
    // (The checkpoint itself refuses a container that is not running.)
    if (!(await this.healthy())) throw new Error('failing its probe: no epoch (the last healthy one stays)');
    const takenAt = new Date().toISOString();
    // Output read before this point was produced before the freeze below: this checkpoint covers it.
    const generation = this.hooks?.cut();
    const clients = this.hooks?.clients?.();
    // Continuous mode keeps one more local checkpoint: the one being shipped,
    // the one being taken, and the newest committed (for recovery in place).
    const keep = this.continuous ? 3 : 2;
    const checkpointStarted = performance.now();
    const report = await this.host.checkpoint(this.name, {
      leaveRunning: !options.final,
      keep,
      // Many a second: the local copy stays in memory (the backup holds the durable one).
      ...(this.continuous && !options.final ? { keepInMemory: true } : {}),
    });
    if (!report.dir) throw new Error('the checkpoint was not kept locally');
    const checkpointMs = performance.now() - checkpointStarted;
    // Probed again after the checkpoint (checkpoint mode; continuous epochs go by the last
    // verdict): an application that hung between the probe above and the freeze (a SIGSTOP,
    // a deadlock) was captured hung, and restoring that epoch would bring the hang back.
    if (!this.continuous && !options.final && !(await this.healthy()))
      throw new Error(
        'failing its probe right after the checkpoint: epoch dropped (the last healthy one stays)',
      );
    const chunkStarted = performance.now();
    const record = await this.host.record(this.name);
    const chunked = await chunkDirectory(
      report.dir,
      this.continuous ? { chunkBytes: CONTINUOUS_CHUNK_BYTES } : {},
    );
    const chunkMs = performance.now() - chunkStarted;
    const manifest: EpochManifest = {
      version: EPOCH_MANIFEST_VERSION,
      container: this.name,
      epoch: Date.now(),
      checkpointId: report.id,
      takenAt,
      createdAt: new Date().toISOString(),
      record,
      skeleton: chunked.skeleton,
      files: chunked.files,
      ...(this.continuous ? { chunkBytes: CONTINUOUS_CHUNK_BYTES } : {}),
      ...(clients && clients.length > 0 ? { clients } : {}),
    };
    return {
      manifest,
      read: chunked.read,
      checkpointId: report.id,
      takenAt,
      frozenMs: report.frozenMs,
      started,
      generation,
      checkpointMs,
      chunkMs,
    };
  }

  /** Sends what the backup lacks of a captured epoch and commits it there; then releases its output. */
  private async ship(captured: CapturedEpoch): Promise<EpochResult> {
    const { manifest } = captured;
    const transferStarted = performance.now();
    // The transfer shared with migration: only the chunks the backup lacks travel.
    const backup = this.spec.backup.address;
    const { sentBytes: sent } = await sendChunks(
      backup,
      this.token,
      this.name,
      chunkHashes(manifest),
      captured.read,
    );
    await commitEpoch(backup, this.token, manifest);
    // A stopped replicator releases nothing: its container may be being
    // restored from an older epoch (recovery in place).
    if (captured.generation !== undefined && !this.stopped) this.hooks?.committed(captured.generation);
    const now = Date.now();
    this.commitTimes.push(now);
    if (this.commitTimes.length > RATE_WINDOW) this.commitTimes.shift();
    const span = (now - this.commitTimes[0]!) / 1000;
    Object.assign(this.status, {
      committedEpoch: manifest.epoch,
      committedAt: manifest.createdAt,
      committedCheckpoint: captured.checkpointId,
      committedTakenAt: captured.takenAt,
      sentBytes: sent,
      totalBytes: manifest.files.reduce((s, f) => s + f.size, 0),
      frozenMs: captured.frozenMs,
      epochMs: performance.now() - captured.started,
      epochsCommitted: this.status.epochsCommitted + 1,
      epochRate: span > 0 ? (this.commitTimes.length - 1) / span : 0,
      phases: {
        checkpointMs: Math.round(captured.checkpointMs),
        chunkMs: Math.round(captured.chunkMs),
        transferMs: Math.round(performance.now() - transferStarted),
      },
    });
    epochCommitted(this.status);
    return {
      epoch: manifest.epoch,
      takenAt: captured.takenAt,
      sentBytes: sent,
      totalBytes: this.status.totalBytes,
      frozenMs: captured.frozenMs,
      epochMs: this.status.epochMs,
    };
  }
}
