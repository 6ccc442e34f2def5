/**
 * The cluster's image registry, kept by the controller: image tars stored by
 * content hash (`<dir>/<hex>.tar`), with optional names (`redis`) pointing at
 * IDs. An upload is hashed as it streams to disk and only becomes visible,
 * by rename, once whole — and, when the uploader said which ID it is sending,
 * only if the bytes hash to it. Agents fetch tars by ID and hash them again.
 */
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import {
  CorruptCheckpointError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
} from '../core/errors.js';

/** An image as the registry lists it. */
export interface RegistryImage {
  id: string;
  bytes: number;
  names: string[];
  uploadedAt: string;
}

const NAME = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
const ID = /^(sha256:)?([0-9a-f]{6,64})$/;

/** Content-addressed image tars on the controller's disk. */
export class ImageRegistry {
  constructor(private readonly dir: string) {}

  /**
   * Stores an uploaded tar from `body`. `name` tags it; `expectId`, when
   * given, must equal the hash of what arrived (a truncated or altered upload
   * is refused and leaves nothing).
   */
  async put(
    body: NodeJS.ReadableStream,
    options: { name?: string; expectId?: string } = {},
  ): Promise<RegistryImage> {
    if (options.name !== undefined && !NAME.test(options.name)) {
      throw new InvalidArgumentError(`invalid image name "${options.name}"`);
    }
    await mkdir(this.dir, { recursive: true });
    const temp = join(
      this.dir,
      `.upload-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`,
    );
    const hash = createHash('sha256');
    let bytes = 0;
    try {
      await pipeline(
        body,
        new Transform({
          transform(chunk: Buffer, _encoding, callback) {
            hash.update(chunk);
            bytes += chunk.length;
            callback(null, chunk);
          },
        }),
        createWriteStream(temp),
      );
      if (bytes === 0) throw new InvalidArgumentError('the image upload was empty');
      const id = `sha256:${hash.digest('hex')}`;
      if (options.expectId && options.expectId !== id) {
        throw new CorruptCheckpointError(
          `the image upload hashes to ${id}, not ${options.expectId}: refused`,
        );
      }
      const hex = id.slice(7);
      await rename(temp, join(this.dir, `${hex}.tar`));
      const meta = await this.meta(hex);
      const names = new Set(meta?.names ?? []);
      if (options.name) {
        // A name points at one image: move it here from any other.
        for (const other of await this.list()) {
          if (other.id !== id && other.names.includes(options.name)) {
            await this.writeMeta({ ...other, names: other.names.filter((n) => n !== options.name) });
          }
        }
        names.add(options.name);
      }
      const record: RegistryImage = {
        id,
        bytes,
        names: [...names].sort(),
        uploadedAt: meta?.uploadedAt ?? new Date().toISOString(),
      };
      await this.writeMeta(record);
      return record;
    } finally {
      await rm(temp, { force: true });
    }
  }

  /** Every stored image. */
  async list(): Promise<RegistryImage[]> {
    if (!existsSync(this.dir)) return [];
    const images: RegistryImage[] = [];
    for (const entry of await readdir(this.dir)) {
      if (!entry.endsWith('.json')) continue;
      const meta = await this.meta(entry.slice(0, -5));
      if (meta) images.push(meta);
    }
    return images.sort((a, b) => a.id.localeCompare(b.id));
  }

  /** Resolves a name, a full ID or a unique ID prefix (≥ 6 hex) to a stored image. */
  async resolve(ref: string): Promise<RegistryImage> {
    const images = await this.list();
    const byName = images.find((i) => i.names.includes(ref));
    if (byName) return byName;
    const hex = ID.exec(ref)?.[2];
    if (!hex) {
      if (NAME.test(ref)) throw new NotFoundError(`no image named "${ref}" in the cluster (push it first)`);
      throw new InvalidArgumentError(
        `invalid image reference "${ref}": give an image name or ID, never a path`,
      );
    }
    const matches = images.filter((i) => i.id.slice(7).startsWith(hex));
    if (matches.length === 0) throw new NotFoundError(`image "${ref}" is not in the cluster (push it first)`);
    if (matches.length > 1) throw new InvalidArgumentError(`image reference "${ref}" is ambiguous`);
    return matches[0]!;
  }

  /**
   * Path of a stored image's tar.
   * @throws FailedPreconditionError when the image is known but its tar is
   *   gone (deleted or lost on this disk): push it again.
   */
  async tarPath(ref: string): Promise<{ image: RegistryImage; path: string }> {
    const image = await this.resolve(ref);
    const path = join(this.dir, `${image.id.slice(7)}.tar`);
    await stat(path).catch((error: NodeJS.ErrnoException) => {
      throw new FailedPreconditionError(
        `image ${image.id.slice(0, 19)}… is listed but its data is gone from the controller (${error.code ?? String(error)}): push it again`,
      );
    });
    return { image, path };
  }

  private async meta(hex: string): Promise<RegistryImage | undefined> {
    const file = join(this.dir, `${hex}.json`);
    if (!existsSync(file)) return undefined;
    return JSON.parse(await readFile(file, 'utf8')) as RegistryImage;
  }

  private async writeMeta(image: RegistryImage): Promise<void> {
    const file = join(this.dir, `${image.id.slice(7)}.json`);
    await writeFile(`${file}.tmp`, JSON.stringify(image, null, 2));
    await rename(`${file}.tmp`, file);
  }
}
