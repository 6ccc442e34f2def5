/**
 * No false failovers on lossy links: a 3-host lab whose every host drops 2%
 * of its packets at random, both ways (`haven lab shape H --loss 2%`), with
 * Redis protected by checkpoints every second under a write load from the
 * lab's `client`. Over the soak, nothing may be failed over (neither for its
 * host nor as a failed container) or fenced, and epochs must keep committing. The issue asks for ten
 * minutes; CI runs a 45-second share of it, `npm run test:full` the ten
 * minutes (HAVEN_TEST_TIER=full).
 *
 * Printed: beats lost to the detector's eye (`host.down` events, each then
 * cleared by peers that still reach the host), suspicions, epochs committed,
 * and the longest pause the load saw.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  haven,
  inspect as inspectAs,
  type LabEvent,
  labWithRedis,
  ok,
  protectedRedis,
  writeLoad,
} from '../support/lab-cli.js';

const FULL = process.env.HAVEN_TEST_TIER === 'full';
const SOAK_S = FULL ? 600 : 45;
/** The load runs in segments: a record of every write of ten minutes would not fit in one JSON answer. */
const SEGMENT_S = 15;
const LOSS = '2%';

interface View {
  host: string;
  ip: string;
  state: string;
  protection: { backup: string | null; committedEpoch: number | null; committedAgeMs: number | null };
}

const inspect = (name: string): Promise<View> => inspectAs<View>(name);

async function eventsAfter(seq: number): Promise<LabEvent[]> {
  return (await ok(['events', '--json']))
    .trim()
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l) as LabEvent)
    .filter((e) => e.seq > seq);
}

before(async () => {
  await labWithRedis();
});

after(async () => {
  await haven(['lab', 'down']);
});

test(
  `${LOSS} loss on every host's link for ${SOAK_S} s: no failover, epochs keep committing`,
  { timeout: (SOAK_S + 180) * 1000 },
  async () => {
    await protectedRedis('kv');
    const start = await inspect('kv');
    for (const h of ['h1', 'h2', 'h3']) await ok(['lab', 'shape', h, '--loss', LOSS]);
    const status = JSON.parse(await ok(['lab', 'status', '--json'])) as {
      hosts: Array<{ name: string; lossPercent: number | null }>;
    };
    assert.deepEqual(
      status.hosts.map((h) => h.lossPercent),
      [2, 2, 2],
    );
    const firstSeq = (await eventsAfter(0)).at(-1)?.seq ?? 0;

    let writes = 0;
    let loadErrors = 0;
    let longestPauseMs = 0;
    const until = Date.now() + SOAK_S * 1000;
    while (Date.now() < until) {
      const segmentMs = Math.min(SEGMENT_S * 1000, Math.max(1000, until - Date.now()));
      const result = await writeLoad(start.ip, segmentMs);
      writes += result.acks.length;
      loadErrors += result.errors.length;
      for (let i = 1; i < result.acks.length; i++)
        longestPauseMs = Math.max(longestPauseMs, result.acks[i]![1] - result.acks[i - 1]![1]);
    }

    const end = await inspect('kv');
    const events = await eventsAfter(firstSeq);
    const count = (kind: string): number => events.filter((e) => e.kind === kind).length;
    const epochs = Math.round((end.protection.committedEpoch! - start.protection.committedEpoch!) / 1000);
    console.log(
      `soak ${SOAK_S} s at ${LOSS} loss: ${writes} writes, ${loadErrors} load errors, longest pause ${longestPauseMs} ms; ` +
        `host.down ${count('host.down')}, host.suspect ${count('host.suspect')}, ` +
        `failed-over ${count('container.failed-over')}, fenced ${count('container.fenced')}; ` +
        `~${epochs} s of epochs committed, the last ${end.protection.committedAgeMs} ms old`,
    );
    for (const h of ['h1', 'h2', 'h3']) await ok(['lab', 'shape', h, '--loss', 'off']);

    assert.equal(count('container.failed-over'), 0, 'no false failover');
    assert.equal(count('container.failover-failed'), 0);
    assert.equal(count('container.fenced'), 0, 'no copy fenced');
    assert.equal(end.host, start.host, 'the primary stayed where it was');
    assert.equal(end.state, 'running');
    assert.equal(loadErrors, 0, 'the load never lost its connection');
    // Epochs went on committing through the loss (a lost chunk is sent again).
    assert.ok(epochs >= SOAK_S / 3, `epochs committed: ~${epochs} s worth in ${SOAK_S} s`);
    assert.ok(end.protection.committedAgeMs! < 10_000, 'the newest epoch is recent');
  },
);
