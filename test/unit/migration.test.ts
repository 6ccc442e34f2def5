/**
 * Live migration: the pure decisions (when pre-copy stops, what `auto`
 * picks) and the operation with fake agents — a pre-copy that converges, a
 * destination that fails in the final round (rolled back, reported with its
 * phase), a protected container moved onto its own backup (a new backup is
 * chosen), and a bad request (refused before anything stops).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { CachedStore } from '../../src/controller/cached-store.js';
import { Controller, type AgentCaller } from '../../src/controller/controller.js';
import { ImageRegistry } from '../../src/controller/image-registry.js';
import {
  chooseAuto,
  chooseStrategy,
  hybridRefusal,
  MigrationFailedError,
  nextStep,
  type RoundStats,
} from '../../src/controller/migration.js';
import { migrateRequestSchema } from '../../src/controller/schemas.js';
import { SqliteStore } from '../../src/controller/sqlite-store.js';
import type { StoredEvent } from '../../src/controller/store.js';
import { HavenError } from '../../src/core/errors.js';
import { lazyChainScript } from '../../src/runtime/runc/runc-driver.js';

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
  assert.equal(migrateRequestSchema.parse({ to: 'h2', strategy: 'post-copy' }).strategy, 'post-copy');
  const bad = migrateRequestSchema.safeParse({ to: 'h2', strategy: 'lazy' });
  assert.equal(bad.success, false);
  assert.equal(migrateRequestSchema.safeParse({ to: '../etc' }).success, false);
  assert.equal(migrateRequestSchema.safeParse({ to: 'h2', extra: 1 }).success, false);
});

/** This kernel: userfaultfd yes, soft-dirty no. */
const HERE = { dirtyTracking: false, lazyPages: true };

test('chooseAuto: stop-and-copy when it fits; post-copy for 1 GB where lazy pages work; pre-copy without them; says why', () => {
  const small = chooseAuto({ ...HERE, memoryBytes: 8 * MB }, 1000);
  assert.equal(small.strategy, 'stop-copy');
  assert.match(small.why, /memory 8 MB.*stop-and-copy fits/);
  // Restoring alone costs ~350 ms: at a 300 ms target even a small container goes post-copy.
  assert.equal(chooseAuto({ ...HERE, memoryBytes: 8 * MB }, 300).strategy, 'post-copy');
  const big = chooseAuto({ ...HERE, memoryBytes: 1000 * MB }, 300);
  assert.equal(big.strategy, 'post-copy');
  assert.match(
    big.why,
    /memory 1000 MB, link 125 MB\/s, dirty rate unknown, dirty-page tracking no, lazy pages yes/,
  );
  assert.match(big.why, /does not grow with memory or dirty rate/);
  assert.ok(big.estimatedDowntimeMs < 1000);
  const noLazy = chooseAuto({ dirtyTracking: false, lazyPages: false, memoryBytes: 1000 * MB }, 300);
  assert.equal(noLazy.strategy, 'pre-copy');
  assert.match(noLazy.why, /no lazy pages here/);
  // Pre-dump chains are not built: a kernel with dirty tracking gets the same choice (and says it has it).
  const tracked = chooseAuto({ dirtyTracking: true, lazyPages: true, memoryBytes: 200 * MB }, 300);
  assert.equal(tracked.strategy, chooseAuto({ ...HERE, memoryBytes: 200 * MB }, 300).strategy);
  assert.match(tracked.why, /dirty-page tracking yes/);
  // A slow writer still goes post-copy; a fast one would fault on missing pages: pre-copy while the
  // link outruns its writes, else stop-and-copy. The sampled rate is in the why.
  const sample = (pagesPerSecond: number) => ({ pagesPerSecond, sampledPages: 4096, changedPages: 9 });
  const slow = chooseAuto({ ...HERE, memoryBytes: 1000 * MB, dirty: sample(831) }, 300);
  assert.equal(slow.strategy, 'post-copy');
  assert.match(slow.why, /dirty rate ~831 pages\/s \(sampled\)/);
  const fast = chooseAuto({ ...HERE, memoryBytes: 1000 * MB, dirty: sample(11_463) }, 300);
  assert.equal(fast.strategy, 'pre-copy');
  assert.match(fast.why, /post-copy would fault/);
  assert.equal(
    chooseAuto({ ...HERE, memoryBytes: 1000 * MB, dirty: sample(40_000) }, 300).strategy,
    'stop-copy',
  );
  // Unknown memory is said so, not guessed.
  assert.match(chooseAuto({ ...HERE, memoryBytes: undefined }, 300).why, /\(unknown\)/);
});

