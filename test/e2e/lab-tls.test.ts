/**
 * A lab with mutual TLS (`haven lab up --tls`, issue 8): two hosts whose
 * agents register, beat and replicate over HTTPS with certificates from
 * the lab's CA. A protected Redis commits epochs to its backup (agent to
 * agent, manifests authenticated) and a planned switchover moves it
 * (controller orders, agent replication, promotion). From the client
 * namespace: an agent refuses a caller with no certificate (even with the
 * token), one from another CA, plain HTTP, and orders given with another
 * agent's certificate. ~1 min.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { redisImage } from '../../src/fixtures/images.js';
import { createCa, issueCertificate } from '../../src/core/ca.js';
import { writeTlsIdentity } from '../../src/core/tls.js';
import { runHaven } from '../../src/lab/cli-driver.js';
import { AGENT_PORT, hostAddress, LAB_PATHS } from '../../src/lab/index.js';
import { haven, inspect, ok, protectedRedis, waitFor, type ProtectedView } from '../support/lab-cli.js';

const TLS = join(LAB_PATHS.stateDir, 'tls');
let foreign = '';

before(async () => {
  await haven(['lab', 'down']);
  const up = await runHaven(['lab', 'up', '--hosts', '2', '--tls'], {}, 180_000);
  assert.equal(up.code, 0, `haven lab up --tls: ${up.stderr}`);
  await waitFor('2 hosts up over mutual TLS', async () => {
    const list = JSON.parse(await ok(['host', 'ls', '--json'])) as Array<{ state: string; address: string }>;
    return list.filter((h) => h.state === 'up' && h.address.startsWith('https://')).length === 2
      ? true
      : undefined;
  });
  await ok(['image', 'push', await redisImage(), '--name', 'redis']);
  // A certificate with the right role and name, from another CA.
  foreign = await mkdtemp(join(tmpdir(), 'haven-lab-tls-'));
  const other = await createCa({ name: 'not the lab' });
  await writeTlsIdentity(
    foreign,
    other.certPem,
    await issueCertificate(other, { role: 'controller', host: 'controller' }),
  );
});
after(async () => {
  await haven(['lab', 'down']);
  await rm(foreign, { recursive: true, force: true });
});

/** curl from the client namespace to h1's agent; its stdout (status code last). */
async function curl(
  args: string[],
  url = `https://${hostAddress('h1')}:${AGENT_PORT}/v1/containers`,
): Promise<string> {
  const r = await haven([
    'lab',
    'exec',
    'client',
    '--',
    'curl',
    '-s',
    '-m',
    '5',
    '-w',
    ' %{http_code}',
    ...args,
    url,
  ]);
  return `${r.stdout}${r.stderr}`;
}

test('a protected container replicates and switches over with every call on mutual TLS', async () => {
  const start = await protectedRedis('db', '1s');
  assert.ok(start.protection.committedEpoch, 'an epoch committed on the backup, agent to agent');
  await ok(['failover', 'db']);
  const moved = await waitFor('db running on its backup', async () => {
    const v = await inspect<ProtectedView>('db');
    return v.state === 'running' && v.host !== start.host ? v : undefined;
  });
  assert.equal(moved.host, start.protection.backup);
});

test('an agent refuses no certificate (even with the token), another CA, plain HTTP and another agent giving orders', async () => {
  const token = (await ok(['lab', 'exec', 'client', '--', 'cat', join(LAB_PATHS.stateDir, 'token')])).trim();
  const ca = ['--cacert', join(TLS, 'ca', 'ca.pem')];
  assert.match(
    await curl([...ca, '-H', `authorization: Bearer ${token}`]),
    /a client certificate of this cluster is required.* 401$/,
  );
  assert.match(
    await curl([...ca, '--cert', join(foreign, 'cert.pem'), '--key', join(foreign, 'key.pem')]),
    /client certificate refused: not issued by this cluster's CA.* 401$/,
  );
  assert.doesNotMatch(await curl([], `http://${hostAddress('h1')}:${AGENT_PORT}/v1/containers`), / 200$/);
  const asH2 = ['--cert', join(TLS, 'hosts', 'h2', 'cert.pem'), '--key', join(TLS, 'hosts', 'h2', 'key.pem')];
  assert.match(
    await curl(
      [...ca, ...asH2, '-X', 'POST', '-H', 'content-type: application/json', '-d', '{}'],
      `https://${hostAddress('h1')}:${AGENT_PORT}/v1/containers/db/stop`,
    ),
    /agent certificate \(h2\) may only replicate to this host.* 403$/,
  );
  const asController = [
    '--cert',
    join(TLS, 'controller', 'cert.pem'),
    '--key',
    join(TLS, 'controller', 'key.pem'),
  ];
  assert.match(await curl([...ca, ...asController]), / 200$/);
});
