/**
 * The manifest of a checkpoint directory: what it holds, each file's size and
 * hash (SHA-256, or BLAKE3 for large files in archives), and the metadata a
 * restore needs. Written last, so a checkpoint without a manifest is by
 * definition incomplete; verified before every restore, so a truncated or
 * altered checkpoint is refused with the name of the file at fault, before
 * anything running is touched.
 *
 * Layout of a checkpoint directory (format version 1):
 *
 *   manifest.json       this manifest
 *   criu/               CRIU's images (memory, processes, sockets, ...)
 *   rootfs-diff/        the container's writable layer at the freeze
 *   shm/                its /dev/shm at the freeze
 *   volumes/<name>/     each volume's content at the freeze
 */
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import { open, readFile, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { CorruptCheckpointError } from '../core/errors.js';
import { SMALL_FILE_BYTES } from '../core/small-io.js';
import type { DumpStats } from '../runtime/driver.js';
import type { TcpConnection } from '../runtime/network.js';
import type { MachineRequirements } from './archive.js';
import { b3sum, BLAKE3_MIN_BYTES, blake3Files } from './blake3.js';

/** Current manifest format; readers refuse newer ones. */
export const MANIFEST_VERSION = 1;

/**
 * One regular file in the checkpoint, with its hash: SHA-256, or — for a
 * large file in an archive written where `b3sum` is installed — BLAKE3
 * (see blake3.ts). Exactly one of the two is set.
 */
export interface ManifestFile {
  path: string;
  size: number;
  sha256?: string;
  blake3?: string;
}

/** The manifest as stored in `manifest.json`. */
export interface CheckpointManifest {
  version: number;
  id: string;
  container: string;
  createdAt: string;
  /** The container kept running after this checkpoint. */
  leaveRunning: boolean;
  /** Established TCP connections at the freeze, locked again on restore. */
  connections: TcpConnection[];
  /** Where it was taken: restores elsewhere check compatibility against this. */
  origin: { host: string } & MachineRequirements;
  stats?: DumpStats;
  files: ManifestFile[];
  /**
   * Kept in this host's memory only and never written out (continuous
   * protection's epochs): the files are listed with their sizes but not
   * hashed — a restore checks that they are all there, whole, and trusts
   * their content as it trusts its own memory. The durable, hash-checked
   * copy is the backup's.
   */
  memoryOnly?: boolean;
}

/**
 * Lists every regular file under `dir` with size and SHA-256 (`hash: false`:
 * sizes only, `sha256` empty), except under the top-level directories named
 * in `skip` (CRIU's work directory and logs: not part of the checkpoint, and
 * at CRIU's debug level a 1 GB dump's log alone is ~250 KB to hash). With
 * `blake3` (and `b3sum` installed), files of BLAKE3_MIN_BYTES and more get
 * BLAKE3 instead, all in one `b3sum` run at the end.
 */
export async function hashTree(
  dir: string,
  options: { hash?: boolean; skip?: readonly string[]; blake3?: boolean } = {},
): Promise<ManifestFile[]> {
  const hash = options.hash ?? true;
  const bulk = hash && options.blake3 === true && b3sum() !== undefined;
  const large: ManifestFile[] = [];
  const skip = new Set((options.skip ?? []).map((d) => join(dir, d)));
  const files: ManifestFile[] = [];
  // One read buffer for the whole tree: a checkpoint has dozens of small
  // image files, and a read stream per file allocated 8 MiB each (measured:
  // 122 ms for a post-copy checkpoint's ~300 KB, inside its downtime).
  const buffer = hashBuffer();
  // The walk and small files synchronously (see SMALL_FILE_BYTES); large ones through the buffer.
  const walk = async (current: string): Promise<void> => {
    for (const entry of readdirSync(current, { withFileTypes: true }).sort((a, b) =>
      a.name.localeCompare(b.name),
    )) {
      const full = join(current, entry.name);
      if (entry.isDirectory()) {
        if (!skip.has(full)) await walk(full);
      } else if (entry.isFile()) {
        const path = relative(dir, full);
        if (path === 'manifest.json') continue;
        const size = lstatSync(full).size;
        if (bulk && size >= BLAKE3_MIN_BYTES) {
          const file: ManifestFile = { path, size };
          large.push(file);
          files.push(file);
        } else {
          files.push({ path, size, sha256: hash ? await sha256Sized(full, size, buffer) : '' });
        }
      }
    }
  };
  await walk(dir);
  const hashes = await blake3Files(large.map((f) => join(dir, f.path)));
  large.forEach((file, i) => (file.blake3 = hashes[i]));
  return files;
}

/**
 * Checks `files` under `dir` against their recorded hashes, SHA-256 or
 * BLAKE3 (these in one `b3sum` run), skipping those `known` already holds
 * with the same size and hash (hashed as they streamed by).
 * @throws CorruptCheckpointError naming the first file at fault.
 */
export async function checkHashes(
  dir: string,
  files: readonly ManifestFile[],
  known: ReadonlyMap<string, { size: number; sha256: string }> = new Map(),
): Promise<void> {
  const corrupted = (file: ManifestFile): CorruptCheckpointError =>
    new CorruptCheckpointError(`checkpoint ${dir}: ${file.path} is corrupted (checksum mismatch)`);
  const buffer = hashBuffer();
  const byBlake3: ManifestFile[] = [];
  for (const file of files) {
    if (file.blake3 !== undefined) {
      byBlake3.push(file);
      continue;
    }
    const seen = known.get(file.path);
    const sha256 =
      seen && seen.size === file.size
        ? seen.sha256
        : await sha256Sized(join(dir, file.path), file.size, buffer);
    if (file.sha256 === undefined || sha256 !== file.sha256) throw corrupted(file);
  }
  if (byBlake3.length && !b3sum()) {
    throw new CorruptCheckpointError(
      `checkpoint ${dir}: its hashes are BLAKE3 and b3sum is not installed here (Debian package "b3sum")`,
    );
  }
  const hashes = await blake3Files(byBlake3.map((f) => join(dir, f.path)));
  byBlake3.forEach((file, i) => {
    if (hashes[i] !== file.blake3) throw corrupted(file);
  });
}

/** Bytes read at a time while hashing a checkpoint's files. */
const HASH_READ_BYTES = 1 << 20;

/** A read buffer for {@link sha256File}: one per walk over many files, reused for each. */
export function hashBuffer(): Buffer {
  return Buffer.allocUnsafe(HASH_READ_BYTES);
}

/**
 * SHA-256 of a file (hex), read through `buffer`: callers hashing many files
 * pass one and reuse it, so no read allocates.
 */
export async function sha256File(path: string, buffer = hashBuffer()): Promise<string> {
  const hash = createHash('sha256');
  const handle = await open(path, 'r');
  try {
    for (let offset = 0; ;) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, offset);
      if (bytesRead === 0) break;
      hash.update(buffer.subarray(0, bytesRead));
      offset += bytesRead;
    }
  } finally {
    await handle.close();
  }
  return hash.digest('hex');
}

