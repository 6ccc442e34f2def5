/**
 * A one-machine cluster on the real stack: a controller (embedded SQLite
 * store) and an agent as separate processes on loopback, the CLI talking to
 * the controller only (HAVEN_CONTROLLER). Shows: images pushed through the
 * controller and pulled by the agent; Redis placed and pinned; cordon; an
 * agent SIGKILL that Redis does not notice; a controller SIGKILL that loses
 * nothing; the event stream; and the controller API refusing bad input
 * with 4xx, never a crash.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { REPO_ROOT } from '../../src/core/config.js';
import type { ExecResult } from '../../src/core/exec.js';
import { redisImage, REDIS_ARGS } from '../../src/fixtures/images.js';
import { runHaven, waitUntil } from '../../src/lab/cli-driver.js';
import { TestHost } from '../support/test-host.js';

const TOKEN = 'cluster-test-token-0123456789';
const ctlPort = 18_000 + (process.pid % 1000);
const agentPort = ctlPort + 1000;
const controllerUrl = `http://127.0.0.1:${ctlPort}`;
let t: TestHost;
let ctlDir: string;
let controller: ChildProcess | undefined;
let agent: ChildProcess | undefined;
let redisId = '';

function haven(args: string[]): Promise<ExecResult> {
  return runHaven(args, { HAVEN_CONTROLLER: controllerUrl, HAVEN_TOKEN: TOKEN }, 180_000);
}

async function ok(args: string[]): Promise<string> {
  const r = await haven(args);
  assert.equal(r.code, 0, `haven ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  return waitUntil(what, probe, timeoutMs);
}

function startController(): ChildProcess {
  return spawn(
    join(REPO_ROOT, 'bin', 'haven'),
    ['controller', '--listen', `127.0.0.1:${ctlPort}`, '--state-dir', ctlDir, '--failure-ms', '1500'],
    {
      env: { ...process.env, HAVEN_TOKEN: TOKEN },
      stdio: 'ignore',
    },
  );
}

function startAgent(): ChildProcess {
  return spawn(
    join(REPO_ROOT, 'bin', 'haven'),
    [
      'agent',
      '--listen',
      `127.0.0.1:${agentPort}`,
      '--controller',
      controllerUrl,
      '--heartbeat-ms',
      '300',
      '--label',
      'zone=a',
    ],
    {
      env: {
        ...process.env,
        HAVEN_TOKEN: TOKEN,
        HAVEN_STATE_DIR: t.config.stateDir,
        HAVEN_RUNC_ROOT: t.config.runcRoot,
        HAVEN_HOST: t.config.hostName,
        HAVEN_NETNS: t.config.networkNamespace,
      },
      stdio: 'ignore',
    },
  );
}

interface PsRow {
  name: string;
  host: string | null;
  state: string;
  ip: string;
  pid: number;
}

async function ps(): Promise<PsRow[]> {
  return JSON.parse(await ok(['ps', '--json'])) as PsRow[];
}

async function hostState(): Promise<string> {
  const hosts = JSON.parse(await ok(['host', 'ls', '--json'])) as Array<{ name: string; state: string }>;
  return hosts.find((h) => h.name === t.config.hostName)?.state ?? 'absent';
}

async function exited(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null) return;
  await new Promise((resolve) => child.once('exit', resolve));
}

before(async () => {
  t = await TestHost.create('cluster');
  await t.startClient();
  ctlDir = await mkdtemp(join(tmpdir(), 'haven-ctl-'));
  controller = startController();
  agent = startAgent();
  await waitFor('the agent to join', async () => ((await hostState()) === 'up' ? true : undefined));
});

after(async () => {
  for (const name of ['r1', 'r2']) await haven(['rm', '--force', name]);
  controller?.kill('SIGKILL');
  agent?.kill('SIGKILL');
  await Promise.all([exited(controller), exited(agent)]);
  await t?.dispose();
  if (ctlDir) await rm(ctlDir, { recursive: true, force: true });
});

test(
  'an image pushed to the controller is pulled by the agent; Redis runs placed and pinned',
  { timeout: 120_000 },
  async () => {
    const pushed = JSON.parse(
      await ok(['image', 'push', await redisImage(), '--name', 'redis', '--json']),
    ) as { id: string; names: string[] };
    assert.match(pushed.id, /^sha256:[0-9a-f]{64}$/);
    assert.deepEqual(pushed.names, ['redis']);
    redisId = pushed.id;

    await ok(['run', 'r1', '--image', 'redis', '--memory', '256m', '--', ...REDIS_ARGS]);
    await ok([
      'run',
      'r2',
      '--image',
      redisId.slice(0, 19),
      '--host',
      t.config.hostName,
      '--label-require',
      'zone=a',
      '--',
      ...REDIS_ARGS,
    ]);
    const rows = await ps();
    assert.deepEqual(
      rows.map((r) => [r.name, r.host, r.state]),
      [
        ['r1', t.config.hostName, 'running'],
        ['r2', t.config.hostName, 'running'],
      ],
    );
    assert.notEqual(rows[0]!.ip, rows[1]!.ip, 'the controller gives each container its own address');
    for (const r of rows) await t.waitForRedis(r.ip);
    // The agent holds the image by the same ID the controller computed.
    assert.equal((await t.host.images.get(redisId)).id, redisId);

    const unknownHost = await haven([
      'run',
      'r3',
      '--image',
      'redis',
      '--host',
      'nowhere',
      '--',
      ...REDIS_ARGS,
    ]);
    assert.notEqual(unknownHost.code, 0);
    assert.match(unknownHost.stderr, /host "nowhere" is not in the cluster/);
    const badLabel = await haven([
      'run',
      'r3',
      '--image',
      'redis',
      '--label-require',
      'zone=b',
      '--',
      ...REDIS_ARGS,
    ]);
    assert.match(badLabel.stderr, /no host can run "r3"/);
    const noImage = await haven(['run', 'r3', '--image', 'nosuchimage', '--', 'true']);
    assert.match(noImage.stderr, /no image named "nosuchimage"/);
  },
);

test('a cordoned host takes nothing new; uncordoned it does', { timeout: 60_000 }, async () => {
  await ok(['host', 'cordon', t.config.hostName]);
  const refused = await haven(['run', 'r3', '--image', 'redis', '--', ...REDIS_ARGS]);
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, /cordoned/);
  await ok(['host', 'uncordon', t.config.hostName]);
  const hosts = JSON.parse(await ok(['host', 'ls', '--json'])) as Array<{
    cordoned: boolean;
    labels: Record<string, string>;
  }>;
  assert.equal(hosts[0]!.cordoned, false);
  assert.deepEqual(hosts[0]!.labels, { zone: 'a' });
});

test(
  'agent SIGKILL: Redis keeps answering, the host is seen down, then the restarted agent re-adopts it',
  { timeout: 90_000 },
  async () => {
    const before = (await ps()).find((r) => r.name === 'r1')!;
    const session = t.redisSession(before.ip);
    try {
      assert.equal((await session.next()).event, 'connected');
      assert.deepEqual(await session.command('SET during-agent-crash 1'), { reply: 'OK' });
      agent!.kill('SIGKILL');
      await exited(agent);
      await waitFor('the host to be seen down', async () =>
        (await hostState()) === 'down' ? true : undefined,
      );
      assert.equal(
        (await ps()).find((r) => r.name === 'r1')?.state,
        'lost',
        'the controller cannot vouch for it',
      );
      // The container never noticed: the same connection still works.
      assert.deepEqual(await session.command('INCR during-agent-crash'), { reply: 2 });
      agent = startAgent();
      const after = await waitFor('re-adoption', async () => {
        const row = (await ps()).find((r) => r.name === 'r1');
        return row?.state === 'running' ? row : undefined;
      });
      assert.equal(after.pid, before.pid, 'the same process: re-adopted, not restarted');
      assert.deepEqual(await session.command('INCR during-agent-crash'), { reply: 3 });
    } finally {
      session.close();
    }
  },
);

test('controller SIGKILL and restart: the same cluster state', { timeout: 60_000 }, async () => {
  const rowsBefore = await ps();
  const eventsBefore = JSON.parse(
    `[${(await ok(['events', '--json'])).trim().split('\n').join(',')}]`,
  ) as Array<{ seq: number }>;
  controller!.kill('SIGKILL');
  await exited(controller);
  const down = await haven(['ps']);
  assert.notEqual(down.code, 0);
  assert.match(down.stderr, /cannot reach the Haven controller/);
  controller = startController();
  const rowsAfter = await waitFor('the controller and its host', async () => {
    const rows = await ps();
    return rows.every((r) => r.state === 'running') ? rows : undefined;
  });
  assert.deepEqual(rowsAfter, rowsBefore);
  const eventsAfter = JSON.parse(
    `[${(await ok(['events', '--json'])).trim().split('\n').join(',')}]`,
  ) as Array<{ seq: number }>;
  assert.deepEqual(eventsAfter.slice(0, eventsBefore.length), eventsBefore, 'no event lost');
});

test('events -f streams what happens as it happens', { timeout: 60_000 }, async () => {
  const follower = spawn(join(REPO_ROOT, 'bin', 'haven'), ['events', '-f', '--json'], {
    env: { ...process.env, HAVEN_CONTROLLER: controllerUrl, HAVEN_TOKEN: TOKEN },
  });
  let seen = '';
  follower.stdout.on('data', (chunk: Buffer) => (seen += chunk.toString()));
  try {
    await sleep(300);
    await ok(['host', 'cordon', t.config.hostName]);
    await ok(['host', 'uncordon', t.config.hostName]);
    await waitFor('the cordon events', () =>
      Promise.resolve(seen.includes('host.uncordoned') ? true : undefined),
    );
    const kinds = seen
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { kind: string }).kind);
    assert.deepEqual(kinds, ['host.cordoned', 'host.uncordoned']);
  } finally {
    follower.kill('SIGTERM');
    await exited(follower);
  }
});

test(
  'the controller API: 401 without the token, 4xx with a message for bad input, never a crash',
  { timeout: 60_000 },
  async () => {
    const call = async (
      method: string,
      path: string,
      body?: string,
      token = TOKEN,
    ): Promise<{ status: number; text: string }> => {
      const res = await fetch(`${controllerUrl}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        ...(body === undefined ? {} : { body }),
      });
      return { status: res.status, text: await res.text() };
    };
    assert.equal((await call('GET', '/v1/containers', undefined, 'wrong-token-0123456789')).status, 401);
    const bad: Array<[string, string, string?]> = [
      ['POST', '/v1/containers', '{'],
      ['POST', '/v1/containers', '[]'],
      ['POST', '/v1/containers', JSON.stringify({ name: '../etc', image: 'redis', args: ['x'] })],
      ['POST', '/v1/containers', JSON.stringify({ name: 'ok', image: '/var/lib/haven', args: ['x'] })],
      ['POST', '/v1/containers', JSON.stringify({ name: 'ok', image: 'redis', args: [] })],
      [
        'POST',
        '/v1/containers',
        JSON.stringify({ name: 'ok', image: 'redis', args: ['x'], cpuMillis: 'lots' }),
      ],
      ['POST', '/v1/containers', JSON.stringify({ name: 'x'.repeat(5000), image: 'redis', args: ['x'] })],
      [
        'POST',
        '/v1/containers',
        JSON.stringify({ name: 'ok', image: 'redis', args: ['x'], host: 'nowhere' }),
      ],
      ['POST', '/v1/containers', JSON.stringify({ name: 'ok', image: 'redis', args: ['x'], extra: 1 })],
      ['POST', '/v1/containers', 'x'.repeat(200_000)],
      ['GET', '/v1/containers/..%2F..%2Fetc'],
      ['GET', '/v1/containers/%E0%A4%A'],
      ['GET', '/v1/containers/nosuch'],
      ['DELETE', '/v1/containers/nosuch'],
      ['POST', '/v1/containers/nosuch/stop', '{}'],
      ['POST', '/v1/containers/r1/stop', JSON.stringify({ graceSeconds: -1 })],
      ['POST', '/v1/containers/r1/restore', JSON.stringify({ checkpoint: '../../x' })],
      [
        'POST',
        '/v1/hosts',
        JSON.stringify({
          name: 'h',
          address: 'file:///etc',
          cpuMillis: 1,
          memoryBytes: 1,
          bootId: 'abcdef01',
        }),
      ],
      ['POST', '/v1/hosts', JSON.stringify({ name: 'h' })],
      ['POST', '/v1/hosts/nosuch/cordon', '{}'],
      ['POST', '/v1/hosts/nosuch/heartbeats', '{"seq":1,"bootId":"x"}\n'],
      ['POST', '/v1/hosts/h/heartbeats', 'not json\n'],
      ['PUT', '/v1/images?name=../x', 'data'],
      ['PUT', '/v1/images?id=sha256:' + '0'.repeat(64), 'data'],
      ['GET', '/v1/images/nosuch'],
      ['GET', '/v1/images/..%2F..%2Fetc%2Fpasswd'],
      ['GET', '/v1/events?since=-1'],
      ['GET', '/v1/events?limit=abc'],
      ['GET', '/v2/anything'],
      ['PATCH', '/v1/containers'],
    ];
    for (const [method, path, body] of bad) {
      const r = await call(method, path, body);
      assert.ok(r.status >= 400 && r.status < 500, `${method} ${path} → ${r.status} ${r.text}`);
      assert.ok(r.text.length > 0, `${method} ${path} has a message`);
    }
    assert.equal((await call('GET', '/v1/health')).status, 200, 'still serving');
    assert.equal((await ps()).length, 2, 'nothing was made or lost');
  },
);
