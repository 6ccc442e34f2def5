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
import { chunkDirectory, chunkHashes, EPOCH_MANIFEST_VERSION, type EpochManifest } from './chunks.js';
import { commitEpoch, sendChunks } from './transfer.js';

/** Where and how often a container is protected. */
export interface ProtectionSpec {
  backup: { host: string; address: string };
  intervalMs: number;
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

/** Replicates one container to its backup until stopped. */
export class Replicator {
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  readonly status: ProtectionStatus;

  constructor(
    private readonly host: ContainerHost,
    readonly name: string,
    readonly spec: ProtectionSpec,
    private readonly token: string,
    private readonly log: (line: string) => void,
    /** Asked before each epoch; false skips it (an application failing its probe is not saved). */
    private readonly healthy: () => Promise<boolean> = () => Promise.resolve(true),
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
      lastError: null,
    };
  }

  /** Starts the epoch loop (the first epoch at once). */
  start(): void {
    this.schedule(0);
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

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      const started = Date.now();
      this.running = this.epoch()
        .then(
          () => {
            this.status.lastError = null;
          },
          (error: unknown) => {
            epochFailed();
            const message = error instanceof Error ? error.message : String(error);
            if (message !== this.status.lastError) this.log(`replication of ${this.name}: ${message}`);
            this.status.lastError = message;
          },
        )
        .finally(() => this.schedule(Math.max(0, this.spec.intervalMs - (Date.now() - started))));
    }, delayMs);
  }

  /**
   * One epoch: checkpoint, chunk, send what the backup lacks, commit. A
   * `final` epoch (planned switchover) stops the container: it stays frozen,
   * its network locked, until the checkpoint is stored, and is then killed —
   * nothing it acknowledges after the checkpoint can be lost.
   */
  async epoch(options: { final?: boolean } = {}): Promise<EpochResult> {
    const started = performance.now();
    const view = await this.host.inspect(this.name);
    if (view.state !== 'running') throw new Error(`not running (${view.state}): no epoch`);
    if (!(await this.healthy())) throw new Error('failing its probe: no epoch (the last healthy one stays)');
    const takenAt = new Date().toISOString();
    const report = await this.host.checkpoint(this.name, { leaveRunning: !options.final, keep: 2 });
    if (!report.dir) throw new Error('the checkpoint was not kept locally');
    const record = await this.host.record(this.name);
    const chunked = await chunkDirectory(report.dir);
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
    };
    // The transfer shared with migration: only the chunks the backup lacks travel.
    const backup = this.spec.backup.address;
    const { sentBytes: sent } = await sendChunks(
      backup,
      this.token,
      this.name,
      chunkHashes(manifest),
      chunked.read,
    );
    await commitEpoch(backup, this.token, manifest);
    Object.assign(this.status, {
      committedEpoch: manifest.epoch,
      committedAt: manifest.createdAt,
      committedCheckpoint: report.id,
      committedTakenAt: takenAt,
      sentBytes: sent,
      totalBytes: manifest.files.reduce((s, f) => s + f.size, 0),
      frozenMs: report.frozenMs,
      epochMs: performance.now() - started,
      epochsCommitted: this.status.epochsCommitted + 1,
    });
    epochCommitted(this.status);
    return {
      epoch: manifest.epoch,
      takenAt,
      sentBytes: sent,
      totalBytes: this.status.totalBytes,
      frozenMs: report.frozenMs,
      epochMs: this.status.epochMs,
    };
  }
}
