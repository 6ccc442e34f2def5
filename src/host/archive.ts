/**
 * Portable checkpoint archives: one file that another machine with Haven
 * restores (`haven checkpoint NAME --export FILE`, `haven restore --import
 * FILE [--name NEW]`), as Podman's checkpoint archives are.
 *
 * An archive is a tar stream, optionally compressed (gzip or zstd), holding:
 *
 *   checkpoint/          the checkpoint directory as is (criu/, rootfs-diff/,
 *                        shm/, volumes/), then its manifest.json with a
 *                        SHA-256 per file
 *   image.tar            the container's image (as the image store keeps it),
 *                        so the archive stands alone; its SHA-256 is in the header
 *   haven-archive.json   last: format version, the container's record, and
 *                        what the checkpoint needs of a machine:
 *                        architecture, CPU features, kernel and CRIU versions
 *
 * The manifest and the header come last because they hold the hashes of
 * everything before them, computed as the archive is written: one read of
 * the checkpoint, not one to hash and one to archive (see tar-stream.ts).
 *
 * Nothing in it is trusted on import: every file is hashed as it is
 * extracted and checked against the manifest, names are validated, and a machine that lacks a CPU
 * feature the checkpoint was taken with refuses it before anything starts
 * (a restored process that used such an instruction would die with SIGILL).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import {
  closeSync,
  constants as fsConstants,
  createReadStream,
  existsSync,
  openSync,
  readSync,
} from 'node:fs';
import { open, readFile, rename, rm, stat } from 'node:fs/promises';
import { arch, constants as osConstants, release } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { Readable, type Writable } from 'node:stream';
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NoSpaceError,
  RuntimeFailedError,
} from '../core/errors.js';
import { trace } from '../core/exec.js';
import { checkHashes, hashTree, sha256File, type ManifestFile } from './checkpoint-manifest.js';
import {
  tarEnd,
  tarFile,
  TarFormatError,
  TarScanner,
  type StreamedFile,
  type TarMember,
} from './tar-stream.js';

/**
 * Current archive format; importers refuse newer ones. 2: a large file's
 * manifest entry may carry BLAKE3 instead of SHA-256 (see blake3.ts).
 */
export const ARCHIVE_VERSION = 2;

/** The checkpoint's manifest inside an archive. */
const MANIFEST_MEMBER = 'checkpoint/manifest.json';

/** The archive's header (what it holds, from where): its last member. */
const HEADER_MEMBER = 'haven-archive.json';

/** Compression of an archive stream. */
export type ArchiveCompression = 'none' | 'gzip' | 'zstd';

/** What a checkpoint needs of the machine that restores it. */
export interface MachineRequirements {
  arch: string;
  kernel: string;
  criuVersion: string;
  /** CPU feature flags of the machine that took the checkpoint (/proc/cpuinfo). */
  cpuFlags: string[];
}

/** `haven-archive.json`. */
export interface ArchiveHeader {
  format: 'haven-checkpoint-archive';
  version: number;
  createdAt: string;
  checkpointId: string;
  /** The container's record (spec, address, volumes), as on the source host. */
  container: unknown;
  machine: MachineRequirements;
  /** SHA-256 of `image.tar`, checked on import. */
  imageSha256: string;
}

/** CPU feature flags of this machine. */
export async function cpuFlags(): Promise<string[]> {
  const text = await readFile('/proc/cpuinfo', 'utf8');
  const line = /^flags\s*:\s*(.*)$/m.exec(text)?.[1] ?? '';
  return line
    .split(/\s+/)
    .filter((f) => f.length > 0)
    .sort();
}

/** This machine's requirements record. */
export async function thisMachine(criuVersion: string): Promise<MachineRequirements> {
  return { arch: arch(), kernel: release(), criuVersion, cpuFlags: await cpuFlags() };
}

/**
 * Why this machine cannot run a checkpoint taken on `source`, or undefined if
 * it can. Missing CPU features and another architecture are fatal; a
 * different kernel or CRIU is not (CRIU images are compatible across them).
 */
