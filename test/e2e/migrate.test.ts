/**
 * Live migration on a 3-host lab with real Redis (issue 6): keys written
 * beforehand and a write load on one open connection from the lab's
 * `client` while the container moves.
 *
 * 1. **stop-and-copy** h1 → h2 and 2. **pre-copy** h2 → h3: every key is
 *    there, the load's counter runs on without a gap (no acknowledged write
 *    lost), its one connection never broke, the container runs on the
 *    destination at the same address, and exactly one copy exists.
 * 3. **post-copy** h3 → h2 under the same load and checks: the container
 *    runs on the destination right after its images (no pages) arrive, and
 *    pulls its pages there; the frozen source is killed once all arrived.
 * 4. **post-copy, the destination killed while pages are pulled**: the C
 *    workload (64 MB of random content, dirtying 1,000 pages/s) over a link
 *    shaped slow enough to catch it; the migration rolls back to the frozen
 *    source — its memory self-check passes there, it runs on exactly one
 *    host, and the event says that what it did on the destination is lost.
 * 5. **stop-and-copy, the destination killed mid-transfer** (`lab kill-host`,
 *    during the final round over a link shaped slow enough to catch it): the
 *    migration rolls back — the source restores its final checkpoint — and
 *    reports the phase; Redis runs on exactly one host with its keys and
 *    counter.
 *
 * Measured figures are printed as `# ...` lines.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { memhogImage, REDIS_ARGS } from '../../src/fixtures/images.js';
import {
  events,
  haven,
  inspect as inspectAs,
  labDown,
  labWithRedis,
  ok,
  waitFor,
  writeLoad,
} from '../support/lab-cli.js';
import {
  checkLoad,
  fill,
  keysIntact,
  memhogCheck,
  oneCopyOn,
  redis,
  type View,
} from '../support/migration.js';

interface Report {
  from: string;
  to: string;
  strategy: string;
  rounds: Array<{ round: number; frozenMs: number; sentBytes: number }>;
  stopped: string;
  finalFrozenMs: number;
  finalSentBytes: number;
  checkpointBytes: number;
  totalSentBytes: number;
  restoreMs: number;
  downtimeMs: number;
  totalMs: number;
  postCopy?: { pagesMs: number; pages: number };
}

const inspect = (name: string): Promise<View> => inspectAs<View>(name);

const KEYS = 3000;

before(async () => {
  await labWithRedis();
  await ok(['run', 'kv', '--image', 'redis', '--host', 'h1', '--memory', '256m', '--', ...REDIS_ARGS]);
  const view = await waitFor('kv running', async () => {
    const v = await inspect('kv');
    return v.state === 'running' ? v : undefined;
  });
  await waitFor('redis answers', async () => ((await redis(view.ip, 'PING')) === 'PONG' ? true : undefined));
  await fill(view.ip, KEYS);
});

after(labDown);

async function migrateUnderLoad(to: string, strategy: string): Promise<{ report: Report; gap: number }> {
  const before = await inspect('kv');
  const load = writeLoad(before.ip, 9000);
  await sleep(2500);
  const report = JSON.parse(
    await ok(['migrate', 'kv', '--to', to, '--strategy', strategy, '--max-downtime', '300ms', '--json']),
  ) as Report;
  const result = await load;
  assert.equal(report.from, before.host);
  assert.equal(report.to, to);
  const after = await inspect('kv');
  assert.equal(after.host, to, 'it runs on the destination');
  assert.equal(after.ip, before.ip, 'at the same address');
  assert.equal(after.state, 'running');
  const gap = checkLoad(result, strategy);
  // The load's last INCR may be in flight at its deadline: done, never answered.
  const counter = Number(await redis(after.ip, 'GET', 'counter'));
  const last = result.acks.at(-1)![0];
  assert.ok(
    counter === last || counter === last + 1,
    `the counter (${counter}) as last acknowledged (${last})`,
  );
  await keysIntact(after.ip, KEYS, 1);
  await oneCopyOn('kv', to, ['h1', 'h2', 'h3']);
  process.stdout.write(
    `# ${strategy} ${report.from} → ${report.to}: downtime ${report.downtimeMs} ms (final round frozen ` +
      `${report.finalFrozenMs} ms, ${report.finalSentBytes} bytes sent then; restore ${report.restoreMs} ms), ` +
      `total ${report.totalMs} ms, ${report.totalSentBytes} bytes sent of a ${report.checkpointBytes}-byte ` +
      `checkpoint; rounds ${JSON.stringify(report.rounds)}${report.stopped ? ` (${report.stopped})` : ''}; ` +
      `longest wait for a write reply ${gap} ms; ${result.acks.length} writes, 0 lost, connection kept\n`,
  );
  return { report, gap };
}

test(
  'stop-and-copy under a write load: keys intact, connection kept, one copy',
  { timeout: 120_000 },
  async () => {
    const { report } = await migrateUnderLoad('h2', 'stop-copy');
    assert.equal(report.strategy, 'stop-copy');
    assert.deepEqual(report.rounds, []);
  },
);

test(
  'pre-copy under a write load: rounds, then the rest; keys intact, connection kept, one copy',
  { timeout: 120_000 },
  async () => {
    const { report } = await migrateUnderLoad('h3', 'pre-copy');
    assert.equal(report.strategy, 'pre-copy');
    assert.ok(report.rounds.length >= 1, 'at least one pre-copy round');
    assert.ok(report.rounds[0]!.sentBytes > 0, 'the first round sent the checkpoint');
    assert.ok(report.finalSentBytes < report.checkpointBytes, 'the final round sent only what changed');
    const progress = (await events()).filter(
      (e) => e.kind === 'container.migration-progress' && e.data.phase === 'pre-copy',
    );
    assert.ok(
      progress.length >= 1 && progress.every((e) => typeof e.data.stallMs === 'number'),
      "each round's stall reported",
    );
  },
);

test(
  'post-copy under a write load: runs on the destination before its pages; keys intact, connection kept, one copy',
  { timeout: 120_000 },
  async () => {
    const { report } = await migrateUnderLoad('h2', 'post-copy');
    assert.equal(report.strategy, 'post-copy');
    assert.deepEqual(report.rounds, []);
    assert.ok(report.postCopy && report.postCopy.pages > 0, 'pages pulled after the switch');
    assert.ok(
      report.finalSentBytes < report.checkpointBytes + 1e6,
      'only the images without pages sent frozen',
    );
    process.stdout.write(
      `# post-copy: ${report.postCopy.pages} pages pulled in ${report.postCopy.pagesMs} ms\n`,
    );
  },
);

test(
  'post-copy, the destination killed while pages are pulled: the frozen source resumes with its memory intact, one copy',
  { timeout: 180_000 },
  async () => {
    await ok(['image', 'push', await memhogImage(), '--name', 'memhog']);
    await ok([
      'run',
      'mh',
      '--image',
      'memhog',
      '--host',
      'h3',
      '--memory',
      '256m',
      '--',
      '/bin/memhog',
      '--mb',
      '64',
      '--mode',
      'random',
      '--dirty',
      '1000',
      '--seed',
      '11',
    ]);
    const running = await waitFor('memhog ready', async () => {
      const v = await inspect('mh');
      return v.state === 'running' && /ready mb=64/.test(await ok(['logs', 'mh'])) ? v : undefined;
    });
    // 64 MB of pages at ~2.5 MB/s: ~25 s of pulling, time to kill the destination in the middle.
    await ok(['lab', 'shape', 'h1', '--rate', '20mbit']);
    const seen = (await events()).at(-1)?.seq ?? 0;
    const migrating = haven(['migrate', 'mh', '--to', 'h1', '--strategy', 'post-copy', '--json']);
    await waitFor(
      'pages being pulled on h1',
      async () =>
        (await events()).find(
          (e) => e.seq > seen && e.kind === 'container.migration-progress' && Number(e.data.pagesArrived) > 0,
        ),
      60_000,
    );
    await ok(['lab', 'kill-host', 'h1']);
    const result = await migrating;
    assert.notEqual(result.code, 0, 'the migration failed');
    assert.match(result.stderr, /phase post-copy.*rolled back: it runs on h3/);
    const failed = (await events()).find((e) => e.seq > seen && e.kind === 'container.migration-failed');
    assert.ok(failed, 'container.migration-failed');
    assert.equal(failed.data.phase, 'post-copy');
    assert.equal(failed.data.rolledBack, true);
    assert.match(String(failed.data.lostOnDestination), /what it did there is lost/);
    const after = await inspect('mh');
    assert.equal(after.host, 'h3', 'still placed on the source');
    assert.equal(after.state, 'running');
    assert.equal(after.pid, running.pid, 'the very processes frozen at the switch, thawed');
    await oneCopyOn('mh', 'h3', ['h2', 'h3']);
    assert.equal(await memhogCheck('mh', after.pid), 'check ok pages=16384', 'every page as at the freeze');
    await ok(['rm', 'mh', '--force']);
    process.stdout.write(`# post-copy rollback: ${String(failed.data.error)}\n`);
  },
);

test(
  'the destination killed mid-transfer: rolled back, runs on exactly one host with its state',
  { timeout: 120_000 },
  async () => {
    const before = await inspect('kv');
    assert.equal(before.host, 'h2');
    // Slow enough that the final round's transfer (a few MB) is still under way when the host dies.
    await ok(['lab', 'shape', 'h3', '--rate', '8mbit']);
    const seen = (await events()).at(-1)?.seq ?? 0;
    const load = writeLoad(before.ip, 20_000);
    await sleep(1500);
    const migrating = haven(['migrate', 'kv', '--to', 'h3', '--strategy', 'stop-copy', '--json']);
    await waitFor(
      'the final round under way',
      async () =>
        (await events()).find(
          (e) => e.seq > seen && e.kind === 'container.migration-progress' && e.data.frozen === true,
        ),
      60_000,
    );
    await sleep(1000);
    await ok(['lab', 'kill-host', 'h3']);
    const result = await migrating;
    assert.notEqual(result.code, 0, 'the migration failed');
    assert.match(result.stderr, /rolled back/);
    const failed = (await events()).find((e) => e.seq > seen && e.kind === 'container.migration-failed');
    assert.ok(failed, 'container.migration-failed');
    assert.equal(failed.data.rolledBack, true);
    assert.equal(typeof failed.data.phase, 'string');
    const loaded = await load;

    const after = await waitFor('kv running again', async () => {
      const v = await inspect('kv');
      return v.state === 'running' ? v : undefined;
    });
    assert.equal(after.host, 'h2', 'still placed on the source');
    await oneCopyOn('kv', 'h2', ['h2']);
    assert.equal(await redis(after.ip, 'DBSIZE'), String(KEYS + 1), 'every key');
    const counter = Number(await redis(after.ip, 'GET', 'counter'));
    const gap = checkLoad(loaded, 'rollback');
    assert.ok(counter >= loaded.acks.at(-1)![0], 'no acknowledged write lost');
    process.stdout.write(
      `# destination killed in phase ${String(failed.data.phase)}: rolled back (restored from the final ` +
        `checkpoint: ${String(failed.data.restoredFromFinalCheckpoint)}); longest wait for a write reply ${gap} ms; ` +
        `error: ${String(failed.data.error)}\n`,
    );
  },
);
