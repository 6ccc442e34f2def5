/**
 * The application watchdog's pure parts: the shim's heartbeat record, the
 * verdict on it (start, delay, timeout, freezes, WATCHDOG=trigger), the
 * bundle it adds (mount and environment), and the API schemas that take it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseWatchdogState, watchdogCheckMs, watchdogVerdict } from '../../src/agent/probes.js';
import { runRequestSchema } from '../../src/agent/schemas.js';
import { clusterRunSchema } from '../../src/controller/schemas.js';
import { ociConfig } from '../../src/runtime/runc/bundle.js';

const S = 1_000_000_000n;
const spec = { timeoutSeconds: 2, initialDelaySeconds: 3 };

test('the heartbeat record: one line, anything else is refused', () => {
  assert.deepEqual(parseWatchdogState('v1 100 250 7 0\n'), {
    startNs: 100n,
    lastNs: 250n,
    heartbeats: 7,
    triggers: 0,
  });
  for (const bad of ['', 'v1 1 2 3\n', 'v2 1 2 3 4\n', 'v1 -1 2 3 4\n', 'v1 1 2 3 4 5\n', 'v1 1 2 x 4'])
    assert.equal(parseWatchdogState(bad), undefined, JSON.stringify(bad));
});

test('before the first heartbeat: starting until delay + timeout, then unhealthy', () => {
  const state = { startNs: 10n * S, lastNs: 0n, heartbeats: 0, triggers: 0 };
  assert.equal(watchdogVerdict(state, spec, 10n * S).health, 'starting');
  assert.equal(watchdogVerdict(state, spec, 15n * S).health, 'starting');
  const late = watchdogVerdict(state, spec, 15n * S + 1n);
  assert.equal(late.health, 'unhealthy');
  assert.match(late.error ?? '', /no WATCHDOG=1 within 5000 ms of the start/);
});

test('after a heartbeat: healthy until the timeout, then unhealthy; a freeze moves the deadline', () => {
  const state = { startNs: 0n, lastNs: 100n * S, heartbeats: 4, triggers: 0 };
  assert.equal(watchdogVerdict(state, spec, 102n * S).health, 'healthy');
  const late = watchdogVerdict(state, spec, 102n * S + 1n);
  assert.equal(late.health, 'unhealthy');
  assert.match(late.error ?? '', /no WATCHDOG=1 for 2000 ms \(timeout 2 s\)/);
  // Seen frozen at 101.5 s: a full timeout from there.
  assert.equal(watchdogVerdict(state, spec, 103n * S, 101n * S + S / 2n).health, 'healthy');
  assert.equal(watchdogVerdict(state, spec, 104n * S, 101n * S + S / 2n).health, 'unhealthy');
});

test('WATCHDOG=trigger is a failure at once', () => {
  const state = { startNs: 0n, lastNs: 100n * S, heartbeats: 4, triggers: 1 };
  assert.match(watchdogVerdict(state, spec, 100n * S).error ?? '', /WATCHDOG=trigger/);
});

test('the check period: a quarter of the timeout, within 50 ms .. 1 s', () => {
  assert.equal(watchdogCheckMs({ timeoutSeconds: 2, initialDelaySeconds: 0 }), 500);
  assert.equal(watchdogCheckMs({ timeoutSeconds: 0.1, initialDelaySeconds: 0 }), 50);
  assert.equal(watchdogCheckMs({ timeoutSeconds: 60, initialDelaySeconds: 0 }), 1000);
});

test('the bundle: NOTIFY_SOCKET and WATCHDOG_USEC, and the notify directory bind-mounted', () => {
  const base = {
    rootfs: '/r',
    args: ['/bin/app'],
    env: ['A=1'],
    hostname: 'c',
    netnsPath: '/run/netns/x',
    cgroupsPath: '/haven/x/c',
    mounts: [],
    criuConfigFile: '/c/criu.conf',
    dev: { devDir: '/c/dev', shmDir: '/c/shm', emptyDir: '/c/empty' },
  };
  const plain = ociConfig(base) as { process: { env: string[] }; mounts: Array<{ destination: string }> };
  assert.ok(!plain.process.env.some((e) => e.startsWith('NOTIFY_SOCKET=')));
  assert.ok(!plain.mounts.some((m) => m.destination === '/run/haven-notify'));
  const watched = ociConfig({ ...base, watchdog: { hostDir: '/c/notify', timeoutUsec: 2_000_000 } }) as {
    process: { env: string[] };
    mounts: Array<{ destination: string; source: string; type: string }>;
  };
  assert.ok(watched.process.env.includes('NOTIFY_SOCKET=/run/haven-notify/notify.sock'));
  assert.ok(watched.process.env.includes('WATCHDOG_USEC=2000000'));
  assert.ok(watched.process.env.includes('A=1'));
  const mount = watched.mounts.find((m) => m.destination === '/run/haven-notify');
  assert.deepEqual([mount?.type, mount?.source], ['bind', '/c/notify']);
});

test('the agent and controller APIs take a watchdog and refuse a bad one', () => {
  const agent = { name: 'a', image: 'sha256:abcdef', args: ['/bin/app'] };
  const parsed = runRequestSchema.parse({ ...agent, watchdog: { timeoutSeconds: 2 } });
  assert.deepEqual(parsed.watchdog, { timeoutSeconds: 2, initialDelaySeconds: 0 });
  for (const watchdog of [
    {},
    { timeoutSeconds: 0 },
    { timeoutSeconds: '2' },
    { timeoutSeconds: 2, period: 1 },
    2,
  ]) {
    assert.equal(runRequestSchema.safeParse({ ...agent, watchdog }).success, false, JSON.stringify(watchdog));
  }
  const cluster = { name: 'a', image: 'redis', args: ['/bin/app'] };
  assert.ok(
    clusterRunSchema.safeParse({ ...cluster, watchdog: { timeoutSeconds: 0.5, initialDelaySeconds: 10 } })
      .success,
  );
  assert.equal(clusterRunSchema.safeParse({ ...cluster, watchdog: { timeoutSeconds: 7200 } }).success, false);
});
