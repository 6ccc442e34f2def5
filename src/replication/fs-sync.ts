/**
 * File-system change tracking for live migration: the container's writable
 * layer, `/dev/shm` and volumes are synced to the destination in rounds
 * *while it runs*, so the final round — the one inside the freeze — sends
 * only what changed since the last of them.
 *
 *   sync round   walk the live trees (lstat only); a file whose size, mtime,
 *                ctime or inode changed since the last round is read and
 *                cut into chunks at the checkpoint's fixed boundaries; the
 *                chunks the destination lacks travel (`sendChunks`)
 *   …            again, until a round finds little changed, or stops shrinking
 *   final round  the checkpoint copies the files inside the freeze, as
 *                always; their chunks are the same bytes at the same
 *                boundaries, so only chunks of files changed since the last
 *                sync round are missing on the destination and travel frozen
 *
 * Chunks are named by content, not path, so what a sync round sends is
 * exactly what the final checkpoint's copies will name — unchanged files
 * and unchanged 256 KiB chunks of changed large files never travel again.
 * A file read while it is being written may yield a torn chunk: it is only
 * an extra chunk on the destination, never referenced (the final round's
 * manifest comes from the frozen copy) and pruned later. Nothing here is
 * trusted for correctness; it only moves transfer out of the freeze.
 *
 * No inotify/fanotify: stat on every round is cheap beside reading, it
 * needs nothing from the kernel, and it sees changes made while no one was
 * watching. A file modified in the same timestamp tick as the round that
 * read it would look unchanged to the next round, so a file whose mtime is
 * not safely before the round's start is read again next time (git's
 * "racily clean" rule).
 */
import { createReadStream } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { CHUNK_BYTES, sha256 } from './chunks.js';
import type { CompressSetting } from './compression.js';
import { sendChunks } from './transfer.js';

/** A live directory and where its content sits in a checkpoint (`rootfs-diff`, `volumes/<v>`, …). */
export interface LiveTree {
  prefix: string;
  dir: string;
}

/** What one sync round did. */
export interface SyncRoundReport {
  round: number;
  files: number;
  /** Files read this round (new or changed since the last), and their bytes. */
  changedFiles: number;
  readBytes: number;
  /** Chunks the destination lacked, and their bytes (what travelled, before compression). */
  sentChunks: number;
  sentBytes: number;
  wireBytes: number;
  ms: number;
}

/** When to stop syncing before the final round. */
export interface SyncLimits {
  /** Rounds at most (default 4). */
  maxRounds?: number;
  /** Stop once a round reads less than this (default 1 MiB): the freeze can take the rest. */
  smallBytes?: number;
}

interface Seen {
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  ino: bigint;
}

/** Chunk bytes gathered before one transfer in a sync round. */
export const SYNC_BATCH_BYTES = 32 << 20;

/** Slack under the round's start within which an mtime is "racily clean" (a coarse timestamp tick). */
const RACY_NS = 50_000_000n;

/** Tracks one container's live files across rounds (one instance per migration). */
export class FileTracker {
  private readonly seen = new Map<string, Seen>();
  private rounds = 0;

  /**
   * Walks the trees and returns the files changed since the last call (all
   * on the first), remembering what it saw. Pure of side effects on the trees.
   */
  async changed(trees: readonly LiveTree[]): Promise<{ files: number; changed: string[] }> {
    const wall = BigInt(Date.now()) * 1_000_000n;
    const present = new Set<string>();
    const changed: string[] = [];
    const walk = async (dir: string): Promise<void> => {
      const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
      for (const entry of entries) {
        const full = join(dir, entry.name);
        if (entry.isDirectory()) await walk(full);
        else if (entry.isFile()) {
          const info = await lstat(full, { bigint: true }).catch(() => undefined);
          if (!info) continue; // gone meanwhile
          present.add(full);
          const before = this.seen.get(full);
          const now = { size: info.size, mtimeNs: info.mtimeNs, ctimeNs: info.ctimeNs, ino: info.ino };
          const same =
            before !== undefined &&
            before.size === now.size &&
            before.mtimeNs === now.mtimeNs &&
            before.ctimeNs === now.ctimeNs &&
            before.ino === now.ino;
          if (!same) changed.push(full);
          // Racily clean: changed within a tick of this round, it might change again unseen.
          if (now.mtimeNs >= wall - RACY_NS || now.ctimeNs >= wall - RACY_NS) this.seen.delete(full);
          else this.seen.set(full, now);
        }
      }
    };
    for (const tree of trees) await walk(tree.dir);
    for (const path of [...this.seen.keys()]) if (!present.has(path)) this.seen.delete(path);
    this.rounds++;
    return { files: present.size, changed };
  }

