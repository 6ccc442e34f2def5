/**
 * Copies a migration's promotion restored are provisional until the
 * controller confirms them (or lists them among the host's containers): a
 * host cut off from the controller for its lease freezes them whatever its
 * peers say — the controller may be rolling the migration back and
 * restoring the source, which it does only after that lease — and thaws
 * them if the controller, back, places them there after all. (The migration
 * matrix found a destination, partitioned while restoring, serving a Redis
 * copy whose writes the rollback then discarded.)
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { LEASE_MS, Protection } from '../../src/agent/protection.js';
import { NotFoundError } from '../../src/core/errors.js';
import type { ContainerHost } from '../../src/host/container-host.js';

const dirs: string[] = [];
after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

/** A host that records what fencing does to its containers (and knows only `present`). */
async function fakeHost(
  present: string[],
  paused: string[] = [],
): Promise<{ host: ContainerHost; did: string[] }> {
  const dir = await mkdtemp(join(tmpdir(), 'haven-provisional-'));
  dirs.push(dir);
  const did: string[] = [];
  const known = (name: string): void => {
    if (!present.includes(name)) throw new NotFoundError(`no such container: "${name}"`);
  };
  const host = {
    config: { stateDir: dir, hostName: 'h3' },
    pause: (name: string) => Promise.resolve(known(name)).then(() => void did.push(`pause ${name}`)),
    resume: (name: string) => Promise.resolve(known(name)).then(() => void did.push(`resume ${name}`)),
    setLink: (name: string, state: string) => Promise.resolve(void did.push(`link ${state} ${name}`)),
    list: () => Promise.resolve(paused.map((name) => ({ name, state: 'paused' }))),
    inspect: (name: string) => Promise.resolve().then(() => (known(name), { name, state: 'running' })),
  } as unknown as ContainerHost;
  return { host, did };
}

test('a provisional copy is frozen once the lease runs out, and thawed when the controller places it here', async () => {
  const { host, did } = await fakeHost(['web']);
  const protection = new Protection(host, 'token', () => undefined);
  await protection.markProvisional('web');
  const lastAck = Date.now();
  protection.startFencing(() => lastAck);
  await sleep(LEASE_MS / 2);
  assert.deepEqual(did, [], 'nothing before the lease runs out');
  await sleep(LEASE_MS);
  assert.deepEqual(did, ['pause web', 'link down web'], 'frozen and cut off, no peer asked');
  await protection.confirm('web');
  assert.deepEqual(did.slice(2), ['link up web', 'resume web'], 'thawed: the controller places it here');
  await sleep(100);
  assert.equal(did.length, 4, 'placed here now: not frozen again while the silence lasts');
  await protection.stopAll();
});

test('a copy the controller confirmed or listed before the silence, or one removed, is never frozen', async () => {
  const { host, did } = await fakeHost(['db', 'web']);
  const protection = new Protection(host, 'token', () => undefined);
  await protection.markProvisional('db');
  await protection.markProvisional('web');
  await protection.markProvisional('gone');
  await protection.onPrimaries(['db']);
  await protection.confirm('web');
  await protection.forget('gone');
  const lastAck = Date.now() - 2 * LEASE_MS;
  protection.startFencing(() => lastAck);
  await sleep(100);
  assert.deepEqual(did, []);
  await protection.stopAll();
});

test('an agent restarted while a copy is provisional goes on treating it so (and forgets copies gone meanwhile)', async () => {
  const { host, did } = await fakeHost(['web']);
  const before = new Protection(host, 'token', () => undefined);
  await before.markProvisional('web');
  await before.markProvisional('gone');
  const after = new Protection(host, 'token', () => undefined);
  await after.resume();
  const lastAck = Date.now() - 2 * LEASE_MS;
  after.startFencing(() => lastAck);
  await sleep(100);
  assert.deepEqual(did, ['pause web', 'link down web'], 'the restarted agent freezes it');
  await after.stopAll();
  await before.stopAll();
});

test('a copy fenced before the agent restarted is thawed by the restarted agent when the controller places it there', async () => {
  const { host, did } = await fakeHost(['db'], ['db']);
  const protection = new Protection(host, 'token', () => undefined);
  await protection.resume();
  await protection.onPrimaries(['db']);
  assert.deepEqual(did, ['link up db', 'resume db']);
  await protection.stopAll();
});

/** The replicator runs; after stopAll nothing checkpoints any more (no replicator left unowned). */
async function runsThenStopsForGood(protection: Protection, checkpoints: () => number): Promise<void> {
  await sleep(200);
  assert.ok(checkpoints() > 0, 'the replicator runs');
  await protection.stopAll();
  const stoppedAt = checkpoints();
  await sleep(300);
  assert.equal(checkpoints(), stoppedAt, 'no replicator left running unowned');
}

test('two protection orders for one container at once leave one replicator: nothing runs on after stopAll', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'haven-orders-'));
  dirs.push(dir);
  let checkpoints = 0;
  let slow = true;
  const host = {
    config: { stateDir: dir, hostName: 'h1' },
    // The first order's look at the container is slow: the second one overtakes it.
    inspect: async (name: string) => {
      if (slow) {
        slow = false;
        await sleep(100);
      }
      return { name, state: 'running' };
    },
    checkpoint: () => {
      checkpoints++;
      return Promise.reject(new Error('no checkpoints here'));
    },
    list: () => Promise.resolve([]),
  } as unknown as ContainerHost;
  const protection = new Protection(host, 'token', () => undefined);
  const order = { backup: { host: 'h2', address: 'http://127.0.0.1:9' }, intervalMs: 50 };
  await Promise.all([protection.protect('web', order), protection.protect('web', order)]);
  await runsThenStopsForGood(protection, () => checkpoints);
});

test('a protection order that arrives during a failing handover waits for it: nothing runs on after stopAll', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'haven-orders-'));
  dirs.push(dir);
  let checkpoints = 0;
  const host = {
    config: { stateDir: dir, hostName: 'h1' },
    inspect: (name: string) => Promise.resolve({ name, state: 'running' }),
    checkpoint: async (_name: string, options: { leaveRunning?: boolean }) => {
      if (options.leaveRunning === false) {
        // The handover's final epoch: slow, then it fails (the container runs on here).
        await sleep(100);
        throw new Error('final checkpoint failed');
      }
      checkpoints++;
      throw new Error('no checkpoints here');
    },
    list: () => Promise.resolve([]),
  } as unknown as ContainerHost;
  const protection = new Protection(host, 'token', () => undefined);
  const order = { backup: { host: 'h2', address: 'http://127.0.0.1:9' }, intervalMs: 50 };
  await protection.protect('web', order);
  const handover = protection.handover('web');
  await sleep(20); // the handover is in its final checkpoint
  // A restarted controller orders protection again; the failed handover restarts epochs too.
  await Promise.all([assert.rejects(handover, /final checkpoint failed/), protection.protect('web', order)]);
  await runsThenStopsForGood(protection, () => checkpoints);
});