export function incompatibility(source: MachineRequirements, here: MachineRequirements): string | undefined {
  if (source.arch !== here.arch) return `it was taken on ${source.arch}, this machine is ${here.arch}`;
  const have = new Set(here.cpuFlags);
  const missing = source.cpuFlags.filter((f) => !have.has(f));
  if (missing.length > 0) {
    return `this CPU lacks features the checkpoint's processes may use: ${missing.slice(0, 12).join(' ')}${missing.length > 12 ? ' …' : ''}`;
  }
  return undefined;
}

/**
 * tar's record size for archive files, in 512-byte blocks (1 MiB). GNU tar
 * reads and writes in records of 20 blocks by default: 10 KiB a system call,
 * ~26,000 of them for 256 MB. Measured here for a 256 MB checkpoint between
 * the staging tmpfs and ext4: writing the archive 220 → 85 ms, extracting it
 * 190 → 105 ms. The record size is not part of the format: members and
 * block numbers stay in 512-byte blocks, any tar reads the result, and the
 * padding of the last record is cut off with the end marker (see
 * writePlainArchive).
 */
const RECORD_BLOCKS = ['-b', '2048'];

/**
 * `file` created (empty) and opened for writing with O_DIRECT, or undefined
 * where the file system refuses O_DIRECT (EINVAL) or the open fails for any
 * other reason (tar then opens it itself and reports why). An uncompressed
 * archive is written around the page cache where the file system allows
 * it: on this machine kind, copying a 256 MB checkpoint into fresh
 * page-cache pages cost 0.07–0.75 s of kernel time (nearly all of it in the
 * copy to pages the hypervisor must first back), and the fdatasync a
 * stopping checkpoint needs wrote it all again; direct writes took
 * 0.12–0.18 s and leave almost nothing to sync.
 */
function openDirect(file: string): number | undefined {
  try {
    return openSync(
      file,
      fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_TRUNC | fsConstants.O_DIRECT,
      0o644,
    );
  } catch {
    return undefined;
  }
}

/** The compressor a stream goes through, at a fast level: an archive is written inside a migration or a backup window. */
function compressorArgv(compression: ArchiveCompression): string[] | undefined {
  if (compression === 'gzip') return ['gzip', '-1', '-c'];
  if (compression === 'zstd') return ['zstd', '-1', '-T0', '-q', '-c'];
  return undefined;
}

/** Where the parts of an archive are read from. */
export interface ArchiveParts {
  /** The checkpoint directory (its `logs/` and any `manifest.json` are left out: the manifest is written last). */
  checkpointDir: string;
  /** The image store's `image.tar`. */
  imageTar: string;
}

/** One checkpoint file as hashed on its way into an archive (a manifest entry; path inside the checkpoint). */
export type ArchivedFile = ManifestFile;

/** What was hashed while an archive streamed by. */
export interface StreamedArchive {
  files: ArchivedFile[];
  imageSha256: string;
}

/** The last members of an archive, made once every other byte has been hashed. */
export interface ArchiveTrailer {
  /** `checkpoint/manifest.json` */
  manifest: string;
  /** `haven-archive.json` */
  header: ArchiveHeader;
}

/** Waits for a child to exit; its code (or 128 + signal number). */
function exited(child: ChildProcess): Promise<number> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) resolve(child.exitCode);
    else
      child.on('close', (code, signal) =>
        resolve(code ?? (signal ? 128 + (osConstants.signals[signal] ?? 0) : 128)),
      );
  });
}

/** Collects a child's stderr, for the last line of an error message. */
function stderrOf(child: ChildProcess): () => string {
  let text = '';
  child.stderr?.on('data', (b: Buffer) => {
    text = (text + b.toString()).slice(-4096);
  });
  return () => text.trim().split('\n').pop() ?? '';
}

/**
 * Writes `chunk` to `out`, waiting while its buffer is full. Rejects if the
 * stream fails or closes (the process behind it died) instead of waiting
 * for a drain that never comes.
 */
