/**
 * Three `haven controller --store etcd` processes on a real 3-member etcd
 * (loopback; no runc needed): one leads, the standbys answer 503 naming it,
 * a client given every address (as `HAVEN_CONTROLLER=a,b,c`) reaches the
 * leader whichever it asks first, the cluster's state outlives a SIGKILLed
 * leader, and a leader stopped cleanly resigns so a standby leads at once.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ClusterClient } from '../../src/cli/cluster-client.js';
import { REPO_ROOT } from '../../src/core/config.js';
import { NotLeaderError } from '../../src/core/errors.js';
import { callJson } from '../../src/core/http-client.js';
import { ETCD_BIN, LocalEtcd } from '../../src/lab/etcd.js';

const skip = existsSync(ETCD_BIN)
  ? false
  : `needs ${ETCD_BIN} (Debian etcd-server; scripts/setup-host.sh installs it)`;
const TOKEN = 'etcd-controllers-test-token-0123456789';
const urls = [0, 1, 2].map((i) => `http://127.0.0.1:${26070 + i}`);

let dir = '';
let etcd: LocalEtcd;
const controllers = new Map<string, ChildProcess>();

function startController(url: string): void {
  const i = urls.indexOf(url);
  const child = spawn(
    process.execPath,
    [
      join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js'),
      'controller',
      '--store',
      'etcd',
      '--etcd',
      etcd.endpoints.join(','),
      '--listen',
      url.slice('http://'.length),
      '--state-dir',
      join(dir, `c${i}`),
    ],
    {
      env: { ...process.env, HAVEN_TOKEN: TOKEN, HAVEN_LOG: 'text' },
      stdio: ['ignore', 'ignore', process.env.H3_DEBUG ? 'inherit' : 'ignore'],
    },
  );
  controllers.set(url, child);
}

async function stop(url: string, signal: NodeJS.Signals): Promise<number> {
  const child = controllers.get(url)!;
  const gone = new Promise((resolve) => child.once('exit', resolve));
  const at = Date.now();
  child.kill(signal);
  await gone;
  controllers.delete(url);
  return at;
}

/** The leader's URL, asked of every controller (the one that answers 200). */
async function leader(timeoutMs = 10_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const url of controllers.keys()) {
      const ok = await callJson(url, '/v1/hosts', TOKEN, { timeoutMs: 500 }).then(
        () => true,
        () => false,
      );
      if (ok) return url;
    }
    if (Date.now() > deadline) throw new Error('no leader');
    await sleep(20);
  }
}

before(async () => {
  if (skip) return;
  dir = await mkdtemp(join(tmpdir(), 'haven-etcd-ctl-'));
  etcd = new LocalEtcd(join(dir, 'etcd'), 3, 26790, join(dir, 'etcd.log'));
  await etcd.start();
  for (const url of urls) startController(url);
  // Every one listening (the leader answering 200, standbys 503 naming it).
  for (const url of urls) {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const answered = await callJson(url, '/v1/hosts', TOKEN, { timeoutMs: 500 }).then(
        () => true,
        // (a standby's first answers, before it has looked at the election, name no leader yet)
        (error: unknown) => error instanceof NotLeaderError && error.leader !== undefined,
      );
      if (answered) break;
      if (Date.now() > deadline) throw new Error(`controller ${url} did not start`);
      await sleep(50);
    }
  }
});

after(async () => {
  if (skip) return;
  for (const url of [...controllers.keys()]) await stop(url, 'SIGKILL');
  await etcd.stop();
  await rm(dir, { recursive: true, force: true });
});

test('one leads; standbys name it; a client with every address reaches it', { skip }, async () => {
  const lead = await leader();
  for (const url of urls.filter((u) => u !== lead)) {
    await assert.rejects(callJson(url, '/v1/hosts', TOKEN), (error: unknown) => {
      assert.ok(error instanceof NotLeaderError, String(error));
      assert.equal(error.leader, lead);
      return true;
    });
  }
  // Given the standbys first, as HAVEN_CONTROLLER=standby,standby,leader.
  const order = [...urls.filter((u) => u !== lead), lead].join(',');
  const client = new ClusterClient({ endpoint: order, token: TOKEN, via: 'HAVEN_CONTROLLER' });
  const host = await client.call<{ name: string }>('/v1/hosts', {
    method: 'POST',
    body: {
      name: 'h1',
      address: 'http://127.0.0.1:1',
      labels: {},
      cpuMillis: 1000,
      memoryBytes: 2 ** 30,
      bootId: '0123456789abcdef',
      heartbeatMs: 100,
    },
  });
  assert.equal(host.name, 'h1');
  assert.equal(client.endpoint, lead, 'it settled on the leader');
});

test('the state outlives a SIGKILLed leader; the next one leads within 2 s', { skip }, async () => {
  const lead = await leader();
  const killedAt = await stop(lead, 'SIGKILL');
  const next = await leader();
  const takeoverMs = Date.now() - killedAt;
  assert.notEqual(next, lead);
  assert.ok(takeoverMs <= 2000, `a standby serves ${takeoverMs} ms after the leader's SIGKILL`);
  const hosts = await callJson<Array<{ name: string }>>(next, '/v1/hosts', TOKEN);
  assert.deepEqual(
    hosts.map((h) => h.name),
    ['h1'],
    'the host registered with the old leader is in the store',
  );
  const events = await callJson<Array<{ kind: string }>>(next, '/v1/events?since=0', TOKEN);
  assert.equal(events.filter((e) => e.kind === 'controller.elected').length, 2);
  process.stdout.write(`# leader SIGKILLed: a standby serves ${takeoverMs} ms later\n`);
  startController(lead); // back, as a standby
});

test('a leader stopped cleanly resigns: a standby leads at once', { skip }, async () => {
  const lead = await leader();
  await sleep(500); // the restarted one is campaigning too
  const stoppedAt = await stop(lead, 'SIGTERM');
  await leader();
  const takeoverMs = Date.now() - stoppedAt;
  assert.ok(takeoverMs < 1000, `resigned: a standby serves ${takeoverMs} ms after SIGTERM`);
  process.stdout.write(`# leader stopped (SIGTERM): a standby serves ${takeoverMs} ms later\n`);
});
