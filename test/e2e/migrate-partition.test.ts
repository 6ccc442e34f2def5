/**
 * A migration's destination cut off right after its restore, before the
 * controller heard of it (issue 6's matrix once found this: the rollback
 * restored the source while the destination's copy still served Redis, and
 * 155k acknowledged writes went with the discarded copy).
 *
 * The lab's agents hold back the answer of a migration's promotion for a
 * few seconds (`HAVEN_TEST_PROMOTE_HOLD_MS`, as a slow or lost answer
 * would); the test cuts the destination off — its containers keep their
 * path to the client, the worst case — as soon as its copy runs. Expected:
 * the destination freezes its copy (not yet placed there) once its lease
 * runs out; the controller sees the host down, waits out that lease, and
 * only then rolls back — the source runs again with every key, and at no
 * sample did both copies run. After the heal the destination's copy is
 * removed, and exactly one copy is left.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { REDIS_ARGS } from '../../src/fixtures/images.js';
import {
  copyRunsOn,
  events,
  haven,
  inspect,
  labDown,
  labWithRedis,
  ok,
  waitFor,
} from '../support/lab-cli.js';
import { fill, keysIntact, oneCopyOn, redis, type View } from '../support/migration.js';

const KEYS = 2000;
const HOLD_MS = 5000;

before(async () => {
  await labWithRedis(3, { HAVEN_TEST_PROMOTE_HOLD_MS: String(HOLD_MS) });
});

after(labDown);

test(
  'the destination cut off after its restore: its copy is frozen before the source runs again; one copy after the heal',
  { timeout: 120_000 },
  async () => {
    await ok(['run', 'kv', '--image', 'redis', '--host', 'h1', '--memory', '256m', '--', ...REDIS_ARGS]);
    const view = await waitFor('kv running', async () => {
      const v = await inspect<View>('kv');
      return v.state === 'running' ? v : undefined;
    });
    await waitFor('redis answers', async () =>
      (await redis(view.ip, 'PING')) === 'PONG' ? true : undefined,
    );
    await fill(view.ip, KEYS);
    const seen = (await events()).at(-1)?.seq ?? 0;

    const samples: Array<[number, boolean, boolean]> = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        samples.push([Date.now(), copyRunsOn('h1', 'kv'), copyRunsOn('h2', 'kv')]);
        await sleep(3);
      }
    })();
    const migrating = haven(['migrate', 'kv', '--to', 'h2', '--strategy', 'stop-copy', '--json']);
    await waitFor('the copy running on the destination', () =>
      Promise.resolve(copyRunsOn('h2', 'kv') ? true : undefined),
    );
    await ok(['lab', 'partition', 'h2', '--keep-client']);
    const cutAt = Date.now();
    const result = await migrating;
    await waitFor('the source running again', () =>
      Promise.resolve(copyRunsOn('h1', 'kv') ? true : undefined),
    );
    await sleep(500);
    sampling = false;
    await sampler;

    assert.notEqual(result.code, 0, 'the migration failed');
    const failed = (await events()).find((e) => e.seq > seen && e.kind === 'container.migration-failed');
    assert.ok(failed, 'container.migration-failed');
    assert.equal(failed.data.phase, 'restore');
    assert.equal(failed.data.rolledBack, true);
    assert.match(String(failed.data.lostOnDestination), /until its host froze it/);
    const both = samples.filter(([, a, b]) => a && b);
    const frozen = samples.find(([t, , b]) => t > cutAt && !b)?.[0];
    const source = samples.find(([t, a]) => t > cutAt && a)?.[0];
    process.stdout.write(
      `# destination cut off: its copy frozen ${frozen! - cutAt} ms after the cut, ` +
        `the source running ${source! - cutAt} ms after it; ${samples.length} samples\n`,
    );
    assert.equal(both.length, 0, 'never both running');
    assert.ok(frozen! < source!, 'the destination copy froze first');

    const now = await inspect<View>('kv');
    assert.equal(now.host, 'h1', 'placed on the source');
    await keysIntact(now.ip, KEYS, 0);

    await ok(['lab', 'heal', 'h2']);
    await waitFor('the destination copy removed after the heal', async () => {
      try {
        await oneCopyOn('kv', 'h1', ['h1', 'h2', 'h3']);
        return true;
      } catch {
        return undefined;
      }
    });
    await keysIntact(now.ip, KEYS, 0);
  },
);
