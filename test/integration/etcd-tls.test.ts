/**
 * The etcd store over TLS, on a real etcd (Debian's etcd-server, one member
 * on loopback) that demands client certificates: a controller with a client
 * certificate from etcd's CA reads and writes; one with a certificate from
 * another CA, one with none, and a plain-HTTP client are all refused — the
 * store that holds every intent lets no stranger in.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { createCa, issueCertificate } from '../../src/core/ca.js';
import { EtcdStore, etcdClientOptions, type EtcdClientTls } from '../../src/controller/etcd-store.js';
import { Etcd3 } from 'etcd3';
import { ETCD_BIN, LocalEtcd } from '../../src/lab/etcd.js';

const skip = existsSync(ETCD_BIN)
  ? false
  : `needs ${ETCD_BIN} (Debian etcd-server; scripts/setup-host.sh installs it)`;

let dir = '';
let etcd: LocalEtcd;
/** A client certificate from etcd's own CA. */
let trusted: EtcdClientTls;
/** The same CA to trust, but a client certificate from another CA. */
let stranger: EtcdClientTls;

const host = {
  name: 'h1',
  address: 'https://10.88.0.11:7070',
  labels: {},
  cpuMillis: 2000,
  memoryBytes: 2 ** 33,
  cordoned: false,
  registeredAt: '2026-11-27T00:00:00Z',
};

before(async () => {
  if (skip) return;
  dir = await mkdtemp(join(tmpdir(), 'haven-etcd-tls-'));
  const ca = await createCa({ name: 'etcd test CA' });
  const server = await issueCertificate(ca, { role: 'controller', host: 'etcd', addresses: ['127.0.0.1'] });
  const client = await issueCertificate(ca, { role: 'cli', host: 'controller-client' });
  const other = await issueCertificate(await createCa({ name: 'another CA' }), {
    role: 'cli',
    host: 'controller-client',
  });
  await writeFile(join(dir, 'ca.pem'), ca.certPem);
  await writeFile(join(dir, 'server.pem'), server.certPem);
  await writeFile(join(dir, 'server-key.pem'), server.keyPem, { mode: 0o600 });
  trusted = { ca: ca.certPem, cert: client.certPem, key: client.keyPem };
  stranger = { ca: ca.certPem, cert: other.certPem, key: other.keyPem };
  // Ports (29790, peers 30790) apart from the lab's (2379+) and the other etcd tests' (23790, 26790, peers 1000 above).
  etcd = new LocalEtcd(join(dir, 'data'), 1, 29790, join(dir, 'etcd.log'), {
    caFile: join(dir, 'ca.pem'),
    certFile: join(dir, 'server.pem'),
    keyFile: join(dir, 'server-key.pem'),
    client: etcdClientOptions([], trusted).credentials!,
  });
  await etcd.start();
});

after(async () => {
  if (skip) return;
  await etcd.stop();
  await rm(dir, { recursive: true, force: true });
});

test(
  'a controller with a client certificate from etcd’s CA reads and writes over TLS',
  { skip },
  async () => {
    assert.ok(etcd.endpoints.every((e) => e.startsWith('https://')));
    const client = new Etcd3(etcdClientOptions(etcd.endpoints, trusted));
    try {
      const store = new EtcdStore({ endpoints: etcd.endpoints, client });
      await store.putHost(host);
      assert.deepEqual(
        (await store.listHosts()).map((h) => h.name),
        ['h1'],
      );
    } finally {
      client.close();
    }
  },
);

test('another CA’s certificate, no certificate, and plain HTTP are refused', { skip }, async () => {
  // Each with what the refusal must say: the TLS handshake failed (etcd's alert), or no connection.
  const tlsRefused = /alert bad certificate|certificate required/;
  const attempts: Array<[string, Etcd3, RegExp]> = [
    ['another CA', new Etcd3(etcdClientOptions(etcd.endpoints, stranger)), tlsRefused],
    [
      'no certificate',
      new Etcd3({
        ...etcdClientOptions(etcd.endpoints),
        credentials: { rootCertificate: Buffer.from(trusted.ca) },
      }),
      tlsRefused,
    ],
    [
      'plain HTTP',
      new Etcd3(etcdClientOptions(etcd.endpoints.map((e) => e.replace('https:', 'http:')))),
      /No connection established|Failed to connect/,
    ],
  ];
  for (const [what, client, why] of attempts) {
    try {
      const store = new EtcdStore({ endpoints: etcd.endpoints, client });
      await assert.rejects(store.listHosts(), (error: Error) => {
        assert.match(error.message, /^etcd: list hosts: /, `${what}: ${error.message}`);
        assert.match(error.message, why, `${what}: ${error.message}`);
        return true;
      });
    } finally {
      client.close();
    }
  }
});
