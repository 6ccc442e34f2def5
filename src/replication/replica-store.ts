/**
 * The backup's side of checkpoint replication: the chunks it holds and the
 * epochs it has committed, per container, under `<state>/replicas/`.
 *
 * An epoch is committed when its manifest is on disk and every chunk it names
 * is in the chunk store (each was verified on arrival); only then is it
 * acknowledged. Older epochs are pruned only after a newer one committed, and
 * the newest two are kept, so a damaged newest epoch still leaves one to
 * restore. Nothing a failed transfer or a full disk does can remove the last
 * committed epoch: chunks are written before, and pruned after, a commit.
 */
import { isIPv4 } from 'node:net';
import { existsSync, writeFileSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  CorruptCheckpointError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
} from '../core/errors.js';
import { logger } from '../core/log.js';
import { validateName } from '../core/names.js';
import {
  ChunkStore,
  chunkHashes,
  EPOCH_MANIFEST_VERSION,
  ZERO_CHUNK,
  CHUNK_BYTES,
  type EpochManifest,
} from './chunks.js';
import { verifyManifest } from './manifest-mac.js';
import { readFrames } from './transfer.js';

/** Committed epochs kept per container. */
export const EPOCHS_KEPT = 2;

/** How long an epoch on its way keeps its chunks from pruning without being committed. */
const PIN_MS = 10 * 60_000;
/** Pruning runs at most this often. */
const PRUNE_EVERY_MS = 2000;
/** When every transfer pins its chunks, unreferenced chunks older than this go. */
const PINNED_GRACE_MS = 10_000;

/** What a backup holds of one container. */
export interface ReplicaSummary {
  name: string;
  /** Committed epochs, newest first. */
  epochs: number[];
}

const HASH = /^[0-9a-f]{64}$/;
/** Client connections an epoch may list (a proxy with more lists only this many). */
export const MAX_SERVICE_CLIENTS = 4096;

/** Checks the shape of a manifest received from a primary. */
export function validateEpochManifest(value: unknown): EpochManifest {
  const m = value as Partial<EpochManifest> | null;
  const chunkList = (x: unknown): x is string[] =>
    Array.isArray(x) && x.every((h) => typeof h === 'string' && (h === ZERO_CHUNK || HASH.test(h)));
  if (
    !m ||
    typeof m !== 'object' ||
    m.version !== EPOCH_MANIFEST_VERSION ||
    typeof m.container !== 'string' ||
    typeof m.epoch !== 'number' ||
    !Number.isSafeInteger(m.epoch) ||
    m.epoch <= 0 ||
    typeof m.checkpointId !== 'string' ||
    typeof m.takenAt !== 'string' ||
    !/^ck-[0-9a-z-]{1,60}$/.test(m.checkpointId) ||
    typeof m.record !== 'object' ||
    !m.skeleton ||
    !chunkList(m.skeleton.chunks) ||
    !Array.isArray(m.files)
  ) {
    throw new InvalidArgumentError('malformed epoch manifest');
  }
  validateName(m.container, 'container');
  // A power of two from 4 KiB to 4 MiB (absent: the default).
  const chunkBytes = m.chunkBytes ?? CHUNK_BYTES;
  if (
    !Number.isSafeInteger(chunkBytes) ||
    chunkBytes < 4096 ||
    chunkBytes > 4 << 20 ||
    (chunkBytes & (chunkBytes - 1)) !== 0
  ) {
    throw new InvalidArgumentError(`malformed epoch manifest: chunkBytes ${String(m.chunkBytes)}`);
  }
  const port = (n: unknown): boolean => Number.isInteger(n) && (n as number) >= 1 && (n as number) <= 65535;
  if (
    m.clients !== undefined &&
    (!Array.isArray(m.clients) ||
      m.clients.length > MAX_SERVICE_CLIENTS ||
      !m.clients.every(
        (c) =>
          c !== null &&
          typeof c === 'object' &&
          port(c.port) &&
          port(c.clientPort) &&
          typeof c.address === 'string' &&
          isIPv4(c.address),
      ))
  ) {
    throw new InvalidArgumentError('malformed epoch manifest: clients');
  }
  for (const f of m.files) {
    if (
      typeof f.path !== 'string' ||
      f.path.startsWith('/') ||
      f.path.split('/').includes('..') ||
      !Number.isSafeInteger(f.size) ||
      f.size < 0 ||
      !chunkList(f.chunks) ||
      f.chunks.length !== Math.ceil(f.size / chunkBytes)
    ) {
      throw new InvalidArgumentError(`malformed epoch manifest entry ${String(f.path).slice(0, 100)}`);
    }
  }
  return m as EpochManifest;
}