async function writeTo(out: Writable, chunk: Buffer): Promise<void> {
  if (out.destroyed || out.writableEnded) throw new Error('the stream was closed');
  if (out.write(chunk)) return;
  await new Promise<void>((resolve, reject) => {
    const done = (error?: Error): void => {
      out.off('drain', onDrain);
      out.off('error', onError);
      out.off('close', onClose);
      if (error) reject(error);
      else resolve();
    };
    const onDrain = (): void => done();
    const onError = (error: Error): void => done(error);
    const onClose = (): void => done(new Error('the stream was closed'));
    out.on('drain', onDrain);
    out.on('error', onError);
    out.on('close', onClose);
  });
}

/** tar's arguments for the archive's content: everything but the manifest and the header. */
function contentArgs(parts: ArchiveParts): string[] {
  const id = basename(parts.checkpointDir);
  if (!/^[\w.-]+$/.test(id)) throw new InvalidArgumentError(`unexpected checkpoint directory name "${id}"`);
  return [
    '--sort=name',
    // r,h: rename member and hard-link names, never symlink targets inside the container's files.
    `--transform=flags=rh;s,^${id.replace(/\./g, '\\.')}\\(/\\|$\\),checkpoint\\1,`,
    `--exclude=${id}/logs`,
    `--exclude=${id}/manifest.json`,
    '-C',
    dirname(parts.checkpointDir),
    id,
    // Last, and a regular file: writePlainArchive finds the end of the content from it.
    '-C',
    dirname(parts.imageTar),
    basename(parts.imageTar),
  ];
}

/** The manifest and header members, then the end-of-archive marker, for content of `contentBytes`. */
function trailerBytes(made: ArchiveTrailer, contentBytes: number): Buffer {
  const now = Date.now() / 1000;
  const tail = Buffer.concat([
    tarFile('checkpoint/manifest.json', Buffer.from(made.manifest), now),
    tarFile('haven-archive.json', Buffer.from(JSON.stringify(made.header, null, 2)), now),
  ]);
  return Buffer.concat([tail, tarEnd(contentBytes + tail.length)]);
}

/**
 * Writes the archive with one read of the checkpoint on the critical path.
 * The manifest and the header, which hold the hashes of everything else,
 * are the last members; `trailer` makes them from those hashes.
 *
 * Uncompressed (the default, and what a migration or the bench writes), tar
 * writes the content straight to the file — data never crosses into this
 * process — while the same files are hashed here side by side (they are in
 * the staging tmpfs or the page cache: a second reader costs CPU, not I/O,
 * and the two run on two cores). tar's end-of-archive marker is then cut
 * off, at the offset its `--block-number` listing gives, and the trailer
 * appended. Compressed, the tar stream passes through here on its way to
 * the compressor and is hashed as it goes by (see tar-stream.ts).
 *
 * The checkpoint directory is read where it is — no staging copy, which for
 * a checkpoint in the staging tmpfs would cross file systems — and renamed
 * to `checkpoint/` on the way. Returns what was hashed.
 */
export async function writeArchive(
  file: string,
  parts: ArchiveParts,
  compression: ArchiveCompression,
  trailer: (streamed: StreamedArchive) => ArchiveTrailer | Promise<ArchiveTrailer>,
): Promise<StreamedArchive> {
  const tmp = `${file}.partial-${process.pid}`;
  try {
    const streamed =
      compression === 'none'
        ? await writePlainArchive(tmp, parts, trailer)
        : await writeCompressedArchive(tmp, parts, compression, trailer);
    await rename(tmp, file);
    return streamed;
  } catch (error) {
    await rm(tmp, { force: true });
    throw error;
  }
}

