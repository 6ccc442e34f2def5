/**
 * Portable checkpoint archives: one file that another machine with Haven
 * restores (`haven checkpoint NAME --export FILE`, `haven restore --import
 * FILE [--name NEW]`), as Podman's checkpoint archives are.
 *
 * An archive is a tar stream, optionally compressed (gzip or zstd), holding:
 *
 *   haven-archive.json   format version, the container's record, and what the
 *                        checkpoint needs of a machine: architecture, CPU
 *                        features, kernel and CRIU versions
 *   checkpoint/          the checkpoint directory as is (manifest.json with a
 *                        SHA-256 per file, criu/, rootfs-diff/, shm/, volumes/)
 *   image.tar            the container's image (as the image store keeps it),
 *                        so the archive stands alone; its SHA-256 is in the header
 *
 * Nothing in it is trusted on import: the checkpoint is verified file by file
 * against its manifest, names are validated, and a machine that lacks a CPU
 * feature the checkpoint was taken with refuses it before anything starts
 * (a restored process that used such an instruction would die with SIGILL).
 */
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { arch, release } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { run } from '../core/exec.js';
import { FailedPreconditionError, InvalidArgumentError } from '../core/errors.js';

/** Current archive format; importers refuse newer ones. */
export const ARCHIVE_VERSION = 1;

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

function compressorFlag(compression: ArchiveCompression): string[] {
  // Fast levels: an archive is written inside a migration or a backup window.
  if (compression === 'gzip') return ['--use-compress-program', 'gzip -1'];
  if (compression === 'zstd') return ['--use-compress-program', 'zstd -1 -T0'];
  return [];
}

/** Where the three parts of an archive are read from. */
export interface ArchiveParts {
  /** Directory holding `haven-archive.json`. */
  headerDir: string;
  /** The checkpoint directory (its `logs/` are left out). */
  checkpointDir: string;
  /** The image store's `image.tar`. */
  imageTar: string;
}

/**
 * Writes the archive straight from where the parts are — no staging copy,
 * which for a checkpoint in the staging tmpfs would cross file systems —
 * renaming the checkpoint directory to `checkpoint/` on the way.
 */
export async function writeArchive(
  file: string,
  parts: ArchiveParts,
  compression: ArchiveCompression,
): Promise<void> {
  const tmp = `${file}.partial-${process.pid}`;
  const id = basename(parts.checkpointDir);
  if (!/^[\w.-]+$/.test(id)) throw new InvalidArgumentError(`unexpected checkpoint directory name "${id}"`);
  try {
    await run([
      'tar',
      ...compressorFlag(compression),
      '-cf',
      tmp,
      // r,h: rename member and hard-link names, never symlink targets inside the container's files.
      `--transform=flags=rh;s,^${id.replace(/\./g, '\\.')}\\(/\\|$\\),checkpoint\\1,`,
      `--exclude=${id}/logs`,
      '-C',
      parts.headerDir,
      'haven-archive.json',
      '-C',
      dirname(parts.checkpointDir),
      id,
      '-C',
      dirname(parts.imageTar),
      basename(parts.imageTar),
    ]);
    await run(['mv', '-f', tmp, file]);
  } catch (error) {
    await run(['rm', '-f', tmp], { allowFailure: true });
    throw error;
  }
}

/** Writes the header into a staging directory. */
export async function writeHeader(stagingDir: string, header: ArchiveHeader): Promise<void> {
  await writeFile(join(stagingDir, 'haven-archive.json'), JSON.stringify(header, null, 2));
}

/**
 * Extracts an archive (any compression: tar detects it) into `dir` and
 * returns its header. Refuses archives that are not Haven's, or that hold
 * paths outside the three top-level entries.
 */
export async function extractArchive(file: string, dir: string): Promise<ArchiveHeader> {
  if (!existsSync(file)) throw new InvalidArgumentError(`archive "${file}" does not exist`);
  const listing = await run(['tar', '-tf', file], { allowFailure: true });
  if (listing.code !== 0) {
    throw new InvalidArgumentError(
      `"${file}" is not a readable archive: ${listing.stderr.trim().split('\n').pop() ?? ''}`,
    );
  }
  for (const entry of listing.stdout.split('\n').filter((l) => l.length > 0)) {
    const clean = entry.replace(/^\.\//, '');
    const top = clean.split('/')[0];
    if (
      clean.split('/').includes('..') ||
      clean.startsWith('/') ||
      !['haven-archive.json', 'checkpoint', 'image.tar'].includes(top ?? '')
    ) {
      throw new InvalidArgumentError(`archive "${file}" holds an unexpected path "${entry}": refusing it`);
    }
  }
  const extracted = await run(['tar', '--numeric-owner', '-xpf', file, '-C', dir], { allowFailure: true });
  if (extracted.code !== 0) {
    throw new InvalidArgumentError(
      `archive "${file}" is damaged: ${extracted.stderr.trim().split('\n').pop() ?? ''}`,
    );
  }
  let header: ArchiveHeader;
  try {
    header = JSON.parse(await readFile(join(dir, 'haven-archive.json'), 'utf8')) as ArchiveHeader;
  } catch {
    throw new InvalidArgumentError(
      `"${file}" is not a Haven checkpoint archive (no readable haven-archive.json)`,
    );
  }
  if (header.format !== 'haven-checkpoint-archive') {
    throw new InvalidArgumentError(`"${file}" is not a Haven checkpoint archive`);
  }
  if (header.version > ARCHIVE_VERSION) {
    throw new FailedPreconditionError(
      `archive format ${header.version} is newer than this Haven reads (${ARCHIVE_VERSION})`,
    );
  }
  return header;
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
