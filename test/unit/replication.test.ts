/**
 * The replication format on real files (no containers): a directory cut
 * into chunks and rebuilt is the same tree; zero chunks travel as nothing;
 * a second epoch with one page changed needs one new chunk; a chunk damaged
 * on the backup's disk is caught; commits need every chunk; pruning keeps the
 * newest two epochs; manifests with unsafe paths are refused.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  lstat,
  lutimes,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import {
  assembleDirectory,
  CHUNK_BYTES,
  chunkDirectory,
  chunkHashes,
  EPOCH_MANIFEST_VERSION,
  ZERO_CHUNK,
  type EpochManifest,
} from '../../src/replication/chunks.js';
import { ReplicaStore, validateEpochManifest } from '../../src/replication/replica-store.js';

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'haven-replication-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

async function tree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const full = join(d, e.name);
      const rel = relative(dir, full);
      const info = await lstat(full);
      if (e.isDirectory()) {
        out[rel] = `dir ${(info.mode & 0o7777).toString(8)}`;
        await walk(full);
      } else if (e.isSymbolicLink()) out[rel] = `link ${await readlink(full)}`;
      else
        out[rel] = `file ${(info.mode & 0o7777).toString(8)} ${createHash('sha256')
          .update(await readFile(full))
          .digest('hex')}`;
    }
  };
  await walk(dir);
  return out;
}

async function sampleCheckpoint(dir: string, page: number): Promise<void> {
  await mkdir(join(dir, 'criu'), { recursive: true });
  await mkdir(join(dir, 'rootfs-diff', 'data'), { recursive: true, mode: 0o750 });
  const pages = Buffer.alloc(3 * CHUNK_BYTES + 1234); // chunk 1 stays all zero
  pages.fill(7, 0, CHUNK_BYTES);
  pages.writeUInt32BE(page, 2 * CHUNK_BYTES + 10);
  await writeFile(join(dir, 'criu', 'pages-1.img'), pages);
  await writeFile(join(dir, 'rootfs-diff', 'data', 'dump.rdb'), 'redis data', { mode: 0o640 });
  await writeFile(join(dir, 'manifest.json'), '{}');
  await symlink('data/dump.rdb', join(dir, 'rootfs-diff', 'latest'));
  // The skeleton tar carries directory and link times: fixed here, so that two
  // samples made across a second boundary differ only in their page.
  const fixed = new Date('2026-01-01T00:00:00Z');
  await lutimes(join(dir, 'rootfs-diff', 'latest'), fixed, fixed);
  for (const sub of ['rootfs-diff/data', 'rootfs-diff', 'criu', '.'])
    await utimes(join(dir, sub), fixed, fixed);
}

function manifestOf(epoch: number, chunked: Awaited<ReturnType<typeof chunkDirectory>>): EpochManifest {
  return {
    version: EPOCH_MANIFEST_VERSION,
    container: 'kv',
    epoch,
    checkpointId: `ck-${epoch}`,
    takenAt: new Date(epoch).toISOString(),
    createdAt: new Date(epoch).toISOString(),
    record: { name: 'kv' },
    skeleton: chunked.skeleton,
    files: chunked.files,
  };
}

async function ship(
  store: ReplicaStore,
  manifest: EpochManifest,
  read: (h: string) => Promise<Buffer>,
): Promise<number> {
  const missing = await store.missing(chunkHashes(manifest));
  const frames: Buffer[] = [];
  for (const hash of missing) {
    const data = await read(hash);
    const header = Buffer.alloc(36);
    header.writeUInt32BE(data.length, 0);
    Buffer.from(hash, 'hex').copy(header, 4);
    frames.push(header, data);
  }
  // Delivered in awkward pieces, as TCP may.
  const all = Buffer.concat(frames);
  const pieces = [all.subarray(0, 17), all.subarray(17, 5000), all.subarray(5000)].filter(
    (p) => p.length > 0,
  );
  await store.receive(Readable.from(pieces));
  await store.commit(manifest);
  return missing.length;
}

test('a checkpoint directory survives chunking, shipping and assembly exactly; zero chunks are never sent', async () => {
  const source = join(root, 'a');
  await sampleCheckpoint(source, 1);
  const chunked = await chunkDirectory(source);
  const pages = chunked.files.find((f) => f.path === 'criu/pages-1.img')!;
  assert.equal(pages.chunks.length, 4);
  assert.equal(pages.chunks[1], ZERO_CHUNK);
  const store = new ReplicaStore(join(root, 'backup-a'));
  const manifest = manifestOf(1000, chunked);
  const sent = await ship(store, manifest, chunked.read);
  assert.equal(sent, chunkHashes(manifest).length);
  const target = join(root, 'a-restored');
  await assembleDirectory(await store.manifest('kv', 1000), store.chunks, target);
  assert.deepEqual(await tree(target), await tree(source));
});

test('the next epoch with one page changed sends one chunk; the newest two epochs are kept', async () => {
  const store = new ReplicaStore(join(root, 'backup-b'));
  for (const [i, epoch] of [1000, 2000, 3000].entries()) {
    const dir = join(root, `b${i}`);
    await sampleCheckpoint(dir, i);
    const chunked = await chunkDirectory(dir);
    const sent = await ship(store, manifestOf(epoch, chunked), chunked.read);
    if (i > 0) assert.equal(sent, 1, 'only the changed page chunk travels');
  }
  assert.deepEqual(await store.epochs('kv'), [3000, 2000]);
});

test('a chunk damaged on the backup is caught at assembly; a commit lacking chunks is refused', async () => {
  const source = join(root, 'c');
  await sampleCheckpoint(source, 5);
  const chunked = await chunkDirectory(source);
  const store = new ReplicaStore(join(root, 'backup-c'));
  const manifest = manifestOf(1000, chunked);
  await ship(store, manifest, chunked.read);
  const victim = chunkHashes(manifest)[0]!;
  await writeFile(join(store.chunks.dir, victim.slice(0, 2), victim), 'bit rot');
  await assert.rejects(
    assembleDirectory(manifest, store.chunks, join(root, 'c-restored')),
    /damaged on disk/,
  );

  const other = new ReplicaStore(join(root, 'backup-d'));
  await assert.rejects(other.commit(manifest), /lacks \d+ chunks/);
  assert.deepEqual(await other.epochs('kv'), []);
  await assert.rejects(store.chunks.put(victim, Buffer.from('not it')), /arrived damaged/);
});

test('manifests with unsafe paths or a wrong shape are refused', () => {
  const good = manifestOf(5, {
    files: [],
    skeleton: { size: 0, chunks: [] },
    read: () => Promise.resolve(Buffer.alloc(0)),
  });
  assert.doesNotThrow(() => validateEpochManifest(good));
  // The service's clients at the cut (continuous protection), tickled by a backup that takes over.
  assert.doesNotThrow(() =>
    validateEpochManifest({ ...good, clients: [{ port: 6379, address: '10.88.255.10', clientPort: 40000 }] }),
  );
  for (const bad of [
    { ...good, version: 99 },
    { ...good, container: '../x' },
    {
      ...good,
      files: [{ path: '../../etc/passwd', size: 1, mode: 0o644, uid: 0, gid: 0, chunks: ['zero'] }],
    },
    { ...good, files: [{ path: 'a', size: CHUNK_BYTES * 2, mode: 0o644, uid: 0, gid: 0, chunks: ['zero'] }] },
    { ...good, skeleton: { size: 1, chunks: ['nothex'] } },
    { ...good, clients: 'all' },
    { ...good, clients: [{ port: 0, address: '10.88.255.10', clientPort: 40000 }] },
    { ...good, clients: [{ port: 6379, address: '10.88.255.10; reboot', clientPort: 40000 }] },
    { ...good, clients: [{ port: 6379, address: '10.88.255.10', clientPort: 65536 }] },
    { ...good, clients: [null] },
    null,
  ]) {
    assert.throws(() => validateEpochManifest(bad), /malformed|invalid container name/);
  }
});

/** A manifest of `kv` naming exactly `hashes` (one 4 KiB chunk each). */
function manifestNaming(epoch: number, hashes: readonly string[]): EpochManifest {
  return {
    ...manifestOf(epoch, {
      files: [],
      skeleton: { size: 0, chunks: [] },
      read: () => Promise.resolve(Buffer.alloc(0)),
    }),
    chunkBytes: 4096,
    files: [
      {
        path: 'criu/pages-1.img',
        size: hashes.length * 4096,
        mode: 0o600,
        uid: 0,
        gid: 0,
        chunks: [...hashes],
      },
    ],
  };
}

