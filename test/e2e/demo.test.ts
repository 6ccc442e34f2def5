/**
 * The README's demo, run as a user would run it after setup: it must tell
 * the whole story and end with every key and the open connection intact.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { REPO_ROOT } from '../../src/core/config.js';
import { run } from '../../src/core/exec.js';

test(
  'the demo shows Redis keys and an open connection surviving checkpoint and restore',
  { timeout: 180_000 },
  async () => {
    const { stdout } = await run(
      [process.execPath, join(REPO_ROOT, 'dist', 'src', 'demo', 'redis-demo.js')],
      { timeoutMs: 170_000 },
    );
    assert.match(stdout, /wrote 100000 keys: DBSIZE = 100000/);
    assert.match(stdout, /the container is now checkpointed/);
    assert.match(stdout, /the same connection asks again: INCR visits -> \{"reply":2\}/);
    assert.match(stdout, /DBSIZE -> \{"reply":100001\}/);
    assert.match(stdout, /== done/);
    const { stdout: netns } = await run(['ip', 'netns', 'list']);
    assert.doesNotMatch(netns, /haven-demo/, 'the demo leaves no namespace behind');
  },
);