test('hybrid is refused with the reason on a kernel without dirty tracking, and without lazy pages', () => {
  assert.match(hybridRefusal(HERE)!, /soft-dirty.*Use post-copy/);
  assert.match(hybridRefusal({ dirtyTracking: true, lazyPages: false })!, /lazy pages/);
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
  /** Post-copy: every page arrives, or the destination's transfer fails (its copy killed there). */
  lazy?: 'complete' | 'fail';
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
  let waits = 0;
  const sent = [...(options.sent ?? [3 * MB, 1 * MB])];
  const callAgent: AgentCaller = <T>(
    host: { name: string },
    path: string,
    opts: { method?: string; body?: unknown } = {},
  ) => {
    const body = opts.body as Record<string, unknown> | undefined;
    calls.push({ host: host.name, path, method: opts.method ?? 'GET', ...(body ? { body } : {}) });
    const view = { name: 'db', state, pid: 4242, ip: '10.88.1.1' };
    if (path.endsWith('/migrate-facts'))
      return Promise.resolve({ memoryBytes: 1000 * MB, dirtyTracking: false, lazyPages: true } as T);
    if (path.endsWith('/migrate-end')) return Promise.resolve({ ended: body?.outcome } as T);
    if (path.endsWith('/promote-lazy'))
      return Promise.resolve({ assembleMs: 5, restoreMs: 50, view: { ...view, state: 'running' } } as T);
    if (path.endsWith('/lazy-wait')) {
      waits++;
      if (waits === 1)
        return Promise.resolve({
          complete: false,
          pending: true,
          transferred: [100, 1000],
          ms: 1000,
          errors: [],
        } as T);
      return Promise.resolve(
        (options.lazy === 'fail'
          ? { complete: false, ms: 1500, errors: ['no page arrived for 3000 ms'], killed: true }
          : { complete: true, transferred: [1000, 1000], ms: 1800, errors: [] }) as T,
      );
    }
    if (path.endsWith('/migrate')) {
      const final = body?.final === true;
      if (final && options.failFinal) {
        // The source's own rollback restored it: it runs again.
        return Promise.reject(new HavenError('cannot reach http://h3:7070: ETIMEDOUT', 'unavailable', true));
      }
      if (final && !body?.postCopy) state = 'checkpointed';
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
        ...(final && body?.postCopy ? { postCopy: { ...body.postCopy, pagesBytes: 1000 * MB } } : {}),
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
  assert.deepEqual(promote.body, { tcpClose: false, epoch: 77, provisional: true });
  assert.ok(
    calls.some((c) => c.host === 'h3' && c.path === '/v1/containers/db/placed'),
    'the destination told its copy is placed',
  );
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

test('post-copy with fake agents: images frozen, runs on the destination, pages pulled, then the frozen source is killed', async () => {
  const { controller, calls, events, store } = await cluster({ lazy: 'complete' });
  const report = await controller.migrations.migrate('db', {
    to: 'h3',
    strategy: 'auto',
    maxDowntimeMs: 300,
    maxRounds: 8,
  });
  assert.equal(report.strategy, 'post-copy', 'auto chose post-copy for 1 GB here');
  assert.match(report.why, /lazy pages yes/);
  assert.deepEqual(report.rounds, [], 'no pre-copy round stalled the workload');
  assert.deepEqual(report.postCopy, { pagesMs: 1800, pages: 1000 });
  const facts = calls.find((c) => c.path.endsWith('/migrate-facts'));
  assert.equal(facts?.body?.sampleDirtyRate, true, 'auto weighs the dirty rate: the source samples it');
  const order = calls
    .filter((c) => /migrate|promote|lazy-wait/.test(c.path))
    .map((c) => `${c.host} ${c.path.split('/').at(-1)!}`);
  assert.deepEqual(order, [
    'h1 migrate-facts',
    'h1 migrate',
    'h3 promote-lazy',
    'h3 lazy-wait',
    'h3 lazy-wait',
    'h1 migrate-end',
  ]);
  const final = calls.find((c) => c.path.endsWith('/migrate'))!;
  assert.equal(final.body?.final, true);
  assert.equal((final.body?.postCopy as { address: string }).address, 'h1', "the source's own address");
  assert.deepEqual(calls.find((c) => c.path.endsWith('/migrate-end'))!.body?.outcome, 'complete');
  assert.ok(
    calls.some((c) => c.host === 'h1' && c.method === 'DELETE'),
    'the source copy is removed',
  );
  assert.equal((await store.getContainer('db'))!.host, 'h3');
  const strategy = events.find((e) => e.kind === 'container.migration-strategy')!;
  assert.equal(strategy.data.strategy, 'post-copy');
  const pulling = events.find((e) => e.data.phase === 'post-copy' && e.data.pagesArrived === 100)!;
  assert.equal(pulling.data.leftBytes, 900 * 4096);
  assert.equal(typeof pulling.data.etaMs, 'number');
});

test('post-copy whose pages stop arriving rolls back: destination copy gone first, then the source thaws; the event says what is lost', async () => {
  const { controller, calls, events, store } = await cluster({ lazy: 'fail' });
  await assert.rejects(
    controller.migrations.migrate('db', {
      to: 'h3',
      strategy: 'post-copy',
      maxDowntimeMs: 300,
      maxRounds: 8,
    }),
    (error: unknown) => error instanceof MigrationFailedError && /phase post-copy/.test(error.message),
  );
  const facts = calls.find((c) => c.path.endsWith('/migrate-facts'));
  assert.equal(
    facts?.body?.sampleDirtyRate,
    false,
    'post-copy asked: no second spent sampling the dirty rate',
  );
  const removed = calls.findIndex(
    (c) => c.host === 'h3' && c.method === 'DELETE' && c.path.startsWith('/v1/containers/db'),
  );
  const thawed = calls.findIndex((c) => c.path.endsWith('/migrate-end'));
  assert.ok(removed >= 0 && thawed > removed, 'the destination copy is removed before the source thaws');
  assert.equal(calls[thawed]!.body?.outcome, 'rollback');
  assert.equal(calls[thawed]!.body?.destinationGone, true, 'the source is told its copy is gone');
  assert.equal((await store.getContainer('db'))!.host, 'h1', 'still placed on the source');
  const failed = events.find((e) => e.kind === 'container.migration-failed')!;
  assert.equal(failed.data.phase, 'post-copy');
  assert.equal(failed.data.rolledBack, true);
  assert.match(String(failed.data.lostOnDestination), /what it did there is lost.*state at the freeze/);
});

test('a controller restarted after the post-copy switch waits for the pages and finishes: no second restore', async () => {
  const { controller, calls, events, store } = await cluster({ lazy: 'complete' });
  const intent = (await store.getContainer('db'))!;
  // As the killed controller left it: the destination runs it, its pages on the way.
  await store.putOperation({
    container: 'db',
    kind: 'migration',
    from: 'h1',
    to: 'h3',
    step: 'shipped',
    generation: intent.generation,
    epoch: 77,
    detail: {
      id: 'm-resumed-1',
      strategy: 'post-copy',
      backup: null,
      takenAt: new Date().toISOString(),
      postCopy: { address: 'h1', port: 27001, pagesBytes: 1000 * MB },
      switched: true,
      assembleMs: 5,
      restoreMs: 50,
      downtimeMs: 300,
    },
    startedAt: new Date().toISOString(),
  });
  assert.equal(await controller.resumeOperations(), 1);
  const done = await waitForEvent(events, 'container.migrated');
  assert.equal(done.data.resumed, true);
  const order = calls
    .filter((c) => /migrate|promote|lazy-wait/.test(c.path))
    .map((c) => `${c.host} ${c.path.split('/').at(-1)!}`);
  assert.deepEqual(order, ['h3 lazy-wait', 'h3 lazy-wait', 'h1 migrate-end'], 'no promote-lazy again');
  assert.equal(calls.find((c) => c.path.endsWith('/migrate-end'))!.body?.outcome, 'complete');
  assert.equal((await store.getContainer('db'))!.host, 'h3');
  assert.equal(await store.getOperation('db'), undefined, 'the operation is done');
});

async function waitForEvent(events: StoredEvent[], kind: string): Promise<StoredEvent> {
  for (let i = 0; i < 200; i++) {
    const found = events.find((e) => e.kind === kind);
    if (found) return found;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`no ${kind} event: ${events.map((e) => e.kind).join(', ')}`);
}

test('hybrid on this kernel is refused before anything stops', async () => {
  const { controller, calls } = await cluster({});
  await assert.rejects(
    controller.migrations.migrate('db', { to: 'h3', strategy: 'hybrid', maxDowntimeMs: 300, maxRounds: 8 }),
    /soft-dirty/,
  );
  assert.ok(!calls.some((c) => c.path.endsWith('/migrate')), 'no round was ordered');
});

// ------------------------------------------------------------- post-copy's freeze chain

/** Runs a lazy chain against a fake cgroup v2 freezer in `dir`: its output, exit status and the freezer's end state. */
async function runLazyChain(
  dump: string[],
  hooks: { before?: string[][]; alongside?: string[][] } = {},
): Promise<{ out: string; code: number; freeze: string }> {
  const cg = await mkdtemp(join(dir, 'cg-'));
  await writeFile(join(cg, 'cgroup.freeze'), '0\n');
  // The kernel says "frozen 1" once frozen; this fake says it at once.
  await writeFile(join(cg, 'cgroup.events'), 'populated 1\nfrozen 1\n');
  const script = lazyChainScript(dump, hooks, { path: join(cg, 'cgroup.freeze'), version: 2 });
  const child = spawn('bash', ['-c', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString('latin1')));
  child.stdin.end('go\n');
  const code = await new Promise<number>((resolve) => child.on('close', (n) => resolve(n ?? -1)));
  return { out, code, freeze: (await readFile(join(cg, 'cgroup.freeze'), 'utf8')).trim() };
}

test('the lazy freeze chain: ready markers, and never a thaw once the dump ran, whatever its end', async () => {
  const failed = await runLazyChain(['sh', '-c', 'printf "\\000"; exit 3'], { alongside: [['true']] });
  assert.equal(failed.code, 3, "the dump's status");
  assert.match(failed.out, /haven-frozen [\d.]+ [\d.]+/);
  assert.match(failed.out, /haven-files 0/);
  assert.ok(failed.out.includes('\0'), "CRIU's status byte passes through");
  assert.equal(
    failed.freeze,
    '1',
    'a failed transfer leaves it frozen: the caller thaws, after the destination copy is gone',
  );
  const ok = await runLazyChain(['sh', '-c', 'printf "\\000"'], { alongside: [['false']] });
  assert.equal(ok.code, 0);
  assert.match(ok.out, /haven-files 1/, 'a failed file copy is reported');
  assert.equal(ok.freeze, '1', 'a finished transfer leaves it frozen: the caller kills it');
  const locked = await runLazyChain(['sh', '-c', 'exit 0'], { before: [['false']] });
  assert.equal(locked.code, 125, 'the network lock failed');
  assert.equal(locked.freeze, '0', 'nothing dumped yet: thawed at once');
});
