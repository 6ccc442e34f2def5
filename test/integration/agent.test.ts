/**
 * `haven agent` on the real stack: a container run through the HTTP API,
 * the agent SIGKILLed and started again — the container kept running the
 * whole time and the new agent reports it, same PID (an agent crash is not
 * a container crash) — then checkpointed, stopped and removed through the API.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { REPO_ROOT } from '../../src/core/config.js';
import { busyboxImage } from '../../src/fixtures/images.js';
import { TestHost } from '../support/test-host.js';

const TOKEN = 'agent-test-token-0123456789';
let t: TestHost;
let agent: ChildProcess | undefined;
const port = 17_000 + (process.pid % 1000);
const base = `http://127.0.0.1:${port}`;

before(async () => {
  t = await TestHost.create('agent');
});
after(async () => {
  agent?.kill('SIGKILL');
  await t?.dispose();
});

async function startAgent(): Promise<ChildProcess> {
  const child = spawn(join(REPO_ROOT, 'bin', 'haven'), ['agent', '--listen', `127.0.0.1:${port}`], {
    env: {
      ...process.env,
      HAVEN_TOKEN: TOKEN,
      HAVEN_STATE_DIR: t.config.stateDir,
      HAVEN_RUNC_ROOT: t.config.runcRoot,
      HAVEN_HOST: t.config.hostName,
      HAVEN_NETNS: t.config.networkNamespace,
    },
    stdio: 'ignore',
  });
  for (let i = 0; i < 100; i++) {
    const up = await fetch(`${base}/v1/health`, { headers: { authorization: `Bearer ${TOKEN}` } }).catch(
      () => undefined,
    );
    if (up?.ok) return child;
    await sleep(50);
  }
  throw new Error('agent did not come up');
}

async function api(
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

test(
  'containers outlive their agent; a restarted agent finds them as they were',
  { timeout: 120_000 },
  async () => {
    const image = await t.host.images.import(await busyboxImage());
    agent = await startAgent();
    const ran = await api('POST', '/v1/containers', {
      name: 'svc',
      image: image.id,
      args: ['/bin/sleep', '100000'],
    });
    assert.equal(ran.status, 201, JSON.stringify(ran.json));
    const pid = ran.json.pid as number;
    assert.ok(pid > 0);

    agent.kill('SIGKILL');
    await new Promise((resolve) => agent?.once('exit', resolve));
    process.kill(pid, 0); // still alive: throws if not
    agent = await startAgent();
    const seen = await api('GET', '/v1/containers/svc');
    assert.equal(seen.json.state, 'running');
    assert.equal(seen.json.pid, pid, 'the same process, not a restart');

    const ck = await api('POST', '/v1/containers/svc/checkpoint', { leaveRunning: true });
    assert.equal(ck.status, 200, JSON.stringify(ck.json));
    assert.ok((ck.json.frozenMs as number) > 0);
    const stopped = await api('POST', '/v1/containers/svc/stop', { graceSeconds: 1 });
    assert.equal(stopped.json.state, 'stopped');
    const restored = await api('POST', '/v1/containers/svc/restore', {});
    assert.equal(restored.status, 200, JSON.stringify(restored.json));
    assert.equal((await api('GET', '/v1/containers/svc')).json.state, 'running');
    assert.equal((await api('DELETE', '/v1/containers/svc?force=true')).status, 200);
    assert.equal((await api('GET', '/v1/containers/svc')).status, 404);
  },
);