/** Replicas held by this host. */
export class ReplicaStore {
  readonly chunks: ChunkStore;

  /**
   * @param options.manifestKey the cluster's manifest key (`manifest-mac.ts`): manifests are
   *   refused on commit, and reported damaged on read, unless their MAC matches. Without it
   *   (tests of the store alone) MACs are not checked.
   */
  constructor(
    private readonly dir: string,
    private readonly options: { manifestKey?: Buffer } = {},
  ) {
    this.chunks = new ChunkStore(join(dir, 'chunks'));
  }

  private epochsDir(name: string): string {
    return join(this.dir, 'containers', validateName(name, 'container'), 'epochs');
  }

  /**
   * The hashes among `hashes` this host does not hold. With `name` (the
   * container whose epoch is on its way), all of them are pinned until an
   * epoch of that container that names them is committed (or for
   * {@link PIN_MS}), so no prune during the transfer takes them from the
   * epoch about to be committed. Without it, those held are touched instead
   * (the prune's grace then protects them).
   */
  async missing(hashes: readonly string[], name?: string): Promise<string[]> {
    const lacking: string[] = [];
    if (name !== undefined) {
      const pins = this.pinned.get(name) ?? { at: 0, hashes: new Map<string, number>() };
      pins.at = Date.now();
      const order = ++this.pinOrder;
      for (const h of hashes) {
        pins.hashes.set(h, order);
        if (!this.chunks.has(h)) lacking.push(h);
      }
      this.pinned.set(name, pins);
      return lacking;
    }
    const now = new Date();
    this.lastUnpinned = now.getTime();
    for (const h of hashes) {
      if (this.chunks.has(h)) await this.chunks.touch(h, now);
      else lacking.push(h);
    }
    return lacking;
  }

  /** When a transfer last asked without pinning: the prune's long grace protects it for {@link PIN_MS}. */
  private lastUnpinned = 0;

  /**
   * Chunks of epochs on their way, by container: when the container last
   * asked, and each hash with the {@link pinOrder} of its latest ask (see
   * {@link missing}). Per hash, not per epoch: continuous protection asks for
   * the next epoch's chunks while the previous one may still be committing.
   */
  private readonly pinned = new Map<string, { at: number; hashes: Map<string, number> }>();
  /** Counts asks and commits, to order them (clocks do not: many fall in one millisecond). */
  private pinOrder = 0;
  /** Where each container's latest two commits began, in {@link pinOrder}: pins before the first are stale. */
  private readonly commitsBegun = new Map<string, number[]>();

  /**
   * How many committed epochs (and commits under way) name each chunk. Kept
   * in memory and consulted live by the prune, chunk by chunk: a prune that
   * read the manifests once, then walked the store for seconds, removed
   * chunks that epochs committed during the walk had been told were here.
   */
  private readonly references = new Map<string, number>();
  /** The chunks each epoch added to {@link references}, by container and epoch. */
  private readonly epochReferences = new Map<string, Map<number, string[]>>();
  private lastPrune = 0;
  /** The prune under way, if any: one at a time. */
  private pruning: Promise<void> | undefined;
  /** Reading the kept manifests into {@link references}, once, before the first commit, prune or drop. */
  private loading: Promise<void> | undefined;

  private loadReferences(): Promise<void> {
    this.loading ??= (async () => {
      for (const replica of await this.list()) {
        for (const epoch of replica.epochs) {
          // A damaged manifest is skipped: it can never be restored, and its chunks may go.
          const manifest = await this.manifest(replica.name, epoch).catch(() => undefined);
          if (manifest) this.reference(replica.name, epoch, chunkHashes(manifest));
        }
      }
    })().catch((error: unknown) => {
      // Tried again next time (an unreadable directory must not refuse every commit for ever).
      this.loading = undefined;
      throw error;
    });
    return this.loading;
  }

