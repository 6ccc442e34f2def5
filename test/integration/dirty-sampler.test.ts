/**
 * The dirty-rate sampler `auto` decides on, against a real process: the C
 * workload writing nothing reads as (nearly) nothing, writing 5,000 random
 * pages a second as thousands, and the sample takes well under a second.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { REPO_ROOT } from '../../src/core/config.js';
import { sampleDirtyRate } from '../../src/replication/post-copy-sampler.js';

/** Runs the C workload (64 MB of random content) until `use` ends. */
async function withMemhog(dirtyPerSecond: number, use: (pid: number) => Promise<void>): Promise<void> {
  const args = ['--mb', '64', '--mode', 'random', '--dirty', String(dirtyPerSecond), '--seed', '5'];
  const child = spawn(join(REPO_ROOT, 'build', 'memhog'), args, { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((resolve, reject) => {
      let seen = '';
      child.stdout.on('data', (chunk: Buffer) => {
        seen += chunk.toString();
        if (/ready mb=/.test(seen)) resolve();
      });
      child.on('exit', (code) => reject(new Error(`memhog exited (${code}) before it was ready`)));
    });
    await use(child.pid ?? 0);
  } finally {
    child.kill('SIGKILL');
  }
}

test('a workload writing nothing samples as (nearly) nothing', { timeout: 30_000 }, async () => {
  await withMemhog(0, async (pid) => {
    const sample = await sampleDirtyRate(pid);
    assert.ok(sample, 'the process could be read');
    assert.ok(sample.sampledPages > 8000, `sampled ${sample.sampledPages} pages`);
    assert.ok(sample.pagesPerSecond < 200, `read ${sample.pagesPerSecond} pages/s`);
  });
});

test(
  '5,000 random pages a second sample as thousands, in well under a second',
  { timeout: 30_000 },
  async () => {
    await withMemhog(5000, async (pid) => {
      const started = performance.now();
      const sample = await sampleDirtyRate(pid);
      const tookMs = performance.now() - started;
      assert.ok(sample);
      // Bounds wide enough for a loaded machine; a sampler that reads nothing, or everything, fails.
      assert.ok(
        sample.pagesPerSecond > 2000 && sample.pagesPerSecond < 12_000,
        `read ${sample.pagesPerSecond} pages/s`,
      );
      assert.ok(tookMs < 2000, `took ${tookMs.toFixed(0)} ms`);
    });
  },
);

test('a process that is gone samples as undefined', async () => {
  const child = spawn('true');
  await new Promise((resolve) => child.on('exit', resolve));
  assert.equal(await sampleDirtyRate(child.pid ?? 0), undefined);
});
