/**
 * Fencing freezes a primary whatever its epochs do: a container paused on
 * purpose while a leave-running checkpoint has it frozen must still be
 * frozen when the checkpoint ends (the checkpoint's own thaw once undid the
 * pause, and a partitioned primary ran on beside its restored copy). Real
 * runc and CRIU, a real Redis.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { shortHash } from '../../src/runtime/network.js';
import { TestHost } from '../support/test-host.js';

let t: TestHost;
before(async () => {
  t = await TestHost.create('pausedump');
  await t.startClient();
});
after(async () => t?.dispose());

const redis = async (ip: string, ...args: string[]): Promise<string> =>
  (await t.inClient(['redis-cli', '-h', ip, ...args])).stdout.trim();

/** The container's cgroup v1 freezer state, as the kernel has it. */
function freezerState(name: string): string {
  const dir = join('/sys/fs/cgroup/freezer/haven', shortHash(t.config.hostName), name);
  return readFileSync(join(dir, 'freezer.state'), 'utf8').trim();
}

/** A Redis holding 300,000 keys (~40 MB): enough that a dump lasts long enough to pause inside it. */
async function runFilledRedis(name: string, ip: string): Promise<void> {
  await t.runRedis(name, ip);
  await redis(ip, 'EVAL', "for i = 1, 300000 do redis.call('SET', 'k:' .. i, string.rep('x', 100)) end", '0');
}

test(
  'a container paused while a checkpoint has it frozen stays frozen after the checkpoint; resumed, it runs',
  { timeout: 120_000 },
  async () => {
    const ip = '10.88.1.4';
    await runFilledRedis('kv', ip);
    assert.equal(await redis(ip, 'DBSIZE'), '300000');
    assert.equal(freezerState('kv'), 'THAWED');

    const checkpoint = t.host.checkpoint('kv', { leaveRunning: true, keep: 1 });
    let sawFrozen = false;
    for (let i = 0; i < 20_000 && !sawFrozen; i++) {
      if (freezerState('kv') === 'FROZEN') sawFrozen = true;
      else await sleep(0);
    }
    assert.ok(sawFrozen, 'the checkpoint froze the container');
    await t.host.pause('kv');
    await checkpoint;
    assert.equal(freezerState('kv'), 'FROZEN', 'still frozen after the checkpoint');
    await sleep(200);
    assert.equal(freezerState('kv'), 'FROZEN', 'and stays so');
    assert.equal((await t.host.inspect('kv')).state, 'paused');

    await t.host.resume('kv');
    assert.equal(freezerState('kv'), 'THAWED');
    assert.equal(await redis(ip, 'DBSIZE'), '300000');
    // A later checkpoint thaws it again as usual: the hold went with the resume.
    await t.host.checkpoint('kv', { leaveRunning: true, keep: 1 });
    assert.equal(freezerState('kv'), 'THAWED');
    await t.host.remove('kv', { force: true });
  },
);

test(
  'a container paused after CRIU has seized it (and thawed its cgroup to run its code in it) is frozen when the checkpoint ends, and the checkpoint ends',
  { timeout: 120_000 },
  async () => {
    const ip = '10.88.1.5';
    await runFilledRedis('kv2', ip);
    let settled = false;
    const checkpoint = t.host
      .checkpoint('kv2', { leaveRunning: true, keep: 1 })
      .finally(() => (settled = true));
    // The chain freezes the cgroup; CRIU seizes the tasks and thaws it again to run its parasite.
    let phase: 'start' | 'frozen' | 'thawed by CRIU' = 'start';
    for (let i = 0; i < 200_000 && phase !== 'thawed by CRIU' && !settled; i++) {
      const state = freezerState('kv2');
      if (phase === 'start' && state === 'FROZEN') phase = 'frozen';
      else if (phase === 'frozen' && state === 'THAWED') phase = 'thawed by CRIU';
      else await sleep(0);
    }
    assert.equal(phase, 'thawed by CRIU', 'CRIU thawed the cgroup while it dumped');
    await t.host.pause('kv2'); // frozen now, CRIU would wait for its parasite forever
    const hung = Symbol('hung');
    const patience = new AbortController(); // the timer must not outlive the test (it kept the file 30 s)
    const outcome = await Promise.race([
      checkpoint,
      sleep(30_000, hung, { signal: patience.signal }).catch(() => undefined),
    ]);
    patience.abort();
    if (outcome === hung) {
      await t.host.resume('kv2'); // lets CRIU finish, so that this process can end
      await checkpoint.catch(() => undefined);
      assert.fail('the checkpoint hung: its container was frozen under CRIU');
    }
    assert.equal(freezerState('kv2'), 'FROZEN', 'paused on purpose: frozen once the checkpoint ended');
    assert.equal((await t.host.inspect('kv2')).state, 'paused');
    await t.host.resume('kv2');
    assert.equal(await redis(ip, 'DBSIZE'), '300000');
    await t.host.remove('kv2', { force: true });
  },
);