/** Stores `count` chunks of distinct content and ages them past every prune grace. */
async function oldChunks(store: ReplicaStore, count: number, seed: number): Promise<string[]> {
  const hashes: string[] = [];
  const hourAgo = new Date(Date.now() - 3600_000);
  for (let i = 0; i < count; i++) {
    const data = Buffer.alloc(4096, (seed * 31 + i) % 251);
    data.writeUInt32BE(seed * 1000 + i, 0);
    const hash = createHash('sha256').update(data).digest('hex');
    await store.chunks.put(hash, data);
    await utimes(join(store.chunks.dir, hash.slice(0, 2), hash), hourAgo, hourAgo);
    hashes.push(hash);
  }
  return hashes;
}

test('a prune keeps every chunk of an epoch committed while it runs (it asks live, not from a list read before)', async () => {
  const store = new ReplicaStore(join(root, 'backup-prune-live'));
  const [kept, revived, orphan] = [
    await oldChunks(store, 3, 1),
    await oldChunks(store, 2, 2),
    await oldChunks(store, 2, 3),
  ];
  await store.missing(kept, 'kv');
  await store.commit(manifestNaming(1000, kept));
  // The commit lands after the prune has read what is kept and before its walk
  // removes anything: the old chunks it names (held here, so never re-sent) must stay.
  const walk = store.chunks.prune.bind(store.chunks);
  store.chunks.prune = async (needed, graceMs) => {
    await store.missing(revived, 'kv');
    await store.commit(manifestNaming(2000, [...kept, ...revived]));
    return walk(needed, graceMs);
  };
  await store.drop('unrelated');
  store.chunks.prune = walk;
  for (const h of [...kept, ...revived]) assert.ok(store.chunks.has(h), `chunk ${h.slice(0, 8)} kept`);
  for (const h of orphan) assert.ok(!store.chunks.has(h), 'a chunk no epoch names goes');
});