  /** Counts an epoch's chunks as named (once per epoch). */
  private reference(name: string, epoch: number, hashes: readonly string[]): boolean {
    const epochs = this.epochReferences.get(name) ?? new Map<number, string[]>();
    if (epochs.has(epoch)) return false;
    epochs.set(epoch, [...hashes]);
    this.epochReferences.set(name, epochs);
    for (const h of hashes) this.references.set(h, (this.references.get(h) ?? 0) + 1);
    return true;
  }

  /** Forgets an epoch's chunks (see {@link reference}). */
  private unreference(name: string, epoch: number): void {
    const epochs = this.epochReferences.get(name);
    const hashes = epochs?.get(epoch);
    if (!epochs || !hashes) return;
    epochs.delete(epoch);
    if (epochs.size === 0) this.epochReferences.delete(name);
    for (const h of hashes) {
      const count = (this.references.get(h) ?? 0) - 1;
      if (count > 0) this.references.set(h, count);
      else this.references.delete(h);
    }
  }

  /** True if a kept epoch, a commit under way or an epoch on its way names the chunk. */
  private needed(hash: string): boolean {
    if (this.references.has(hash)) return true;
    for (const pins of this.pinned.values()) if (pins.hashes.has(hash)) return true;
    return false;
  }

  /** Unpins a committed epoch's chunks, and those pinned before the container's previous commit began (abandoned epochs'). */
  private unpin(name: string, committed: readonly string[], begun: number): void {
    const begins = [...(this.commitsBegun.get(name) ?? []), begun].slice(-2);
    this.commitsBegun.set(name, begins);
    const pins = this.pinned.get(name)?.hashes;
    if (!pins) return;
    for (const h of committed) pins.delete(h);
    if (begins.length === 2) for (const [h, order] of pins) if (order < begins[0]!) pins.delete(h);
    if (pins.size === 0) this.pinned.delete(name);
  }

  /**
   * Stores chunks from a framed stream (format 1, or 2 with compressed
   * chunks: see `transfer.ts`), verifying each against its hash after
   * decompression. Returns how many arrived.
   */
  async receive(stream: AsyncIterable<Buffer>, format?: string): Promise<number> {
    let count = 0;
    for await (const chunk of readFrames(stream, format)) {
      try {
        await this.chunks.put(chunk.hash, chunk.data);
      } catch (error) {
        // Refused (the sender hears 422) and reported here: bytes that do not hash to their name.
        if (error instanceof CorruptCheckpointError)
          logger('agent.replication').warn(error.message, { chunk: chunk.hash });
        throw error;
      }
      count++;
    }
    return count;
  }

  /**
   * Commits an epoch: every chunk must be here. The manifest is written
   * atomically and, unless `durable` is false, synced before the
   * acknowledgement; then older epochs beyond {@link EPOCHS_KEPT} are
   * removed, and unreferenced chunks pruned after the answer. A live
   * migration's epochs are not synced: if this host dies before the copy
   * runs here the migration rolls back to the source (which keeps its own
   * final state), and once it runs here its state is newer than any epoch —
   * so the ~15 ms of the fsync
   * would only lengthen the downtime. (A manifest torn by a crash is read
   * back as a damaged epoch and skipped.)
   */
  async commit(manifest: EpochManifest, options: { durable?: boolean } = {}): Promise<void> {
    if (this.options.manifestKey) {
      try {
        verifyManifest(
          manifest,
          this.options.manifestKey,
          `epoch ${manifest.epoch} of "${manifest.container}"`,
        );
      } catch (error) {
        // Refused and reported: a forged or altered manifest is an attack or a broken sender.
        logger('agent.replication').warn((error as Error).message, {
          container: manifest.container,
          epoch: manifest.epoch,
        });
        throw error;
      }
    }
    const begun = ++this.pinOrder;
    await this.loadReferences();
    const hashes = chunkHashes(manifest);
    // Named before the check: from here no prune can take a chunk found present.
    const referenced = this.reference(manifest.container, manifest.epoch, hashes);
    let committed = false;
    try {
      const lacking = hashes.filter((h) => !this.chunks.has(h));
      if (lacking.length > 0) {
        throw new FailedPreconditionError(
          `epoch ${manifest.epoch} of "${manifest.container}" lacks ${lacking.length} chunks`,
        );
      }
      const dir = this.epochsDir(manifest.container);
      await mkdir(dir, { recursive: true });
      const file = join(dir, `${manifest.epoch}.json`);
      const temp = `${file}.tmp`;
      if (options.durable === false) {
        // Not synced: written at once (see SMALL_FILE_BYTES on why synchronously).
        writeFileSync(temp, JSON.stringify(manifest));
      } else {
        const handle = await open(temp, 'w');
        try {
          await handle.writeFile(JSON.stringify(manifest));
          await handle.sync();
        } finally {
          await handle.close();
        }
      }
      await rename(temp, file);
      committed = true;
    } finally {
      if (!committed && referenced) this.unreference(manifest.container, manifest.epoch);
    }
    this.unpin(manifest.container, hashes, begun);
    const epochs = await this.epochs(manifest.container);
    for (const old of epochs.slice(EPOCHS_KEPT)) {
      await rm(join(this.epochsDir(manifest.container), `${old}.json`), { force: true });
      this.unreference(manifest.container, old);
    }
    this.pruneLater();
  }

