/**
 * File-system change tracking for migration: sync rounds send every file's
 * chunks once, then only changed files — and of a large file only its
 * changed chunks; a file changed within a timestamp tick of a round is read
 * again; and after the rounds, a checkpoint's copy of the same trees names
 * no file chunk the destination lacks (the final round sends nothing more).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { cp, mkdir, mkdtemp, open, rm, utimes, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { CHUNK_BYTES, chunkDirectory } from '../../src/replication/chunks.js';
import { FileTracker, syncFiles, type LiveTree } from '../../src/replication/fs-sync.js';
import { ReplicaStore } from '../../src/replication/replica-store.js';
import { FRAMES_HEADER } from '../../src/replication/transfer.js';

let dir: string;
let server: Server;
let address: string;
let store: ReplicaStore;
let trees: LiveTree[];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'haven-fs-sync-'));
  store = new ReplicaStore(join(dir, 'replicas'));
  server = createServer((req, res) => {
    void (async () => {
      const reply = (status: number, body: unknown): void => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body));
      };
      try {
        if (req.url?.endsWith('/missing')) {
          const parts: Buffer[] = [];
          for await (const p of req) parts.push(p as Buffer);
          const { hashes } = JSON.parse(Buffer.concat(parts).toString()) as { hashes: string[] };
          return reply(200, { missing: await store.missing(hashes) });
        }
        const format = req.headers[FRAMES_HEADER];
        return reply(200, {
          stored: await store.receive(req, typeof format === 'string' ? format : undefined),
        });
      } catch (error) {
        return reply(422, { error: (error as Error).message });
      }
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  address = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const upper = join(dir, 'live', 'upper');
  const volume = join(dir, 'live', 'vol');
  await mkdir(join(upper, 'var', 'lib'), { recursive: true });
  await mkdir(volume, { recursive: true });
  await writeFile(join(upper, 'var', 'lib', 'big.bin'), randomBytes(4 * CHUNK_BYTES + 100));
  await writeFile(join(upper, 'small.txt'), 'hello');
  await writeFile(join(upper, 'holes.bin'), Buffer.alloc(2 * CHUNK_BYTES)); // all zero: never sent
  await writeFile(join(volume, 'data.log'), randomBytes(CHUNK_BYTES / 2));
  trees = [
    { prefix: 'rootfs-diff', dir: upper },
    { prefix: 'volumes/vol', dir: volume },
  ];
  await sleep(120); // past the racy window: the first round may trust what it sees
});

after(async () => {
  server.close();
  await rm(dir, { recursive: true, force: true });
});

const to = (): { address: string; token: string; name: string } => ({ address, token: 't', name: 'app' });

test('sync rounds: everything once, then only changed files, and of a large file only its changed chunk', async () => {
  const tracker = new FileTracker();
  const [first, ...rest] = await syncFiles(tracker, trees, to(), { smallBytes: 0, maxRounds: 1 });
  assert.equal(rest.length, 0);
  assert.equal(first!.files, 4);
  assert.equal(first!.changedFiles, 4);
  assert.equal(first!.sentChunks, 5 + 1 + 1); // big (5), small, data.log; zero chunks never
  // One page changed in the middle of the big file.
  const handle = await open(join(trees[0]!.dir, 'var', 'lib', 'big.bin'), 'r+');
  await handle.write(Buffer.from('changed'), 0, 7, 2 * CHUNK_BYTES + 10);
  await handle.close();
  await sleep(120);
  const [second] = await syncFiles(tracker, trees, to(), { maxRounds: 1 });
  assert.equal(second!.changedFiles, 1);
  assert.equal(second!.sentChunks, 1);
  assert.equal(second!.sentBytes, CHUNK_BYTES);
  const [third] = await syncFiles(tracker, trees, to(), { maxRounds: 1 });
  assert.deepEqual([third!.changedFiles, third!.sentChunks], [0, 0]);
});

test('a file changed within a tick of the round that read it is read again next round', async () => {
  const tracker = new FileTracker();
  await syncFiles(tracker, trees, to(), { maxRounds: 1 });
  const fresh = join(trees[1]!.dir, 'fresh.log');
  await writeFile(fresh, 'just now');
  // Its mtime in the round's tick whatever the host's load (a slow host could let 50 ms pass first).
  await utimes(fresh, new Date(), new Date(Date.now() + 1000));
  const [seen] = await syncFiles(tracker, trees, to(), { maxRounds: 1 });
  assert.equal(seen!.changedFiles, 1);
  // Unchanged since, but it was racily clean: read again (and found present on the destination).
  const [again] = await syncFiles(tracker, trees, to(), { maxRounds: 1 });
  assert.equal(again!.changedFiles, 1);
  assert.equal(again!.sentChunks, 0);
});

test('rounds stop when little is left; then a checkpoint copy of the trees lacks no file chunk on the destination', async () => {
  const reports = await syncFiles(new FileTracker(), trees, to());
  assert.ok(reports.length >= 1 && reports.length <= 4);
  assert.ok(reports.at(-1)!.readBytes < 1 << 20 || reports.length === 4);
  // The final round's checkpoint: the same files copied under the checkpoint's layout.
  const checkpoint = join(dir, 'checkpoint');
  for (const tree of trees) await cp(tree.dir, join(checkpoint, tree.prefix), { recursive: true });
  const chunked = await chunkDirectory(checkpoint);
  const fileChunks = [...new Set(chunked.files.flatMap((f) => f.chunks).filter((h) => h !== 'zero'))];
  assert.ok(fileChunks.length >= 7);
  assert.deepEqual(await store.missing(fileChunks), []);
});
