/**
 * Live migration: the pure decisions (when pre-copy stops, what `auto`
 * picks) and the operation with fake agents — a pre-copy that converges, a
 * destination that fails in the final round (rolled back, reported with its
 * phase), a protected container moved onto its own backup (a new backup is
 * chosen), and a bad request (refused before anything stops).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { CachedStore } from '../../src/controller/cached-store.js';
import { Controller, type AgentCaller } from '../../src/controller/controller.js';
import { ImageRegistry } from '../../src/controller/image-registry.js';
import {
  chooseStrategy,
  MigrationFailedError,
  nextStep,
  type RoundStats,
} from '../../src/controller/migration.js';
import { migrateRequestSchema } from '../../src/controller/schemas.js';
import { SqliteStore } from '../../src/controller/sqlite-store.js';
import type { StoredEvent } from '../../src/controller/store.js';
import { HavenError } from '../../src/core/errors.js';

const MB = 1e6;

function round(n: number, sentBytes: number, extra: Partial<RoundStats> = {}): RoundStats {
  return {
    round: n,
    frozenMs: 40,
    checkpointMs: 120,
    chunkMs: 30,
    checkpointBytes: 256 * MB,
    sentBytes,
    sendMs: sentBytes / 110_000, // ~0.9 Gbit/s
    wallMs: 2500,
    ...extra,
  };
}

const limits = { maxDowntimeMs: 300, maxRounds: 8 };

test('nextStep: a first round that sent everything asks for another', () => {
  const decision = nextStep([round(1, 256 * MB)], limits);
  assert.equal(decision.next, 'round');
  assert.ok(decision.estimate.transferMs > 2000, 'sending 256 MB at ~0.9 Gbit/s takes seconds');
});

test('nextStep: rounds that shrink go on; a round sending ≥ 90% of the one before stops them', () => {
  assert.equal(nextStep([round(1, 256 * MB), round(2, 40 * MB)], limits).next, 'round');
  const stuck = nextStep([round(1, 256 * MB), round(2, 40 * MB), round(3, 38 * MB)], limits);
  assert.equal(stuck.next, 'final');
  assert.match(stuck.why, /not converging/);
});

test('nextStep: what is left negligible beside the fixed part stops the rounds (no stall for nothing)', () => {
  const decision = nextStep([round(1, 256 * MB), round(2, 2 * MB)], limits);
  assert.equal(decision.next, 'final');
  assert.match(decision.why, /little beside|fits/);
});

test('nextStep: the downtime target met stops the rounds', () => {
  const small = (n: number, sent: number): RoundStats =>
    round(n, sent, { checkpointBytes: 3 * MB, checkpointMs: 20, chunkMs: 5 });
  // Fixed part ~ 20 + 5 + 356 ms: a target of 300 ms cannot be met, 500 ms can.
  const rounds = [small(1, 3 * MB)];
  assert.equal(nextStep(rounds, { maxDowntimeMs: 500, maxRounds: 8 }).next, 'final');
  assert.match(nextStep(rounds, { maxDowntimeMs: 500, maxRounds: 8 }).why, /^fits/);
});

test('nextStep: the round limit stops the rounds', () => {
  const rounds = [round(1, 256 * MB), round(2, 100 * MB), round(3, 50 * MB)];
  assert.equal(nextStep(rounds, { maxDowntimeMs: 300, maxRounds: 3 }).next, 'final');
  assert.match(nextStep(rounds, { maxDowntimeMs: 300, maxRounds: 3 }).why, /round limit/);
});

test('nextStep: without a round yet, the first one', () => {
  assert.equal(nextStep([], limits).next, 'round');
});

test('chooseStrategy: a small checkpoint moves stop-and-copy; a large one on a slow link pre-copies, and says why', () => {
  const small = chooseStrategy(round(1, 3 * MB, { checkpointBytes: 3 * MB }), 300);
  assert.equal(small.strategy, 'stop-copy');
  assert.match(small.why, /checkpoint 3\.0 MB/);
  const large = chooseStrategy(round(1, 256 * MB), 300);
  assert.equal(large.strategy, 'pre-copy');
  assert.match(large.why, /link \d+ MB\/s/);
  assert.match(large.why, /no dirty-page tracking/);
});

test('the migrate request schema: defaults, and bad input refused with the field named', () => {
  assert.deepEqual(migrateRequestSchema.parse({ to: 'h2' }), {
    to: 'h2',
    strategy: 'auto',
    maxDowntimeMs: 300,
    maxRounds: 8,
  });
  const bad = migrateRequestSchema.safeParse({ to: 'h2', strategy: 'post-copy' });
  assert.equal(bad.success, false);
  assert.equal(migrateRequestSchema.safeParse({ to: '../etc' }).success, false);
  assert.equal(migrateRequestSchema.safeParse({ to: 'h2', extra: 1 }).success, false);
});

// ------------------------------------------------------------- with fake agents

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'haven-migration-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

type Call = { host: string; path: string; method: string; body?: Record<string, unknown> };

/** A controller with hosts h1..h3 up and `db` on h1 (protected with backup h2 when `ha`). */
async function cluster(options: {
  ha?: boolean;
  failFinal?: boolean;
  sent?: number[];
}): Promise<{ controller: Controller; calls: Call[]; events: StoredEvent[]; store: CachedStore }> {
  const backend = new SqliteStore(':memory:');
  const store = await CachedStore.over(backend);
  await store.createContainer({
    name: 'db',
    spec: {
      image: 'sha256:ab',
      ip: '10.88.1.1/16',
      cpuMillis: 100,
      ...(options.ha ? { ha: 'checkpoint', intervalMs: 1000, backup: 'h2' } : {}),
    },
    desired: 'running',
    host: 'h1',
  });
  const calls: Call[] = [];
  let state = 'running';
  const sent = [...(options.sent ?? [3 * MB, 1 * MB])];
  const callAgent: AgentCaller = <T>(
    host: { name: string },
    path: string,
    opts: { method?: string; body?: unknown } = {},
  ) => {
    const body = opts.body as Record<string, unknown> | undefined;
    calls.push({ host: host.name, path, method: opts.method ?? 'GET', ...(body ? { body } : {}) });
    const view = { name: 'db', state, pid: 4242, ip: '10.88.1.1' };
    if (path.endsWith('/migrate')) {
      const final = body?.final === true;
      if (final && options.failFinal) {
        // The source's own rollback restored it: it runs again.
        return Promise.reject(new HavenError('cannot reach http://h3:7070: ETIMEDOUT', 'unavailable', true));
      }
      if (final) state = 'checkpointed';
      return Promise.resolve({
        id: body?.id,
        round: body?.round,
        final,
        checkpointId: 'ck-1',
        takenAt: new Date().toISOString(),
        frozenMs: 30,
        checkpointBytes: 3 * MB,
        sentBytes: sent.shift() ?? 0,
        sentChunks: 1,
        checkpointMs: 60,
        chunkMs: 10,
        sendMs: 20,
        commitMs: 5,
        wallMs: 100,
        ...(final ? { epoch: 77 } : {}),
      } as T);
    }
    if (path.endsWith('/promote'))
      return Promise.resolve({
        epoch: 77,
        assembleMs: 5,
        restoreMs: 50,
        view: { ...view, state: 'running' },
      } as T);
    return Promise.resolve(view as T);
  };
  const controller = new Controller({
    store,
    images: new ImageRegistry(await mkdtemp(join(dir, 'images-'))),
    callAgent,
  });
  const events: StoredEvent[] = [];
  controller.events.on('event', (e: StoredEvent) => events.push(e));
  for (const name of ['h1', 'h2', 'h3'])
    await controller.registerHost({
      name,
      address: `http://${name}:7070`,
      labels: {},
      cpuMillis: 2000,
      memoryBytes: 4 * 2 ** 30,
      bootId: 'b00710aa',
      heartbeatMs: 100,
    });
  return { controller, calls, events, store };
}

