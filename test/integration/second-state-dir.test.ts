/**
 * The basis of moving between hosts: a checkpoint, its image and its volumes
 * copied to a second state directory, with another runc root and host name,
 * restore there — same data, same address.
 */
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { run } from '../../src/core/exec.js';
import { after, before, test } from 'node:test';
import { TestHost } from '../support/test-host.js';

let a: TestHost;
let b: TestHost;
before(async () => {
  a = await TestHost.create('hosta');
  b = await a.sibling('hostb');
  await a.startClient();
});
after(async () => {
  await b?.dispose();
  await a?.dispose();
});

test(
  'a checkpoint copied to another state directory and runc root restores there',
  { timeout: 120_000 },
  async () => {
    const ip = '10.88.2.2';
    await a.runRedis('kv', ip, ['--volume', 'kvdata:/data']);
    await a.inClient(['redis-cli', '-h', ip, 'SET', 'moved', 'yes']);
    const ck = await a.cli(['checkpoint', 'kv']);
    assert.equal(ck.code, 0, ck.stderr);

    // Only files travel: the container's directory (record + checkpoints), its image, its volume.
    for (const part of ['containers/kv', 'images', 'volumes/kvdata']) {
      await mkdir(dirname(join(b.config.stateDir, part)), { recursive: true });
      await run(['cp', '-a', join(a.config.stateDir, part), join(b.config.stateDir, part)]);
    }
    // The copied upper layer and volume are replaced by the checkpoint's own on restore.
    const restored = await b.cli(['restore', 'kv']);
    assert.equal(restored.code, 0, restored.stderr);
    const view = JSON.parse((await b.cli(['inspect', 'kv', '--json'])).stdout) as Record<string, unknown>;
    assert.equal(view.host, b.config.hostName);
    assert.equal(view.state, 'running');
    assert.equal((await a.inClient(['redis-cli', '-h', ip, 'GET', 'moved'])).stdout.trim(), 'yes');
    assert.notEqual(a.config.runcRoot, b.config.runcRoot);
  },
);
