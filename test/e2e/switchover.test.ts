/**
 * Failover with state, the two parts that need the controller to carry an
 * operation through several steps (issue 5), on a 3-host lab with real Redis:
 *
 * 1. **Planned switchover** (`haven failover NAME`) under a write load from
 *    the lab's `client`: the primary is stopped in a final epoch that is
 *    shipped to the backup and restored there with its TCP connections.
 *    Checks: every write the load had acknowledged is there (the counter's
 *    replies run on without a gap), the load's one connection never broke,
 *    the container runs on the former backup at the same address, the old
 *    host has no copy left, and protection resumes on a new backup.
 * 2. **The controller killed in the middle of a failover**: the lab runs
 *    with the test-only failpoint `HAVEN_FAILPOINTS=failover.promoted`, so
 *    the controller SIGKILLs itself right after the backup has restored the
 *    container and before the intent moves — the worst moment: the container
 *    runs on the backup while the store still places it on the dead host.
 *    The lab supervisor restarts the controller, which resumes the recorded
 *    operation. Checks: the failover completes (`container.failed-over`,
 *    marked `resumed`), Redis answers from the backup with its data, `haven
 *    ps` shows it running there, and exactly one copy runs — the one the
 *    backup restored (never fenced as a stray, never restored twice).
 *
 * Measured figures are printed as `# ...` lines.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { REPO_ROOT } from '../../src/core/config.js';
import { run } from '../../src/core/exec.js';
import { CLIENT_NETNS } from '../../src/lab/index.js';
import {
  events,
  haven,
  inspect as inspectAs,
  labWithRedis,
  ok,
  protectedRedis,
  type ProtectedView,
  waitFor,
  writeLoad,
} from '../support/lab-cli.js';

type View = ProtectedView;
interface LabStatus {
  controller: { pid: number | null };
}

const inspect = (name: string): Promise<View> => inspectAs<View>(name);
const rows = async (): Promise<View[]> => JSON.parse(await ok(['ps', '--json'])) as View[];
const controllerPid = async (): Promise<number | null> =>
  (JSON.parse(await ok(['lab', 'status', '--json'])) as LabStatus).controller.pid;

/** The containers a host's own agent has (asked inside its namespaces). */
async function copiesOn(host: string): Promise<Array<{ name: string; state: string; pid: number }>> {
  const out = await ok(['lab', 'exec', host, '--', join(REPO_ROOT, 'bin', 'haven'), 'ps', '--json']);
  return JSON.parse(out) as Array<{ name: string; state: string; pid: number }>;
}

function redis(ip: string, ...command: string[]): Promise<string> {
  return run(['nsenter', `--net=/run/netns/${CLIENT_NETNS}`, 'redis-cli', '-h', ip, ...command]).then((r) =>
    r.stdout.trim(),
  );
}

/** Runs Redis `name` protected by checkpoints every second; resolves once an epoch is committed. */
before(async () => {
  // Test-only: the controller kills itself once a failover it began has promoted the backup.
  await labWithRedis(3, { HAVEN_FAILPOINTS: 'failover.promoted' });
});

after(async () => {
  await haven(['lab', 'down']);
});

test(
  'haven failover: a planned switchover under a write load loses no write and keeps the connection',
  { timeout: 240_000 },
  async () => {
    const before = await protectedRedis('kv');
    const from = before.host;
    const to = before.protection.backup!;
    const load = writeLoad(before.ip, 14000);
    await sleep(4000);
    const asked = Date.now();
    const report = JSON.parse(await ok(['failover', 'kv', '--json'])) as Record<string, number | string>;
    const answered = Date.now();
    const result = await load;

    assert.equal(report.from, from);
    assert.equal(report.to, to);
    const after = await inspect('kv');
    assert.equal(after.host, to, 'it runs on the former backup');
    assert.equal(after.ip, before.ip, 'at the same address');
    assert.equal(after.state, 'running');

    // One connection, INCR after INCR: its replies count 1, 2, 3, … — a write lost
    // (or answered twice) would show as a step other than one.
    assert.ok(result.acks.length > 0, 'the load ran');
    assert.ok(
      result.acks.some(([, t]) => t > answered),
      'writes were acknowledged after the switchover',
    );
    const steps = result.acks.slice(1).filter(([v], i) => v !== result.acks[i]![0] + 1);
    assert.deepEqual(steps, [], 'every acknowledged write is there, once');
    // (A write still unanswered when the load's own deadline comes is its end, not a fault.)
    const broken = result.errors.filter(([, message]) => message !== 'timeout');
    assert.deepEqual(broken, [], 'the load connection survived the switchover');
    const last = result.acks.at(-1)![0];
    assert.equal(await redis(after.ip, 'GET', 'counter'), String(last), 'the counter as last acknowledged');

    // One copy: the old host has none left; the new one runs it.
    assert.deepEqual(
      (await copiesOn(from)).map((c) => c.name),
      [],
      'no copy left on the old primary',
    );
    assert.deepEqual(
      (await copiesOn(to)).filter((c) => c.name === 'kv').map((c) => c.state),
      ['running'],
    );
    const switched = (await events()).find((e) => e.kind === 'container.switched-over' && e.subject === 'kv');
    assert.ok(switched, 'container.switched-over');

    const times = result.acks.map(([, t]) => t);
    let gap = 0;
    for (let i = 1; i < times.length; i++) gap = Math.max(gap, times[i]! - times[i - 1]!);
    process.stdout.write(
      `# switchover ${from} → ${to}: total ${report.totalMs} ms (CLI ${answered - asked} ms); final epoch frozen ` +
        `${report.frozenMs} ms, ${report.finalEpochBytes} of ${report.checkpointBytes} bytes sent, handover ` +
        `${report.handoverMs} ms; backup assemble ${report.assembleMs} ms, restore ${report.restoreMs} ms; ` +
        `longest wait for a write reply ${gap} ms; ${result.acks.length} writes acknowledged, 0 lost; ` +
        `connection kept (${broken.length} errors)\n`,
    );

    const resumed = await waitFor(
      'protection on a new backup',
      async () => {
        const v = await inspect('kv');
        return v.protection.backup && v.protection.backup !== v.host && v.protection.committedEpoch
          ? v
          : undefined;
      },
      60_000,
    );
    assert.notEqual(resumed.protection.backup, to);
    await ok(['rm', 'kv', '--force']);
  },
);

