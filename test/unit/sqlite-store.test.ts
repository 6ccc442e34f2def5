/**
 * The embedded store: what is committed survives a restart (the file is
 * reopened, as a restarted controller does), generations fence concurrent
 * changes, events come back in order from any point.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { SqliteStore } from '../../src/controller/sqlite-store.js';

async function withFile(body: (path: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'haven-store-'));
  try {
    await body(join(dir, 'cluster.db'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('hosts, containers and events survive closing and reopening the store', () =>
  withFile(async (path) => {
    const first = new SqliteStore(path);
    await first.putHost({
      name: 'h1',
      address: 'http://10.89.0.2:7070',
      labels: { zone: 'a' },
      cpuMillis: 2000,
      memoryBytes: 2 ** 33,
      cordoned: false,
      registeredAt: '2026-11-26T00:00:00Z',
    });
    assert.equal(
      await first.createContainer({
        name: 'redis',
        spec: { image: 'sha256:ab' },
        desired: 'running',
        host: 'h1',
      }),
      true,
    );
    await first.appendEvent('placed', 'redis', { host: 'h1' });
    await first.close();

    const second = new SqliteStore(path);
    assert.deepEqual((await second.getHost('h1'))?.labels, { zone: 'a' });
    const redis = await second.getContainer('redis');
    assert.equal(redis?.host, 'h1');
    assert.equal(redis?.generation, 1);
    assert.deepEqual(redis?.spec, { image: 'sha256:ab' });
    assert.deepEqual(
      (await second.eventsSince(0, 10)).map((e) => [e.seq, e.kind, e.subject]),
      [[1, 'placed', 'redis']],
    );
    await second.close();
  }));

test('a name is created once; a stale generation changes nothing', () =>
  withFile(async (path) => {
    const store = new SqliteStore(path);
    assert.equal(await store.createContainer({ name: 'c', spec: {}, desired: 'running' }), true);
    assert.equal(await store.createContainer({ name: 'c', spec: {}, desired: 'running' }), false);
    const moved = await store.updateContainer('c', 1, { host: 'h2' });
    assert.equal(moved?.generation, 2);
    assert.equal(await store.updateContainer('c', 1, { host: 'h3' }), undefined, 'generation 1 is stale now');
    assert.equal((await store.getContainer('c'))?.host, 'h2');
    assert.equal(await store.deleteContainer('c', 1), false);
    assert.equal(await store.deleteContainer('c', 2), true);
    assert.equal(await store.updateContainer('c', 2, { desired: 'stopped' }), undefined, 'gone');
    await store.close();
  }));

test('events resume from any sequence number, oldest first, bounded', () =>
  withFile(async (path) => {
    const store = new SqliteStore(path);
    for (let i = 0; i < 25; i++) await store.appendEvent('tick', `s${i}`, { i });
    const page = await store.eventsSince(10, 5);
    assert.deepEqual(
      page.map((e) => e.seq),
      [11, 12, 13, 14, 15],
    );
    assert.deepEqual(page[0]?.data, { i: 10 });
    assert.equal((await store.eventsSince(25, 10)).length, 0);
    await store.close();
  }));

test('hosts: update in place keeps the registration time, cordon is a field, delete removes', () =>
  withFile(async (path) => {
    const store = new SqliteStore(path);
    const host = {
      name: 'h1',
      address: 'a',
      labels: {},
      cpuMillis: 1,
      memoryBytes: 1,
      cordoned: false,
      registeredAt: 't0',
    };
    await store.putHost(host);
    await store.putHost({ ...host, cordoned: true, registeredAt: 't1' });
    const stored = await store.getHost('h1');
    assert.equal(stored?.cordoned, true);
    assert.equal(stored?.registeredAt, 't0');
    await store.deleteHost('h1');
    assert.deepEqual(await store.listHosts(), []);
    await store.close();
  }));

test('every operation kind reads back as stored (a resumed migration must not be driven as a failover)', () =>
  withFile(async (path) => {
    const first = new SqliteStore(path);
    for (const [container, kind] of [
      ['a', 'failover'],
      ['b', 'switchover'],
      ['c', 'migration'],
    ] as const) {
      await first.putOperation({
        container,
        kind,
        from: 'h1',
        to: 'h2',
        step: 'shipped',
        generation: 1,
        epoch: null,
        detail: {},
        startedAt: '2026-11-27T00:00:00Z',
      });
    }
    await first.close();
    const second = new SqliteStore(path);
    const kinds = (await second.listOperations()).map((op) => [op.container, op.kind]).sort();
    assert.deepEqual(kinds, [
      ['a', 'failover'],
      ['b', 'switchover'],
      ['c', 'migration'],
    ]);
    assert.equal((await second.getOperation('c'))?.kind, 'migration');
    await second.close();
  }));

test('an operation survives a restart step by step, one per container, until deleted', () =>
  withFile(async (path) => {
    const first = new SqliteStore(path);
    const decided = await first.putOperation({
      container: 'redis',
      kind: 'failover',
      from: 'h1',
      to: 'h2',
      step: 'decided',
      generation: 3,
      epoch: null,
      detail: { reason: 'host down', detectMs: 1000 },
      startedAt: '2026-11-26T00:00:00Z',
    });
    assert.ok(decided.updatedAt);
    await first.putOperation({ ...decided, step: 'promoted', epoch: 1_764_115_200_123 });
    await first.close();

    const second = new SqliteStore(path);
    const ops = await second.listOperations();
    assert.equal(ops.length, 1, 'the next step replaces the previous one');
    assert.deepEqual(
      { ...ops[0], updatedAt: undefined },
      {
        container: 'redis',
        kind: 'failover',
        from: 'h1',
        to: 'h2',
        step: 'promoted',
        generation: 3,
        epoch: 1_764_115_200_123,
        detail: { reason: 'host down', detectMs: 1000 },
        startedAt: '2026-11-26T00:00:00Z',
        updatedAt: undefined,
      },
    );
    assert.equal((await second.getOperation('redis'))?.step, 'promoted');
    assert.equal(await second.getOperation('other'), undefined);
    await second.deleteOperation('redis');
    assert.deepEqual(await second.listOperations(), []);
    await second.close();
  }));