async function writePlainArchive(
  tmp: string,
  parts: ArchiveParts,
  trailer: (streamed: StreamedArchive) => ArchiveTrailer | Promise<ArchiveTrailer>,
): Promise<StreamedArchive> {
  let hashed: StreamedArchive | undefined;
  const hash = async (): Promise<void> => {
    hashed = await hashParts(parts);
  };
  let listing = await runTar(tmp, parts, openDirect(tmp), hash);
  // A file system that takes the O_DIRECT open but not tar's writes: buffered, once more.
  if (listing === DIRECT_REFUSED) listing = await runTar(tmp, parts, undefined, () => Promise.resolve());
  if (listing === DIRECT_REFUSED || hashed === undefined) {
    throw new RuntimeFailedError('writing archive: tar refused O_DIRECT on the buffered path', 'tar', []);
  }
  // "block N: image.tar": the last member's header; its data follows, then tar's end marker.
  const imageName = basename(parts.imageTar).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const block = new RegExp(`block (\\d+): ${imageName}\\n?$`).exec(listing)?.[1];
  const imageSize = (await stat(parts.imageTar)).size;
  const contentBytes = block === undefined ? -1 : (Number(block) + 1 + Math.ceil(imageSize / 512)) * 512;
  const fd = await open(tmp, 'r+');
  try {
    const { size } = await fd.stat();
    const marker = Buffer.alloc(1024);
    const { bytesRead } = contentBytes >= 0 ? await fd.read(marker, 0, 1024, contentBytes) : { bytesRead: 0 };
    if (contentBytes < 0 || bytesRead !== 1024 || marker.some((b) => b !== 0) || size < contentBytes + 1024) {
      throw new RuntimeFailedError('writing archive: cannot find the end of what tar wrote', 'tar', [
        listing.split('\n').slice(-2).join(' '),
      ]);
    }
    await fd.truncate(contentBytes);
    await fd.write(trailerBytes(await trailer(hashed), contentBytes), 0, undefined, contentBytes);
  } finally {
    await fd.close();
  }
  return hashed;
}

/** What {@link runTar} returns when O_DIRECT writes failed where the open succeeded. */
const DIRECT_REFUSED = Symbol('O_DIRECT refused');

/**
 * Runs `tar -c` of `parts` into `tmp` — into `directFd` (tar's stdout, an
 * O_DIRECT descriptor: its 1 MiB records are page-aligned buffers written
 * at 1 MiB offsets, which O_DIRECT takes, and no process or pipe stands
 * between tar and the disk; 256 MB here: 140–210 ms, 200–350 through
 * `dd oflag=direct`) or, without one, into the file it opens — while
 * `alongside` runs (the hashing). Returns tar's `--block-number` listing.
 * @throws NoSpaceError on a full disk, RuntimeFailedError on any other failure.
 */
async function runTar(
  tmp: string,
  parts: ArchiveParts,
  directFd: number | undefined,
  alongside: () => Promise<unknown>,
): Promise<string | typeof DIRECT_REFUSED> {
  const direct = directFd !== undefined;
  let tar: ChildProcess;
  try {
    tar = spawn(
      'tar',
      ['-c', '-v', '--block-number', ...RECORD_BLOCKS, '-f', direct ? '-' : tmp, ...contentArgs(parts)],
      { stdio: ['ignore', directFd ?? 'pipe', 'pipe'] },
    );
  } finally {
    if (directFd !== undefined) closeSync(directFd); // tar has its own copy
  }
  // The listing ("block N: name") is on tar's stdout, or on its stderr when the archive is its stdout.
  let listing = '';
  (tar.stdout ?? tar.stderr)?.on('data', (b: Buffer) => {
    listing = (listing + b.toString()).slice(-8192);
  });
  // Its complaints ("tar: …"), apart from the listing that may share stderr with them.
  const complaints: string[] = [];
  let partial = '';
  tar.stderr?.on('data', (b: Buffer) => {
    const lines = (partial + b.toString()).split('\n');
    partial = lines.pop() ?? '';
    complaints.push(...lines.filter((line) => line.startsWith('tar: ')));
    complaints.splice(0, Math.max(0, complaints.length - 8));
  });
  const tarDone = exited(tar);
  try {
    await alongside();
  } catch (error) {
    tar.kill('SIGKILL');
    await tarDone;
    throw error;
  }
  const code = await tarDone;
  if (code === 0) return listing;
  const why = [...complaints, partial].join('\n').trim();
  if (/No space left on device|Disk quota exceeded/.test(why)) {
    throw new NoSpaceError(
      `no space left on the archive's disk (writing ${tmp}): free some space and try again`,
    );
  }
  if (direct && /Invalid argument/.test(why)) return DIRECT_REFUSED;
  throw new RuntimeFailedError(`writing archive failed (tar exit ${code})`, 'tar', [why]);
}

