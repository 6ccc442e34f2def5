/**
 * Continuous protection's local epochs: a leave-running checkpoint kept in
 * the memory staging area (`keepInMemory`) is listed but not hashed, links
 * from `checkpoints/<id>`, restores in place with the state it had, refuses a
 * truncated file, and goes with its container.
 */
import assert from 'node:assert/strict';
import { existsSync, readlinkSync } from 'node:fs';
import { readFile, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { CorruptCheckpointError } from '../../src/core/errors.js';
import { TestHost } from '../support/test-host.js';

let t: TestHost;
before(async () => {
  t = await TestHost.create('epochmem');
  await t.startClient();
});
after(async () => t?.dispose());

const redis = async (ip: string, ...args: string[]): Promise<string> =>
  (await t.inClient(['redis-cli', '-h', ip, ...args])).stdout.trim();

test(
  'an epoch kept in memory restores in place; a truncated one is refused',
  { timeout: 120_000 },
  async () => {
    const ip = '10.88.1.3';
    await t.runRedis('kv', ip);
    assert.equal(await redis(ip, 'SET', 'k', 'in-epoch'), 'OK');
    const epoch = await t.host.checkpoint('kv', { leaveRunning: true, keep: 3, keepInMemory: true });
    assert.equal(await redis(ip, 'SET', 'k', 'after-epoch'), 'OK');

    const link = join(t.config.stateDir, 'containers', 'kv', 'checkpoints', epoch.id);
    const target = readlinkSync(link);
    assert.ok(
      target.startsWith(join(t.config.stateDir, 'staging')),
      `kept in the memory staging area: ${target}`,
    );
    const manifest = JSON.parse(await readFile(join(link, 'manifest.json'), 'utf8')) as {
      memoryOnly?: boolean;
      files: Array<{ sha256: string }>;
    };
    assert.equal(manifest.memoryOnly, true);
    assert.ok(
      manifest.files.length > 0 && manifest.files.every((f) => f.sha256 === ''),
      'listed, not hashed',
    );

    // A restore in place (the container died): the state of the epoch, not after it.
    await t.host.stop('kv', 0);
    await t.host.restore('kv', { checkpoint: epoch.id, tcpClose: true });
    assert.equal(await redis(ip, 'GET', 'k'), 'in-epoch');

    // A file cut short is refused before anything is touched.
    const second = await t.host.checkpoint('kv', { leaveRunning: true, keep: 3, keepInMemory: true });
    await t.host.stop('kv', 0);
    const pages = JSON.parse(
      await readFile(
        join(t.config.stateDir, 'containers', 'kv', 'checkpoints', second.id, 'manifest.json'),
        'utf8',
      ),
    ) as { files: Array<{ path: string; size: number }> };
    const biggest = pages.files.reduce((a, b) => (b.size > a.size ? b : a));
    await truncate(join(t.config.stateDir, 'containers', 'kv', 'checkpoints', second.id, biggest.path), 1);
    await assert.rejects(t.host.restore('kv', { checkpoint: second.id }), CorruptCheckpointError);

    await t.host.remove('kv', { force: true });
    assert.equal(existsSync(target), false, 'removed with its container');
  },
);
