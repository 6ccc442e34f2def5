/**
 * Bad input gets a clear error and loses nothing: unknown containers,
 * duplicate and malicious names, missing images, truncated and corrupted
 * checkpoints. Each fails with a non-zero exit and a message naming the
 * problem; a running container is untouched and nothing is left half-made.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, open, readdir, truncate, stat } from 'node:fs/promises';
import { run } from '../../src/core/exec.js';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { busyboxImage } from '../../src/fixtures/images.js';
import { containerNetnsName } from '../../src/runtime/network.js';
import { TestHost } from '../support/test-host.js';

let t: TestHost;
let image: string;
before(async () => {
  t = await TestHost.create('bad');
  image = await busyboxImage();
  const ran = await t.cli(['run', 'keeper', '--image', image, '--', '/bin/sleep', '100000']);
  assert.equal(ran.code, 0, ran.stderr);
});
after(async () => t?.dispose());

async function keeperStillRuns(): Promise<void> {
  const view = await t.host.inspect('keeper');
  assert.equal(view.state, 'running');
}

async function containerDirs(): Promise<string[]> {
  return (await readdir(join(t.config.stateDir, 'containers'))).sort();
}

test('unknown container: every command names it', async () => {
  for (const args of [
    ['inspect', 'ghost'],
    ['logs', 'ghost'],
    ['checkpoint', 'ghost'],
    ['restore', 'ghost'],
    ['stop', 'ghost'],
    ['rm', 'ghost'],
  ]) {
    const r = await t.cli(args);
    assert.notEqual(r.code, 0, `${args.join(' ')} must fail`);
    assert.match(r.stderr, /no such container: "ghost"/, args.join(' '));
  }
  await keeperStillRuns();
});

test('duplicate name is refused and the original keeps running', async () => {
  const r = await t.cli(['run', 'keeper', '--image', image, '--', '/bin/true']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /container "keeper" already exists/);
  await keeperStillRuns();
});

test('path-like and malformed names are refused before anything is made', async () => {
  for (const name of ['../x', 'a/b', '.hidden', 'UPPER', 'x'.repeat(64), '']) {
    const r = await t.cli(['run', name, '--image', image, '--', '/bin/true']);
    assert.notEqual(r.code, 0, `name ${JSON.stringify(name)} must be refused`);
    assert.match(r.stderr, /name/);
  }
  const bad = await t.cli(['run', 'okname', '--image', image, '--volume', 'v:relative', '--', '/bin/true']);
  assert.match(bad.stderr, /invalid volume path/);
  const badIp = await t.cli(['run', 'okname', '--image', image, '--ip', '10.88.0.300/16', '--', '/bin/true']);
  assert.match(badIp.stderr, /invalid address/);
  assert.deepEqual(await containerDirs(), ['keeper']);
  assert.ok(!existsSync(join(t.config.stateDir, '..', 'x')));
});

test('missing image: clear error, nothing half-made', async () => {
  const r = await t.cli(['run', 'noimage', '--image', '/nonexistent/rootfs', '--', '/bin/true']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /image "\/nonexistent\/rootfs" does not exist/);
  assert.deepEqual(await containerDirs(), ['keeper']);
  assert.ok(!existsSync(`/run/netns/${containerNetnsName(t.config, 'noimage')}`));
  const badRef = await t.cli(['run', 'noimage', '--image', 'deadbeef00', '--', '/bin/true']);
  assert.match(badRef.stderr, /image "deadbeef00" is not in this host's store/);
});

test('a command that cannot start: runc error surfaces, nothing half-made', async () => {
  const r = await t.cli(['run', 'nocmd', '--image', image, '--', '/bin/does-not-exist']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /does-not-exist|no such file/i);
  assert.deepEqual(await containerDirs(), ['keeper']);
  assert.ok(!existsSync(`/run/netns/${containerNetnsName(t.config, 'nocmd')}`));
  await keeperStillRuns();
});

async function checkpointed(name: string): Promise<string> {
  const ran = await t.cli(['run', name, '--image', image, '--', '/bin/sleep', '100000']);
  assert.equal(ran.code, 0, ran.stderr);
  const ck = await t.cli(['checkpoint', name]);
  assert.equal(ck.code, 0, ck.stderr);
  const dir = join(t.config.stateDir, 'containers', name, 'checkpoints');
  const [id] = await readdir(dir);
  return join(dir, id ?? '');
}

async function biggestImage(dir: string): Promise<string> {
  const files = await readdir(join(dir, 'criu'));
  const sizes = await Promise.all(
    files.map(async (f) => ({ f, size: (await stat(join(dir, 'criu', f))).size })),
  );
  sizes.sort((x, y) => y.size - x.size);
  return join(dir, 'criu', sizes[0]?.f ?? '');
}

test('truncated checkpoint: refused with the file named, container stays checkpointed', async () => {
  const dir = await checkpointed('trunc');
  const victim = await biggestImage(dir);
  await truncate(victim, Math.floor((await stat(victim)).size / 2));
  const r = await t.cli(['restore', 'trunc']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /truncated/);
  assert.ok(r.stderr.includes(victim.split('/').pop() ?? '?'), r.stderr);
  assert.equal((await t.host.inspect('trunc')).state, 'checkpointed');
  assert.ok(!existsSync(`/run/netns/${containerNetnsName(t.config, 'trunc')}`));
  await keeperStillRuns();
});

test('corrupted checkpoint (same size, one byte flipped): refused as corrupted', async () => {
  const dir = await checkpointed('flip');
  const victim = await biggestImage(dir);
  const handle = await open(victim, 'r+');
  const byte = Buffer.alloc(1);
  await handle.read(byte, 0, 1, 100);
  byte[0] = (byte[0] ?? 0) ^ 0xff;
  await handle.write(byte, 0, 1, 100);
  await handle.close();
  const r = await t.cli(['restore', 'flip']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /corrupted \(checksum mismatch\)/);
  assert.equal((await t.host.inspect('flip')).state, 'checkpointed');
  await keeperStillRuns();
});

test('restoring a running container and checkpointing a stopped one are refused', async () => {
  const r = await t.cli(['restore', 'keeper']);
  assert.match(r.stderr, /already running/);
  await keeperStillRuns();
  const c = await t.cli(['checkpoint', 'flip']);
  assert.match(c.stderr, /not running/);
});

test('a full disk during a stopping checkpoint leaves the container running and nothing half-made', async () => {
  const ran = await t.cli(['run', 'full', '--image', image, '--', '/bin/sleep', '100000']);
  assert.equal(ran.code, 0, ran.stderr);
  const pid = (await t.host.inspect('full')).pid;
  const checkpoints = join(t.config.stateDir, 'containers', 'full', 'checkpoints');
  await mkdir(checkpoints, { recursive: true });
  // A 64 KiB file system where the checkpoint must land: the copy to it fails with ENOSPC.
  await run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'haven-test-full', checkpoints]);
  try {
    const r = await t.cli(['checkpoint', 'full']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /No space left on device/);
    const view = await t.host.inspect('full');
    assert.equal(view.state, 'running');
    assert.equal(view.pid, pid, 'the same process, thawed, not a restart');
    assert.deepEqual(await readdir(checkpoints), []);
  } finally {
    await run(['umount', checkpoints]);
  }
  const retry = await t.cli(['checkpoint', 'full']);
  assert.equal(retry.code, 0, retry.stderr);
  assert.equal((await t.host.inspect('full')).state, 'checkpointed');
});
