/**
 * Checkpoint chunks and epoch manifests are authenticated end to end (issue
 * 8): through a real agent API on loopback, a manifest signed with the
 * cluster's key commits; one altered after signing, one without a MAC and
 * one signed with another cluster's key are refused (422) and nothing is
 * committed; a chunk whose bytes do not match its hash is refused; a
 * committed manifest altered on the backup's disk is reported corrupt when
 * read back for a restore. Each refusal is logged by the receiver.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Protection } from '../../src/agent/protection.js';
import { createAgentServer } from '../../src/agent/server.js';
import { compileHostConfig } from '../../src/core/config.js';
import { CorruptCheckpointError, HavenError } from '../../src/core/errors.js';
import { callJson } from '../../src/core/http-client.js';
import { ContainerHost } from '../../src/host/container-host.js';
import { EPOCH_MANIFEST_VERSION, sha256, type EpochManifest } from '../../src/replication/chunks.js';
import {
  canonicalJson,
  manifestKey,
  signManifest,
  verifyManifest,
} from '../../src/replication/manifest-mac.js';
import { commitEpoch, sendChunks } from '../../src/replication/transfer.js';

const TOKEN = 'manifest-token-0123456789abcdef';
let root = '';
let base = '';
let protection: Protection;
let close: () => Promise<void> = () => Promise.resolve();
const warnings: string[] = [];

const chunkA = Buffer.from('page contents A'.repeat(100));
const chunkB = Buffer.from('page contents B'.repeat(100));
const hashA = sha256(chunkA);
const hashB = sha256(chunkB);

function manifest(epoch: number, chunk = hashA): EpochManifest {
  return {
    version: EPOCH_MANIFEST_VERSION,
    container: 'web',
    epoch,
    checkpointId: `ck-${epoch}`,
    takenAt: new Date(0).toISOString(),
    record: { name: 'web', image: `sha256:${'ab'.repeat(32)}` },
    skeleton: { chunks: [] },
    files: [{ path: 'pages-1.img', size: chunkA.length, chunks: [chunk] }],
  } as unknown as EpochManifest;
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'haven-manifest-auth-'));
  const host = new ContainerHost(
    compileHostConfig({ hostName: 'backup', stateDir: join(root, 'state'), runcRoot: join(root, 'runc') }),
  );
  protection = new Protection(host, TOKEN, () => undefined);
  // The image is "pulled" (the test is about manifests, not images).
  const server = createAgentServer({ host, token: TOKEN, protection, pullImage: () => Promise.resolve() });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  close = () => new Promise((resolve) => server.close(() => resolve()));
  // The receiver's reports go to its log (stderr, one JSON object per line): capture them.
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = (line: string | Uint8Array, ...rest: never[]) => {
    warnings.push(String(line));
    return write(line, ...rest);
  };
  await sendChunks(base, TOKEN, 'web', [hashA, hashB], (h) => Promise.resolve(h === hashA ? chunkA : chunkB));
});
after(async () => {
  await close();
  await rm(root, { recursive: true, force: true });
});

async function refusal(body: unknown): Promise<HavenError> {
  const error = await callJson(base, '/v1/replicas/web/epochs', TOKEN, { body }).then(
    () => assert.fail('accepted'),
    (e: unknown) => e as HavenError,
  );
  assert.equal(error.code, 'corrupt_checkpoint', error.message);
  return error;
}

test('the MAC covers the canonical form: field order does not matter, any change does', () => {
  const key = manifestKey(TOKEN);
  const m = manifest(1);
  const reordered = Object.fromEntries(Object.entries(m).reverse()) as unknown as EpochManifest;
  assert.equal(canonicalJson(m), canonicalJson(reordered));
  verifyManifest({ ...reordered, mac: signManifest(m, key).mac }, key);
  assert.throws(() => verifyManifest({ ...signManifest(m, key), epoch: 2 }, key), CorruptCheckpointError);
  assert.throws(
    () => verifyManifest(signManifest(m, manifestKey('another-cluster-token-xyz')), key),
    /fails/,
  );
  assert.throws(() => verifyManifest(m, key), /no MAC/);
});

test('a signed manifest commits; altered, unsigned or foreign ones are refused and reported, nothing committed', async () => {
  await commitEpoch(base, TOKEN, manifest(1));
  assert.deepEqual(await protection.replicas.epochs('web'), [1]);

  const key = manifestKey(TOKEN);
  // Altered in flight: its chunk list swapped for another chunk the backup holds.
  const altered = { ...signManifest(manifest(2), key), files: manifest(2, hashB).files };
  assert.match((await refusal(altered)).message, /fails authentication/);
  assert.match((await refusal(manifest(3))).message, /no MAC/);
  assert.match(
    (await refusal(signManifest(manifest(4), manifestKey('another-cluster-token-xyz')))).message,
    /fails/,
  );
  assert.deepEqual(await protection.replicas.epochs('web'), [1], 'nothing refused was committed');
  assert.ok(
    warnings.some((w) => w.includes('fails authentication') && w.includes('"epoch":2')),
    'the backup reported the altered manifest',
  );
});

test('a chunk whose bytes do not match its hash is refused and reported', async () => {
  const forged = sha256(Buffer.from('a chunk the backup lacks'));
  const error = await sendChunks(base, TOKEN, 'web', [forged], () => Promise.resolve(chunkA)).then(
    () => assert.fail('accepted'),
    (e: unknown) => e as HavenError,
  );
  assert.equal(error.code, 'corrupt_checkpoint');
  assert.match(error.message, /arrived damaged: refused/);
  assert.equal(protection.replicas.chunks.has(forged), false);
  assert.ok(
    warnings.some((w) => w.includes('arrived damaged')),
    'the backup reported it',
  );
});

test('a committed manifest altered on the backup disk is reported corrupt before any restore', async () => {
  const file = join(root, 'state', 'replicas', 'containers', 'web', 'epochs', '1.json');
  const stored = JSON.parse(await readFile(file, 'utf8')) as EpochManifest;
  assert.equal(typeof (stored as { mac?: unknown }).mac, 'string', 'stored with its MAC');
  await protection.replicas.manifest('web', 1); // intact: reads back
  await writeFile(file, JSON.stringify({ ...stored, files: manifest(1, hashB).files }));
  await assert.rejects(protection.replicas.manifest('web', 1), (e: Error) => {
    assert.ok(e instanceof CorruptCheckpointError);
    assert.match(e.message, /epoch 1 of "web" is unreadable: .*fails authentication/);
    return true;
  });
});