/** Hashes what {@link contentArgs} archives: the checkpoint's files (but logs and manifest) and the image. */
async function hashParts(parts: ArchiveParts): Promise<StreamedArchive> {
  const [imageSha256, files] = await Promise.all([
    sha256File(parts.imageTar),
    // HAVEN_ARCHIVE_HASH=sha256: archives for hosts without b3sum.
    hashTree(parts.checkpointDir, { skip: ['logs'], blake3: process.env.HAVEN_ARCHIVE_HASH !== 'sha256' }),
  ]);
  return { files, imageSha256 };
}

async function writeCompressedArchive(
  tmp: string,
  parts: ArchiveParts,
  compression: ArchiveCompression,
  trailer: (streamed: StreamedArchive) => ArchiveTrailer | Promise<ArchiveTrailer>,
): Promise<StreamedArchive> {
  const imageName = basename(parts.imageTar);
  const tar = spawn('tar', ['-cf', '-', ...contentArgs(parts)], { stdio: ['ignore', 'pipe', 'pipe'] });
  const tarError = stderrOf(tar);
  const tarDone = exited(tar);
  const fd = await open(tmp, 'w', 0o600);
  const compressor = compressorArgv(compression);
  const zip = compressor
    ? spawn(compressor[0] ?? '', compressor.slice(1), { stdio: ['pipe', fd.fd, 'pipe'] })
    : undefined;
  const zipError = zip ? stderrOf(zip) : () => '';
  const zipDone = zip ? exited(zip) : Promise.resolve(0);
  // The compressor holds its own copy of the file; without one, the stream closes it when done.
  if (zip) await fd.close();
  const out: Writable = zip?.stdin ?? fd.createWriteStream({ highWaterMark: 4 << 20 });
  out.on('error', () => undefined); // a failed write rejects writeTo; the event must not crash us
  try {
    const scanner = new TarScanner();
    let read = 0;
    for await (const chunk of tar.stdout as AsyncIterable<Buffer>) {
      const chunkStart = read;
      const endedBefore = scanner.endOffset >= 0;
      scanner.push(chunk);
      read += chunk.length;
      if (endedBefore) continue;
      // tar's own end-of-archive marker is dropped: the manifest and the header come after.
      const keep = scanner.endOffset >= 0 ? scanner.endOffset - chunkStart : chunk.length;
      if (keep > 0) await writeTo(out, keep === chunk.length ? chunk : chunk.subarray(0, keep));
    }
    const tarCode = await tarDone;
    if (tarCode !== 0) {
      throw new RuntimeFailedError(`writing archive failed (tar exit ${tarCode})`, 'tar', [tarError()]);
    }
    scanner.finish();
    const prefix = 'checkpoint/';
    const files: ArchivedFile[] = [...scanner.files]
      .filter(([name]) => name.startsWith(prefix))
      .map(([name, f]) => ({ path: name.slice(prefix.length), size: f.size, sha256: f.sha256 }))
      .sort((x, y) => compareManifestPaths(x.path, y.path));
    const image = scanner.files.get(imageName);
    if (!image) {
      throw new RuntimeFailedError(`writing archive: tar left out ${imageName}`, 'tar', []);
    }
    const streamed: StreamedArchive = { files, imageSha256: image.sha256 };
    await writeTo(out, trailerBytes(await trailer(streamed), scanner.endOffset));
    await new Promise<void>((resolve, reject) =>
      out.end((error?: Error | null) => (error ? reject(error) : resolve())),
    );
    if (!out.closed) await new Promise((resolve) => out.once('close', resolve));
    const zipCode = await zipDone;
    if (zipCode !== 0) {
      throw new RuntimeFailedError(`compressing archive failed (exit ${zipCode})`, compressor?.[0] ?? 'tar', [
        zipError(),
      ]);
    }
    return streamed;
  } catch (error) {
    tar.kill('SIGKILL');
    zip?.kill('SIGKILL');
    out.destroy();
    await Promise.all([tarDone, zipDone]);
    throw error;
  }
}

