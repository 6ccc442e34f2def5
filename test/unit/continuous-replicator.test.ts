/**
 * The continuous replicator against a real backup (the agent's replica
 * routes on loopback, commits slowed down) and a fake container host whose
 * "checkpoints" are small directories: epochs are pipelined (the next
 * checkpoint is taken while the previous epoch travels), commits come in
 * order, and each commit releases exactly the output generation cut before
 * its own checkpoint — never a later one.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { Protection } from '../../src/agent/protection.js';
import { createAgentServer } from '../../src/agent/server.js';
import { compileHostConfig } from '../../src/core/config.js';
import { ContainerHost } from '../../src/host/container-host.js';
import { assembleDirectory } from '../../src/replication/chunks.js';
import { Replicator } from '../../src/replication/replicator.js';

const TOKEN = 'continuous-test-token';
const COMMIT_DELAY_MS = 150;
let root = '';
let backupAddress = '';
let closeBackup: () => Promise<void> = () => Promise.resolve();
/** An image the backup holds (a commit is refused for an image it cannot get). */
let imageId = '';
let backup: Protection;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'haven-continuous-'));
  const backupHost = new ContainerHost(
    compileHostConfig({ hostName: 'backup', stateDir: join(root, 'backup'), runcRoot: join(root, 'runc-b') }),
  );
  const rootfs = join(root, 'rootfs');
  await mkdir(join(rootfs, 'bin'), { recursive: true });
  await writeFile(join(rootfs, 'bin', 'true'), '');
  imageId = (await backupHost.images.import(rootfs)).id;
  backup = new Protection(backupHost, TOKEN, () => {});
  const agent = createAgentServer({ host: backupHost, token: TOKEN, protection: backup });
  const handle = agent.listeners('request')[0] as (req: IncomingMessage, res: ServerResponse) => void;
  // The backup, with every epoch commit slowed down: a slow link or disk.
  const slowed = createServer((req, res) => {
    if (req.method === 'POST' && req.url?.endsWith('/epochs')) {
      req.pause();
      setTimeout(() => {
        req.resume();
        handle(req, res);
      }, COMMIT_DELAY_MS);
    } else handle(req, res);
  });
  await new Promise<void>((resolve) => slowed.listen(0, '127.0.0.1', resolve));
  backupAddress = `http://127.0.0.1:${(slowed.address() as AddressInfo).port}`;
  closeBackup = () => new Promise((resolve) => slowed.close(() => resolve()));
});

after(async () => {
  await closeBackup();
  await rm(root, { recursive: true, force: true });
});

/** A container host whose checkpoints are directories of one changing file, recording when each began. */
function fakeHost(name: string, events: string[]): ContainerHost {
  let n = 0;
  const host = {
    config: { hostName: 'primary', stateDir: join(root, 'primary') },
    async checkpoint() {
      const id = `ck-${++n}`;
      events.push(`checkpoint ${n}`);
      const dir = join(root, 'primary', id);
      await mkdir(dir, { recursive: true });
      // ~100 KiB: several 32 KiB chunks, the last one short.
      await writeFile(join(dir, 'pages.img'), `epoch ${n} `.repeat(12_000));
      return { id, dir, frozenMs: 1 };
    },
    record() {
      return Promise.resolve({ name, image: imageId, state: 'running', volumes: [], checkpoints: [] });
    },
  };
  return host as unknown as ContainerHost;
}

