/**
 * Fuzzing every route of the agent's API (issue 8): 4,000 random and hostile
 * requests — wrong types, huge strings, path traversal, unicode, nested
 * junk, malformed JSON, wrong methods and tokens — against an agent served
 * in-process on loopback with protection and probes enabled (so that every
 * route exists). Nothing valid enough to start a container gets through:
 * the host's store holds no image and no container, so no runc or CRIU is
 * needed. Each answer must be below 500, and every refusal a 4xx with a
 * JSON error. Together with fuzz-controller-api.test.ts: 10,000 inputs.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import { Prober } from '../../src/agent/probes.js';
import { Protection } from '../../src/agent/protection.js';
import { createAgentServer } from '../../src/agent/server.js';
import { compileHostConfig } from '../../src/core/config.js';
import { ContainerHost } from '../../src/host/container-host.js';
import { checkAnswer, fuzzRequest, send, type RouteTemplate } from '../support/fuzz-http.js';

const TOKEN = 'fuzz-token-0123456789abcdef';
/** Inputs thrown at the agent (the controller's file throws the other 6,000). */
const RUNS = 4000;
let base = '';
let root = '';
let close: () => Promise<void> = () => Promise.resolve();

const IMAGE = `sha256:${'ab'.repeat(32)}`;
/** A loopback address only: the probe route really connects (nothing leaves this machine). */
const LOOPBACK = 'http://127.0.0.1:9';

/** Every route of src/agent/server.ts, with valid bodies to mutate. */
const ROUTES: RouteTemplate[] = [
  { method: 'GET', path: '/metrics' },
  { method: 'GET', path: '/v1/health' },
  { method: 'POST', path: '/v1/probe', bodies: [{ address: LOOPBACK }] },
  { method: 'GET', path: '/v1/images/:id' },
  { method: 'GET', path: '/v1/containers' },
  {
    method: 'POST',
    path: '/v1/containers',
    bodies: [
      { name: 'web', image: IMAGE, args: ['/bin/true'] },
      {
        name: 'db',
        image: 'abcdef',
        args: ['/bin/sh', '-c', 'x'],
        env: ['A=1'],
        volumes: [{ volume: 'data', path: '/data' }],
        ip: '10.88.1.1/16',
        memoryBytes: 8 * 1024 * 1024,
        watchdog: { timeoutSeconds: 1 },
      },
    ],
  },
  { method: 'GET', path: '/v1/containers/:name' },
  { method: 'DELETE', path: '/v1/containers/:name', query: ['force'] },
  { method: 'GET', path: '/v1/containers/:name/logs' },
  { method: 'POST', path: '/v1/containers/:name/checkpoint', bodies: [{ leaveRunning: true, keep: 2 }] },
  { method: 'POST', path: '/v1/containers/:name/restore', bodies: [{ checkpoint: 'ck-1', tcpClose: true }] },
  { method: 'POST', path: '/v1/containers/:name/stop', bodies: [{ graceSeconds: 1 }] },
  {
    method: 'POST',
    path: '/v1/containers/:name/probe',
    bodies: [{ probe: null }, { probe: { tcpSocket: { port: 80 }, periodSeconds: 1 } }],
  },
  {
    method: 'POST',
    path: '/v1/containers/:name/protect',
    bodies: [{ backup: { host: 'h2', address: LOOPBACK }, intervalMs: 1000 }, { backup: null }],
  },
  { method: 'POST', path: '/v1/containers/:name/handover', bodies: [{}] },
  { method: 'POST', path: '/v1/containers/:name/migrate-end', bodies: [{ id: 'm-1', outcome: 'rollback' }] },
  { method: 'POST', path: '/v1/containers/:name/migrate-facts', bodies: [{}, { sampleDirtyRate: false }] },
  { method: 'POST', path: '/v1/containers/:name/recover', bodies: [{}] },
  {
    method: 'POST',
    path: '/v1/containers/:name/migrate',
    bodies: [{ id: 'm-1', round: 1, final: false, to: { host: 'h2', address: LOOPBACK } }],
  },
  { method: 'GET', path: '/v1/replicas' },
  { method: 'GET', path: '/v1/replicas/:name' },
  { method: 'DELETE', path: '/v1/replicas/:name' },
  { method: 'POST', path: '/v1/replicas/:name/missing', bodies: [{ hashes: ['a'.repeat(64)] }] },
  { method: 'POST', path: '/v1/replicas/:name/chunks', bodies: ['frames'] },
  {
    method: 'POST',
    path: '/v1/replicas/:name/epochs',
    bodies: [
      {
        version: 1,
        container: 'web',
        epoch: 1,
        checkpointId: 'ck-1',
        takenAt: new Date(0).toISOString(),
        record: { name: 'web', image: IMAGE },
        skeleton: { chunks: ['zero'] },
        files: [{ path: 'pages-1.img', size: 1, chunks: ['a'.repeat(64)] }],
      },
    ],
  },
  { method: 'POST', path: '/v1/replicas/:name/prepare', bodies: [{ image: IMAGE }] },
  { method: 'POST', path: '/v1/replicas/:name/announce', bodies: [{}] },
  { method: 'POST', path: '/v1/replicas/:name/stage', bodies: [{}] },
  { method: 'POST', path: '/v1/replicas/:name/promote', bodies: [{ tcpClose: true, epoch: 1 }] },
  {
    method: 'POST',
    path: '/v1/replicas/:name/promote-lazy',
    bodies: [{ epoch: 1, from: { address: '127.0.0.1', port: 27000 } }],
  },
  { method: 'POST', path: '/v1/replicas/:name/lazy-wait', bodies: [{ timeoutMs: 10 }] },
];

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'haven-fuzz-agent-'));
  const host = new ContainerHost(
    compileHostConfig({ hostName: 'fuzz', stateDir: join(root, 'state'), runcRoot: join(root, 'runc') }),
  );
  const quiet = (): void => undefined;
  const prober = new Prober(host, quiet);
  const protection = new Protection(host, TOKEN, quiet, prober);
  const server = createAgentServer({ host, token: TOKEN, protection, prober });
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
  await rm(root, { recursive: true, force: true });
});

test(`${RUNS} random and hostile requests to every agent route: no crash, no 5xx, every refusal a 4xx with a JSON error`, async () => {
  const started = performance.now();
  let refused = 0;
  await fc.assert(
    fc.asyncProperty(fuzzRequest(ROUTES, { token: TOKEN }), async (r) => {
      const answer = await send(base, r);
      checkAnswer(r, answer);
      if (answer.status >= 400) refused++;
    }),
    { numRuns: RUNS, endOnFailure: true },
  );
  // Most inputs are refused; a fuzzer that never got past validation would be a weak one, and
  // one that never got refused would not be fuzzing.
  assert.ok(refused > RUNS / 2, `refused ${refused} of ${RUNS}`);
  assert.ok(refused < RUNS, `refused all ${RUNS}`);
  assert.equal(
    (
      await send(base, {
        method: 'GET',
        path: '/v1/health',
        headers: { authorization: `Bearer ${TOKEN}` },
        body: undefined,
      })
    ).status,
    200,
    'still serving',
  );
  process.stderr.write(
    `fuzz-agent: ${RUNS} requests in ${Math.round(performance.now() - started)} ms, ${refused} refused\n`,
  );
});