  /** Sync rounds so far. */
  get roundCount(): number {
    return this.rounds;
  }
}

/**
 * The chunks of `file` at the checkpoint's fixed boundaries (all-zero chunks
 * left out, as in `chunkDirectory`), with their bytes.
 */
export async function chunksOf(file: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  const zero = Buffer.alloc(CHUNK_BYTES);
  const flush = (part: Buffer): void => {
    if (part.length === CHUNK_BYTES && part.equals(zero)) return; // ZERO_CHUNK: never sent
    out.set(sha256(part), Buffer.from(part));
  };
  try {
    for await (const data of createReadStream(file, { highWaterMark: 4 * CHUNK_BYTES })) {
      let buffer = data as Buffer;
      if (pendingBytes > 0) {
        buffer = Buffer.concat([...pending, buffer]);
        pending = [];
        pendingBytes = 0;
      }
      let at = 0;
      while (buffer.length - at >= CHUNK_BYTES) {
        flush(buffer.subarray(at, at + CHUNK_BYTES));
        at += CHUNK_BYTES;
      }
      if (at < buffer.length) {
        pending = [buffer.subarray(at)];
        pendingBytes = buffer.length - at;
      }
    }
  } catch {
    return out; // gone or unreadable meanwhile: the final round's copy decides
  }
  if (pendingBytes > 0) flush(Buffer.concat(pending));
  return out;
}

/**
 * Sync rounds of `trees` into the destination's replica store for `name`,
 * until a round reads less than `smallBytes`, reads no less than the one
 * before (the container writes as fast as rounds go), or at `maxRounds`.
 * Changed files' chunks are sent in batches of {@link SYNC_BATCH_BYTES}
 * (one `missing` question and one stream each), so memory stays bounded
 * and many small files do not cost a request each.
 */
export async function syncFiles(
  tracker: FileTracker,
  trees: readonly LiveTree[],
  to: { address: string; token: string; name: string },
  options: SyncLimits & { compress?: CompressSetting; idleTimeoutMs?: number } = {},
): Promise<SyncRoundReport[]> {
  const maxRounds = options.maxRounds ?? 4;
  const small = options.smallBytes ?? 1 << 20;
  const reports: SyncRoundReport[] = [];
  for (let round = 1; round <= maxRounds; round++) {
    const started = performance.now();
    const { files, changed } = await tracker.changed(trees);
    const report: SyncRoundReport = {
      round: tracker.roundCount,
      files,
      changedFiles: changed.length,
      readBytes: 0,
      sentChunks: 0,
      sentBytes: 0,
      wireBytes: 0,
      ms: 0,
    };
    let batch = new Map<string, Buffer>();
    let batchBytes = 0;
    const flush = async (): Promise<void> => {
      if (batch.size === 0) return;
      const chunks = batch;
      batch = new Map();
      batchBytes = 0;
      const sent = await sendChunks(
        to.address,
        to.token,
        to.name,
        [...chunks.keys()],
        (h) => Promise.resolve(chunks.get(h)!),
        {
          ...(options.idleTimeoutMs !== undefined ? { idleTimeoutMs: options.idleTimeoutMs } : {}),
          ...(options.compress ? { compress: options.compress } : {}),
        },
      );
      report.sentChunks += sent.sentChunks;
      report.sentBytes += sent.sentBytes;
      report.wireBytes += sent.wireBytes;
    };
    for (const file of changed) {
      for (const [hash, data] of await chunksOf(file)) {
        report.readBytes += data.length;
        if (batch.has(hash)) continue;
        batch.set(hash, data);
        batchBytes += data.length;
        if (batchBytes >= SYNC_BATCH_BYTES) await flush();
      }
    }
    await flush();
    report.ms = Math.round(performance.now() - started);
    reports.push(report);
    const previous = reports.at(-2);
    if (report.readBytes < small) break;
    if (previous && report.readBytes >= previous.readBytes) break;
  }
  return reports;
}
