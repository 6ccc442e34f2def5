/**
 * bench/failover.ts: how long a stateful service is gone when its host dies.
 * On a 3-host lab, Redis holding ~100 MB, heartbeats every 100 ms: kill the
 * primary's host and measure, from the last successful PING before the kill
 * to the first one after it on the service address (a fresh connection
 * every 20 ms from the lab's client, overlapping: a probe whose SYN was lost
 * does not hold the next one back), over N trials — Haven `--ha checkpoint` (state kept)
 * beside Haven `--ha restart` (a fresh start elsewhere: the best a stateless
 * orchestrator gives) in the same run. Reference rows: documented defaults of
 * Kubernetes, vSphere HA and keepalived (not measured here).
 *
 * Goals (issue 5): detection median ≤ 0.5 s; failover median ≤ 1.0 s, max ≤ 2.0 s.
 *
 * Usage: npm run bench:failover -- [--trials 5] [--mb 100]
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { REPO_ROOT } from '../src/core/config.js';
import { run } from '../src/core/exec.js';
import { redisImage, REDIS_ARGS } from '../src/fixtures/images.js';
import { runHaven, waitUntil } from '../src/lab/cli-driver.js';
import { CLIENT_NETNS } from '../src/lab/index.js';

const { values } = parseArgs({
  options: { trials: { type: 'string', default: '5' }, mb: { type: 'string', default: '100' } },
});
const TRIALS = Number(values.trials);
const MB = Number(values.mb);

async function haven(args: string[]): Promise<string> {
  const result = await runHaven(args);
  if (result.code !== 0) throw new Error(`haven ${args.join(' ')} failed: ${result.stderr.trim()}`);
  return result.stdout;
}

function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  return waitUntil(what, probe, timeoutMs);
}

interface Trial {
  mode: 'checkpoint' | 'restart';
  detectMs: number;
  failoverMs: number;
  downMs: number;
  keysAfter: number;
  /** Newer epochs the backup could not use (damaged), if any. */
  skipped: number;
  /** Of the failover, on the backup: the epoch assembled from its chunks, then restored (checkpoint mode). */
  assembleMs: number | null;
  restoreMs: number | null;
}

const inClient = (argv: string[], input?: string) =>
  run(['nsenter', `--net=/run/netns/${CLIENT_NETNS}`, ...argv], {
    timeoutMs: 120_000,
    ...(input !== undefined ? { input } : {}),
  });

async function hostStates(): Promise<Record<string, string>> {
  const hosts = JSON.parse(await haven(['host', 'ls', '--json'])) as Array<{ name: string; state: string }>;
  return Object.fromEntries(hosts.map((h) => [h.name, h.state]));
}