test('pre-copy with fake agents: rounds, final round, restore exactly that epoch with connections, source copy removed', async () => {
  const { controller, calls, events, store } = await cluster({ sent: [3 * MB, 0.1 * MB, 0.1 * MB] });
  const report = await controller.migrations.migrate('db', {
    to: 'h3',
    strategy: 'pre-copy',
    maxDowntimeMs: 300,
    maxRounds: 8,
  });
  assert.equal(report.to, 'h3');
  assert.equal(report.strategy, 'pre-copy');
  assert.ok(report.rounds.length >= 1);
  const promote = calls.find((c) => c.path.endsWith('/promote'))!;
  assert.equal(promote.host, 'h3');
  assert.deepEqual(promote.body, { tcpClose: false, epoch: 77 });
  assert.ok(
    calls.some((c) => c.host === 'h1' && c.method === 'DELETE'),
    'the source copy is removed',
  );
  assert.equal((await store.getContainer('db'))!.host, 'h3');
  assert.equal(await store.getOperation('db'), undefined, 'the operation is finished');
  const progress = events.filter((e) => e.kind === 'container.migration-progress');
  assert.ok(progress.some((e) => e.data.phase === 'pre-copy' && typeof e.data.stallMs === 'number'));
  assert.ok(events.some((e) => e.kind === 'container.migrated'));
});

