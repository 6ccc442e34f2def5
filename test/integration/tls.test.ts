/**
 * Mutual TLS (issue 8): an agent and a controller served in-process on
 * loopback with certificates from a cluster CA made by `ca.ts`. Shows that
 * a client with a certificate from another CA, with none, or with an
 * expired one is refused; that an agent refuses orders from an agent's
 * certificate (and takes replication from it); that an agent certificate
 * may only register and beat as itself at the controller; that the token
 * still works for scripts at the controller; and that Haven's own client
 * (`callJson` on an `https://` endpoint) presents its certificate and
 * checks the server's. No root needed: no container is started.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { request } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import type { Server } from 'node:http';
import { Prober } from '../../src/agent/probes.js';
import { Protection } from '../../src/agent/protection.js';
import { createAgentServer } from '../../src/agent/server.js';
import { CachedStore } from '../../src/controller/cached-store.js';
import { Controller, type AgentCaller } from '../../src/controller/controller.js';
import { ImageRegistry } from '../../src/controller/image-registry.js';
import { createControllerServer } from '../../src/controller/server.js';
import { SqliteStore } from '../../src/controller/sqlite-store.js';
import { createCa, issueCertificate, type CertificatePair, type Role } from '../../src/core/ca.js';
import { compileHostConfig } from '../../src/core/config.js';
import { callJson } from '../../src/core/http-client.js';
import { loadTlsIdentity, useClientTls, writeTlsIdentity, type TlsIdentity } from '../../src/core/tls.js';
import { ContainerHost } from '../../src/host/container-host.js';
import { ensureCa, issueTlsDirs } from '../../src/cli/commands/init.js';

const TOKEN = 'tls-token-0123456789abcdef';
let root = '';
let ca: CertificatePair;
let otherCa: CertificatePair;
let agentUrl = '';
let controllerUrl = '';
const servers: Server[] = [];
/** Client certificates by who holds them. */
const clients: Partial<Record<Who, CertificatePair>> = {};
/** The client certificates the tests present. */
type Who = 'controller' | 'agent' | 'cli' | 'foreign' | 'expired';

async function identity(
  role: Role,
  host: string,
  authority = ca,
  dir = join(root, `${role}-${host}`),
): Promise<TlsIdentity> {
  await writeTlsIdentity(
    dir,
    authority.certPem,
    await issueCertificate(authority, { role, host, addresses: ['127.0.0.1'] }),
  );
  return loadTlsIdentity(dir);
}

