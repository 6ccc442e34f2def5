/**
 * The application watchdog on runc: a container running the sd_notify client
 * (fixtures/workload/watchdog-pinger.c) is healthy while it pings; when it
 * stops pinging but keeps running (a hung main loop), or is SIGSTOPped, it is
 * unhealthy within the timeout plus one check period. A checkpoint with the
 * watchdog on works (the client opens, sends and closes, so nothing connects
 * the container to the shim's socket), and after a restore the pings reach
 * the new shim. A container that never pings is unhealthy after
 * initialDelaySeconds + timeoutSeconds.
 */
import assert from 'node:assert/strict';
import { copyFile, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { Prober, watchdogCheckMs, type ProbeStatus } from '../../src/agent/probes.js';
import { REPO_ROOT } from '../../src/core/config.js';
import { run } from '../../src/core/exec.js';
import { busyboxImage } from '../../src/fixtures/images.js';
import { TestHost } from '../support/test-host.js';

const WATCHDOG = { timeoutSeconds: 1, initialDelaySeconds: 0 };
/** How late "unhealthy" may be beyond timeout + one check period: the runtime's own answer (runc state) and scheduling. */
const SLACK_MS = 400;

let t: TestHost;
let prober: Prober;
let rootfs: string;
const log: string[] = [];

before(async () => {
  t = await TestHost.create('watchdog');
  // busybox plus the static sd_notify client
  rootfs = join(t.root, 'pinger-rootfs');
  await run(['cp', '-a', await busyboxImage(), rootfs]);
  await copyFile(join(REPO_ROOT, 'build', 'watchdog-pinger'), join(rootfs, 'bin', 'watchdog-pinger'));
  await chmod(join(rootfs, 'bin', 'watchdog-pinger'), 0o755);
  prober = new Prober(t.host, (line) => log.push(line));
});
after(async () => {
  prober?.stopAll();
  await t?.dispose();
});

function statusOf(name: string): ProbeStatus | undefined {
  return prober.statuses().find((s) => s.name === name);
}

/** Waits until `name` has `health`; returns how long that took. */
async function waitFor(name: string, health: ProbeStatus['health'], timeoutMs: number): Promise<number> {
  const started = performance.now();
  while (performance.now() - started < timeoutMs) {
    if (statusOf(name)?.health === health) return performance.now() - started;
    await sleep(10);
  }
  throw new Error(`${name} never became ${health} (now ${JSON.stringify(statusOf(name))})`);
}

async function waitForLog(name: string, pattern: RegExp, from = 0): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (pattern.test((await t.host.logs(name)).slice(from))) return;
    await sleep(25);
  }
  throw new Error(`${name}'s log never matched ${String(pattern)}: ${await t.host.logs(name)}`);
}

/** Healthy and staying healthy for `ms` (no false alarm). */
async function staysHealthy(name: string, ms: number): Promise<void> {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    assert.equal(
      statusOf(name)?.health,
      'healthy',
      `${name} stayed healthy: ${JSON.stringify(statusOf(name))}`,
    );
    await sleep(20);
  }
}

test(
  'a pinging container is healthy; a hung or stopped one is unhealthy within timeout + one period',
  { timeout: 120_000 },
  async () => {
    const view = await t.host.run({
      name: 'pinger',
      image: rootfs,
      args: ['/bin/watchdog-pinger'],
      watchdog: WATCHDOG,
    });
    await prober.watch('pinger');
    await waitForLog('pinger', /pinger ready every=500/); // WATCHDOG_USEC reached it: half of 1 s
    await waitFor('pinger', 'healthy', 3000);
    await staysHealthy('pinger', 2500);

    const bound = WATCHDOG.timeoutSeconds * 1000 + watchdogCheckMs(WATCHDOG) + SLACK_MS;
    // A hung main loop: the process runs on, the heartbeats stop.
    process.kill(view.pid, 'SIGUSR1');
    const hungMs = await waitFor('pinger', 'unhealthy', bound + 2000);
    assert.ok(
      hungMs <= bound,
      `unhealthy ${hungMs.toFixed(0)} ms after the pings stopped (bound ${bound} ms)`,
    );
    assert.match(statusOf('pinger')?.lastError ?? '', /no WATCHDOG=1 for \d+ ms/);
    process.kill(view.pid, 'SIGUSR2');
    await waitFor('pinger', 'healthy', 2000);

    // SIGSTOP: the whole process stops (its port, had it one, would still accept).
    process.kill(view.pid, 'SIGSTOP');
    const stoppedMs = await waitFor('pinger', 'unhealthy', bound + 2000);
    process.kill(view.pid, 'SIGCONT');
    assert.ok(stoppedMs <= bound, `unhealthy ${stoppedMs.toFixed(0)} ms after SIGSTOP (bound ${bound} ms)`);
    await waitFor('pinger', 'healthy', 2000);
    assert.ok(
      log.some((l) => /watchdog: pinger is unhealthy/.test(l)),
      'the agent logs the transition',
    );
    process.stdout.write(
      `# watchdog timeout 1 s, check every ${watchdogCheckMs(WATCHDOG)} ms: unhealthy after ${hungMs.toFixed(0)} ms (hung), ${stoppedMs.toFixed(0)} ms (SIGSTOP)\n`,
    );
  },
);