/** The order {@link hashTree} lists files in (a depth-first walk, names by localeCompare). */
function compareManifestPaths(a: string, b: string): number {
  const x = a.split('/');
  const y = b.split('/');
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const order = (x[i] ?? '').localeCompare(y[i] ?? '');
    if (order !== 0) return order;
  }
  return x.length - y.length;
}

/** The names an archive may hold: the three top-level entries and what is below them, nothing that climbs out. */
function checkMemberName(file: string, name: string): void {
  const top = name.split('/')[0];
  if (
    name.split('/').includes('..') ||
    name.startsWith('/') ||
    !['haven-archive.json', 'checkpoint', 'image.tar'].includes(top ?? '')
  ) {
    throw new InvalidArgumentError(`archive "${file}" holds an unexpected path "${name}": refusing it`);
  }
}

/** How an archive file is compressed, from its first bytes. */
async function sniffCompression(file: string): Promise<ArchiveCompression> {
  const fd = await open(file, 'r');
  try {
    const { buffer, bytesRead } = await fd.read(Buffer.alloc(4), 0, 4, 0);
    if (bytesRead >= 2 && buffer[0] === 0x1f && buffer[1] === 0x8b) return 'gzip';
    if (bytesRead === 4 && buffer.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
    return 'none';
  } finally {
    await fd.close();
  }
}

/** An extracted archive: its header, and every file's hash as it streamed by. */
export interface ExtractedArchive {
  header: ArchiveHeader;
  /**
   * Regular files by member name (`checkpoint/criu/pages-1.img`, `image.tar`,
   * …) with their SHA-256, where they were hashed on the way (empty for an
   * uncompressed archive whose manifest names BLAKE3).
   */
  streamed: Map<string, StreamedFile>;
}

/**
 * Extracts an archive (uncompressed, gzip or zstd) into `dir` in one pass.
 * A {@link TarScanner} refuses a member whose name would leave the three
 * top-level entries — or pass through a symbolic link the archive itself
 * made — before tar sees any of it: from the headers alone for an
 * uncompressed archive (tar then reads the file), on the stream from the
 * decompressor to `tar -x` for a compressed one. SHA-256 is taken of every
 * regular file as it goes by, except in an uncompressed archive whose
 * manifest names BLAKE3 (those are hashed on the extracted files, see
 * {@link verifyExtracted}). The caller compares the hashes with the
 * manifest. Refuses archives that are not Haven's.
 */
export async function extractArchive(
  file: string,
  dir: string,
  options: {
    /**
     * Called with an uncompressed archive's header before tar starts (read
     * at its offset), so that the caller can prepare what the header names
     * while the rest is extracted. Not called for a compressed archive,
     * whose header comes out last.
     */
    onHeader?: (header: ArchiveHeader) => void;
  } = {},
): Promise<ExtractedArchive> {
  if (!existsSync(file)) throw new InvalidArgumentError(`archive "${file}" does not exist`);
  const compression = await sniffCompression(file);
  const decompressor =
    compression === 'gzip'
      ? ['gzip', '-dc', file]
      : compression === 'zstd'
        ? ['zstd', '-dcq', file]
        : undefined;
  const unzip = decompressor
    ? spawn(decompressor[0] ?? '', decompressor.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] })
    : undefined;
  const unzipError = unzip ? stderrOf(unzip) : () => '';
  const unzipDone = unzip ? exited(unzip) : Promise.resolve(0);
  const check = memberCheck(file);
  let failure: unknown;
  // Uncompressed, every member is checked first from its header alone (a
  // read per member), then tar reads the file itself. A manifest with
  // BLAKE3 entries is checked afterwards, on the extracted files (b3sum:
  // 256 MB in ~50 ms); an older one's SHA-256 is taken here while tar
  // reads — two readers of the page cache on two cores, instead of every
  // byte piped through this process (1 GB here: 1.9 → 1.3 s).
  // Compressed, the stream passes through here: checked, hashed, then handed on.
  const piped = unzip !== undefined;
  let hashHere = true;
  if (!piped) {
    try {
      const found = scanHeaders(file, check, [MANIFEST_MEMBER, HEADER_MEMBER]);
      hashHere = !namesBlake3(found.get(MANIFEST_MEMBER));
      const early = found.get(HEADER_MEMBER);
      if (early && options.onHeader) options.onHeader(parseHeader(early.toString('utf8'), file));
    } catch (error) {
      failure = error;
    }
  }
  const source = (unzip?.stdout ??
    (hashHere && failure === undefined
      ? createReadStream(file, { highWaterMark: 4 << 20 })
      : Readable.from([]))) as AsyncIterable<Buffer> & Readable;
  const tar =
    failure === undefined
      ? spawn(
          'tar',
          ['--numeric-owner', ...(piped ? ['-xpf', '-'] : [...RECORD_BLOCKS, '-xpf', file]), '-C', dir],
          {
            stdio: [piped ? 'pipe' : 'ignore', 'ignore', 'pipe'],
          },
        )
      : undefined;
  const tarError = tar ? stderrOf(tar) : () => '';
  const tarDone = tar ? exited(tar) : Promise.resolve(128 + 9);
  tar?.stdin?.on('error', () => undefined); // tar gave up early: its exit status says why
  const scanner = new TarScanner(check);
  const started = performance.now();
  void tarDone.then(() => trace(`extract ${file}: tar done`, started));
  if (failure === undefined) {
    try {
      for await (const chunk of source) {
        scanner.push(chunk); // piped: throws before tar sees a refused member
        if (tar?.stdin) await writeTo(tar.stdin, chunk);
      }
      if (hashHere) {
        scanner.finish();
        trace(`extract ${file}: hashed`, started);
      }
      tar?.stdin?.end();
    } catch (error) {
      failure = error;
      source.destroy();
      unzip?.kill('SIGKILL');
      tar?.kill('SIGKILL');
    }
  }
  const [tarCode, unzipCode] = await Promise.all([tarDone, unzipDone]);
  const damaged = (why: string): InvalidArgumentError =>
    new InvalidArgumentError(`archive "${file}" is damaged: ${why}`);
  if (failure instanceof TarFormatError) {
    // A decompressor that failed says best what is wrong (a truncated zstd frame, say).
    const why = (unzip && unzipCode !== 0 && unzipCode !== 128 + 9 ? unzipError() : '') || failure.message;
    if (!failure.started) throw new InvalidArgumentError(`"${file}" is not a readable archive: ${why}`);
    throw damaged(why);
  }
  if (failure instanceof InvalidArgumentError) throw failure;
  if (failure !== undefined && tarCode !== 0 && tarCode !== 128 + 9) throw damaged(tarError());
  if (failure !== undefined) throw failure instanceof Error ? failure : new Error('extracting failed');
  if (unzipCode !== 0) throw damaged(unzipError());
  if (tarCode !== 0) throw damaged(tarError());
  const text = await readFile(join(dir, HEADER_MEMBER), 'utf8').catch(() => '');
  return { header: parseHeader(text, file), streamed: scanner.files };
}

