/**
 * Fuzzing every route of the controller's API (issue 8): 6,000 random and
 * hostile requests — wrong types, huge strings, path traversal, unicode,
 * nested junk, malformed JSON, wrong methods and tokens — against a
 * controller served in-process on loopback over an in-memory SQLite store,
 * with fake agents (orders are answered, nothing runs). Each answer must be
 * below 500, and every refusal a 4xx with a JSON error. Together with
 * fuzz-agent-api.test.ts: 10,000 inputs.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import { CachedStore } from '../../src/controller/cached-store.js';
import { Controller, type AgentCaller } from '../../src/controller/controller.js';
import { ImageRegistry } from '../../src/controller/image-registry.js';
import { createControllerServer } from '../../src/controller/server.js';
import { SqliteStore } from '../../src/controller/sqlite-store.js';
import { NotFoundError } from '../../src/core/errors.js';
import { checkAnswer, fuzzRequest, send, type RouteTemplate } from '../support/fuzz-http.js';

const TOKEN = 'fuzz-token-0123456789abcdef';
/** Inputs thrown at the controller (the agent's file throws the other 4,000). */
const RUNS = 6000;
let base = '';
let dir = '';
let close: () => Promise<void> = () => Promise.resolve();

const HOST = {
  name: 'h1',
  address: 'http://127.0.0.1:9',
  cpuMillis: 4000,
  memoryBytes: 2 ** 33,
  bootId: 'b00710aa',
};

/** Every route of src/controller/server.ts, with valid bodies to mutate. */
const ROUTES: RouteTemplate[] = [
  { method: 'GET', path: '/metrics' },
  { method: 'GET', path: '/v1/health' },
  { method: 'GET', path: '/v1/hosts' },
  { method: 'POST', path: '/v1/hosts', bodies: [HOST, { ...HOST, name: 'h2', labels: { zone: 'a' } }] },
  { method: 'POST', path: '/v1/hosts/:name/heartbeats', bodies: [{ seq: 1, bootId: 'b00710aa' }] },
  {
    method: 'POST',
    path: '/v1/hosts/:name/heartbeat',
    bodies: [
      {
        seq: 2,
        bootId: 'b00710aa',
        containers: [{ name: 'web', state: 'running', pid: 5, ip: '10.88.1.1' }],
      },
    ],
  },
  { method: 'POST', path: '/v1/hosts/:name/cordon', bodies: [{}] },
  { method: 'POST', path: '/v1/hosts/:name/uncordon', bodies: [{}] },
  { method: 'PUT', path: '/v1/hosts/:name/cordon', bodies: [{ cordoned: true }] },
  { method: 'POST', path: '/v1/hosts/:name/drain', bodies: [{ strategy: 'stop-copy', maxDowntimeMs: 300 }] },
  { method: 'GET', path: '/v1/images' },
  { method: 'PUT', path: '/v1/images', query: ['name', 'id'], bodies: ['a tar'] },
  { method: 'GET', path: '/v1/images/:ref' },
  { method: 'GET', path: '/v1/containers' },
  {
    method: 'POST',
    path: '/v1/containers',
    bodies: [
      { name: 'web', image: 'tiny', args: ['/bin/true'] },
      {
        name: 'db',
        image: 'tiny',
        args: ['/bin/sh'],
        host: 'h1',
        cpuMillis: 200,
        requireHostLabels: { zone: 'a' },
        apart: ['web'],
        ha: 'checkpoint',
        intervalMs: 1000,
        probe: { tcpSocket: { port: 80 } },
      },
    ],
  },
  { method: 'GET', path: '/v1/containers/:name' },
  { method: 'DELETE', path: '/v1/containers/:name', query: ['force'] },
  { method: 'GET', path: '/v1/containers/:name/logs' },
  { method: 'POST', path: '/v1/containers/:name/checkpoint', bodies: [{ leaveRunning: true }] },
  { method: 'POST', path: '/v1/containers/:name/restore', bodies: [{ tcpClose: true }] },
  { method: 'POST', path: '/v1/containers/:name/stop', bodies: [{ graceSeconds: 1 }] },
  { method: 'POST', path: '/v1/containers/:name/failover', bodies: [{}] },
  { method: 'POST', path: '/v1/containers/:name/migrate', bodies: [{ to: 'h2', strategy: 'pre-copy' }] },
  { method: 'GET', path: '/v1/events', query: ['since', 'limit'] },
  { method: 'POST', path: '/v1/dashboard/logins', bodies: [{}] },
  { method: 'GET', path: '/ui/' },
  { method: 'GET', path: '/ui/:file' },
  { method: 'GET', path: '/ui/login', query: ['token'] },
  { method: 'GET', path: '/ui/session' },
];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'haven-fuzz-controller-'));
  const images = new ImageRegistry(join(dir, 'images'));
  await images.put(Readable.from([Buffer.from('a tiny image tar')]), { name: 'tiny' });
  let pid = 100;
  // Fake agents: a run or an order is answered as done; a container the agent does not know is a 404.
  const callAgent: AgentCaller = <T>(
    _host: { name: string },
    path: string,
    options: { body?: unknown } = {},
  ) => {
    const body = options.body as { name?: string; ip?: string } | undefined;
    if (path === '/v1/containers' && body?.name)
      return Promise.resolve({
        name: body.name,
        state: 'running',
        pid: ++pid,
        ip: body.ip?.split('/')[0],
      } as T);
    if (path.endsWith('/logs')) return Promise.resolve('a log line\n' as T);
    if (path.includes('/replicas/') || path.includes('/migrate') || path.includes('/handover'))
      return Promise.reject(new NotFoundError('the fake agent does no replication'));
    return Promise.resolve({ ok: true } as T);
  };
  const controller = new Controller({
    store: await CachedStore.over(new SqliteStore(':memory:')),
    images,
    callAgent,
    failureAfterMs: 3000,
  });
  await controller.registerHost({ ...HOST, heartbeatMs: 100, labels: {} });
  const server = createControllerServer({ controller, images, token: TOKEN });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  close = () =>
    new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
});
after(async () => {
  await close();
  await rm(dir, { recursive: true, force: true });
});

test(`${RUNS} random and hostile requests to every controller route: no crash, no 5xx, every refusal a 4xx with a JSON error`, async () => {
  const started = performance.now();
  let refused = 0;
  await fc.assert(
    fc.asyncProperty(fuzzRequest(ROUTES, { token: TOKEN }), async (r) => {
      const answer = await send(base, r);
      checkAnswer(r, answer, (path) => path.startsWith('/ui/'));
      if (answer.status >= 400) refused++;
    }),
    { numRuns: RUNS, endOnFailure: true },
  );
  assert.ok(refused > RUNS / 2, `refused ${refused} of ${RUNS}`);
  assert.ok(refused < RUNS, `refused all ${RUNS}`);
  const health = await send(base, {
    method: 'GET',
    path: '/v1/health',
    headers: { authorization: `Bearer ${TOKEN}` },
    body: undefined,
  });
  assert.equal(health.status, 200, 'still serving');
  process.stderr.write(
    `fuzz-controller: ${RUNS} requests in ${Math.round(performance.now() - started)} ms, ${refused} refused\n`,
  );
});
