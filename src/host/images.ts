/**
 * The host's image store: root filesystems stored by content hash under
 * `<state>/images/<sha256>/rootfs`, read-only lower layers for containers.
 *
 * An image comes from a directory or from a tar archive as `docker export`
 * writes it. A directory is hashed as a deterministic tar stream (sorted
 * names, zeroed times and owners), so the same tree always has the same ID.
 * The tar the ID was computed from is kept beside the root filesystem
 * (`image.tar`): archives ship it, and importing it again costs one hash.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../core/exec.js';
import { InvalidArgumentError, NotFoundError } from '../core/errors.js';

/** An image in the store. */
export interface ImageRecord {
  /** `sha256:<hex>` of the image's tar stream. */
  id: string;
  /** Where it was imported from, for people. */
  source: string;
  importedAt: string;
}

/** Content-addressed image store of one host. */
export class ImageStore {
  constructor(private readonly stateDir: string) {}

  private get root(): string {
    return join(this.stateDir, 'images');
  }

  /** Directory holding the image's root filesystem. */
  rootfsOf(id: string): string {
    return join(this.root, hexOf(id), 'rootfs');
  }

  /**
   * Returns the image for `ref`: an existing directory or tar file is imported
   * (idempotently: the same content is stored once); otherwise `ref` must be
   * an image ID (`sha256:…`, or a unique hex prefix of one).
   */
  async resolve(ref: string): Promise<ImageRecord> {
    if (ref.startsWith('/') || ref.startsWith('.')) {
      if (!existsSync(ref)) throw new NotFoundError(`image "${ref}" does not exist`);
      return this.import(ref);
    }
    return this.get(ref);
  }

  /** Finds an image by ID or unique ID prefix. */
  async get(ref: string): Promise<ImageRecord> {
    const hex = ref.replace(/^sha256:/, '');
    if (!/^[0-9a-f]{6,64}$/.test(hex)) {
      throw new InvalidArgumentError(`invalid image reference "${ref}": give a path or an image ID`);
    }
    const entries = existsSync(this.root) ? await readdir(this.root) : [];
    const matches = entries.filter((e) => e.startsWith(hex) && !e.startsWith('.'));
    if (matches.length === 0) throw new NotFoundError(`image "${ref}" is not in this host's store`);
    if (matches.length > 1) throw new InvalidArgumentError(`image reference "${ref}" is ambiguous`);
    return JSON.parse(await readFile(join(this.root, matches[0] ?? '', 'image.json'), 'utf8')) as ImageRecord;
  }

  /**
   * A tar of the image: the bytes its ID was computed from when the store
   * kept them, else a deterministic tar of its root filesystem (made once).
   */
  async tarOf(id: string): Promise<string> {
    const tar = join(this.root, hexOf(id), 'image.tar');
    if (!existsSync(tar)) {
      await deterministicTar(this.rootfsOf(id), `${tar}.tmp`);
      await rename(`${tar}.tmp`, tar);
    }
    return tar;
  }

  /**
   * Imports a root filesystem directory or tar archive; returns its record.
   * `sha256`: the tar's hash, when the caller has just computed it from the
   * very bytes (an archive's import hashes its members as they stream by).
   */
  async import(source: string, options: { sha256?: string } = {}): Promise<ImageRecord> {
    await mkdir(this.root, { recursive: true });
    const info = await stat(source);
    const staging = join(this.root, `.import-${process.pid}-${Date.now()}`);
    await mkdir(staging, { recursive: true });
    try {
      let tarPath = source;
      if (info.isDirectory()) {
        tarPath = join(staging, 'image.tar');
        await deterministicTar(source, tarPath);
      } else if (!info.isFile()) {
        throw new InvalidArgumentError(`image "${source}" is neither a directory nor a tar file`);
      }
      const known = tarPath === source ? options.sha256 : undefined;
      const id = `sha256:${known ?? (await sha256File(tarPath))}`;
      const finalDir = join(this.root, hexOf(id));
      if (!existsSync(join(finalDir, 'image.json'))) {
        const rootfs = join(staging, 'rootfs');
        await mkdir(rootfs);
        const untar = await run(['tar', '--numeric-owner', '-xpf', tarPath, '-C', rootfs], {
          allowFailure: true,
        });
        if (untar.code !== 0) {
          throw new InvalidArgumentError(
            `image "${source}" is not a readable tar archive: ${untar.stderr.trim()}`,
          );
        }
        const record: ImageRecord = { id, source, importedAt: new Date().toISOString() };
        await writeFile(join(staging, 'image.json'), JSON.stringify(record, null, 2));
        // Keep the exact bytes the ID was computed from: exports ship them as they are.
        if (tarPath !== join(staging, 'image.tar')) await run(['cp', tarPath, join(staging, 'image.tar')]);
        await rm(finalDir, { recursive: true, force: true });
        await rename(staging, finalDir);
        return record;
      }
      return JSON.parse(await readFile(join(finalDir, 'image.json'), 'utf8')) as ImageRecord;
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }
}

function hexOf(id: string): string {
  return id.replace(/^sha256:/, '');
}

/** Tars a directory so that the same tree always gives the same bytes: sorted names, zeroed times and owners. */
async function deterministicTar(dir: string, out: string): Promise<void> {
  await run([
    'tar',
    '--sort=name',
    '--mtime=@0',
    '--owner=0',
    '--group=0',
    '--numeric-owner',
    '-C',
    dir,
    '-cf',
    out,
    '.',
  ]);
}

/**
 * A deterministic tar of `dir` in a temporary directory (the bytes a host
 * would hash for the same tree), with a cleanup that removes it.
 */
export async function deterministicTarFile(
  dir: string,
): Promise<{ file: string; cleanup: () => Promise<void> }> {
  const temp = await mkdtemp(join(tmpdir(), 'haven-image-'));
  const file = join(temp, 'image.tar');
  await deterministicTar(dir, file);
  return { file, cleanup: () => rm(temp, { recursive: true, force: true }) };
}

/** SHA-256 of a file's content, streamed. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 8 << 20 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}
