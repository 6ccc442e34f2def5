/**
 * Redis with 100,000 keys and a client connected from another network
 * namespace: checkpoint (the container stops), restore into a fresh network
 * namespace → every key is there and the *same* client connection keeps
 * getting answers.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { TestHost } from '../support/test-host.js';

let t: TestHost;
before(async () => {
  t = await TestHost.create('redis');
  await t.startClient();
});
after(async () => t?.dispose());

test(
  'redis keeps 100,000 keys and an open connection across checkpoint and restore',
  { timeout: 180_000 },
  async () => {
    const ip = '10.88.1.2';
    await t.runRedis('redis', ip);

    // 100,000 keys through redis-cli's mass-insertion mode, from the client namespace.
    const commands = Array.from({ length: 100_000 }, (_, i) => `SET key:${i} value-${i}`).join('\n');
    const piped = await t.inClient(['redis-cli', '-h', ip, '--pipe'], `${commands}\n`);
    assert.match(piped.stdout, /errors: 0, replies: 100000/);

    const session = t.redisSession(ip);
    try {
      const hello = await session.next();
      assert.equal(hello.event, 'connected');
      assert.deepEqual(await session.command('INCR counter'), { reply: 1 });

      const ck = await t.cli(['checkpoint', 'redis']);
      assert.equal(ck.code, 0, ck.stderr);
      const stopped = JSON.parse((await t.cli(['inspect', 'redis', '--json'])).stdout) as { state: string };
      assert.equal(stopped.state, 'checkpointed');

      const restored = await t.cli(['restore', 'redis']);
      assert.equal(restored.code, 0, restored.stderr);

      // The same connection (no reconnect: the client would print "closed" and exit).
      assert.deepEqual(await session.command('INCR counter', 20_000), { reply: 2 });
      assert.deepEqual(await session.command('DBSIZE'), { reply: 100_001 });
      assert.deepEqual(await session.command('GET key:99999'), { reply: 'value-99999' });

      const view = JSON.parse((await t.cli(['inspect', 'redis', '--json'])).stdout) as Record<
        string,
        unknown
      >;
      assert.equal(view.state, 'running');
      assert.equal(view.ip, ip);
      assert.equal(view.host, t.config.hostName);
    } finally {
      session.close();
    }
  },
);

test(
  'restore --tcp-close resets open connections at once and keeps the data',
  { timeout: 120_000 },
  async () => {
    // What a failover to an older epoch needs: clients see a reset now, not a hang.
    const ip = '10.88.1.3';
    await t.runRedis('redis2', ip);
    const session = t.redisSession(ip);
    try {
      assert.equal((await session.next()).event, 'connected');
      assert.deepEqual(await session.command('SET kept yes'), { reply: 'OK' });
      assert.equal((await t.cli(['checkpoint', 'redis2'])).code, 0);
      const restored = await t.cli(['restore', 'redis2', '--tcp-close']);
      assert.equal(restored.code, 0, restored.stderr);
      const started = Date.now();
      const outcome = await session.command('GET kept', 5_000);
      assert.equal(
        outcome.event,
        'error',
        `the old connection must be reset, got ${JSON.stringify(outcome)}`,
      );
      assert.ok(Date.now() - started < 5_000);
      const fresh = await t.inClient(['redis-cli', '-h', ip, 'GET', 'kept']);
      assert.equal(fresh.stdout.trim(), 'yes');
    } finally {
      session.close();
    }
  },
);