/**
 * An archive's header from its text.
 * @throws InvalidArgumentError for one that is not Haven's, FailedPreconditionError for a newer format.
 */
function parseHeader(text: string, file: string): ArchiveHeader {
  let header: ArchiveHeader;
  try {
    header = JSON.parse(text) as ArchiveHeader;
  } catch {
    throw new InvalidArgumentError(
      `"${file}" is not a Haven checkpoint archive (no readable ${HEADER_MEMBER})`,
    );
  }
  if (header?.format !== 'haven-checkpoint-archive') {
    throw new InvalidArgumentError(`"${file}" is not a Haven checkpoint archive`);
  }
  if (header.version > ARCHIVE_VERSION) {
    throw new FailedPreconditionError(
      `archive format ${header.version} is newer than this Haven reads (${ARCHIVE_VERSION})`,
    );
  }
  return header;
}

/**
 * The check of every member of `file` before tar may write it: a safe name
 * (and link target), and no path through a symbolic link the archive holds.
 */
function memberCheck(file: string): (member: TarMember) => void {
  const symlinks = new Set<string>();
  return (member) => {
    checkMemberName(file, member.name);
    if (member.type === '1') checkMemberName(file, member.linkName);
    const parts = member.name.split('/');
    for (let i = 1; i < parts.length; i++) {
      if (symlinks.has(parts.slice(0, i).join('/'))) {
        throw new InvalidArgumentError(
          `archive "${file}" writes "${member.name}" through a symbolic link it holds: refusing it`,
        );
      }
    }
    if (member.type === '2') symlinks.add(member.name.replace(/\/+$/, ''));
  };
}

