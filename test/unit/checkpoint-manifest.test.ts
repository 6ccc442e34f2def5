import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, truncate, writeFile, appendFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  hashTree,
  MANIFEST_VERSION,
  verifyCheckpoint,
  writeManifest,
} from '../../src/host/checkpoint-manifest.js';
import { CorruptCheckpointError } from '../../src/core/errors.js';

async function sample(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'haven-manifest-'));
  await mkdir(join(dir, 'criu'));
  await writeFile(join(dir, 'criu', 'pages-1.img'), Buffer.alloc(8192, 7));
  await writeFile(join(dir, 'criu', 'core-1.img'), 'core');
  await writeManifest(dir, {
    version: MANIFEST_VERSION,
    id: 'ck-1',
    container: 'c',
    createdAt: '',
    leaveRunning: false,
    connections: [],
    origin: { host: 'h', kernel: 'k', criuVersion: '4.2.1', arch: 'x64', cpuFlags: [] },
    files: await hashTree(dir),
  });
  return dir;
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
