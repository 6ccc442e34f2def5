/**
 * The agent API refuses what it must before touching the host: no token,
 * wrong token, malformed JSON, wrong types, missing fields, huge strings,
 * path-like names and image references, unknown routes. Random and hostile
 * bodies (fast-check) never produce a 5xx. No root needed: nothing valid
 * enough to start a container gets through (the image IDs do not exist).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import { createAgentServer } from '../../src/agent/server.js';
import { compileHostConfig } from '../../src/core/config.js';
import { ContainerHost } from '../../src/host/container-host.js';

const TOKEN = 'test-token-0123456789abcdef';
let base = '';
let root = '';
let close: () => Promise<void> = () => Promise.resolve();

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'haven-agent-api-'));
  const host = new ContainerHost(
    compileHostConfig({ hostName: 'api-test', stateDir: join(root, 'state'), runcRoot: join(root, 'runc') }),
  );
  const server = createAgentServer({ host, token: TOKEN });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  close = () => new Promise((resolve) => server.close(() => resolve()));
});
after(async () => {
  await close();
  await rm(root, { recursive: true, force: true });
});

async function call(
  method: string,
  path: string,
  body?: unknown,
  token = TOKEN,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
  });
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    json = { text };
  }
  return { status: res.status, json };
}

test('no token or a wrong token: 401, whatever the route', async () => {
  assert.equal((await fetch(`${base}/v1/containers`)).status, 401);
  assert.equal((await call('GET', '/v1/containers', undefined, 'wrong-token-0123456789')).status, 401);
  assert.equal((await call('POST', '/v1/containers', {}, '')).status, 401);
});

test('health and an empty list with the token', async () => {
  assert.deepEqual((await call('GET', '/v1/health')).json, { ok: true, host: 'api-test' });
  const list = await fetch(`${base}/v1/containers`, { headers: { authorization: `Bearer ${TOKEN}` } });
  assert.deepEqual(await list.json(), []);
});

test('each malformed run request gets a 4xx that names the field', async () => {
  const valid = { name: 'web', image: 'sha256:abcdef', args: ['/bin/true'] };
  const cases: Array<[unknown, number, RegExp]> = [
    ['{not json', 400, /not JSON/],
    [{ ...valid, name: '../x' }, 400, /name/],
    [{ ...valid, name: 'a'.repeat(100) }, 400, /name/],
    [{ ...valid, name: 42 }, 400, /name/],
    [{ ...valid, image: '/etc' }, 400, /image: an image ID/],
    [{ ...valid, image: '../../x' }, 400, /image/],
    [{ ...valid, args: [] }, 400, /args/],
    [{ ...valid, args: 'sh' }, 400, /args/],
    [{ name: 'web', args: ['/bin/true'] }, 400, /image/],
    [{ ...valid, volumes: [{ volume: 'v', path: 'relative' }] }, 400, /volumes\.0\.path/],
    [{ ...valid, volumes: [{ volume: 'v', path: '/a/../../etc' }] }, 400, /volumes\.0\.path/],
    [{ ...valid, memoryBytes: -1 }, 400, /memoryBytes/],
    [{ ...valid, env: ['NOEQUALS'] }, 400, /env/],
    [{ ...valid, unexpected: true }, 400, /Unrecognized key/],
    [{ ...valid, args: ['x'.repeat(70_000)] }, 413, /body over/],
    [valid, 404, /image "sha256:abcdef" is not in this host's store/],
  ];
  for (const [body, status, message] of cases) {
    const r = await call('POST', '/v1/containers', body);
    assert.equal(r.status, status, `${JSON.stringify(body).slice(0, 80)} → ${JSON.stringify(r.json)}`);
    assert.match(String(r.json.error), message);
  }
});

test('unknown containers, routes and methods', async () => {
  assert.equal((await call('GET', '/v1/containers/ghost')).status, 404);
  assert.equal((await call('POST', '/v1/containers/ghost/checkpoint', {})).status, 404);
  assert.equal((await call('GET', '/v1/containers/..%2Fetc')).status, 400);
  assert.equal((await call('GET', '/v2/containers')).status, 404);
  assert.equal((await call('PUT', '/v1/containers')).status, 405);
  assert.equal((await call('POST', '/v1/containers/web/restore', { checkpoint: '../../x' })).status, 400);
  assert.equal((await call('POST', '/v1/containers/web/stop', { graceSeconds: 'soon' })).status, 400);
});

test('random and hostile inputs never crash the agent or produce a 5xx', async () => {
  const routes = [
    '/v1/containers',
    '/v1/containers/web/checkpoint',
    '/v1/containers/web/restore',
    '/v1/containers/web/stop',
  ];
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(...routes),
      fc.oneof(
        fc.json(),
        fc.anything().map((v) => JSON.stringify(v) ?? 'null'),
        fc.string(),
      ),
      async (route, body) => {
        const r = await call('POST', route, body);
        assert.ok(
          r.status >= 400 && r.status < 500,
          `${route} ${body.slice(0, 60)} → ${r.status} ${JSON.stringify(r.json)}`,
        );
      },
    ),
    { numRuns: 300 },
  );
  assert.equal((await call('GET', '/v1/health')).status, 200, 'still serving');
});
