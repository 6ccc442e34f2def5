/**
 * The demo (README command 1, via scripts/demo.sh): a 3-host lab on this
 * machine — each host its own network and mount namespace, agent and disk —
 * with a controller on the embedded store, driven by the `haven` CLI exactly
 * as a user would. Redis runs in the cluster and a real client in the lab's
 * `client` namespace loads it, then keeps one connection open while Haven's
 * own parts fail around it: the agent of Redis's host is SIGKILLed (Redis
 * never notices; the supervised agent comes back and re-adopts it), the
 * controller is SIGKILLed (it comes back with the same cluster), and another
 * host dies (the controller sees it, Redis is untouched). Then Redis's own
 * host dies: Redis, protected by a checkpoint every second to a backup host,
 * answers again from the backup at the same address with its data, and the
 * demo prints detection, failover and unavailability times. At the start
 * it prints the dashboard's one-time login URL, so all of it can be
 * watched in a browser as it happens.
 *
 * It brings the lab down at the end, leaving the machine as it found it.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT } from '../core/config.js';
import { run } from '../core/exec.js';
import { redisImage, REDIS_ARGS } from '../fixtures/images.js';
import { runHaven, waitUntil } from '../lab/cli-driver.js';
import { CLIENT_NETNS, type LabStatus } from '../lab/index.js';

const KEYS = 100_000;

/** What fixtures/clients/write-load.mjs reports. */
interface LoadResult {
  acks: Array<[number, number]>;
  errors: Array<[number, string]>;
  probes: Array<[number, boolean]>;
}

/**
 * The host failure as the load saw it: the outage is the longest silence
 * between two acknowledged writes; the counter's first value after it tells
 * what was restored.
 */
function loadReport(
  load: LoadResult,
  epochTakenAt: number,
): { acknowledged: number; lost: number; missingBeforeEpoch: number; unavailableMs: number } {
  const acks = load.acks;
  if (acks.length < 2) throw new Error(`the write load got ${acks.length} replies: no failover to measure`);
  let gap = 0; // the outage starts after acks[gap]
  for (let i = 1; i < acks.length - 1; i++) {
    if (acks[i + 1]![1] - acks[i]![1] > acks[gap + 1]![1] - acks[gap]![1]) gap = i;
  }
  const lastBefore = acks[gap]!;
  const restored = acks[gap + 1]![0] - 1;
  const beforeEpoch = acks.filter(([, t]) => t < epochTakenAt).map(([v]) => v);
  // Service unavailability as fresh connections saw it: the longest gap between two successful probes.
  const ok = load.probes.filter(([, good]) => good).map(([t]) => t);
  let unavailableMs = 0;
  for (let i = 1; i < ok.length; i++) unavailableMs = Math.max(unavailableMs, ok[i]! - ok[i - 1]!);
  return {
    acknowledged: acks.length,
    lost: Math.max(0, lastBefore[0] - restored),
    missingBeforeEpoch: Math.max(0, Math.max(0, ...beforeEpoch) - restored),
    unavailableMs,
  };
}
const say = (text: string): void => void process.stdout.write(`${text}\n`);

/** Runs `haven ARGS`, echoing the command as a user would type it; returns stdout. */
async function haven(args: string[], options: { echo?: boolean } = {}): Promise<string> {
  if (options.echo !== false) say(`$ haven ${args.join(' ')}`);
  const result = await runHaven(args);
  if (result.code !== 0) throw new Error(`haven ${args.join(' ')} failed: ${result.stderr.trim()}`);
  return result.stdout;
}

const until = waitUntil;

interface Row {
  name: string;
  host: string;
  state: string;
  ip: string;
  pid: number;
}

