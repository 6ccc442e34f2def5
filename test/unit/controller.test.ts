/**
 * The controller's logic with fake agents and a driven clock (the real stack
 * is in test/integration/cluster.test.ts): placement through the API's
 * rules, addresses never reused, a failed start withdrawn, hosts seen down
 * and up by heartbeats, a rebooted host's old containers reported lost, and
 * the write-through cache agreeing with its backend.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CachedStore } from '../../src/controller/cached-store.js';
import { Controller, type AgentCaller } from '../../src/controller/controller.js';
import { ImageRegistry } from '../../src/controller/image-registry.js';
import type { ClusterRunRequest } from '../../src/controller/schemas.js';
import { SqliteStore } from '../../src/controller/sqlite-store.js';
import { NotFoundError, RuntimeFailedError } from '../../src/core/errors.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'haven-controller-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Rig {
  controller: Controller;
  backend: SqliteStore;
  calls: Array<{ host: string; path: string; method: string }>;
  clock: { now: number };
  failOn: Set<string>;
  /** Methods whose calls answer only after 50 ms (an agent at work). */
  slow: Set<string>;
}

async function rig(): Promise<Rig> {
  const backend = new SqliteStore(':memory:');
  const images = new ImageRegistry(await mkdtemp(join(dir, 'images-')));
  await images.put(Readable.from([Buffer.from('a tiny image tar')]), { name: 'tiny' });
  const calls: Rig['calls'] = [];
  const failOn = new Set<string>();
  const slow = new Set<string>();
  let pid = 100;
  const callAgent: AgentCaller = <T>(
    host: { name: string },
    path: string,
    options: { method?: string; body?: unknown } = {},
  ) => {
    calls.push({ host: host.name, path, method: options.method ?? 'GET' });
    const body = options.body as { name?: string; ip?: string } | undefined;
    const delay = slow.has(options.method ?? 'GET') ? sleep(50) : Promise.resolve();
    if (body?.name && failOn.has(body.name))
      return Promise.reject(new RuntimeFailedError('runc create failed', 'runc', []));
    if (options.method === 'DELETE' && path.includes('gone'))
      return Promise.reject(new NotFoundError('no such container'));
    const answer = { name: body?.name, state: 'running', pid: ++pid, ip: body?.ip?.split('/')[0] } as T;
    return delay.then(() => answer);
  };
  const clock = { now: 1_000_000 };
  const controller = new Controller({
    store: await CachedStore.over(backend),
    images,
    callAgent,
    failureAfterMs: 3000,
    now: () => clock.now,
  });
  return { controller, backend, calls, clock, failOn, slow };
}

function host(
  name: string,
  labels: Record<string, string> = {},
  bootId = 'b00710aa',
): Parameters<Controller['registerHost']>[0] {
  return {
    name,
    address: `http://10.88.0.1:7070`,
    labels,
    cpuMillis: 2000,
    memoryBytes: 4 * 2 ** 30,
    bootId,
    heartbeatMs: 100,
  };
}

function request(name: string, extra: Partial<ClusterRunRequest> = {}): ClusterRunRequest {
  return {
    name,
    image: 'tiny',
    args: ['sleep', '1'],
    env: [],
    volumes: [],
    cpuMillis: 500,
    memoryBytes: 2 ** 30,
    ha: 'none',
    intervalMs: 1000,
    ...extra,
  };
}

test('placement spreads load, honours pins, labels, anti-affinity and cordons; addresses are unique', async () => {
  const { controller } = await rig();
  await controller.registerHost(host('h1', { zone: 'a' }));
  await controller.registerHost(host('h2', { zone: 'b' }));
  const a = await controller.runContainer(request('a'));
  const b = await controller.runContainer(request('b'));
  assert.notEqual(a.host, b.host, 'least loaded first');
  assert.notEqual(a.ip, b.ip);
  assert.equal((await controller.runContainer(request('c', { host: 'h2' }))).host, 'h2');
  assert.equal(
    (await controller.runContainer(request('d', { requireHostLabels: { zone: 'a' } }))).host,
    'h1',
  );
  const e = await controller.runContainer(request('e', { apart: ['d'] }));
  assert.equal(e.host, 'h2');
  await controller.setCordon('h2', true);
  assert.equal((await controller.runContainer(request('f'))).host, 'h1');
  await assert.rejects(controller.runContainer(request('g', { host: 'h2' })), /cordoned/);
  await assert.rejects(controller.runContainer(request('a')), /already exists/);
  await assert.rejects(controller.runContainer(request('h', { image: 'nope' })), /no image named "nope"/);
  await assert.rejects(
    controller.runContainer(request('i', { host: 'h9' })),
    /host "h9" is not in the cluster/,
  );
  const ips = (await controller.listContainers()).map((c) => c.ip);
  assert.equal(new Set(ips).size, ips.length);
  assert.ok(
    ips.every((ip) => /^10\.88\.1\.\d+$/.test(ip)),
    ips.join(','),
  );
});