/**
 * Walks an uncompressed archive's headers (and the small records of long
 * names and pax attributes), skipping the content, calling `check` on each
 * member. Synchronous reads of 512 bytes: one per member. Returns the
 * content of the small regular members named in `wanted` (up to 1 MiB each).
 * @throws TarFormatError for a damaged or truncated archive, or what `check` throws.
 */
function scanHeaders(
  file: string,
  check: (member: TarMember) => void,
  wanted: readonly string[] = [],
): Map<string, Buffer> {
  const last: { member?: TarMember } = {};
  const scanner = new TarScanner(
    (m) => {
      check(m);
      last.member = m;
    },
    { headersOnly: true },
  );
  const found = new Map<string, Buffer>();
  const block = Buffer.alloc(512);
  const fd = openSync(file, 'r');
  try {
    for (let offset = 0; !scanner.ended;) {
      const bytesRead = readSync(fd, block, 0, block.length, offset);
      if (bytesRead === 0) break;
      last.member = undefined;
      scanner.push(block.subarray(0, bytesRead));
      const skipped = scanner.skipContent();
      const member = last.member as TarMember | undefined;
      if (
        member &&
        skipped > 0 &&
        member.type === '0' &&
        member.size <= 1 << 20 &&
        wanted.includes(member.name)
      ) {
        const content = Buffer.alloc(member.size);
        readSync(fd, content, 0, member.size, offset + bytesRead);
        found.set(member.name, content);
      }
      offset += bytesRead + skipped;
    }
  } finally {
    closeSync(fd);
  }
  scanner.finish();
  return found;
}

/** Whether a manifest (as its bytes) names any file by BLAKE3; false for one that does not parse. */
function namesBlake3(manifest: Buffer | undefined): boolean {
  try {
    const files = (JSON.parse(manifest?.toString('utf8') ?? '') as { files?: unknown }).files;
    return Array.isArray(files) && files.some((f) => typeof (f as ManifestFile).blake3 === 'string');
  } catch {
    return false;
  }
}

/**
 * Checks an extracted checkpoint's files against its manifest: by the
 * hashes taken while they streamed out of the archive where there are
 * some (see {@link extractArchive}), else from disk — BLAKE3 entries
 * always. Sizes and presence on disk are checked by verifyCheckpoint.
 * @throws CorruptCheckpointError naming the first file at fault.
 */
export async function verifyExtracted(
  dir: string,
  files: readonly ManifestFile[],
  streamed: ReadonlyMap<string, StreamedFile>,
  prefix = 'checkpoint/',
): Promise<void> {
  const known = new Map<string, StreamedFile>();
  for (const [name, seen] of streamed)
    if (name.startsWith(prefix)) known.set(name.slice(prefix.length), seen);
  await checkHashes(dir, files, known);
}

/**
 * Writes a file's data to disk (fdatasync). A stopping checkpoint's archive
 * is synced before the container is stopped: it must outlive a crash of
 * this host, since nothing else holds that state once the container is gone.
 * A full disk may surface only here (delayed allocation), failing the
 * checkpoint — and the container runs on.
 */
export async function syncFile(file: string): Promise<void> {
  const fd = await open(file, 'r');
  try {
    await fd.datasync();
  } finally {
    await fd.close();
  }
}

/** Guesses the compression to use from a file name (`.tar.zst`, `.tar.gz`, else none). */
export function compressionFor(file: string, requested?: string): ArchiveCompression {
  if (requested !== undefined) {
    if (requested === 'none' || requested === 'gzip' || requested === 'zstd') return requested;
    throw new InvalidArgumentError(`invalid --compress "${requested}": use none, gzip or zstd`);
  }
  if (/\.(zst|zstd)$/.test(file)) return 'zstd';
  if (/\.(gz|tgz)$/.test(file)) return 'gzip';
  return 'none';
}
