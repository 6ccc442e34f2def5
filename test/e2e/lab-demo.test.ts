/**
 * The README's demo (scripts/demo.sh runs it after setup), run as a user
 * would: it must tell the whole story — a 3-host lab, Redis loaded by a
 * client, agent, controller and host failures around it — end with the data
 * and the client's connection intact, and leave no lab behind.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { REPO_ROOT } from '../../src/core/config.js';
import { run } from '../../src/core/exec.js';

test(
  'the lab demo keeps Redis and its client connection through agent, controller and host failures',
  { timeout: 240_000 },
  async () => {
    const { stdout } = await run([process.execPath, join(REPO_ROOT, 'dist', 'src', 'demo', 'lab-demo.js')], {
      timeoutMs: 230_000,
    });
    assert.match(stdout, /wrote 100000 keys: DBSIZE = 100000/);
    assert.match(stdout, /the same connection, agent dead: INCR visits -> \{"reply":2\}/);
    assert.match(stdout, /it re-adopted Redis: pid (\d+) \(was \1\)/);
    assert.match(stdout, /the controller declared h\d down \d+ ms after it died/);
    assert.match(stdout, /INCR visits -> \{"reply":3\}; DBSIZE -> \{"reply":100001\}/);
    assert.match(stdout, /== done/);
    assert.equal(existsSync('/run/haven/lab'), false, 'the demo brings its lab down');
    const { stdout: netns } = await run(['ip', 'netns', 'list']);
    assert.doesNotMatch(netns, /hvlab/);
  },
);
