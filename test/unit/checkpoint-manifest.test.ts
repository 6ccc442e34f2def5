import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdir, mkdtemp, rm, truncate, writeFile, appendFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  hashTree,
  MANIFEST_VERSION,
  verifyCheckpoint,
  writeManifest,
  type ManifestFile,
} from '../../src/host/checkpoint-manifest.js';
import { CorruptCheckpointError } from '../../src/core/errors.js';
import { b3sum, BLAKE3_MIN_BYTES } from '../../src/host/blake3.js';

async function sample(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'haven-manifest-'));
  await mkdir(join(dir, 'criu'));
  await writeFile(join(dir, 'criu', 'pages-1.img'), Buffer.alloc(8192, 7));
  await writeFile(join(dir, 'criu', 'core-1.img'), 'core');
  await writeSampleManifest(dir, await hashTree(dir));
  return dir;
}

/** A manifest for `dir` listing `files`. */
async function writeSampleManifest(dir: string, files: ManifestFile[]): Promise<void> {
  await writeManifest(dir, {
    version: MANIFEST_VERSION,
    id: 'ck-1',
    container: 'c',
    createdAt: '',
    leaveRunning: false,
    connections: [],
    origin: { host: 'h', kernel: 'k', criuVersion: '4.2.1', arch: 'x64', cpuFlags: [] },
    files,
  });
}

test('a whole checkpoint verifies', async () => {
  const dir = await sample();
  try {
    const manifest = await verifyCheckpoint(dir);
    assert.deepEqual(
      manifest.files.map((f) => f.path),
      ['criu/core-1.img', 'criu/pages-1.img'],
    );
  } finally {
    await rm(dir, { recursive: true });
  }
});

test('truncated, extended, altered, missing files and a missing manifest are each named', async () => {
  const cases: Array<[string, (dir: string) => Promise<void>, RegExp]> = [
    ['truncated', (d) => truncate(join(d, 'criu', 'pages-1.img'), 100), /pages-1\.img is truncated/],
    [
      'extended',
      (d) => appendFile(join(d, 'criu', 'pages-1.img'), 'x'),
      /pages-1\.img is truncated or altered/,
    ],
    ['altered', (d) => writeFile(join(d, 'criu', 'core-1.img'), 'CORE'), /core-1\.img is corrupted/],
    ['missing', (d) => rm(join(d, 'criu', 'core-1.img')), /core-1\.img is missing/],
    ['no manifest', (d) => rm(join(d, 'manifest.json')), /no manifest\.json/],
    ['bad manifest', (d) => writeFile(join(d, 'manifest.json'), '{'), /manifest\.json is unreadable/],
  ];
  for (const [label, damage, message] of cases) {
    const dir = await sample();
    try {
      await damage(dir);
      await assert.rejects(
        verifyCheckpoint(dir),
        (e: unknown) => e instanceof CorruptCheckpointError && message.test(e.message),
        label,
      );
    } finally {
      await rm(dir, { recursive: true });
    }
  }
});

test('large files are hashed with BLAKE3 where b3sum is installed, and checked by it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'haven-manifest-'));
  try {
    await writeFile(join(dir, 'big.img'), Buffer.alloc(BLAKE3_MIN_BYTES + 4096, 3));
    await writeFile(join(dir, 'small.img'), 'small');
    const files = await hashTree(dir, { blake3: true });
    const big = files.find((f) => f.path === 'big.img');
    const small = files.find((f) => f.path === 'small.img');
    assert.match(small?.sha256 ?? '', /^[0-9a-f]{64}$/, 'small files keep SHA-256');
    if (b3sum()) {
      assert.match(big?.blake3 ?? '', /^[0-9a-f]{64}$/);
      assert.equal(big?.sha256, undefined);
    } else {
      assert.match(big?.sha256 ?? '', /^[0-9a-f]{64}$/, 'without b3sum, SHA-256');
    }
    await writeSampleManifest(dir, files);
    await verifyCheckpoint(dir);
    const flipped = Buffer.alloc(BLAKE3_MIN_BYTES + 4096, 3);
    flipped[BLAKE3_MIN_BYTES] = 4;
    await writeFile(join(dir, 'big.img'), flipped);
    await assert.rejects(verifyCheckpoint(dir), (e: unknown) => {
      assert.ok(e instanceof CorruptCheckpointError);
      assert.match(e.message, /big\.img is corrupted \(checksum mismatch\)/);
      return true;
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('without b3sum on the PATH, every file keeps SHA-256 and nothing fails', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'haven-manifest-'));
  try {
    await writeFile(join(dir, 'big.img'), Buffer.alloc(BLAKE3_MIN_BYTES + 4096, 3));
    // A fresh process: which b3sum there is, is looked up once per process.
    const module = new URL('../../src/host/checkpoint-manifest.js', import.meta.url).href;
    const script = `import(${JSON.stringify(module)}).then(async (m) => console.log(JSON.stringify(await m.hashTree(${JSON.stringify(dir)}, { blake3: true }))))`;
    const { stdout } = await promisify(execFile)(process.execPath, ['-e', script], {
      env: { PATH: '/nonexistent' },
    });
    const files = JSON.parse(stdout) as ManifestFile[];
    assert.equal(files.length, 1);
    assert.match(files[0]?.sha256 ?? '', /^[0-9a-f]{64}$/);
    assert.equal(files[0]?.blake3, undefined);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
