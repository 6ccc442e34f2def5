/**
 * Portable archives: `checkpoint --export` writes one file that `restore
 * --import` brings back (here on a second host with its own state directory
 * and runc root), with memory, files, volumes and address. Damaged archives,
 * foreign CPUs and name clashes are refused before anything is made.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { run } from '../../src/core/exec.js';
import { TestHost } from '../support/test-host.js';

let a: TestHost;
let b: TestHost;
let work: string;
const ip = '10.88.3.2';
before(async () => {
  a = await TestHost.create('arca');
  b = await a.sibling('arcb');
  await a.startClient();
  work = await mkdtemp(join(tmpdir(), 'haven-archives-'));
});
after(async () => {
  await b?.dispose();
  await a?.dispose();
  await rm(work, { recursive: true, force: true });
});

test(
  'export on one host, import on another: keys, volume and address come along',
  { timeout: 120_000 },
  async () => {
    await a.runRedis('kv', ip, ['--volume', 'kvdata:/data']);
    await a.inClient(['redis-cli', '-h', ip, 'SET', 'travelled', 'yes']);
    await a.inClient(['redis-cli', '-h', ip, 'SAVE']); // writes /data/dump.rdb on the volume
    const archive = join(work, 'kv.tar.zst');
    const ck = await a.cli(['checkpoint', 'kv', '--export', archive, '--json']);
    assert.equal(ck.code, 0, ck.stderr);
    const report = JSON.parse(ck.stdout) as { exported: { bytes: number }; dir?: string };
    assert.equal(report.exported.bytes, (await stat(archive)).size);
    // As with Podman, the exported checkpoint is not also kept on the source host,
    // and a plain restore there refuses to go back to an older state.
    assert.equal(report.dir, undefined);
    const local = await a.cli(['restore', 'kv']);
    assert.notEqual(local.code, 0);
    assert.match(local.stderr, /is in the archive .*restore it with restore --import/);

    // Only the archive travels: the second host has no image, no volume, no record.
    const imported = await b.cli(['restore', '--import', archive, '--name', 'kv2']);
    assert.equal(imported.code, 0, imported.stderr);
    await a.waitForRedis(ip);
    assert.equal((await a.inClient(['redis-cli', '-h', ip, 'GET', 'travelled'])).stdout.trim(), 'yes');
    const view = JSON.parse((await b.cli(['inspect', 'kv2', '--json'])).stdout) as Record<string, unknown>;
    assert.equal(view.ip, ip);
    assert.equal(view.host, b.config.hostName);
    assert.ok(
      existsSync(join(b.config.stateDir, 'volumes', 'kvdata', 'data', 'dump.rdb')),
      'the volume came along',
    );
    assert.equal((await b.cli(['stop', 'kv2', '--time', '1'])).code, 0);
  },
);

test('a second import under the same name, or onto a used volume, is refused', async () => {
  const archive = join(work, 'kv.tar.zst');
  const again = await b.cli(['restore', '--import', archive, '--name', 'kv2']);
  assert.notEqual(again.code, 0);
  assert.match(again.stderr, /container "kv2" already exists/);
  const volume = await b.cli(['restore', '--import', archive, '--name', 'kv3']);
  assert.match(volume.stderr, /volume "kvdata" is already used by container "kv2"/);
  assert.ok(!existsSync(join(b.config.stateDir, 'containers', 'kv3')));
});

test('damaged archives are refused with a reason and leave nothing behind', async () => {
  const archive = join(work, 'kv.tar.zst');
  const truncated = join(work, 'truncated.tar.zst');
  await run(['cp', archive, truncated]);
  await truncate(truncated, Math.floor((await stat(truncated)).size / 2));
  const r = await b.cli(['restore', '--import', truncated, '--name', 'kv4']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /damaged|not a readable archive/);

  const missing = await b.cli(['restore', '--import', join(work, 'nope.tar'), '--name', 'kv4']);
  assert.match(missing.stderr, /does not exist/);

  const notOurs = join(work, 'other.tar');
  await writeFile(join(work, 'hello.txt'), 'hi');
  await run(['tar', '-C', work, '-cf', notOurs, 'hello.txt']);
  assert.match(
    (await b.cli(['restore', '--import', notOurs, '--name', 'kv4'])).stderr,
    /unexpected path "hello.txt"/,
  );

  const leftovers = (await readdir(b.config.stateDir)).filter((e) => e.startsWith('.import-'));
  assert.deepEqual(leftovers, []);
  assert.ok(!existsSync(join(b.config.stateDir, 'containers', 'kv4')));
});

test('a checkpoint from a CPU with features this one lacks is refused before anything starts', async () => {
  const dir = await mkdtemp(join(work, 'cpu-'));
  await run(['tar', '-xf', join(work, 'kv.tar.zst'), '-C', dir]);
  const headerPath = join(dir, 'haven-archive.json');
  const header = JSON.parse(await readFile(headerPath, 'utf8')) as { machine: { cpuFlags: string[] } };
  header.machine.cpuFlags.push('avx10_9_imaginary');
  await writeFile(headerPath, JSON.stringify(header));
  const foreign = join(work, 'foreign.tar');
  await run(['tar', '-C', dir, '-cf', foreign, 'haven-archive.json', 'checkpoint', 'image.tar']);
  const r = await b.cli(['restore', '--import', foreign, '--name', 'kv5']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /the CPU lacks features .*avx10_9_imaginary/);
  assert.ok(!existsSync(join(b.config.stateDir, 'containers', 'kv5')));
});

test(
  'an uncompressed export: a full disk fails it and the container runs on; then it imports',
  { timeout: 120_000 },
  async () => {
    const plainIp = '10.88.3.3';
    await a.runRedis('plain', plainIp);
    await a.inClient(['redis-cli', '-h', plainIp, 'SET', 'plain', 'kept']);
    // Written around the page cache (O_DIRECT) where the file system allows it,
    // as tmpfs does here: the full disk surfaces in that writer, not in tar.
    const full = join(work, 'full');
    await run(['mkdir', '-p', full]);
    await run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'haven-test-archive-full', full]);
    try {
      const r = await a.cli(['checkpoint', 'plain', '--export', join(full, 'plain.tar')]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /no space left/i);
      assert.deepEqual(await readdir(full), [], 'no partial archive is left');
    } finally {
      await run(['umount', full]);
    }
    assert.equal((await a.host.inspect('plain')).state, 'running');
    assert.equal((await a.inClient(['redis-cli', '-h', plainIp, 'GET', 'plain'])).stdout.trim(), 'kept');

    const archive = join(work, 'plain.tar');
    assert.equal((await a.cli(['checkpoint', 'plain', '--export', archive])).code, 0);
    const imported = await b.cli(['restore', '--import', archive, '--name', 'plain2']);
    assert.equal(imported.code, 0, imported.stderr);
    await a.waitForRedis(plainIp);
    assert.equal((await a.inClient(['redis-cli', '-h', plainIp, 'GET', 'plain'])).stdout.trim(), 'kept');
    assert.equal((await b.cli(['stop', 'plain2', '--time', '1'])).code, 0);
  },
);

test(
  'archives hash large files with BLAKE3: a flipped byte in memory is refused; a SHA-256 archive still imports',
  { timeout: 120_000 },
  async () => {
    const archive = join(work, 'plain.tar'); // exported above, with b3sum installed
    const dir = await mkdtemp(join(work, 'flip-'));
    await run(['tar', '-xf', archive, '-C', dir]);
    const manifest = JSON.parse(await readFile(join(dir, 'checkpoint', 'manifest.json'), 'utf8')) as {
      files: Array<{ path: string; size: number; sha256?: string; blake3?: string }>;
    };
    const pages = manifest.files.filter((f) => f.blake3 !== undefined).sort((x, y) => y.size - x.size)[0];
    assert.ok(pages, 'the largest files are BLAKE3-hashed');
    const path = join(dir, 'checkpoint', pages.path);
    const bytes = await readFile(path);
    const at = Math.floor(bytes.length / 2);
    bytes[at] = (bytes[at] ?? 0) ^ 0xff;
    await writeFile(path, bytes);
    const flipped = join(work, 'flipped.tar');
    await run(['tar', '-C', dir, '-cf', flipped, 'checkpoint', 'image.tar', 'haven-archive.json']);
    const r = await b.cli(['restore', '--import', flipped, '--name', 'flip']);
    assert.notEqual(r.code, 0);
    assert.match(
      r.stderr,
      new RegExp(`${pages.path.replace(/[.]/g, '\\.')} is corrupted \\(checksum mismatch\\)`),
    );
    assert.ok(!existsSync(join(b.config.stateDir, 'containers', 'flip')));

    // Written for Havens without b3sum: SHA-256 throughout, checked as the bytes stream by.
    const shaIp = '10.88.3.4';
    await a.runRedis('sha', shaIp);
    await a.inClient(['redis-cli', '-h', shaIp, 'SET', 'sha', 'kept']);
    const shaArchive = join(work, 'sha.tar');
    const ck = await a.cli(['checkpoint', 'sha', '--export', shaArchive], { HAVEN_ARCHIVE_HASH: 'sha256' });
    assert.equal(ck.code, 0, ck.stderr);
    const listed = await run(['tar', '-xOf', shaArchive, 'checkpoint/manifest.json']);
    assert.doesNotMatch(listed.stdout, /blake3/);
    const imported = await b.cli(['restore', '--import', shaArchive, '--name', 'sha2']);
    assert.equal(imported.code, 0, imported.stderr);
    await a.waitForRedis(shaIp);
    assert.equal((await a.inClient(['redis-cli', '-h', shaIp, 'GET', 'sha'])).stdout.trim(), 'kept');
    assert.equal((await b.cli(['stop', 'sha2', '--time', '1'])).code, 0);
  },
);