async function main(): Promise<void> {
  const ps = async (): Promise<Row[]> => JSON.parse(await haven(['ps', '--json'], { echo: false })) as Row[];
  const lab = async (): Promise<LabStatus> =>
    JSON.parse(await haven(['lab', 'status', '--json'], { echo: false })) as LabStatus;
  const hostState = async (name: string): Promise<string | undefined> =>
    (
      JSON.parse(await haven(['host', 'ls', '--json'], { echo: false })) as Array<{
        name: string;
        state: string;
      }>
    ).find((h) => h.name === name)?.state;
  try {
    say('== Haven demo: a 3-host lab, a controller on the embedded store, Redis in the cluster ==');
    await haven(['lab', 'up', '--hosts', '3']);
    await until('three hosts', async () => {
      const states = await Promise.all(['h1', 'h2', 'h3'].map(hostState));
      return states.every((s) => s === 'up') ? true : undefined;
    });
    process.stdout.write(await haven(['host', 'ls']));
    // A one-time login URL (two minutes to open it), on the lab's loopback forwarder.
    const dashboard = (await haven(['dashboard'])).trim();
    say(`watch it live in a browser on this machine: ${dashboard}`);
    say('  (the dashboard shows hosts, Redis and its epochs, events, and the failover on its timeline;');
    say('   it goes with the lab at the end of the demo)');

    await haven(['image', 'push', await redisImage(), '--name', 'redis']);
    process.stdout.write(
      await haven([
        'run',
        'redis',
        '--image',
        'redis',
        '--memory',
        '512m',
        '--ha',
        'checkpoint',
        '--interval',
        '1s',
        '--',
        ...REDIS_ARGS,
      ]),
    );
    process.stdout.write(await haven(['ps']));
    const redis = (await ps()).find((r) => r.name === 'redis')!;
    const inClient = (argv: string[], input?: string) =>
      run(['nsenter', `--net=/run/netns/${CLIENT_NETNS}`, ...argv], input === undefined ? {} : { input });
    await until('Redis to answer', async () =>
      (await inClient(['redis-cli', '-h', redis.ip, 'PING'])).stdout.trim() === 'PONG' ? true : undefined,
    );
    const commands = Array.from({ length: KEYS }, (_, i) => `SET key:${i} value-${i}`).join('\n');
    await inClient(['redis-cli', '-h', redis.ip, '--pipe'], `${commands}\n`);
    say(
      `client (the lab's client namespace) wrote ${KEYS} keys: DBSIZE = ${(await inClient(['redis-cli', '-h', redis.ip, 'DBSIZE'])).stdout.trim()}`,
    );

    const session = spawn('nsenter', [
      `--net=/run/netns/${CLIENT_NETNS}`,
      process.execPath,
      join(REPO_ROOT, 'fixtures/clients/resp-session.mjs'),
      redis.ip,
      '6379',
    ]);
    const replies = createInterface({ input: session.stdout })[Symbol.asyncIterator]();
    const ask = async (line: string): Promise<string> => {
      session.stdin.write(`${line}\n`);
      return String((await replies.next()).value);
    };
    say(
      `client opened one connection: ${String((await replies.next()).value)}; INCR visits -> ${await ask('INCR visits')}`,
    );

    say(`\n-- an agent crash is not a container crash --`);
    const agentPid = (await lab()).hosts.find((h) => h.name === redis.host)!.agentPid!;
    say(`$ kill -9 ${agentPid}   # the agent of ${redis.host}, where Redis runs`);
    process.kill(agentPid, 'SIGKILL');
    say(`the same connection, agent dead: INCR visits -> ${await ask('INCR visits')}`);
    const newAgent = await until('the agent to come back', async () => {
      const pid = (await lab()).hosts.find((h) => h.name === redis.host)?.agentPid;
      return pid && pid !== agentPid ? pid : undefined;
    });
    const readopted = await until('re-adoption', async () => {
      const row = (await ps()).find((r) => r.name === 'redis');
      return row?.state === 'running' && (await hostState(redis.host)) === 'up' ? row : undefined;
    });
    say(
      `the lab's supervisor restarted the agent (pid ${newAgent}); it re-adopted Redis: pid ${readopted.pid} (was ${redis.pid})`,
    );

    say(`\n-- the controller restarts without losing the cluster --`);
    const controllerPid = (await lab()).controller.pid!;
    say(`$ kill -9 ${controllerPid}   # the controller`);
    process.kill(controllerPid, 'SIGKILL');
    await until('the controller to come back', async () => {
      const pid = (await lab()).controller.pid;
      const rows = await ps();
      return pid &&
        pid !== controllerPid &&
        rows.some((r) => r.name === 'redis') &&
        rows.every((r) => r.state === 'running')
        ? pid
        : undefined;
    });
    process.stdout.write(await haven(['ps']));

    say(`\n-- a host that runs nothing of Redis dies --`);
    const backupHost = (
      JSON.parse(await haven(['inspect', 'redis', '--json'], { echo: false })) as {
        protection: { backup: string };
      }
    ).protection.backup;
    const other = ['h1', 'h2', 'h3'].find((h) => h !== redis.host && h !== backupHost)!;
    const otherKilledAt = Date.now();
    await haven(['lab', 'kill-host', other]);
    await until(`${other} to be seen down`, async () =>
      (await hostState(other)) === 'down' ? true : undefined,
    );
    say(
      `the controller declared ${other} down ${Date.now() - otherKilledAt} ms after the command to kill it`,
    );
    say(`Redis did not notice: INCR visits -> ${await ask('INCR visits')}; DBSIZE -> ${await ask('DBSIZE')}`);

    say(`\n-- the host that runs Redis dies under a write load: failover to its backup, with the data --`);
    // The client writes without pause (INCR counter on one connection, every
    // reply kept) and opens a fresh connection every 20 ms to PING.
    const loadMs = 14_000;
    const load = inClient([
      process.execPath,
      join(REPO_ROOT, 'fixtures', 'clients', 'write-load.mjs'),
      redis.ip,
      '6379',
      String(loadMs),
    ]).then((r) => JSON.parse(r.stdout) as LoadResult);
    await sleep(4000); // the load runs; epochs commit meanwhile, one a second
    process.stdout.write(await haven(['ps']));
    await haven(['lab', 'kill-host', redis.host]);
    const failover = await until('the failover event', async () =>
      (await haven(['events', '--json'], { echo: false }))
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { kind: string; data: Record<string, unknown> })
        .find((e) => e.kind === 'container.failed-over'),
    );
    session.stdin.write('INCR visits\n');
    const old = await Promise.race([
      replies.next().then((r) => String(r.value ?? 'connection closed')),
      sleep(5000).then(() => 'no answer (hung)'),
    ]);
    say(`the connection opened before the failure: ${old}`);
    process.stdout.write(await haven(['ps']));
    const report = loadReport(await load, Date.parse(String(failover.data.takenAt)));
    say("\n== the failure of Redis's host, as measured ==");
    say(`detection (last heartbeat -> declared down): ${String(failover.data.detectMs)} ms`);
    say(
      `restore on ${String(failover.data.to)} (after peers' probes and the lease): ${String(failover.data.failoverMs)} ms, ` +
        `from the epoch taken at ${String(failover.data.takenAt)}`,
    );
    say(
      `unavailable to clients (the longest gap between answered fresh connections, one every 20 ms): ${report.unavailableMs} ms`,
    );
    say(
      `writes acknowledged: ${report.acknowledged}; lost: ${report.lost} (acknowledged after the restored epoch began, ` +
        `at most an interval and a commit); acknowledged before it began and missing: ${report.missingBeforeEpoch}`,
    );
    const get = async (...args: string[]): Promise<string> =>
      (await inClient(['redis-cli', '-h', redis.ip, ...args])).stdout.trim();
    say(
      `a new client: DBSIZE -> ${await get('DBSIZE')}, GET key:${KEYS - 1} -> ${await get('GET', `key:${KEYS - 1}`)}, GET visits -> ${await get('GET', 'visits')}`,
    );
    session.stdin.end();
    session.kill();
    process.stdout.write(await haven(['events']));
    say(
      '== done: Redis kept its data through an agent crash, a controller crash, a host failure and the failure of its own host ==',
    );
  } finally {
    await haven(['lab', 'down']).catch((error: unknown) => say(`lab down failed: ${String(error)}`));
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`demo failed: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