test(
  'the controller SIGKILLed between "backup promoted" and "intent moved": the restarted controller finishes the failover',
  { timeout: 240_000 },
  async () => {
    const before = await protectedRedis('db');
    const from = before.host;
    const to = before.protection.backup!;
    assert.equal(await redis(before.ip, 'SET', 'before-kill', 'kept'), 'OK');
    const committed = before.protection.committedEpoch!;
    await waitFor('an epoch after the write', async () =>
      (await inspect('db')).protection.committedEpoch! > committed + 1000 ? true : undefined,
    );
    const seen = (await events()).length;
    const oldController = await controllerPid();
    const killedAt = Date.now();
    await ok(['lab', 'kill-host', from]);

    // The failpoint: the controller dies once the backup runs the container; the supervisor restarts it.
    const newController = await waitFor(
      'the controller killed at the failpoint and restarted',
      async () => {
        const pid = await controllerPid();
        return pid && pid !== oldController ? pid : undefined;
      },
      60_000,
    );
    const failedOver = await waitFor(
      'the failover finished by the restarted controller',
      async () =>
        (await events()).slice(seen).find((e) => e.kind === 'container.failed-over' && e.subject === 'db'),
      60_000,
    );
    const doneAt = Date.parse(failedOver.at);
    assert.equal(failedOver.data.resumed, true, 'finished by the restarted controller');
    assert.equal(failedOver.data.to, to);
    assert.equal(await controllerPid(), newController, 'the resumed step did not trip the failpoint again');

    const row = await waitFor('db running in ps', async () => {
      const r = (await rows()).find((c) => c.name === 'db');
      return r?.state === 'running' ? r : undefined;
    });
    assert.equal(row.host, to, 'ps shows it on the former backup');
    assert.equal(row.ip, before.ip);
    assert.equal(await redis(before.ip, 'GET', 'before-kill'), 'kept', 'its data');

    // Exactly one copy, the promoted one: never fenced as a stray, never restored twice.
    const since = (await events()).slice(seen);
    const copies = (await copiesOn(to)).filter((c) => c.name === 'db');
    assert.deepEqual(
      copies.map((c) => c.state),
      ['running'],
    );
    const other = ['h1', 'h2', 'h3'].find((h) => h !== from && h !== to)!;
    assert.deepEqual(
      (await copiesOn(other)).filter((c) => c.name === 'db'),
      [],
      'no copy on the third host',
    );
    assert.deepEqual(
      since.filter(
        (e) => e.subject === 'db' && ['container.fenced', 'container.operation-abandoned'].includes(e.kind),
      ),
      [],
    );
    assert.equal(since.filter((e) => e.kind === 'container.failed-over' && e.subject === 'db').length, 1);
    await sleep(2000);
    assert.equal(
      (await copiesOn(to)).find((c) => c.name === 'db')?.pid,
      copies[0]!.pid,
      'the same process a while later',
    );
    process.stdout.write(
      `# controller killed mid-failover: failover complete ${doneAt - killedAt} ms after the host kill ` +
        `(its own failoverMs ${String(failedOver.data.failoverMs)}, restore ${String(failedOver.data.restoreMs)} ms); ` +
        `data kept, one copy\n`,
    );
  },
);
