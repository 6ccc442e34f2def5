/**
 * The cluster on a 3-host lab, through the CLI as a user drives it: Redis
 * pinned and placed, `ps` showing where; an agent SIGKILLed while a client
 * in `client` keeps talking to Redis, the supervised agent back and
 * re-adopting it; the controller SIGKILLed and back with the same state;
 * a host killed and revived, rejoining empty; a host that dies while no
 * controller runs, failed over by the controller that starts next.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isDeepStrictEqual } from 'node:util';
import { after, before, test } from 'node:test';
import { REPO_ROOT } from '../../src/core/config.js';
import { redisImage, REDIS_ARGS } from '../../src/fixtures/images.js';
import { haven, inspect, ok, protectedRedis, waitFor, type ProtectedView } from '../support/lab-cli.js';
import { CLIENT_NETNS, type LabStatus } from '../../src/lab/index.js';
import { RedisSession } from '../support/test-host.js';

interface Row {
  name: string;
  host: string | null;
  state: string;
  ip: string;
  pid: number;
}
const ps = async (): Promise<Row[]> => JSON.parse(await ok(['ps', '--json'])) as Row[];
const status = async (): Promise<LabStatus> => JSON.parse(await ok(['lab', 'status', '--json'])) as LabStatus;
const hostStates = async (): Promise<Record<string, string>> =>
  Object.fromEntries(
    (JSON.parse(await ok(['host', 'ls', '--json'])) as Array<{ name: string; state: string }>).map((h) => [
      h.name,
      h.state,
    ]),
  );

async function redisPing(ip: string): Promise<boolean> {
  const r = await haven(['lab', 'exec', 'client', '--', 'redis-cli', '-h', ip, 'PING']);
  return r.stdout.trim() === 'PONG';
}

before(async () => {
  await haven(['lab', 'down']);
  await ok(['lab', 'up', '--hosts', '3']);
  // `lab up` returns once the cluster serves: the very next command finds it, every host up.
  assert.deepEqual(await hostStates(), { h1: 'up', h2: 'up', h3: 'up' });
});

after(async () => {
  await haven(['lab', 'down']);
});

test('Redis placed and pinned on a 3-host lab; ps shows where each runs', { timeout: 120_000 }, async () => {
  await ok(['image', 'push', await redisImage(), '--name', 'redis']);
  await ok(['run', 'pinned', '--image', 'redis', '--host', 'h2', '--', ...REDIS_ARGS]);
  await ok(['run', 'placed', '--image', 'redis', '--', ...REDIS_ARGS]);
  await ok(['run', 'doomed', '--image', 'redis', '--host', 'h3', '--', ...REDIS_ARGS]);
  const rows = await ps();
  assert.deepEqual(
    rows.map((r) => [r.name, r.state]),
    [
      ['doomed', 'running'],
      ['pinned', 'running'],
      ['placed', 'running'],
    ],
  );
  assert.equal(rows.find((r) => r.name === 'pinned')?.host, 'h2');
  assert.equal(
    rows.find((r) => r.name === 'placed')?.host,
    'h1',
    'the least loaded host (h2, h3 each run one)',
  );
  for (const r of rows)
    await waitFor(`redis ${r.name}`, async () => ((await redisPing(r.ip)) ? true : undefined));
  // The container really runs on h2: its agent (inside h2's namespaces) has it.
  const onH2 = await ok(['lab', 'exec', 'h2', '--', join(REPO_ROOT, 'bin', 'haven'), 'ps', '--json']);
  assert.deepEqual(
    (JSON.parse(onH2) as Row[]).map((r) => r.name),
    ['pinned'],
  );
});

test(
  'agent SIGKILL: Redis keeps answering its client; the supervised agent comes back and re-adopts it',
  { timeout: 120_000 },
  async () => {
    const pinned = (await ps()).find((r) => r.name === 'pinned')!;
    const session = new RedisSession(
      spawn('nsenter', [
        `--net=/run/netns/${CLIENT_NETNS}`,
        process.execPath,
        join(REPO_ROOT, 'fixtures', 'clients', 'resp-session.mjs'),
        pinned.ip,
        '6379',
      ]),
    );
    try {
      assert.equal((await session.next()).event, 'connected');
      assert.deepEqual(await session.command('SET survived 1'), { reply: 'OK' });
      const oldPid = (await status()).hosts.find((h) => h.name === 'h2')!.agentPid!;
      process.kill(oldPid, 'SIGKILL');
      assert.deepEqual(
        await session.command('INCR survived'),
        { reply: 2 },
        'Redis answered while its agent was dead',
      );
      const newPid = await waitFor('a new h2 agent', async () => {
        const pid = (await status()).hosts.find((h) => h.name === 'h2')?.agentPid;
        return pid && pid !== oldPid ? pid : undefined;
      });
      assert.notEqual(newPid, oldPid);
      const back = await waitFor('h2 re-adopting pinned', async () => {
        const row = (await ps()).find((r) => r.name === 'pinned');
        return row?.state === 'running' && (await hostStates()).h2 === 'up' ? row : undefined;
      });
      assert.equal(back.pid, pinned.pid, 'the same Redis process, re-adopted');
      assert.deepEqual(await session.command('INCR survived'), { reply: 3 });
    } finally {
      session.close();
    }
  },
);

test(
  'controller SIGKILL: the supervisor restarts it and it has the same cluster',
  { timeout: 120_000 },
  async () => {
    const before = await ps();
    const oldPid = (await status()).controller.pid!;
    process.kill(oldPid, 'SIGKILL');
    await waitFor('a new controller', async () => {
      const pid = (await status()).controller.pid;
      return pid && pid !== oldPid ? pid : undefined;
    });
    // The new controller learns what runs from the agents' next reports: it
    // converges on the old view (bounded), and a row that stays different is
    // named in the failure (a restarted container, a changed pid).
    let afterRows: Row[] = [];
    await waitFor('all running', async () => {
      afterRows = await ps();
      return afterRows.every((r) => r.state === 'running') ? true : undefined;
    });
    const converged = Date.now() + 10_000;
    while (!isDeepStrictEqual(afterRows, before) && Date.now() < converged) {
      await sleep(250);
      afterRows = await ps();
    }
    const differing = afterRows.filter((r, i) => !isDeepStrictEqual(r, before[i]));
    assert.deepEqual(
      afterRows,
      before,
      `rows still different 10 s after all ran: ${JSON.stringify(differing)} (before: ${JSON.stringify(before)})`,
    );
  },
);

test(
  'kill-host then revive: the host rejoins empty; its old container is lost, not silently back',
  { timeout: 120_000 },
  async () => {
    await ok(['lab', 'kill-host', 'h3']);
    await waitFor('h3 seen down', async () => ((await hostStates()).h3 === 'down' ? true : undefined));
    assert.equal((await ps()).find((r) => r.name === 'doomed')?.state, 'lost');
    await ok(['lab', 'revive', 'h3']);
    await waitFor('h3 back up', async () => ((await hostStates()).h3 === 'up' ? true : undefined));
    const events = await ok(['events', '--json']);
    assert.match(events, /"kind":"host.rebooted","subject":"h3"/);
    assert.equal(
      (await ps()).find((r) => r.name === 'doomed')?.state,
      'lost',
      'nothing restarted it behind our back',
    );
    const onH3 = await ok(['lab', 'exec', 'h3', '--', join(REPO_ROOT, 'bin', 'haven'), 'ps', '--json']);
    assert.deepEqual(JSON.parse(onH3), [], 'h3 has an empty disk');
    await ok(['rm', '--force', 'doomed']);
    // The controller may place it anew: the revived host takes new work.
    await ok(['run', 'reborn', '--image', 'redis', '--host', 'h3', '--', ...REDIS_ARGS]);
    assert.equal((await ps()).find((r) => r.name === 'reborn')?.state, 'running');
  },
);

test(
  'a host dies while no controller runs: the next controller declares it down once the others registered, and fails its container over',
  { timeout: 120_000 },
  async () => {
    const protectedView = await protectedRedis('guarded', '1s', ['--host', 'h2']);
    const set = await haven([
      'lab',
      'exec',
      'client',
      '--',
      'redis-cli',
      '-h',
      protectedView.ip,
      'SET',
      'k',
      'kept',
    ]);
    assert.equal(set.stdout.trim(), 'OK');
    const writtenAt = Date.now();
    await waitFor('an epoch after the write', async () =>
      ((await inspect<ProtectedView>('guarded')).protection.committedEpoch ?? 0) > writtenAt + 200
        ? true
        : undefined,
    );
    // No controller while h2 dies: the supervisor is held (SIGSTOP) so that it
    // restarts the killed controller only once h2 is gone.
    const lab = await status();
    process.kill(lab.supervisorPid!, 'SIGSTOP');
    try {
      process.kill(lab.controller.pid!, 'SIGKILL');
      await ok(['lab', 'kill-host', 'h2']);
    } finally {
      process.kill(lab.supervisorPid!, 'SIGCONT');
    }
    const moved = await waitFor(
      'guarded running on its backup',
      async () => {
        const row = (await ps()).find((r) => r.name === 'guarded');
        return row?.state === 'running' && row.host === protectedView.protection.backup ? row : undefined;
      },
      60_000,
    );
    assert.equal(moved.ip, protectedView.ip, 'the same address');
    assert.equal(
      (await haven(['lab', 'exec', 'client', '--', 'redis-cli', '-h', moved.ip, 'GET', 'k'])).stdout.trim(),
      'kept',
    );
    const events = await ok(['events', '--json']);
    assert.match(events, /"kind":"host.down","subject":"h2"/);
    await ok(['lab', 'revive', 'h2']);
  },
);