test(
  'checkpoints work with the watchdog on; after a restore the pings reach the new shim',
  { timeout: 120_000 },
  async () => {
    // Leave-running (replication's epochs): the freeze is not held against the application.
    const kept = await t.host.checkpoint('pinger', { leaveRunning: true });
    assert.ok(kept.frozenMs > 0);
    await staysHealthy('pinger', 1500);

    // A stopping checkpoint, then a restore: a new shim binds a new socket at the same path.
    await t.host.checkpoint('pinger');
    const from = (await t.host.logs('pinger')).length;
    await t.host.restore('pinger');
    await prober.watch('pinger'); // as the agent's restore route does
    await waitFor('pinger', 'healthy', 3000);
    await staysHealthy('pinger', 2000);
    assert.equal((await t.host.inspect('pinger')).state, 'running');
    assert.doesNotMatch((await t.host.logs('pinger')).slice(from), /pinger ready/, 'restored, not restarted');
    assert.ok(await prober.passesNow('pinger'), 'replication may take an epoch');
  },
);

test(
  'a container that never pings is unhealthy after initialDelaySeconds + timeoutSeconds',
  { timeout: 60_000 },
  async () => {
    const spec = { timeoutSeconds: 0.5, initialDelaySeconds: 1 };
    // The deadline runs from the shim's start, which is inside run(): measure around it.
    const beforeRun = performance.now();
    await t.host.run({ name: 'silent', image: rootfs, args: ['/bin/sleep', '100000'], watchdog: spec });
    const runMs = performance.now() - beforeRun;
    await prober.watch('silent');
    assert.equal(statusOf('silent')?.health, 'starting');
    await waitFor('silent', 'unhealthy', 5000);
    const ms = performance.now() - beforeRun;
    assert.ok(ms >= 1500, `not before delay + timeout (${ms.toFixed(0)} ms)`);
    const bound = runMs + 1500 + watchdogCheckMs(spec) + SLACK_MS;
    assert.ok(ms <= bound, `soon after (${ms.toFixed(0)} ms, bound ${bound.toFixed(0)} ms)`);
    assert.match(statusOf('silent')?.lastError ?? '', /no WATCHDOG=1 within \d+ ms of the start/);
    assert.equal(await prober.passesNow('silent'), false, 'no epoch of a silent application');
    // Removing the container forgets its watchdog.
    await prober.forget('silent');
    await t.host.remove('silent', { force: true });
    assert.equal(statusOf('silent'), undefined);
  },
);

test(
  'the container sees NOTIFY_SOCKET and WATCHDOG_USEC, and the socket is the only thing mounted there',
  { timeout: 60_000 },
  async () => {
    const pid = (await t.host.inspect('pinger')).pid;
    const environ = (await run(['cat', `/proc/${pid}/environ`])).stdout.split('\0');
    assert.ok(environ.includes('NOTIFY_SOCKET=/run/haven-notify/notify.sock'), environ.join(' '));
    assert.ok(environ.includes('WATCHDOG_USEC=1000000'));
    const listing = await run(['nsenter', '-t', String(pid), '-m', 'ls', '/run/haven-notify']);
    assert.equal(listing.stdout.trim(), 'notify.sock');
  },
);