async function trial(mode: Trial['mode'], index: number): Promise<Trial> {
  const name = `kv-${mode}-${index}`;
  await haven([
    'run',
    name,
    '--image',
    'redis',
    '--memory',
    `${MB * 3}m`,
    '--ha',
    mode,
    '--interval',
    '1s',
    '--',
    ...REDIS_ARGS,
  ]);
  const view = JSON.parse(await haven(['inspect', name, '--json'])) as { host: string; ip: string };
  await until('redis', async () =>
    (await inClient(['redis-cli', '-h', view.ip, 'PING'])).stdout.trim() === 'PONG' ? true : undefined,
  );
  // ~MB megabytes of data: 1 KiB values.
  const keys = MB * 1024;
  const value = 'x'.repeat(1000);
  const lines = Array.from({ length: keys }, (_, i) => `SET key:${i} ${value}`).join('\n');
  await inClient(['redis-cli', '-h', view.ip, '--pipe'], `${lines}\n`);
  const loaded = Date.now();
  if (mode === 'checkpoint') {
    // An epoch that began after the load ended holds all of it: its number is
    // the time it was committed, at most a dump after it began.
    await until('an epoch after the load', async () => {
      const p = (
        JSON.parse(await haven(['inspect', name, '--json'])) as {
          protection: { committedEpoch: number | null };
        }
      ).protection;
      return p.committedEpoch && p.committedEpoch > loaded + 1500 ? true : undefined;
    });
  }
  const seen = (await haven(['events', '--json'])).trim().split('\n').length;
  const prober = inClient([
    process.execPath,
    join(REPO_ROOT, 'fixtures', 'clients', 'write-load.mjs'),
    view.ip,
    '6379',
    '15000',
  ]);
  await sleep(1000);
  await haven(['lab', 'kill-host', view.host]);
  const killed = Date.now();
  const result = JSON.parse((await prober).stdout) as { probes: Array<[number, boolean]> };
  // Unavailability as clients saw it: from the last successful probe before the kill (the
  // links go down inside the kill command) to the first one after.
  const back = result.probes.find(([t, ok]) => ok && t > killed);
  const lastOk = Math.max(...result.probes.filter(([t, ok]) => ok && t < killed).map(([t]) => t));
  const event = await until('the failover event', async () =>
    (await haven(['events', '--json']))
      .trim()
      .split('\n')
      .slice(seen)
      .map((l) => JSON.parse(l) as { kind: string; subject: string; data: Record<string, unknown> })
      .find((e) => e.kind === 'container.failed-over' && e.subject === name),
  );
  const keysAfter = Number((await inClient(['redis-cli', '-h', view.ip, 'DBSIZE'])).stdout.trim());
  await haven(['rm', '--force', name]);
  await haven(['lab', 'revive', view.host]);
  await until('the host back', async () => ((await hostStates())[view.host] === 'up' ? true : undefined));
  return {
    mode,
    detectMs: Number(event.data.detectMs),
    failoverMs: Number(event.data.failoverMs),
    downMs: back ? back[0] - lastOk : Number.NaN,
    keysAfter,
    skipped: Array.isArray(event.data.skipped) ? event.data.skipped.length : 0,
    assembleMs: typeof event.data.assembleMs === 'number' ? Math.round(event.data.assembleMs) : null,
    restoreMs: typeof event.data.restoreMs === 'number' ? Math.round(event.data.restoreMs) : null,
  };
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function main(): Promise<void> {
  await haven(['lab', 'down']);
  await haven(['lab', 'up', '--hosts', '3']);
  try {
    await until('three hosts', async () =>
      Object.values(await hostStates()).filter((s) => s === 'up').length === 3 ? true : undefined,
    );
    await haven(['image', 'push', await redisImage(), '--name', 'redis']);
    const trials: Trial[] = [];
    for (let i = 0; i < TRIALS; i++) {
      for (const mode of ['checkpoint', 'restart'] as const) {
        const t = await trial(mode, i);
        trials.push(t);
        process.stdout.write(
          `trial ${i + 1}/${TRIALS} ${mode}: detect ${t.detectMs} ms, failover ${t.failoverMs} ms ` +
            `(assemble ${t.assembleMs ?? '-'} ms, restore ${t.restoreMs ?? '-'} ms), unavailable ${t.downMs} ms, ` +
            `keys after ${t.keysAfter}, epochs skipped ${t.skipped}\n`,
        );
      }
    }
    const rows = (['checkpoint', 'restart'] as const).map((mode) => {
      const ts = trials.filter((t) => t.mode === mode);
      const down = ts.map((t) => t.downMs);
      return {
        mode,
        detectMedian: median(ts.map((t) => t.detectMs)),
        failoverMedian: median(ts.map((t) => t.failoverMs)),
        assembleMedian: mode === 'checkpoint' ? median(ts.map((t) => t.assembleMs ?? Number.NaN)) : null,
        restoreMedian: mode === 'checkpoint' ? median(ts.map((t) => t.restoreMs ?? Number.NaN)) : null,
        downMedian: median(down),
        downMax: Math.max(...down),
        keysKept: `${Math.min(...ts.map((t) => t.keysAfter))}/${MB * 1024}`,
      };
    });
    const table = [
      `Failover on a 3-host lab, Redis with ~${MB} MB, heartbeats every 100 ms, ${TRIALS} trials each`,
      '',
      '| setup | detection median | failover median (of which assemble + restore) | unavailable median | unavailable max | keys after |',
      '|---|---|---|---|---|---|',
      ...rows.map(
        (r) =>
          `| Haven --ha ${r.mode} | ${r.detectMedian} ms | ${r.failoverMedian} ms` +
          (r.assembleMedian === null ? '' : ` (${r.assembleMedian} + ${r.restoreMedian} ms)`) +
          ` | ${r.downMedian} ms | ${r.downMax} ms | ${r.keysKept} |`,
      ),
      '| Kubernetes (default pod eviction, reference) | ~300 s | | | | 0 (fresh start) |',
      '| vSphere HA (host declared dead, reference) | 15 s | | | | 0 (VM reboots) |',
      '| keepalived (3 × 1 s adverts + skew, reference) | ~3.6 s | | | | 0 (stateless) |',
      '',
      `Goals: detection median ≤ 500 ms (${rows[0]!.detectMedian <= 500 ? 'met' : 'not met'}); ` +
        `unavailability median ≤ 1000 ms (${rows[0]!.downMedian <= 1000 ? 'met' : 'not met'}), max ≤ 2000 ms (${rows[0]!.downMax <= 2000 ? 'met' : 'not met'}).`,
    ].join('\n');
    process.stdout.write(`\n${table}\n`);
    await mkdir(join(REPO_ROOT, 'bench', 'results'), { recursive: true });
    const file = join(
      REPO_ROOT,
      'bench',
      'results',
      `failover-${new Date().toISOString().replace(/[:.]/g, '-')}.json`,
    );
    await writeFile(file, JSON.stringify({ trials, rows, mb: MB }, null, 2));
    process.stdout.write(`results: ${file}\n`);
  } finally {
    // Never let a failed clean-up hide the error that got us here.
    await haven(['lab', 'down']).catch((error: unknown) =>
      process.stderr.write(`lab down: ${String(error)}\n`),
    );
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`bench failed: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