test('continuous epochs are pipelined, commit in order, and release only what their checkpoint covers', async () => {
  const events: string[] = [];
  let generation = 1;
  const released: number[] = [];
  const replicator = new Replicator(
    fakeHost('svc', events),
    'svc',
    { backup: { host: 'backup', address: backupAddress }, intervalMs: 20, mode: 'continuous' },
    TOKEN,
    (line) => events.push(`log ${line}`),
    () => Promise.resolve(true),
    {
      cut: () => {
        events.push(`cut ${generation}`);
        return generation++;
      },
      committed: (g) => {
        events.push(`release ${g}`);
        released.push(g);
      },
    },
  );
  replicator.start();
  await sleep(COMMIT_DELAY_MS * 6);
  await replicator.stop();

  assert.ok(released.length >= 3, `epochs committed: ${released.length}: ${events.join(', ')}`);
  assert.deepEqual(
    released,
    [...released].sort((a, b) => a - b),
    'commits (and releases) in order',
  );
  // Each release is of the generation cut right before that epoch's checkpoint.
  for (const g of released) {
    const cutAt = events.indexOf(`cut ${g}`);
    assert.equal(
      events[cutAt + 1],
      `checkpoint ${g}`,
      `generation ${g} was cut right before checkpoint ${g}`,
    );
  }
  // Pipelined: a checkpoint was taken after epoch N's cut and before its release.
  const overlapped = released.some((g) => {
    const between = events.slice(events.indexOf(`cut ${g}`), events.indexOf(`release ${g}`));
    return between.includes(`checkpoint ${g + 1}`);
  });
  assert.ok(overlapped, `the next checkpoint is taken while an epoch travels: ${events.join(', ')}`);
  // One epoch in flight at most: never two checkpoints beyond the newest release.
  for (const g of released) {
    const at = events.indexOf(`release ${g}`);
    const before = events.slice(0, at).filter((e) => e.startsWith('checkpoint ')).length;
    assert.ok(before <= g + 1, `at the release of ${g}, ${before} checkpoints taken`);
  }
  // An epoch in flight at stop() may still commit, but releases nothing.
  assert.ok(replicator.status.epochsCommitted - released.length <= 1);
  assert.ok(replicator.status.epochRate > 0);

  // The backup rebuilds the newest epoch from its 32 KiB chunks, byte for byte.
  const newest = (await backup.replicas.epochs('svc'))[0]!;
  const manifest = await backup.replicas.manifest('svc', newest);
  assert.equal(manifest.chunkBytes, 32 * 1024);
  const target = join(root, 'assembled');
  await assembleDirectory(manifest, backup.replicas.chunks, target);
  assert.equal(
    await readFile(join(target, 'pages.img'), 'utf8'),
    await readFile(join(root, 'primary', manifest.checkpointId, 'pages.img'), 'utf8'),
  );
});

test('a stopped replicator releases nothing more (a restore in place from an older epoch)', async () => {
  const events: string[] = [];
  const released: number[] = [];
  let generation = 1;
  const replicator = new Replicator(
    fakeHost('svc2', events),
    'svc2',
    { backup: { host: 'backup', address: backupAddress }, intervalMs: 20, mode: 'continuous' },
    TOKEN,
    () => {},
    () => Promise.resolve(true),
    { cut: () => generation++, committed: (g) => released.push(g) },
  );
  replicator.start();
  await sleep(COMMIT_DELAY_MS / 2); // an epoch is on its way
  await replicator.stop();
  const atStop = released.length;
  await sleep(COMMIT_DELAY_MS * 2);
  assert.equal(released.length, atStop);
});

test('checkpoint mode: an application that fails its probe right after the checkpoint has that epoch dropped', async () => {
  const events: string[] = [];
  // Healthy before the first checkpoint, hung by the time it is taken (probed twice per epoch).
  const verdicts = [true, false];
  const replicator = new Replicator(
    fakeHost('svc3', events),
    'svc3',
    { backup: { host: 'backup', address: backupAddress }, intervalMs: 1000, mode: 'checkpoint' },
    TOKEN,
    () => {},
    () => Promise.resolve(verdicts.shift() ?? true),
  );
  await assert.rejects(replicator.epoch(), /right after the checkpoint: epoch dropped/);
  assert.deepEqual(await backup.replicas.epochs('svc3'), [], 'nothing committed on the backup');
  const healthy = await replicator.epoch();
  assert.deepEqual(await backup.replicas.epochs('svc3'), [healthy.epoch]);
});