/** {@link sha256File} of a file of known `size`; a small one read at once, synchronously (see SMALL_FILE_BYTES). */
async function sha256Sized(path: string, size: number, buffer: Buffer): Promise<string> {
  if (size <= SMALL_FILE_BYTES) return createHash('sha256').update(readFileSync(path)).digest('hex');
  return sha256File(path, buffer);
}

/** Writes the manifest: the last step of a checkpoint. */
export async function writeManifest(dir: string, manifest: CheckpointManifest): Promise<void> {
  await writeFile(join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2));
}

/**
 * Reads and verifies a checkpoint: the manifest parses, and every file it
 * lists exists with its recorded size and hash. With `contentVerified` (the
 * caller has just checked every byte another way, e.g. assembled it from
 * hash-checked chunks) the hashes are not computed again.
 * @throws CorruptCheckpointError naming the first problem found.
 */
export async function verifyCheckpoint(
  dir: string,
  options: { contentVerified?: boolean } = {},
): Promise<CheckpointManifest> {
  const manifestPath = join(dir, 'manifest.json');
  if (!existsSync(manifestPath)) {
    throw new CorruptCheckpointError(`checkpoint ${dir} has no manifest.json: it is incomplete or damaged`);
  }
  let manifest: CheckpointManifest;
  try {
    manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as CheckpointManifest;
  } catch (error) {
    throw new CorruptCheckpointError(`checkpoint ${dir}: manifest.json is unreadable (${String(error)})`);
  }
  if (manifest.version !== MANIFEST_VERSION || !Array.isArray(manifest.files)) {
    throw new CorruptCheckpointError(
      `checkpoint ${dir}: unsupported manifest version ${String(manifest.version)}`,
    );
  }
  for (const file of manifest.files) {
    const full = join(dir, file.path);
    if (!existsSync(full)) throw new CorruptCheckpointError(`checkpoint ${dir}: ${file.path} is missing`);
    const size = lstatSync(full).size;
    if (size !== file.size) {
      throw new CorruptCheckpointError(
        `checkpoint ${dir}: ${file.path} is truncated or altered (${size} bytes, expected ${file.size})`,
      );
    }
  }
  if (!options.contentVerified && !manifest.memoryOnly) await checkHashes(dir, manifest.files);
  return manifest;
}