  /** Committed epochs of a container, newest first. */
  async epochs(name: string): Promise<number[]> {
    const dir = this.epochsDir(name);
    if (!existsSync(dir)) return [];
    return (await readdir(dir))
      .filter((f) => /^\d+\.json$/.test(f))
      .map((f) => Number(f.slice(0, -5)))
      .sort((a, b) => b - a);
  }

  /** One committed epoch's manifest. */
  async manifest(name: string, epoch: number): Promise<EpochManifest> {
    const file = join(this.epochsDir(name), `${epoch}.json`);
    if (!existsSync(file)) throw new NotFoundError(`no committed epoch ${epoch} of "${name}" here`);
    try {
      const manifest = validateEpochManifest(JSON.parse(await readFile(file, 'utf8')));
      // Checked again before every restore: a manifest altered on this disk is a damaged epoch.
      if (this.options.manifestKey) verifyManifest(manifest, this.options.manifestKey);
      return manifest;
    } catch (error) {
      throw new CorruptCheckpointError(
        `epoch ${epoch} of "${name}" is unreadable: ${(error as Error).message}`,
      );
    }
  }

  /** Every container this host holds a replica of. */
  async list(): Promise<ReplicaSummary[]> {
    const root = join(this.dir, 'containers');
    if (!existsSync(root)) return [];
    const names = (await readdir(root)).sort();
    return Promise.all(names.map(async (name) => ({ name, epochs: await this.epochs(name) })));
  }

  /** Forgets a container's replica and prunes the chunks no other epoch names. */
  async drop(name: string): Promise<void> {
    await this.loadReferences();
    await rm(join(this.dir, 'containers', validateName(name, 'container')), { recursive: true, force: true });
    for (const epoch of [...(this.epochReferences.get(name)?.keys() ?? [])]) this.unreference(name, epoch);
    this.pinned.delete(name);
    this.commitsBegun.delete(name);
    await this.pruneChunks(true);
  }

  /**
   * Starts a prune after a commit without waiting for it. A prune reads every
   * kept manifest and walks the chunk store (~10 ms here, growing with the
   * store), and a migration's final round commits inside the container's
   * downtime. Chunks arriving meanwhile are safe: a prune removes only
   * chunks past a grace period, and those of epochs on their way are pinned.
   */
  private pruneLater(): void {
    if (this.pruning || Date.now() - this.lastPrune < PRUNE_EVERY_MS) return;
    this.pruning = this.pruneChunks()
      .catch((error: unknown) => logger('agent.replication').warn(`pruning chunks failed: ${String(error)}`))
      .finally(() => (this.pruning = undefined));
  }

  /**
   * Removes chunks no kept epoch names and no epoch on its way needs, asking
   * {@link needed} live for each (see `ChunkStore.prune`). At most every
   * {@link PRUNE_EVERY_MS} (continuous protection commits many epochs a
   * second), unless `now`.
   */
  private async pruneChunks(now = false): Promise<void> {
    if (!now && Date.now() - this.lastPrune < PRUNE_EVERY_MS) return;
    this.lastPrune = Date.now();
    await this.loadReferences();
    for (const [name, pins] of this.pinned) if (Date.now() - pins.at > PIN_MS) this.pinned.delete(name);
    // Pinned transfers are kept by `needed`; an unpinned one lately needs the long grace.
    await this.chunks.prune(
      (hash) => this.needed(hash),
      Date.now() - this.lastUnpinned < PIN_MS ? 120_000 : PINNED_GRACE_MS,
    );
  }
}