async function listen(server: Server): Promise<string> {
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'haven-tls-'));
  ca = await createCa();
  otherCa = await createCa({ name: 'someone else' });
  const host = new ContainerHost(
    compileHostConfig({ hostName: 'h1', stateDir: join(root, 'state'), runcRoot: join(root, 'runc') }),
  );
  const quiet = (): void => undefined;
  const prober = new Prober(host, quiet);
  const protection = new Protection(host, TOKEN, quiet, prober);
  agentUrl = await listen(
    createAgentServer({ host, token: TOKEN, protection, prober, tls: await identity('agent', 'h1') }),
  );

  const callAgent: AgentCaller = () => Promise.resolve({ ok: true } as never);
  const images = new ImageRegistry(join(root, 'images'));
  await images.put(Readable.from([Buffer.from('tar')]), { name: 'tiny' });
  const controller = new Controller({
    store: await CachedStore.over(new SqliteStore(':memory:')),
    images,
    callAgent,
  });
  controllerUrl = await listen(
    createControllerServer({ controller, images, token: TOKEN, tls: await identity('controller', 'ctl') }),
  );

  clients.controller = await issueCertificate(ca, { role: 'controller', host: 'ctl' });
  clients.agent = await issueCertificate(ca, { role: 'agent', host: 'h2' });
  clients.cli = await issueCertificate(ca, { role: 'cli', host: 'alice' });
  clients.foreign = await issueCertificate(otherCa, { role: 'controller', host: 'ctl' });
  clients.expired = await issueCertificate(ca, {
    role: 'controller',
    host: 'ctl',
    notBefore: new Date(Date.now() - 2 * 86_400_000),
    notAfter: new Date(Date.now() - 86_400_000),
  });
});
after(async () => {
  useClientTls(undefined);
  for (const server of servers) {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
  await rm(root, { recursive: true, force: true });
});

/** One HTTPS call as `who` (a client certificate, or none), trusting only the cluster CA. */
function call(
  base: string,
  method: string,
  path: string,
  who: Who | 'none',
  options: { body?: unknown; token?: boolean } = {},
): Promise<{ status: number; json: { error?: string } & Record<string, unknown> }> {
  const url = new URL(path, base);
  const body = options.body === undefined ? undefined : JSON.stringify(options.body);
  const cert = who === 'none' ? undefined : clients[who];
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: url.hostname,
        port: url.port,
        path: url.pathname,
        method,
        ca: ca.certPem,
        ...(cert ? { cert: cert.certPem, key: cert.keyPem } : {}),
        agent: false,
        headers: {
          ...(options.token ? { authorization: `Bearer ${TOKEN}` } : {}),
          ...(body ? { 'content-type': 'application/json' } : {}),
        },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          let json: { error?: string } = {};
          try {
            json = JSON.parse(text) as { error?: string };
          } catch {
            json = { error: text };
          }
          resolve({ status: res.statusCode ?? 0, json });
        });
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

test('the agent takes orders from the controller certificate', async () => {
  assert.equal((await call(agentUrl, 'GET', '/v1/containers', 'controller')).status, 200);
  const stop = await call(agentUrl, 'POST', '/v1/containers/ghost/stop', 'controller', { body: {} });
  assert.equal(stop.status, 404, 'past authentication: the container does not exist');
});

