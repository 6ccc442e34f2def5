/**
 * The C workload at 256 MB of random content: after checkpoint and restore
 * every page is intact (its own check reads all 65,536 pages), and it keeps
 * dirtying pages afterwards.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { memhogImage } from '../../src/fixtures/images.js';
import { TestHost } from '../support/test-host.js';

let t: TestHost;
before(async () => {
  t = await TestHost.create('memhog');
});
after(async () => t?.dispose());

async function waitForLog(pattern: RegExp, from: number, timeoutMs = 60_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const logs = (await t.host.logs('memhog')).slice(from);
    const match = pattern.exec(logs);
    if (match) return match[0];
    await sleep(100);
  }
  throw new Error(`log never matched ${String(pattern)}`);
}

async function signal(sig: 'USR1' | 'USR2'): Promise<void> {
  const view = await t.host.inspect('memhog');
  assert.ok(view.pid > 0, 'memhog is running');
  process.kill(view.pid, `SIG${sig}`);
}

test('256 MB of random memory survives checkpoint/restore page for page', { timeout: 300_000 }, async () => {
  const image = await memhogImage();
  const ran = await t.cli([
    'run',
    'memhog',
    '--image',
    image,
    '--memory',
    '512m',
    '--',
    '/bin/memhog',
    '--mb',
    '256',
    '--mode',
    'random',
    '--dirty',
    '1000',
    '--seed',
    '42',
  ]);
  assert.equal(ran.code, 0, ran.stderr);
  await waitForLog(/ready mb=256/, 0);

  const ck = await t.cli(['checkpoint', 'memhog', '--json']);
  assert.equal(ck.code, 0, ck.stderr);
  const report = JSON.parse(ck.stdout) as { stats?: { pagesWritten: number } };
  assert.ok((report.stats?.pagesWritten ?? 0) >= 65_536, 'CRIU wrote at least every page of the 256 MB');

  const logLength = (await t.host.logs('memhog')).length;
  const restored = await t.cli(['restore', 'memhog']);
  assert.equal(restored.code, 0, restored.stderr);
  await sleep(300); // let it dirty pages after the restore, then check everything
  await signal('USR1');
  const verdict = await waitForLog(/check (ok|FAILED)[^\n]*/, logLength);
  assert.match(verdict, /check ok pages=65536/);

  // CRIU leaves cgroups to runc (manage-cgroups=ignore): the memory limit must still hold.
  const pid = (await t.host.inspect('memhog')).pid;
  const memoryCgroup = /^\d+:memory:(.*)$/m.exec(await readFile(`/proc/${pid}/cgroup`, 'utf8'))?.[1];
  if (memoryCgroup !== undefined) {
    const limit = await readFile(`/sys/fs/cgroup/memory${memoryCgroup}/memory.limit_in_bytes`, 'utf8');
    assert.equal(Number(limit), 512 * 1024 * 1024);
  } else {
    const v2 = /^0::(.*)$/m.exec(await readFile(`/proc/${pid}/cgroup`, 'utf8'))?.[1] ?? '';
    assert.equal(Number(await readFile(`/sys/fs/cgroup${v2}/memory.max`, 'utf8')), 512 * 1024 * 1024);
  }
});