test('a final round that fails rolls back: the source runs on, the failure names its phase', async () => {
  const { controller, calls, events, store } = await cluster({ failFinal: true });
  await assert.rejects(
    controller.migrations.migrate('db', {
      to: 'h3',
      strategy: 'stop-copy',
      maxDowntimeMs: 300,
      maxRounds: 8,
    }),
    (error: unknown) => error instanceof MigrationFailedError && /phase final/.test(error.message),
  );
  assert.equal((await store.getContainer('db'))!.host, 'h1', 'still placed on the source');
  assert.equal(await store.getOperation('db'), undefined);
  const failed = events.find((e) => e.kind === 'container.migration-failed')!;
  assert.equal(failed.data.phase, 'final');
  assert.equal(failed.data.rolledBack, true);
  assert.ok(!calls.some((c) => c.path.endsWith('/promote')), 'nothing restored on the destination');
  assert.ok(
    calls.some((c) => c.host === 'h3' && c.method === 'DELETE' && c.path === '/v1/replicas/db'),
    'the temporary replica goes',
  );
});

test('a protected container migrated onto its backup gets a new backup; one migrated elsewhere keeps its backup', async () => {
  const onto = await cluster({ ha: true });
  await onto.controller.migrations.migrate('db', {
    to: 'h2',
    strategy: 'stop-copy',
    maxDowntimeMs: 300,
    maxRounds: 8,
  });
  const moved = (await onto.store.getContainer('db'))!;
  assert.equal(moved.host, 'h2');
  assert.ok(moved.spec.backup && moved.spec.backup !== 'h2', `a new backup (${String(moved.spec.backup)})`);
  // Protection paused before the rounds, ordered again afterwards.
  const protects = onto.calls.filter((c) => c.path.endsWith('/protect'));
  assert.deepEqual(protects[0]!.body, { backup: null });
  assert.equal(protects.at(-1)!.host, 'h2');

  const elsewhere = await cluster({ ha: true });
  await elsewhere.controller.migrations.migrate('db', {
    to: 'h3',
    strategy: 'stop-copy',
    maxDowntimeMs: 300,
    maxRounds: 8,
  });
  const kept = (await elsewhere.store.getContainer('db'))!;
  assert.equal(kept.host, 'h3');
  assert.equal(kept.spec.backup, 'h2', 'the old backup stays: it is not the new primary');
});

test('a migration that placement refuses stops nothing', async () => {
  const { controller, calls } = await cluster({});
  await controller.setCordon('h3', true);
  await assert.rejects(
    controller.migrations.migrate('db', {
      to: 'h3',
      strategy: 'stop-copy',
      maxDowntimeMs: 300,
      maxRounds: 8,
    }),
    /cannot migrate "db" to h3: h3: cordoned/,
  );
  await assert.rejects(
    controller.migrations.migrate('db', {
      to: 'h1',
      strategy: 'stop-copy',
      maxDowntimeMs: 300,
      maxRounds: 8,
    }),
    /already runs on h1/,
  );
  assert.deepEqual(calls, []);
});

test('drain: cordons the host and moves everything off it', async () => {
  const { controller, store } = await cluster({});
  const report = await controller.migrations.drain('h1', {
    strategy: 'stop-copy',
    maxDowntimeMs: 300,
    maxRounds: 8,
  });
  assert.deepEqual(report.failed, []);
  assert.equal(report.migrated.length, 1);
  assert.notEqual((await store.getContainer('db'))!.host, 'h1');
  assert.equal((await store.getHost('h1'))!.cordoned, true);
});