test('another CA, no certificate, an expired one: refused by the agent and the controller', async () => {
  for (const base of [agentUrl, controllerUrl]) {
    const foreign = await call(base, 'GET', '/v1/health', 'foreign', { token: true });
    assert.equal(foreign.status, 401);
    assert.match(String(foreign.json.error), /client certificate refused: not issued by this cluster's CA/);
    const expired = await call(base, 'GET', '/v1/health', 'expired', { token: true });
    assert.equal(expired.status, 401);
    assert.match(String(expired.json.error), /client certificate refused: expired \(CERT_HAS_EXPIRED\)/);
    const none = await call(base, 'GET', '/v1/health', 'none');
    assert.equal(none.status, 401);
  }
  // At the agent even the token does not replace a certificate: orders come only from the controller.
  const tokenOnly = await call(agentUrl, 'POST', '/v1/containers/ghost/stop', 'none', {
    body: {},
    token: true,
  });
  assert.equal(tokenOnly.status, 401);
  assert.match(String(tokenOnly.json.error), /a client certificate of this cluster is required/);
});

test('an agent refuses orders from another agent certificate, and takes its replication', async () => {
  for (const [method, path, body] of [
    ['POST', '/v1/containers', { name: 'web', image: 'abcdef', args: ['/bin/true'] }],
    ['POST', '/v1/containers/web/stop', {}],
    ['POST', '/v1/containers/web/checkpoint', {}],
    ['DELETE', '/v1/containers/web', undefined],
    ['POST', '/v1/replicas/web/promote', {}],
    ['DELETE', '/v1/replicas/web', undefined],
  ] as const) {
    const r = await call(agentUrl, method, path, 'agent', { body, token: true });
    assert.equal(r.status, 403, `${method} ${path}: ${JSON.stringify(r.json)}`);
    assert.match(String(r.json.error), /agent certificate \(h2\) may only replicate to this host/);
  }
  const missing = await call(agentUrl, 'POST', '/v1/replicas/web/missing', 'agent', {
    body: { hashes: ['a'.repeat(64)] },
  });
  assert.equal(missing.status, 200);
  assert.deepEqual(missing.json, { missing: ['a'.repeat(64)] });
  // A CLI certificate reads, and gives no orders either.
  assert.equal((await call(agentUrl, 'GET', '/v1/containers', 'cli')).status, 200);
  assert.equal((await call(agentUrl, 'POST', '/v1/containers/web/stop', 'cli', { body: {} })).status, 403);
});

test('at the controller: an agent certificate registers and beats only as itself; the token still works for scripts', async () => {
  const host = (name: string): Record<string, unknown> => ({
    name,
    address: 'https://127.0.0.1:9',
    cpuMillis: 1000,
    memoryBytes: 2 ** 30,
    bootId: 'b00710aa',
  });
  assert.equal((await call(controllerUrl, 'POST', '/v1/hosts', 'agent', { body: host('h2') })).status, 200);
  const impostor = await call(controllerUrl, 'POST', '/v1/hosts', 'agent', { body: host('h1') });
  assert.equal(impostor.status, 403);
  assert.match(String(impostor.json.error), /may not register host "h1"/);
  assert.equal(
    (
      await call(controllerUrl, 'POST', '/v1/hosts/h2/heartbeat', 'agent', {
        body: { seq: 1, bootId: 'b00710aa' },
      })
    ).status,
    200,
  );
  assert.equal(
    (
      await call(controllerUrl, 'POST', '/v1/hosts/h1/heartbeat', 'agent', {
        body: { seq: 1, bootId: 'b00710aa' },
      })
    ).status,
    403,
  );
  assert.equal(
    (
      await call(controllerUrl, 'POST', '/v1/containers', 'agent', {
        body: { name: 'x', image: 'tiny', args: ['/bin/true'] },
      })
    ).status,
    403,
  );
  assert.equal((await call(controllerUrl, 'GET', '/v1/hosts', 'cli')).status, 200);
  assert.equal(
    (await call(controllerUrl, 'GET', '/v1/hosts', 'none', { token: true })).status,
    200,
    'scripts keep the token',
  );
});

test("Haven's client presents its certificate on https:// endpoints and checks the server's", async () => {
  useClientTls(await identity('controller', 'ctl', ca, join(root, 'client-ctl')));
  assert.deepEqual(await callJson(agentUrl, '/v1/health', TOKEN), { ok: true, host: 'h1' });
  // A server whose certificate another CA signed is not trusted.
  const impostorAgent = createAgentServer({
    host: new ContainerHost(
      compileHostConfig({ hostName: 'h9', stateDir: join(root, 'h9'), runcRoot: join(root, 'h9r') }),
    ),
    token: TOKEN,
    tls: await identity('agent', 'h9', otherCa),
  });
  const impostorUrl = await listen(impostorAgent);
  await assert.rejects(
    callJson(impostorUrl, '/v1/health', TOKEN),
    /cannot reach .*(SELF_SIGNED|UNABLE_TO|unable to)/i,
  );
  useClientTls(undefined);
});

test('haven init --tls lays out a CA and TLS directories that load as identities', async () => {
  const tlsRoot = join(root, 'init');
  const { ca: made, made: first } = await ensureCa(tlsRoot);
  assert.equal(first, true);
  const again = await ensureCa(tlsRoot);
  assert.equal(again.made, false, 'kept');
  assert.equal(again.ca.certPem, made.certPem);
  assert.equal((await stat(join(tlsRoot, 'ca', 'ca-key.pem'))).mode & 0o777, 0o600);
  await issueTlsDirs(made, [
    { role: 'agent', host: 'h7', addresses: ['10.88.0.17'], dir: join(tlsRoot, 'h7') },
  ]);
  const id = loadTlsIdentity(join(tlsRoot, 'h7'));
  assert.equal(id.role, 'agent');
  assert.equal(id.host, 'h7');
  assert.equal((await stat(join(tlsRoot, 'h7', 'key.pem'))).mode & 0o777, 0o600);
});
