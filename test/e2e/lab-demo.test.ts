/**
 * The README's demo (scripts/demo.sh runs it after setup), run as a user
 * would: it must tell the whole story — a 3-host lab, Redis loaded by a
 * client, agent, controller and host failures around it, then its own host
 * killed and Redis back from its backup — end with every key, the old
 * connection reset rather than hung, and no lab left behind.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { REPO_ROOT } from '../../src/core/config.js';
import { run } from '../../src/core/exec.js';

test(
  'the lab demo keeps Redis and its data through agent, controller and host failures, and fails it over when its own host dies',
  { timeout: 240_000 },
  async () => {
    const { stdout } = await run([process.execPath, join(REPO_ROOT, 'dist', 'src', 'demo', 'lab-demo.js')], {
      timeoutMs: 230_000,
    });
    assert.match(stdout, /wrote 100000 keys: DBSIZE = 100000/);
    assert.match(stdout, /the same connection, agent dead: INCR visits -> \{"reply":2\}/);
    assert.match(stdout, /it re-adopted Redis: pid (\d+) \(was \1\)/);
    assert.match(stdout, /the controller declared h\d down \d+ ms after/);
    assert.match(stdout, /Redis did not notice: INCR visits -> \{"reply":3\}; DBSIZE -> \{"reply":100001\}/);
    assert.match(stdout, /the connection opened before the failure: \{"event":"error"/, 'reset, not hung');
    assert.match(stdout, /detection \(last heartbeat -> declared down\): \d+ ms/);
    assert.match(
      stdout,
      /restore on h\d \(after peers' probes and the lease\): \d+ ms, from the epoch taken at/,
    );
    assert.match(stdout, /unavailable to clients \(.*\): \d+ ms/);
    assert.match(
      stdout,
      /writes acknowledged: [1-9]\d*; lost: \d+ .*; acknowledged before it began and missing: 0/,
    );
    // The load's own counter is one more key.
    assert.match(stdout, /a new client: DBSIZE -> 100002, GET key:99999 -> value-99999, GET visits -> 3/);
    assert.match(stdout, /== done/);
    assert.equal(existsSync('/run/haven/lab'), false, 'the demo brings its lab down');
    const { stdout: netns } = await run(['ip', 'netns', 'list']);
    assert.doesNotMatch(netns, /hvlab/);
  },
);