test('a start the agent refuses is withdrawn: no intent, its address free again, an event says why', async () => {
  const { controller, backend, failOn } = await rig();
  await controller.registerHost(host('h1'));
  failOn.add('bad');
  await assert.rejects(controller.runContainer(request('bad')), /runc create failed/);
  assert.equal(await backend.getContainer('bad'), undefined);
  const good = await controller.runContainer(request('good'));
  assert.equal(good.ip, '10.88.1.1', 'the refused one did not keep its address');
  const kinds = (await controller.eventsSince(0, 100)).map((e) => `${e.kind}:${e.subject}`);
  assert.deepEqual(kinds, [
    'host.joined:h1',
    'container.placed:bad',
    'container.failed:bad',
    'container.placed:good',
    'container.started:good',
  ]);
});

test('heartbeats keep a host up; silence marks it down and its containers lost; a heartbeat brings it back', async () => {
  const { controller, clock } = await rig();
  await controller.registerHost(host('h1'));
  const c = await controller.runContainer(request('c'));
  assert.equal(
    controller.heartbeat('h1', {
      seq: 1,
      bootId: 'b00710aa',
      containers: [{ name: 'c', state: 'running', pid: c.pid, ip: c.ip }],
    }),
    true,
  );
  // A steady rhythm, a beat every 100 ms: two missed beats are no death...
  for (let seq = 2; seq < 30; seq++) {
    clock.now += 100;
    controller.heartbeat('h1', { seq, bootId: 'b00710aa' });
  }
  clock.now += 200;
  await controller.checkLiveness();
  assert.equal((await controller.listHosts())[0]!.state, 'up');
  // ...but half a second of silence is, for this host, long before the 3 s ceiling.
  clock.now += 300;
  await controller.checkLiveness();
  assert.equal((await controller.listHosts())[0]!.state, 'down');
  assert.equal((await controller.getContainer('c')).state, 'lost');
  await assert.rejects(controller.forward('c', 'logs'), /is down/);
  assert.equal(controller.heartbeat('h1', { seq: 31, bootId: 'b00710aa' }), true);
  assert.equal((await controller.getContainer('c')).state, 'running', 'the report it had still stands');
  assert.equal(
    controller.heartbeat('h1', { seq: 3, bootId: 'ffff0000' }),
    false,
    'another boot must register',
  );
  assert.equal(controller.heartbeat('nosuch', { seq: 1, bootId: 'b00710aa' }), false);
  const kinds = (await controller.eventsSince(0, 100)).map((e) => e.kind);
  assert.deepEqual(
    kinds.filter((k) => k.startsWith('host.')),
    ['host.joined', 'host.down', 'host.suspect', 'host.up'],
  );
});

test('a controller started anew watches the hosts it knows: one that never registers is declared down after the grace, the others are not', async () => {
  const first = await rig();
  for (const name of ['h1', 'h2']) await first.controller.registerHost(host(name));
  await first.controller.runContainer(request('c', { host: 'h1' }));
  // A second controller on the same store (the first one killed): h1 died meanwhile, h2 registers again.
  const clock = { now: 2_000_000 };
  const second = new Controller({
    store: await CachedStore.over(first.backend),
    images: new ImageRegistry(await mkdtemp(join(dir, 'images-'))),
    callAgent: () => Promise.reject(new Error('unreachable')),
    failureAfterMs: 3000,
    now: () => clock.now,
  });
  assert.equal(await second.adoptKnownHosts(), 2);
  clock.now += 500;
  await second.registerHost(host('h2'));
  const snapshotOf = async () => Object.fromEntries((await second.listHosts()).map((h) => [h.name, h.state]));
  for (let seq = 0; seq < 40; seq++) {
    clock.now += 100;
    second.heartbeat('h2', { seq, bootId: 'b00710aa' });
  }
  await second.checkLiveness();
  assert.deepEqual(await snapshotOf(), { h1: 'unknown', h2: 'up' }, 'within the grace: not suspected');
  clock.now += 1500;
  second.heartbeat('h2', { seq: 41, bootId: 'b00710aa' });
  await second.checkLiveness();
  assert.deepEqual(await snapshotOf(), { h1: 'down', h2: 'up' });
  const kinds = (await second.eventsSince(0, 100)).map((e) => `${e.kind} ${e.subject}`);
  assert.ok(kinds.includes('host.down h1'), kinds.join(', '));
  assert.ok(!kinds.includes('host.rebooted h2'), 'an adopted host registering is no reboot');
});

