/**
 * Failovers and switchovers as recorded operations, with fake agents: a
 * controller started over a store that holds an unfinished operation (its
 * predecessor was killed after that step) finishes it from that step —
 * ordering again only what may not have happened, never undoing the
 * promoted copy — or, when the operation went stale, undoes what it began.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { CachedStore } from '../../src/controller/cached-store.js';
import { Controller, type AgentCaller } from '../../src/controller/controller.js';
import { ImageRegistry } from '../../src/controller/image-registry.js';
import { SqliteStore } from '../../src/controller/sqlite-store.js';
import type { OperationRecord, StoredEvent } from '../../src/controller/store.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'haven-operations-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

type Call = { host: string; path: string; method: string; body?: unknown };

/** A controller "restarted" over a store holding container `db` on h1 (backup h2) and `operation`. */
async function restartedWith(
  operation: Omit<OperationRecord, 'updatedAt' | 'generation'> | undefined,
  options: { intent?: boolean } = {},
): Promise<{ controller: Controller; backend: SqliteStore; calls: Call[]; events: StoredEvent[] }> {
  const backend = new SqliteStore(':memory:');
  for (const name of ['h1', 'h2', 'h3'])
    await backend.putHost({
      name,
      address: `http://10.88.0.1:7070`,
      labels: {},
      cpuMillis: 2000,
      memoryBytes: 4 * 2 ** 30,
      cordoned: false,
      registeredAt: '2026-11-26T00:00:00Z',
    });
  if (options.intent !== false)
    await backend.createContainer({
      name: 'db',
      spec: { image: 'sha256:ab', ip: '10.88.1.1/16', ha: 'checkpoint', intervalMs: 1000, backup: 'h2' },
      desired: 'running',
      host: 'h1',
    });
  if (operation) await backend.putOperation({ ...operation, generation: 1 });
  const calls: Call[] = [];
  const callAgent: AgentCaller = <T>(
    host: { name: string },
    path: string,
    opts: { method?: string; body?: unknown } = {},
  ) => {
    calls.push({ host: host.name, path, method: opts.method ?? 'GET', body: opts.body });
    const view = { name: 'db', state: 'running', pid: 4242, ip: '10.88.1.1' };
    if (path.endsWith('/promote'))
      return Promise.resolve({
        epoch: 7,
        takenAt: '2026-11-26T00:00:01Z',
        skipped: [],
        assembleMs: 5,
        restoreMs: 50,
        view,
        already: true,
      } as T);
    if (path.endsWith('/handover'))
      return Promise.resolve({
        epoch: 7,
        takenAt: '2026-11-26T00:00:01Z',
        sentBytes: 1000,
        totalBytes: 9000,
        frozenMs: 30,
        handoverMs: 200,
      } as T);
    return Promise.resolve(view as T);
  };
  const images = new ImageRegistry(await mkdtemp(join(dir, 'images-')));
  const controller = new Controller({
    store: await CachedStore.over(backend),
    images,
    callAgent,
    failpoint: (step) => assert.fail(`a resumed step must not trip failpoint ${step}`),
  });
  const events: StoredEvent[] = [];
  controller.events.on('event', (e: StoredEvent) => events.push(e));
  for (const name of ['h2', 'h3'])
    await controller.registerHost({
      name,
      address: 'http://10.88.0.1:7070',
      labels: {},
      cpuMillis: 2000,
      memoryBytes: 4 * 2 ** 30,
      bootId: 'b00710aa',
      heartbeatMs: 100,
    });
  return { controller, backend, calls, events };
}

async function until(what: string, check: () => boolean | Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await check()) return;
    await sleep(10);
  }
  assert.fail(`timed out waiting for ${what}`);
}

const base = {
  container: 'db',
  from: 'h1',
  to: 'h2',
  epoch: null,
  startedAt: '2026-11-26T00:00:00Z',
};

test('killed after "promoted": the restarted controller moves the intent, orders nothing again, removes nothing', async () => {
  const { controller, backend, calls, events } = await restartedWith({
    ...base,
    kind: 'failover',
    step: 'promoted',
    epoch: 7,
    detail: { mode: 'checkpoint', reason: 'host down', detectMs: 900 },
  });
  assert.equal(await controller.resumeOperations(), 1);
  await until('the failover event', () => events.some((e) => e.kind === 'container.failed-over'));
  const done = events.find((e) => e.kind === 'container.failed-over')!;
  assert.equal(done.data.to, 'h2');
  assert.equal(done.data.resumed, true);
  assert.equal((await backend.getContainer('db'))?.host, 'h2');
  assert.equal(await backend.getOperation('db'), undefined, 'the operation is done');
  assert.deepEqual(
    calls.filter((c) => c.path.endsWith('/promote') || c.method === 'DELETE'),
    [],
    'no second promotion, no removal of the promoted copy',
  );
  // Protection resumes on the third host.
  await until('a new backup', async () => (await backend.getContainer('db'))?.spec.backup === 'h3');
});

test('killed after "decided": the promotion is ordered again (the agent answers with the copy it made)', async () => {
  const { controller, backend, calls, events } = await restartedWith({
    ...base,
    kind: 'failover',
    step: 'decided',
    detail: { mode: 'checkpoint', reason: 'host down', detectMs: 900 },
  });
  await controller.resumeOperations();
  await until('the failover event', () => events.some((e) => e.kind === 'container.failed-over'));
  assert.deepEqual(
    calls.filter((c) => c.path.endsWith('/promote')).map((c) => c.host),
    ['h2'],
  );
  assert.equal((await backend.getContainer('db'))?.host, 'h2');
});

test('a stale operation (its container removed meanwhile) removes the copy it promoted', async () => {
  const { controller, backend, calls, events } = await restartedWith(
    {
      ...base,
      kind: 'failover',
      step: 'promoted',
      epoch: 7,
      detail: { mode: 'checkpoint', reason: 'host down', detectMs: 900 },
    },
    { intent: false },
  );
  await controller.resumeOperations();
  await until('the abandon event', () => events.some((e) => e.kind === 'container.operation-abandoned'));
  assert.deepEqual(
    calls.filter((c) => c.method === 'DELETE').map((c) => c.host),
    ['h2'],
  );
  assert.equal(await backend.getOperation('db'), undefined);
});

test('a switchover resumed after "shipped" restores exactly the final epoch, moves, and removes the old copy', async () => {
  const { controller, backend, calls, events } = await restartedWith({
    ...base,
    kind: 'switchover',
    step: 'shipped',
    epoch: 7,
    detail: { frozenMs: 30, finalEpochBytes: 1000, handoverMs: 200 },
  });
  // The old primary is alive in a switchover: it registers too.
  await controller.registerHost({
    name: 'h1',
    address: 'http://10.88.0.1:7070',
    labels: {},
    cpuMillis: 2000,
    memoryBytes: 4 * 2 ** 30,
    bootId: 'b00710aa',
    heartbeatMs: 100,
  });
  await controller.resumeOperations();
  await until('the switchover event', () => events.some((e) => e.kind === 'container.switched-over'));
  const promote = calls.find((c) => c.path.endsWith('/promote'))!;
  assert.deepEqual(promote.body, { tcpClose: false, epoch: 7 }, 'that epoch, connections kept');
  assert.deepEqual(
    calls.filter((c) => c.method === 'DELETE').map((c) => c.host),
    ['h1'],
    'the old copy goes',
  );
  assert.equal((await backend.getContainer('db'))?.host, 'h2');
  assert.equal(calls.filter((c) => c.path.endsWith('/handover')).length, 0, 'no second final epoch');
});