test('chunks pinned for the next epoch survive the previous commit; abandoned pins lapse two commits later', async () => {
  const store = new ReplicaStore(join(root, 'backup-pins'));
  const [first, next, abandoned] = [
    await oldChunks(store, 2, 4),
    await oldChunks(store, 2, 5),
    await oldChunks(store, 2, 6),
  ];
  await store.missing(abandoned, 'kv'); // an epoch whose transfer failed
  await store.missing(first, 'kv');
  // Pipelined: the next epoch asks before the previous one commits.
  await store.missing([...first, ...next], 'kv');
  await store.commit(manifestNaming(1000, first));
  await store.drop('unrelated'); // a prune, now
  for (const h of next) assert.ok(store.chunks.has(h), 'pinned for the epoch on its way');
  await store.commit(manifestNaming(2000, [...first, ...next]));
  await store.missing(first, 'kv');
  await store.commit(manifestNaming(3000, first));
  await store.drop('unrelated');
  for (const h of abandoned) assert.ok(!store.chunks.has(h), 'an abandoned epoch no longer pins');
  for (const h of [...first, ...next]) assert.ok(store.chunks.has(h), 'named by a kept epoch');

  // A restarted agent reads what its kept epochs name before its first prune.
  const restarted = new ReplicaStore(join(root, 'backup-pins'));
  await restarted.drop('unrelated');
  for (const h of [...first, ...next]) assert.ok(restarted.chunks.has(h), 'kept across a restart');
  await restarted.drop('kv');
  for (const h of first) assert.ok(!restarted.chunks.has(h), 'a dropped replica leaves no chunk behind');
});
