/**
 * Content-addressed chunks: the one transfer format for replication (and,
 * later, migration). A checkpoint directory becomes an {@link EpochManifest}:
 * its regular files cut into fixed 256 KiB chunks named by SHA-256 (all-zero
 * chunks are not stored or sent at all), and its directories, symlinks and
 * devices (overlay whiteouts) carried in a small skeleton tar that is itself
 * chunked. A receiver that already holds a chunk — from an earlier epoch, or
 * another file — never receives it again; every chunk is hashed on arrival.
 *
 * Fixed boundaries suit CRIU's page images: pages are written in address
 * order, so a page changed in place changes one chunk, and growth appends.
 */
import { createHash } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import {
  chmod,
  chown,
  lstat,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { run } from '../core/exec.js';
import { CorruptCheckpointError, InvalidArgumentError } from '../core/errors.js';
import { SMALL_FILE_BYTES } from '../core/small-io.js';

/** Chunk size: small enough that a changed page costs little, large enough that hashes stay few. */
export const CHUNK_BYTES = 256 * 1024;
/** Stands for an all-zero chunk in a manifest: nothing stored, nothing sent. */
export const ZERO_CHUNK = 'zero';
/** Version of the manifest format; receivers refuse others. Room for a signature is kept in `auth`. */
export const EPOCH_MANIFEST_VERSION = 1;

const ZERO = Buffer.alloc(CHUNK_BYTES);
const HASH = /^[0-9a-f]{64}$/;

/** A regular file as chunks. */
export interface ChunkedFile {
  path: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  chunks: string[];
}

/** One epoch of a protected container, as the primary sends it and the backup keeps it. */
export interface EpochManifest {
  version: number;
  container: string;
  /** Monotonic per container (milliseconds since the epoch of the primary's clock). */
  epoch: number;
  checkpointId: string;
  /** When the checkpoint began (before the freeze): every write acknowledged before this is in the epoch. */
  takenAt: string;
  createdAt: string;
  /** The container's record (spec, address, volumes, image), for a restore elsewhere. */
  record: unknown;
  /** The skeleton tar (directories, symlinks, devices) as chunks, with its size. */
  skeleton: { size: number; chunks: string[] };
  files: ChunkedFile[];
  /**
   * Bytes per chunk of `files` (absent: {@link CHUNK_BYTES}). Continuous
   * protection uses smaller chunks: its epochs come many times a second, and a
   * page changed here and there should not resend 256 KiB around each.
   */
  chunkBytes?: number;
  /**
   * Continuous protection: the clients connected to the service address when
   * the epoch was cut. A backup that takes over tickles them (see
   * `tickleClients`): a client waiting for a reply from a host that died
   * without a word learns at once that its connection is gone.
   */
  clients?: ServiceClient[];
  /** Reserved for a signature over the manifest (a later issue). */
  auth?: unknown;
}

/** One client connection of a service address: the service's port, the client's address and port. */
export interface ServiceClient {
  port: number;
  address: string;
  clientPort: number;
}

/** Every distinct chunk hash a manifest refers to (zero chunks excluded). */
export function chunkHashes(manifest: Pick<EpochManifest, 'files' | 'skeleton'>): string[] {
  const all = new Set<string>();
  for (const h of manifest.skeleton.chunks) if (h !== ZERO_CHUNK) all.add(h);
  for (const f of manifest.files) for (const h of f.chunks) if (h !== ZERO_CHUNK) all.add(h);
  return [...all];
}

/**
 * Cuts a checkpoint directory into chunks. Returns the manifest's file part
 * and a reader that yields a chunk's bytes by hash (from the source files),
 * so only chunks the receiver lacks are ever read twice.
 */
export async function chunkDirectory(
  dir: string,
  options: { chunkBytes?: number } = {},
): Promise<{
  files: ChunkedFile[];
  skeleton: { size: number; chunks: string[] };
  read: (hash: string) => Promise<Buffer>;
}> {
  const chunkBytes = options.chunkBytes ?? CHUNK_BYTES;
  const files: ChunkedFile[] = [];
  const others: string[] = [];
  const where = new Map<string, { file: string; offset: number; length: number }>();
  // Metadata and small files synchronously (see SMALL_FILE_BYTES).
  const walk = async (current: string): Promise<void> => {
    for (const entry of readdirSync(current, { withFileTypes: true }).sort((a, b) =>
      a.name < b.name ? -1 : 1,
    )) {
      const full = join(current, entry.name);
      const path = relative(dir, full);
      if (entry.isFile()) {
        const info = lstatSync(full);
        const chunks = await hashChunks(
          full,
          info.size,
          (hash, offset, length) => {
            if (!where.has(hash)) where.set(hash, { file: full, offset, length });
          },
          chunkBytes,
        );
        files.push({ path, size: info.size, mode: info.mode & 0o7777, uid: info.uid, gid: info.gid, chunks });
      } else {
        others.push(path);
        if (entry.isDirectory()) await walk(full);
      }
    }
  };
  await walk(dir);
  // Directories, symlinks and devices travel in a tar without their contents' files.
  const skeletonFile = join(dirname(dir), `.skeleton-${process.pid}-${Date.now()}.tar`);
  await writeFile(
    `${skeletonFile}.list`,
    others.map((p) => `./${p}`).join('\n') + (others.length ? '\n' : ''),
  );
  await run([
    'tar',
    '--no-recursion',
    '--numeric-owner',
    '-C',
    dir,
    '-cf',
    skeletonFile,
    '-T',
    `${skeletonFile}.list`,
  ]);
  const skeletonBytes = await readFile(skeletonFile);
  await rm(skeletonFile, { force: true });
  await rm(`${skeletonFile}.list`, { force: true });
  const skeletonChunks: string[] = [];
  const skeletonData = new Map<string, Buffer>();
  for (let offset = 0; offset < skeletonBytes.length; offset += CHUNK_BYTES) {
    const part = skeletonBytes.subarray(offset, offset + CHUNK_BYTES);
    const hash = sha256(part);
    skeletonChunks.push(hash);
    skeletonData.set(hash, Buffer.from(part));
  }
  const read = async (hash: string): Promise<Buffer> => {
    const fromSkeleton = skeletonData.get(hash);
    if (fromSkeleton) return fromSkeleton;
    const at = where.get(hash);
    if (!at) throw new InvalidArgumentError(`no chunk ${hash} in this epoch`);
    if (at.length <= SMALL_FILE_BYTES) {
      const buffer = Buffer.alloc(at.length);
      const fd = openSync(at.file, 'r');
      try {
        readSync(fd, buffer, 0, at.length, at.offset);
      } finally {
        closeSync(fd);
      }
      if (sha256(buffer) !== hash)
        throw new CorruptCheckpointError(`${at.file} changed while it was being sent`);
      return buffer;
    }
    const handle = await open(at.file, 'r');
    try {
      const buffer = Buffer.alloc(at.length);
      await handle.read(buffer, 0, at.length, at.offset);
      if (sha256(buffer) !== hash)
        throw new CorruptCheckpointError(`${at.file} changed while it was being sent`);
      return buffer;
    } finally {
      await handle.close();
    }
  };
  return { files, skeleton: { size: skeletonBytes.length, chunks: skeletonChunks }, read };
}

/**
 * Bytes read at a time while hashing a file: a whole number of chunks of
 * either size. One buffer per file, reused for every read — an epoch hashes
 * all of a container's memory, and a fresh buffer per read (as a read stream
 * allocates) made the garbage collector the primary's largest CPU cost.
 */
const HASH_READ_BYTES = 1 << 20;

async function hashChunks(
  file: string,
  size: number,
  seen: (hash: string, offset: number, length: number) => void,
  chunkBytes = CHUNK_BYTES,
): Promise<string[]> {
  if (size <= Math.min(SMALL_FILE_BYTES, chunkBytes)) {
    // At most one chunk, and small: read at once (a small chunk is never the all-zero one).
    const data = readFileSync(file);
    if (data.length !== size)
      throw new CorruptCheckpointError(`${file} changed size while it was being chunked`);
    if (size === 0) return [];
    const hash = sha256(data);
    seen(hash, 0, size);
    return [hash];
  }
  const zero = chunkBytes === CHUNK_BYTES ? ZERO : Buffer.alloc(chunkBytes);
  const chunks: string[] = [];
  const buffer = Buffer.allocUnsafe(
    Math.max(chunkBytes, Math.floor(HASH_READ_BYTES / chunkBytes) * chunkBytes),
  );
  let offset = 0;
  const handle = await open(file, 'r');
  try {
    for (;;) {
      // Fill the buffer (a read may return less than asked before the end).
      let filled = 0;
      while (filled < buffer.length) {
        const { bytesRead } = await handle.read(buffer, filled, buffer.length - filled, offset + filled);
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
      for (let at = 0; at < filled; at += chunkBytes) {
        const part = buffer.subarray(at, Math.min(at + chunkBytes, filled));
        const hash = part.length === chunkBytes && part.equals(zero) ? ZERO_CHUNK : sha256(part);
        if (hash !== ZERO_CHUNK) seen(hash, offset + at, part.length);
        chunks.push(hash);
      }
      offset += filled;
      if (filled < buffer.length) break;
    }
  } finally {
    await handle.close();
  }
  if (offset !== size) throw new CorruptCheckpointError(`${file} changed size while it was being chunked`);
  return chunks;
}

/** SHA-256 of a buffer, hex. */
export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Chunks on a receiver's disk, one file per hash; every write is verified first. */
export class ChunkStore {
  /** Prefix directories known to exist (a prune removes chunks, never these). */
  private readonly prefixes = new Set<string>();

  constructor(readonly dir: string) {}

  private path(hash: string): string {
    if (!HASH.test(hash)) throw new InvalidArgumentError(`invalid chunk hash "${hash.slice(0, 80)}"`);
    return join(this.dir, hash.slice(0, 2), hash);
  }

  /** True if the chunk is here. */
  has(hash: string): boolean {
    return existsSync(this.path(hash));
  }

  /** Marks a chunk as recently used (see {@link ChunkStore.prune}). */
  async touch(hash: string, at: Date): Promise<void> {
    await utimes(this.path(hash), at, at).catch(() => undefined);
  }

  /** Stores a chunk after checking that its bytes hash to `hash` (atomic by rename). */
  async put(hash: string, data: Buffer): Promise<void> {
    if (sha256(data) !== hash)
      throw new CorruptCheckpointError(`chunk ${hash.slice(0, 12)}… arrived damaged: refused`);
    const path = this.path(hash);
    if (existsSync(path)) return;
    const prefix = dirname(path);
    if (!this.prefixes.has(prefix)) {
      mkdirSync(prefix, { recursive: true });
      this.prefixes.add(prefix);
    }
    const temp = `${path}.tmp-${process.pid}`;
    if (data.length <= SMALL_FILE_BYTES) {
      writeFileSync(temp, data);
      renameSync(temp, path);
      return;
    }
    await writeFile(temp, data);
    await rename(temp, path);
  }

  /**
   * A chunk's bytes, checked against its hash: a chunk damaged on disk is
   * reported, never used. One known to be small (`size`) is read at once,
   * synchronously (see SMALL_FILE_BYTES).
   */
  async get(hash: string, size?: number): Promise<Buffer> {
    const path = this.path(hash);
    const small = size !== undefined && size <= SMALL_FILE_BYTES;
    let data: Buffer | undefined;
    try {
      data = small ? readFileSync(path) : await readFile(path);
    } catch {
      data = undefined;
    }
    if (!data) throw new CorruptCheckpointError(`chunk ${hash.slice(0, 12)}… is missing`);
    if (sha256(data) !== hash)
      throw new CorruptCheckpointError(`chunk ${hash.slice(0, 12)}… is damaged on disk`);
    return data;
  }

  /**
   * Removes every chunk `needed` says no — except recent ones, which may
   * belong to an epoch still arriving (chunks are sent before their
   * manifest). `needed` is asked again right before each removal, and the
   * removal is synchronous after that answer: an epoch committed while the
   * walk goes on (it takes seconds on a large store) keeps every chunk it
   * names, even one the walk had already found unneeded.
   */
  async prune(needed: (hash: string) => boolean, graceMs = 120_000): Promise<number> {
    if (!existsSync(this.dir)) return 0;
    let removed = 0;
    const cutoff = Date.now() - graceMs;
    for (const prefix of await readdir(this.dir)) {
      for (const name of await readdir(join(this.dir, prefix))) {
        if (needed(name)) continue;
        const path = join(this.dir, prefix, name);
        const info = await lstat(path).catch(() => undefined);
        // No await between this answer and the unlink (see above).
        if (info && info.mtimeMs < cutoff && !needed(name)) {
          try {
            unlinkSync(path);
            removed++;
          } catch {
            // Gone already: another prune, or a drop.
          }
        }
      }
    }
    return removed;
  }
}

/** Chunks of one file read, verified and written at once while assembling. */
const ASSEMBLY_CONCURRENCY = 8;

/**
 * Rebuilds a checkpoint directory from a manifest and a chunk store. Every
 * chunk is verified as it is read; a missing or damaged one fails the whole
 * assembly (the caller falls back to an older epoch).
 */
export async function assembleDirectory(
  manifest: EpochManifest,
  store: ChunkStore,
  target: string,
): Promise<void> {
  const chunkBytes = manifest.chunkBytes ?? CHUNK_BYTES;
  await mkdir(target, { recursive: true });
  const skeleton = join(dirname(target), `.skeleton-${process.pid}-${Date.now()}.tar`);
  const handle = await open(skeleton, 'w');
  try {
    for (const hash of manifest.skeleton.chunks) await handle.write(await store.get(hash));
  } finally {
    await handle.close();
  }
  try {
    await run(['tar', '--numeric-owner', '-xpf', skeleton, '-C', target]);
  } finally {
    await rm(skeleton, { force: true });
  }
  for (const file of manifest.files) {
    if (file.path.split('/').includes('..') || file.path.startsWith('/')) {
      throw new CorruptCheckpointError(`epoch ${manifest.epoch}: unsafe path ${file.path}`);
    }
    const full = join(target, file.path);
    mkdirSync(dirname(full), { recursive: true });
    if (file.size <= SMALL_FILE_BYTES && file.chunks.length <= 1) {
      // A small file in one step, synchronously (see SMALL_FILE_BYTES).
      const hash = file.chunks[0];
      const data = hash === undefined ? Buffer.alloc(0) : await store.get(hash, file.size);
      if (data.length !== file.size)
        throw new CorruptCheckpointError(`epoch ${manifest.epoch}: ${file.path} chunk 0 has the wrong size`);
      writeFileSync(full, data);
      chownSync(full, file.uid, file.gid);
      chmodSync(full, file.mode);
      continue;
    }
    const out = await open(full, 'w');
    try {
      // Chunks sit at fixed offsets: several are read, verified and written
      // at once (a failover waits on this; one at a time left the disk and
      // the thread pool mostly idle).
      let next = 0;
      let failed = false;
      const worker = async (): Promise<void> => {
        while (!failed && next < file.chunks.length) {
          const index = next++;
          const hash = file.chunks[index]!;
          if (hash === ZERO_CHUNK) continue; // a hole: the file is sparse there
          const data = await store.get(hash);
          const offset = index * chunkBytes;
          if (data.length !== Math.min(chunkBytes, file.size - offset)) {
            throw new CorruptCheckpointError(
              `epoch ${manifest.epoch}: ${file.path} chunk ${index} has the wrong size`,
            );
          }
          await out.write(data, 0, data.length, offset);
        }
      };
      // Every worker settles before the file is closed; the first error stops the others.
      const results = await Promise.allSettled(
        Array.from({ length: ASSEMBLY_CONCURRENCY }, () =>
          worker().catch((error: unknown) => {
            failed = true;
            throw error;
          }),
        ),
      );
      const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failure) throw failure.reason;
      await out.truncate(file.size);
    } finally {
      await out.close();
    }
    await chown(full, file.uid, file.gid);
    await chmod(full, file.mode);
  }
}