test('a host that comes back with a new disk has none of its old containers; rm forgets them', async () => {
  const { controller, calls } = await rig();
  await controller.registerHost(host('h1'));
  await controller.runContainer(request('gone'));
  await controller.registerHost(host('h1', {}, 'ab12cd34ef'));
  assert.equal((await controller.getContainer('gone')).state, 'lost');
  await controller.removeContainer('gone', false);
  assert.equal(calls.at(-1)?.method, 'DELETE');
  await assert.rejects(controller.getContainer('gone'), /does not exist/);
});

test('the cache agrees with its backend after every kind of change', async () => {
  const { controller, backend } = await rig();
  await controller.registerHost(host('h1'));
  await controller.registerHost(host('h2'));
  for (const name of ['x', 'y', 'z']) await controller.runContainer(request(name));
  await controller.forward('y', 'stop', { graceSeconds: 1 });
  await controller.removeContainer('z', true);
  await controller.setCordon('h1', true);
  const reopened = await CachedStore.over(backend);
  assert.deepEqual(await reopened.listContainers(), await backend.listContainers());
  assert.deepEqual(
    (await controller.listContainers()).map((c) => c.name),
    ['x', 'y'],
  );
  assert.deepEqual(await reopened.listHosts(), await backend.listHosts());
  assert.equal((await backend.getContainer('y'))?.desired, 'stopped');
  assert.equal((await backend.getHost('h1'))?.cordoned, true);
});

test('a container removed or stopped while its host reports it exited is not brought back', async () => {
  const { controller, calls, slow } = await rig();
  await controller.registerHost(host('h1'));
  await controller.registerHost(host('h2'));
  const exited = (name: string, seq: number): void => {
    controller.heartbeat('h1', {
      seq,
      bootId: 'b00710aa',
      containers: [{ name, state: 'exited', pid: 0, ip: '' }],
    });
  };
  await controller.runContainer(request('gone-soon', { ha: 'restart', host: 'h1' }));
  await controller.runContainer(request('resting', { ha: 'restart', host: 'h1' }));
  const started = calls.length;
  slow.add('DELETE');
  slow.add('POST');
  // The host reports the exit while the agent is still removing / stopping it.
  const removing = controller.removeContainer('gone-soon', true);
  const stopping = controller.forward('resting', 'stop');
  await sleep(10);
  exited('gone-soon', 1);
  exited('resting', 2);
  await Promise.all([removing, stopping]);
  await sleep(100);
  const kinds = (await controller.eventsSince(0, 100)).map((e) => e.kind);
  assert.ok(!kinds.includes('container.failed-over'), kinds.join(', '));
  assert.ok(!kinds.includes('container.exited'), 'a stop on purpose is no crash');
  assert.deepEqual(
    calls.slice(started).filter((c) => c.host === 'h2'),
    [],
    'nothing was started elsewhere',
  );
  await assert.rejects(controller.getContainer('gone-soon'), NotFoundError);
  assert.equal((await controller.getContainer('resting')).desired, 'stopped');
});

test('a checkpoint that stops a container marks it stopped on purpose (no failover); a restore marks it running', async () => {
  const { controller, backend } = await rig();
  await controller.registerHost(host('h1'));
  await controller.runContainer(request('kept', { ha: 'restart', host: 'h1' }));
  await controller.forward('kept', 'checkpoint', { leaveRunning: true });
  assert.equal(
    (await backend.getContainer('kept'))?.desired,
    'running',
    'a leave-running checkpoint stops nothing',
  );
  controller.heartbeat('h1', {
    seq: 1,
    bootId: 'b00710aa',
    containers: [{ name: 'kept', state: 'running', pid: 7, ip: '' }],
  });
  await controller.forward('kept', 'checkpoint', { leaveRunning: false });
  assert.equal((await backend.getContainer('kept'))?.desired, 'stopped');
  assert.equal((await controller.getContainer('kept')).state, 'checkpointed', 'shown stopped at once');
  const events = await controller.eventsSince(0, 100);
  assert.deepEqual(
    events.filter((e) => e.kind === 'container.checkpointed').map((e) => e.data.stopped),
    [false, true],
  );
  await controller.forward('kept', 'restore', { tcpClose: false });
  assert.equal((await backend.getContainer('kept'))?.desired, 'running');
  assert.equal((await controller.getContainer('kept')).state, 'running');
});
