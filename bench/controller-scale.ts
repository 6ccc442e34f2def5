/**
 * bench/controller-scale.ts: one real controller (`haven controller`, a child
 * process on a loopback port and a temporary state dir) with 1,000 simulated
 * agents × 10 containers each. The cluster issue's goals:
 *
 *   - heartbeat handling at 10 heartbeats/s per host uses ≤ 25% of one core;
 *   - placing 10,000 containers takes ≤ 1 s;
 *   - controller memory ≤ 300 MB.
 *
 * The fake agents (`support/fake-agents.ts`) run in worker processes. Side by
 * side in one run, after the containers are placed: (A) the baseline, one
 * keep-alive HTTP request per heartbeat (`POST /v1/hosts/:name/heartbeat`);
 * (B) Haven's fallback transport, one long-lived NDJSON stream per host
 * (`POST /v1/hosts/:name/heartbeats`); (C) Haven's default, a UDP datagram
 * per beat with each report as a request of its own. For each, the
 * controller's own CPU (utime+stime from /proc/<pid>/stat) and memory (VmRSS,
 * VmHWM) over a steady window, and a check that the beats arrived: every
 * host's `lastSeenMs` in `GET /v1/hosts` at the end of the window.
 *
 * Placement twice: the pure decisions (`placeAll` on the same 1,000 hosts and
 * 10,000 requests, and `bench/placement.ts` run as is for its harder
 * workload), and through the API (`POST /v1/containers` one at a time, each
 * decision recorded in the SQLite store before the fake agent is called),
 * with the heartbeat streams running meanwhile, as they must for the hosts to
 * stay up. Every API decision is checked against `placeAll`'s.
 *
 * Usage: node dist/bench/controller-scale.js [--hosts 1000] [--containers 10000]
 *   [--beat-ms 100] [--warmup 3] [--window 10] [--workers 2] [--place-budget 170] [--no-pin]
 *   [--controller-profile DIR]   (a V8 CPU profile of the controller, written when it stops)
 * The controller is pinned to CPU 0, the fake agents and this process to CPU 1
 * (as if the agents were other machines); --no-pin lets them share the cores.
 * Writes bench/results/controller-scale-<time>.json and prints a table.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import {
  DEFAULT_FAILURE_MS,
  type ClusterContainerView,
  type HostView,
} from '../src/controller/controller.js';
import { placeAll, type ClusterSnapshot, type PlacementRequest } from '../src/controller/placement.js';
import type { ReportedContainer } from '../src/controller/schemas.js';
import type { StoredEvent } from '../src/controller/store.js';
import { REPO_ROOT } from '../src/core/config.js';
import { callJson, openRequest, readText } from '../src/core/http-client.js';
import { FakeAgentWorkers, type BeatMode, type BeatStats, type HostSpec } from './support/fake-agents.js';
import { benchArgs } from './support/args.js';

const run = promisify(execFile);

const { values } = benchArgs(import.meta.url, {
  options: {
    hosts: { type: 'string', default: '1000' },
    containers: { type: 'string', default: '10000' },
    'beat-ms': { type: 'string', default: '100' },
    warmup: { type: 'string', default: '3' },
    window: { type: 'string', default: '10' },
    workers: { type: 'string', default: '2' },
    'place-budget': { type: 'string', default: '170' },
    'no-pin': { type: 'boolean', default: false },
    /** Write a V8 CPU profile of the controller into this directory (node --cpu-prof). */
    'controller-profile': { type: 'string' },
  },
});
const hostCount = Number(values.hosts);
const containerCount = Number(values.containers);
const beatMs = Number(values['beat-ms']);
const warmupS = Number(values.warmup);
const windowS = Number(values.window);
const workerCount = Number(values.workers);
const placeBudgetS = Number(values['place-budget']);
const pin = values['no-pin'] !== true;
const perHost = Math.round(containerCount / hostCount);
const targetBeatsPerS = (hostCount * 1000) / beatMs;
const GiB = 1024 ** 3;
/** The whole run is bounded: past this, everything is killed and the run fails. */
const RUN_LIMIT_MS = 9 * 60_000;

const MAIN = join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');
const PLACEMENT_BENCH = join(REPO_ROOT, 'dist', 'bench', 'placement.js');

// ------------------------------------------------------------ /proc readers

const CLK_TCK = Number((await run('getconf', ['CLK_TCK'])).stdout.trim()) || 100;

interface ProcSample {
  at: number;
  /** utime + stime, seconds. */
  cpuS: number;
  /** stime alone (in the kernel: sockets, epoll, fsync), seconds. */
  sysS: number;
  rssMb: number;
  hwmMb: number;
}

async function procSample(pid: number): Promise<ProcSample> {
  const [stat, status] = await Promise.all([
    readFile(`/proc/${pid}/stat`, 'utf8'),
    readFile(`/proc/${pid}/status`, 'utf8'),
  ]);
  // Fields after "(comm) ": state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const kb = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
  return {
    at: performance.now(),
    cpuS: (Number(fields[11]) + Number(fields[12])) / CLK_TCK,
    sysS: Number(fields[12]) / CLK_TCK,
    rssMb: kb('VmRSS') / 1024,
    hwmMb: kb('VmHWM') / 1024,
  };
}

/** Busy and total jiffies of the whole machine (all cores). */
async function machineSample(): Promise<{ busy: number; total: number }> {
  const line = (await readFile('/proc/stat', 'utf8')).split('\n')[0] ?? '';
  const n = line.trim().split(/\s+/).slice(1).map(Number);
  const total = n.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (n[3] ?? 0) + (n[4] ?? 0);
  return { busy: total - idle, total };
}

/** Busy share of the machine between two samples, as % of one core. */
function busyPct(a: { busy: number; total: number }, b: { busy: number; total: number }): number {
  return ((b.busy - a.busy) / (b.total - a.total)) * 100 * cpus().length;
}

/** CPU of `a`→`b` as % of one core. */
function cpuPct(a: ProcSample, b: ProcSample): number {
  return ((b.cpuS - a.cpuS) / ((b.at - a.at) / 1000)) * 100;
}

// ---------------------------------------------------------------- helpers

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function median(xs: readonly number[]): number {
  return percentile(
    [...xs].sort((a, b) => a - b),
    50,
  );
}

const fmt = (x: number, digits = 1): string => (Number.isFinite(x) ? x.toFixed(digits) : '-');
const int = (x: number): string => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '-');

async function pinTo(pid: number, cpu: number): Promise<void> {
  await run('taskset', ['-a', '-p', '-c', String(cpu), String(pid)]);
}

// ------------------------------------------------------------ the children

let controller: ChildProcess | undefined;
let workers: FakeAgentWorkers | undefined;
let stateDir: string | undefined;
let controllerOutput = '';

/** Last-resort cleanup (time limit, signal): synchronous, kills by PID only what this run started. */
function killEverything(): void {
  for (const pid of workers?.pids ?? []) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  if (controller?.pid && controller.exitCode === null) controller.kill('SIGKILL');
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
}

async function startController(port: number, token: string): Promise<ChildProcess> {
  const child = spawn(
    process.execPath,
    [
      ...(values['controller-profile'] ? ['--cpu-prof', '--cpu-prof-dir', values['controller-profile']] : []),
      MAIN,
      'controller',
      '--listen',
      `127.0.0.1:${port}`,
      '--state-dir',
      stateDir!,
    ],
    { env: { ...process.env, HAVEN_TOKEN: token }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const keep = (b: Buffer): void => {
    controllerOutput = (controllerOutput + b.toString()).slice(-16_384);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const url = `http://127.0.0.1:${port}`;
  const deadline = performance.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the controller exited: ${controllerOutput}`);
    try {
      await callJson(url, '/v1/health', token, { timeoutMs: 1000 });
      return child;
    } catch (error) {
      if (performance.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`the controller did not answer in 20 s: ${String(error)}\n${controllerOutput}`);
      }
      await sleep(100);
    }
  }
}

async function stopController(): Promise<void> {
  const child = controller;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

// ----------------------------------------------------------- measurements

let eventCursor = 0;
/** Every `host.down` the controller emitted: each is a false failure detection here (no host really died). */
const falseDowns: Array<{ phase: string; at: string; host: string; silentMs: number }> = [];

/** The controller's events since the previous call, counted by kind. */
async function eventKinds(url: string, token: string, phase: string): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (;;) {
    const batch = await callJson<StoredEvent[]>(url, `/v1/events?since=${eventCursor}&limit=10000`, token, {
      timeoutMs: 30_000,
    });
    for (const event of batch) {
      counts[event.kind] = (counts[event.kind] ?? 0) + 1;
      if (event.kind === 'host.down') {
        const silentMs = typeof event.data.silentMs === 'number' ? event.data.silentMs : NaN;
        falseDowns.push({ phase, at: event.at, host: event.subject, silentMs });
      }
      eventCursor = Math.max(eventCursor, event.seq);
    }
    if (batch.length < 10_000) return counts;
  }
}

interface ProbeResult {
  count: number;
  p50: number;
  p99: number;
  max: number;
}

/**
 * Asks `GET /v1/health` every 100 ms until stopped: how long the controller
 * takes to answer shows how long its event loop stalls (heartbeats wait as long).
 */
function probe(url: string, token: string): () => Promise<ProbeResult> {
  let stopped = false;
  const times: number[] = [];
  const loop = (async () => {
    while (!stopped) {
      const t = performance.now();
      try {
        await callJson(url, '/v1/health', token, { timeoutMs: 30_000 });
        times.push(performance.now() - t);
      } catch {
        times.push(Infinity);
      }
      await sleep(100);
    }
  })();
  return async () => {
    stopped = true;
    await loop;
    const sorted = times.sort((a, b) => a - b);
    return {
      count: sorted.length,
      p50: percentile(sorted, 50),
      p99: percentile(sorted, 99),
      max: sorted[sorted.length - 1] ?? NaN,
    };
  };
}

/** `bench/placement.ts` as is (its workload: labels, anti-affinity pairs, cordoned hosts). */
async function placementBench(): Promise<{ placeAllMs: number; perRequestMs: number }> {
  const { stdout } = await run(
    process.execPath,
    [PLACEMENT_BENCH, '--hosts', String(hostCount), '--containers', String(containerCount)],
    { timeout: 180_000 },
  );
  const timeOf = (prefix: string): number => {
    const row = stdout.split('\n').find((l) => l.startsWith(`| ${prefix}`));
    return Number(row?.split('|')[5]?.trim());
  };
  return { placeAllMs: timeOf('placeAll'), perRequestMs: timeOf('place()') };
}

interface WindowResult {
  mode: BeatMode;
  wallS: number;
  sent: number;
  acked: number;
  beatsPerS: number;
  reportsPerS: number;
  errors: number;
  skipped: number;
  droppedPeriods: number;
  backpressured: number;
  lastError?: string;
  latencyMs: { p50: number; p99: number; max: number } | null;
  controllerCpuPct: number;
  /** The part of it spent in the kernel (stime). */
  controllerSysPct: number;
  cpuUsPerBeat: number;
  cpuPctAtTarget: number;
  controllerRssMaxMb: number;
  workersCpuPct: number;
  benchCpuPct: number;
  machineBusyPct: number;
  /** Machine busy time not spent by the controller, the fake agents or this process (other work, softirq, steal). */
  otherPct: number;
  hostsFresh: number;
  hostsUp: number;
  maxLastSeenMs: number;
  hostsWithFullReport: number;
  /** Hosts the controller declared down during the switch and warm-up, and during the window. */
  downInWarmup: number;
  downInWindow: number;
  /** The controller's answer time to a health probe every 100 ms during the window. */
  healthMs: ProbeResult;
}

async function heartbeatWindow(
  mode: 'datagram' | 'stream' | 'oneshot',
  url: string,
  token: string,
): Promise<WindowResult> {
  const pids = workers!.pids;
  await eventKinds(url, token, 'before');
  await workers!.mode(mode);
  await sleep(warmupS * 1000);
  const warmupEvents = await eventKinds(url, token, `${mode} warm-up`);
  await workers!.stats(); // resets the counters
  const stopProbe = probe(url, token);
  const c0 = await procSample(controller!.pid!);
  const w0 = await Promise.all(pids.map(procSample));
  const b0 = await procSample(process.pid);
  const m0 = await machineSample();
  let rssMax = c0.rssMb;
  const end = performance.now() + windowS * 1000;
  while (performance.now() < end) {
    await sleep(Math.min(1000, Math.max(0, end - performance.now())));
    rssMax = Math.max(rssMax, (await procSample(controller!.pid!)).rssMb);
  }
  const c1 = await procSample(controller!.pid!);
  const w1 = await Promise.all(pids.map(procSample));
  const b1 = await procSample(process.pid);
  const m1 = await machineSample();
  const stats: BeatStats[] = await workers!.stats();
  const healthMs = await stopProbe();
  // Did the beats arrive? Every host seen within the last second, with its whole report.
  const hosts = await callJson<HostView[]>(url, '/v1/hosts', token, { timeoutMs: 30_000 });
  const windowEvents = await eventKinds(url, token, `${mode} window`);
  const wallS = (c1.at - c0.at) / 1000;
  const sum = (f: (s: BeatStats) => number): number => stats.reduce((a, s) => a + f(s), 0);
  const elapsedS = Math.max(...stats.map((s) => s.elapsedMs)) / 1000;
  const sent = sum((s) => s.sent);
  const acked = sum((s) => s.acked);
  // A beat counts once the controller acknowledged it: its 200 (one-shot) or its ack line (stream).
  const beatsPerS = acked / elapsedS;
  const controllerCpuPct = cpuPct(c0, c1);
  const cpuUsPerBeat = ((c1.cpuS - c0.cpuS) / (beatsPerS * wallS)) * 1e6;
  const latencies = stats.flatMap((s) => s.latenciesMs).sort((a, b) => a - b);
  const lastSeen = hosts.map((h) => h.lastSeenMs ?? Infinity);
  const lastError = stats.find((s) => s.lastError)?.lastError;
  return {
    mode,
    wallS,
    sent,
    acked,
    beatsPerS,
    reportsPerS: sum((s) => s.reports) / elapsedS,
    errors: sum((s) => s.errors),
    skipped: sum((s) => s.skipped),
    droppedPeriods: sum((s) => s.droppedPeriods),
    backpressured: sum((s) => s.backpressured),
    ...(lastError ? { lastError } : {}),
    latencyMs:
      latencies.length > 0
        ? {
            p50: percentile(latencies, 50),
            p99: percentile(latencies, 99),
            max: latencies[latencies.length - 1]!,
          }
        : null,
    controllerCpuPct,
    controllerSysPct: ((c1.sysS - c0.sysS) / wallS) * 100,
    cpuUsPerBeat,
    cpuPctAtTarget: (cpuUsPerBeat * targetBeatsPerS) / 1e4,
    controllerRssMaxMb: Math.max(rssMax, c1.rssMb),
    workersCpuPct: w0.reduce((a, s, i) => a + cpuPct(s, w1[i]!), 0),
    benchCpuPct: cpuPct(b0, b1),
    machineBusyPct: busyPct(m0, m1),
    otherPct:
      busyPct(m0, m1) - controllerCpuPct - w0.reduce((a, s, i) => a + cpuPct(s, w1[i]!), 0) - cpuPct(b0, b1),
    hostsFresh: lastSeen.filter((ms) => ms < 1000).length,
    hostsUp: hosts.filter((h) => h.state === 'up').length,
    maxLastSeenMs: Math.max(...lastSeen),
    hostsWithFullReport: hosts.filter((h) => h.containers === perHost).length,
    downInWarmup: warmupEvents['host.down'] ?? 0,
    downInWindow: windowEvents['host.down'] ?? 0,
    healthMs,
  };
}

interface ApiPlacement {
  requested: number;
  placed: number;
  errors: number;
  firstError?: string;
  totalS: number;
  perSecond: number;
  latencyMs: {
    p50: number;
    p95: number;
    p99: number;
    max: number;
    first1000Mean: number;
    last1000Mean: number;
  };
  controllerCpuPct: number;
  healthMs: ProbeResult;
  sameAsPlaceAll: number;
  duplicateIps: number;
  budgetHit: boolean;
}

async function placeThroughApi(
  url: string,
  token: string,
  requests: readonly PlacementRequest[],
  expected: ReadonlyMap<string, string>,
): Promise<{ result: ApiPlacement; views: ClusterContainerView[] }> {
  const latencies: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const stopProbe = probe(url, token);
  const c0 = await procSample(controller!.pid!);
  const started = performance.now();
  const deadline = started + placeBudgetS * 1000;
  let budgetHit = false;
  for (const request of requests) {
    if (performance.now() > deadline) {
      budgetHit = true;
      break;
    }
    const t = performance.now();
    try {
      await callJson(url, '/v1/containers', token, {
        method: 'POST',
        timeoutMs: 60_000,
        body: { name: request.name, image: 'tiny', args: ['true'] },
      });
      latencies.push(performance.now() - t);
    } catch (error) {
      errors++;
      firstError ??= error instanceof Error ? error.message : String(error);
      if (errors >= 20) break;
    }
    if (latencies.length % 1000 === 0 && latencies.length > 0) {
      process.stderr.write(
        `  placed ${latencies.length} through the API in ${fmt((performance.now() - started) / 1000)} s\n`,
      );
    }
  }
  const totalS = (performance.now() - started) / 1000;
  const c1 = await procSample(controller!.pid!);
  const healthMs = await stopProbe();
  const views = await callJson<ClusterContainerView[]>(url, '/v1/containers', token, { timeoutMs: 60_000 });
  const sorted = [...latencies].sort((a, b) => a - b);
  const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  const ips = views.map((v) => v.ip);
  return {
    views,
    result: {
      requested: requests.length,
      placed: latencies.length,
      errors,
      ...(firstError ? { firstError } : {}),
      totalS,
      perSecond: latencies.length / totalS,
      latencyMs: {
        p50: percentile(sorted, 50),
        p95: percentile(sorted, 95),
        p99: percentile(sorted, 99),
        max: sorted[sorted.length - 1] ?? NaN,
        first1000Mean: mean(latencies.slice(0, 1000)),
        last1000Mean: mean(latencies.slice(-1000)),
      },
      controllerCpuPct: cpuPct(c0, c1),
      healthMs,
      sameAsPlaceAll: views.filter((v) => v.host !== null && expected.get(v.name) === v.host).length,
      duplicateIps: ips.length - new Set(ips).size,
      budgetHit,
    },
  };
}

// ------------------------------------------------------------------- main

async function main(): Promise<void> {
  if (!existsSync(MAIN) || !existsSync(PLACEMENT_BENCH)) throw new Error('not built: run npm run build');
  const startedAt = new Date();
  const hostSpecs: HostSpec[] = Array.from({ length: hostCount }, (_, i) => ({
    name: `h${String(i + 1).padStart(4, '0')}`,
    cpuMillis: 32_000,
    memoryBytes: 128 * GiB,
  }));
  let t: number;
  // The same requests as the API run gets: clusterRunSchema's defaults (100 millicores, no memory).
  const requests: PlacementRequest[] = Array.from({ length: containerCount }, (_, i) => ({
    name: `c${String(i + 1).padStart(5, '0')}`,
    cpuMillis: 100,
    memoryBytes: 0,
  }));

  // 0. What else is running here: the windows' numbers mean little on a busy machine.
  const m0 = await machineSample();
  await sleep(2000);
  const m1 = await machineSample();
  const backgroundPct = busyPct(m0, m1);

  // 1. Pure decisions, before anything else runs on the machine. The hosts are
  // object literals of one shape, as Controller.snapshot() builds them.
  process.stderr.write('pure placement…\n');
  const snapshot: ClusterSnapshot = {
    hosts: hostSpecs.map((h) => ({
      name: h.name,
      cpuMillis: h.cpuMillis,
      memoryBytes: h.memoryBytes,
      labels: {},
      schedulable: true,
    })),
    containers: [],
  };
  const pureRuns: number[] = [];
  let decisions = placeAll(snapshot, requests); // warm-up
  for (let i = 0; i < 3; i++) {
    t = performance.now();
    decisions = placeAll(snapshot, requests);
    pureRuns.push(performance.now() - t);
  }
  // The same hosts made by object spread: V8 gives them another layout, and the hot loop slows down.
  const spread = hostSpecs.map((h) => ({ ...h, labels: {}, schedulable: true }));
  t = performance.now();
  placeAll({ hosts: spread, containers: [] }, requests);
  const pureSpreadMs = performance.now() - t;
  const expected = new Map(requests.map((r, i) => [r.name, decisions[i]?.ok ? decisions[i].host : '']));
  const placementBenchResult = await placementBench();

  // 2. The controller and the fake agents.
  stateDir = await mkdtemp(join(tmpdir(), 'haven-bench-controller-'));
  const token = randomBytes(16).toString('hex');
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  process.stderr.write(`controller on ${url}, state in ${stateDir}\n`);
  controller = await startController(port, token);
  const controllerPid = controller.pid!;
  const idle = await procSample(controllerPid);
  workers = await FakeAgentWorkers.start(workerCount, { controller: url, token, beatMs });
  if (pin) {
    await pinTo(controllerPid, 0);
    for (const pid of [...workers.pids, process.pid]) await pinTo(pid, 1);
  }

  // 3. Register every host, then keep them alive with streams (a host silent for 3 s is down).
  process.stderr.write(`registering ${hostCount} hosts…\n`);
  t = performance.now();
  await workers.mode('datagram'); // each host beats from the moment it is registered
  await workers.register(hostSpecs);
  const registerS = (performance.now() - t) / 1000;
  await workers.mode('datagram');
  const afterRegister = await procSample(controllerPid);
  // Then wait (≤ 20 s) until the controller counts every host up again: placement should see them all.
  t = performance.now();
  let upHosts = 0;
  while (performance.now() - t < 20_000) {
    const hosts = await callJson<HostView[]>(url, '/v1/hosts', token, { timeoutMs: 30_000 });
    upHosts = hosts.filter((h) => h.state === 'up').length;
    if (upHosts === hostCount) break;
    await sleep(250);
  }
  const settleS = (performance.now() - t) / 1000;
  const registerEvents = await eventKinds(url, token, 'register');

  // 4. A tiny image: an empty tar archive (10,240 zero bytes, as `tar -cf - -T /dev/null` writes).
  const upload = await openRequest(url, '/v1/images?name=tiny', token, {
    method: 'PUT',
    payload: Readable.from([Buffer.alloc(10_240)]),
    headers: { 'content-type': 'application/x-tar' },
  });
  const uploadText = await readText(upload);
  if (upload.statusCode !== 201) throw new Error(`image upload answered ${upload.statusCode}: ${uploadText}`);

  // 5. Placement through the API, one request at a time, heartbeat streams running.
  process.stderr.write(`placing ${containerCount} containers through the API (budget ${placeBudgetS} s)…\n`);
  t = performance.now();
  const { result: api, views } = await placeThroughApi(url, token, requests, expected);
  const afterPlacement = await procSample(controllerPid);
  const placementEvents = await eventKinds(url, token, 'API placement');

  // 6. Hosts now report what runs on them (padded to `perHost` if the API run was cut short).
  const byHost: Record<string, ReportedContainer[]> = {};
  for (const v of views) {
    if (!v.host) continue;
    (byHost[v.host] ??= []).push({ name: v.name, state: 'running', pid: v.pid || 1, ip: v.ip });
  }
  for (const h of hostSpecs) {
    const list = (byHost[h.name] ??= []);
    for (let k = 0; list.length < perHost; k++) {
      list.push({ name: `${h.name}-pad${k}`, state: 'running', pid: 1, ip: '10.88.0.1' });
    }
  }
  await workers.reports(byHost);

  // 7. Heartbeats: baseline, Haven's fallback (stream) and Haven (datagrams), in the same run;
  // stream and datagrams twice, alternating, since the machine's speed drifts: the table shows
  // the second pass, a row the first.
  const windows: WindowResult[] = [];
  for (const mode of ['oneshot', 'stream', 'datagram', 'stream', 'datagram'] as const) {
    process.stderr.write(`heartbeats: ${mode} (${warmupS} s warm-up, ${windowS} s window)…\n`);
    windows.push(await heartbeatWindow(mode, url, token));
  }
  const final = await procSample(controllerPid);
  await workers.mode('off');

  // ------------------------------------------------------------- report
  const [base, firstStream, firstHaven, stream, haven] = windows as [
    WindowResult,
    WindowResult,
    WindowResult,
    WindowResult,
    WindowResult,
  ];
  const pureMs = median(pureRuns);
  const reached = (w: WindowResult): boolean => w.beatsPerS >= 0.95 * targetBeatsPerS;
  const cpuForGoal = reached(haven) ? haven.controllerCpuPct : haven.cpuPctAtTarget;
  const yes = (ok: boolean): string => (ok ? 'yes' : '**no**');
  const rows: Array<[string, string, string, string, string]> = [
    [
      `heartbeats/s acknowledged (target ${int(targetBeatsPerS)})`,
      int(base.beatsPerS),
      int(haven.beatsPerS),
      int(targetBeatsPerS),
      `${yes(reached(base))} / ${yes(reached(haven))}`,
    ],
    [
      'hosts seen < 1 s before window end / up',
      `${base.hostsFresh}/${base.hostsUp}`,
      `${haven.hostsFresh}/${haven.hostsUp}`,
      `${hostCount}/${hostCount}`,
      `${yes(base.hostsFresh === hostCount)} / ${yes(haven.hostsFresh === hostCount)}`,
    ],
    [
      'hosts wrongly declared down (host.down): switch + warm-up / window',
      `${base.downInWarmup} / ${base.downInWindow}`,
      `${haven.downInWarmup} / ${haven.downInWindow}`,
      '0 / 0',
      `${yes(base.downInWarmup + base.downInWindow === 0)} / ${yes(haven.downInWarmup + haven.downInWindow === 0)}`,
    ],
    [
      'send errors / skipped (previous unanswered)',
      `${base.errors} / ${base.skipped}`,
      `${haven.errors} / ${haven.skipped}`,
      '0',
      '-',
    ],
    [
      'controller CPU, % of one core',
      fmt(base.controllerCpuPct),
      fmt(haven.controllerCpuPct),
      '≤ 25',
      yes(cpuForGoal <= 25) + (reached(haven) ? '' : ' (at target, extrapolated)'),
    ],
    [
      '… of which in the kernel (stime), %',
      fmt(base.controllerSysPct),
      fmt(haven.controllerSysPct),
      '-',
      '-',
    ],
    [
      'controller CPU per heartbeat (µs)',
      fmt(base.cpuUsPerBeat),
      fmt(haven.cpuUsPerBeat),
      `≤ ${fmt(25e4 / targetBeatsPerS)}`,
      '-',
    ],
    [
      '… the first pass (µs; baseline: the only one)',
      fmt(base.cpuUsPerBeat),
      fmt(firstHaven.cpuUsPerBeat),
      `≤ ${fmt(25e4 / targetBeatsPerS)}`,
      yes(firstHaven.cpuUsPerBeat <= 25e4 / targetBeatsPerS),
    ],
    [
      `controller CPU at ${int(targetBeatsPerS)} beats/s, % (per-beat × rate)`,
      fmt(base.cpuPctAtTarget),
      fmt(haven.cpuPctAtTarget),
      '≤ 25',
      `${yes(base.cpuPctAtTarget <= 25)} / ${yes(haven.cpuPctAtTarget <= 25)}`,
    ],
    [
      'beat → acknowledgement p50 / p99 (ms)',
      base.latencyMs ? `${fmt(base.latencyMs.p50)} / ${fmt(base.latencyMs.p99)}` : '-',
      haven.latencyMs ? `${fmt(haven.latencyMs.p50)} / ${fmt(haven.latencyMs.p99)}` : '-',
      '-',
      '-',
    ],
    [
      'controller answers GET /v1/health (every 100 ms) p99 / max (ms)',
      `${fmt(base.healthMs.p99)} / ${fmt(base.healthMs.max)}`,
      `${fmt(haven.healthMs.p99)} / ${fmt(haven.healthMs.max)}`,
      '-',
      '-',
    ],
    [
      'controller RSS in window, max (MB)',
      fmt(base.controllerRssMaxMb, 0),
      fmt(haven.controllerRssMaxMb, 0),
      '≤ 300',
      yes(haven.controllerRssMaxMb <= 300),
    ],
    [
      'controller peak RSS, whole run (VmHWM, MB)',
      '-',
      fmt(final.hwmMb, 0),
      '≤ 300',
      yes(final.hwmMb <= 300),
    ],
    [
      'fake agents CPU (all workers), % of one core',
      fmt(base.workersCpuPct),
      fmt(haven.workersCpuPct),
      '-',
      '-',
    ],
    [
      `machine busy, % of one core (${cpus().length} cores)`,
      fmt(base.machineBusyPct),
      fmt(haven.machineBusyPct),
      '-',
      '-',
    ],
    [
      '… not by the controller, fake agents or benchmark (other work, softirq, steal)',
      fmt(base.otherPct),
      fmt(haven.otherPct),
      '-',
      '-',
    ],
    [
      `hosts wrongly declared down while ${int(hostCount)} register and start beating`,
      '-',
      `${registerEvents['host.down'] ?? 0} (registered in ${fmt(registerS)} s; ` +
        (upHosts === hostCount
          ? `all up ${fmt(settleS)} s later)`
          : `${upHosts}/${hostCount} up ${fmt(settleS)} s later)`),
      '0',
      yes((registerEvents['host.down'] ?? 0) === 0),
    ],
    [
      `place ${int(containerCount)}: pure, bench/placement.ts workload (ms)`,
      `${fmt(placementBenchResult.perRequestMs, 0)} (place() per request)`,
      `${fmt(placementBenchResult.placeAllMs, 0)} (placeAll)`,
      '≤ 1000',
      yes(placementBenchResult.placeAllMs <= 1000),
    ],
    [
      `place ${int(containerCount)}: pure placeAll, this run's hosts and requests (ms)`,
      '-',
      fmt(pureMs, 0),
      '≤ 1000',
      yes(pureMs <= 1000),
    ],
    [
      '… same, host objects made by `{...spec}` spread (ms)',
      '-',
      fmt(pureSpreadMs, 0),
      '≤ 1000',
      yes(pureSpreadMs <= 1000),
    ],
    [
      `place ${int(api.placed)} through the API, one at a time (s)`,
      '-',
      fmt(api.totalS),
      `≤ ${fmt((api.placed / 10_000) * 1)} (pro rata)`,
      yes(api.totalS <= api.placed / 10_000),
    ],
    [
      '… per container p50 / p99 (ms); rate (/s)',
      '-',
      `${fmt(api.latencyMs.p50)} / ${fmt(api.latencyMs.p99)}; ${fmt(api.perSecond, 0)}`,
      '-',
      '-',
    ],
    [
      '… mean latency, first / last 1,000 (ms)',
      '-',
      `${fmt(api.latencyMs.first1000Mean)} / ${fmt(api.latencyMs.last1000Mean)}`,
      '-',
      '-',
    ],
    [
      "… API decisions equal to placeAll's",
      '-',
      `${api.sameAsPlaceAll}/${api.placed}`,
      'all',
      yes(api.sameAsPlaceAll === api.placed),
    ],
    [
      '… hosts wrongly declared down while placing (host.down)',
      '-',
      String(placementEvents['host.down'] ?? 0),
      '0',
      yes((placementEvents['host.down'] ?? 0) === 0),
    ],
    [
      '… controller answers GET /v1/health meanwhile, p99 / max (ms)',
      '-',
      `${fmt(api.healthMs.p99)} / ${fmt(api.healthMs.max)}`,
      `< ${DEFAULT_FAILURE_MS} (failure time)`,
      yes(api.healthMs.max < DEFAULT_FAILURE_MS),
    ],
  ];
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? '?'}, Linux ${release()}, Node ${process.version}`;
  const commit = await run('git', ['-C', REPO_ROOT, 'describe', '--always', '--dirty'])
    .then((r) => r.stdout.trim())
    .catch(() => 'unknown');
  const split = pin
    ? 'controller pinned to CPU 0; fake agents and the benchmark to CPU 1'
    : 'not pinned: the controller, the fake agents and the benchmark share the cores';
  console.log(
    `\n${hostCount} hosts × ${perHost} containers, a beat every ${beatMs} ms per host; ` +
      `${workerCount} fake-agent worker processes; ${split}.\n` +
      `The controller declares a host down after ${DEFAULT_FAILURE_MS} ms of silence (its default).\n` +
      `Commit ${commit}. Machine: ${machine}; busy ${fmt(backgroundPct)}% of one core with other work before the run.\n` +
      `Windows: ${warmupS} s warm-up, then ${windowS} s measured; baseline = one keep-alive request per beat, ` +
      `Haven = a UDP datagram per beat (reports as a request each).\n`,
  );
  console.log('| metric | baseline: request per beat | Haven: datagrams | goal | met? |');
  console.log('|---|---|---|---|---|');
  for (const row of rows) console.log(`| ${row.join(' | ')} |`);
  console.log(
    "\nHaven's fallback where UDP cannot go (`haven agent --heartbeat-transport stream`), same run:\n\n" +
      '| NDJSON stream per host | value |\n|---|---|\n' +
      `| heartbeats/s acknowledged | ${int(stream.beatsPerS)} |\n` +
      `| hosts wrongly declared down: switch + warm-up / window | ${stream.downInWarmup} / ${stream.downInWindow} |\n` +
      `| controller CPU, % of one core (of which kernel) | ${fmt(stream.controllerCpuPct)} (${fmt(stream.controllerSysPct)}) |\n` +
      `| controller CPU per heartbeat (µs), second pass / first | ${fmt(stream.cpuUsPerBeat)} / ${fmt(firstStream.cpuUsPerBeat)} |\n` +
      `| beat → acknowledgement p50 / p99 (ms) | ${stream.latencyMs ? `${fmt(stream.latencyMs.p50)} / ${fmt(stream.latencyMs.p99)}` : '-'} |`,
  );
  if (api.budgetHit || api.placed < containerCount) {
    console.log(
      `\nThe API run placed ${api.placed} of ${containerCount} (budget ${placeBudgetS} s${api.errors ? `, ${api.errors} errors: ${api.firstError}` : ''}).`,
    );
  }
  for (const w of windows) {
    if (w.lastError) console.log(`${w.mode}: last error: ${w.lastError}`);
  }

  const results = {
    startedAt: startedAt.toISOString(),
    commit,
    machine,
    backgroundPct,
    split,
    config: {
      failureMs: DEFAULT_FAILURE_MS,
      hostCount,
      containerCount,
      perHost,
      beatMs,
      warmupS,
      windowS,
      workerCount,
      placeBudgetS,
      pin,
    },
    controller: {
      idle: { rssMb: idle.rssMb },
      afterRegister: { rssMb: afterRegister.rssMb, registerS, settleS, upHosts, events: registerEvents },
      afterPlacement: { rssMb: afterPlacement.rssMb, events: placementEvents },
      final: { rssMb: final.rssMb, hwmMb: final.hwmMb },
    },
    placement: { pureMs: pureRuns, pureSpreadMs, placementBench: placementBenchResult, api },
    heartbeats: windows,
    falseDowns: {
      count: falseDowns.length,
      maxSilentMs: Math.max(0, ...falseDowns.map((d) => d.silentMs)),
      first: falseDowns.slice(0, 50),
    },
    table: rows,
  };
  const dir = join(REPO_ROOT, 'bench', 'results');
  await mkdir(dir, { recursive: true });
  const file = join(dir, `controller-scale-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
  await writeFile(file, `${JSON.stringify(results, null, 2)}\n`);
  console.log(`\nwrote ${file}`);
}

const limit = setTimeout(() => {
  process.stderr.write(`controller-scale: over ${RUN_LIMIT_MS / 60_000} minutes; stopping everything\n`);
  killEverything();
  process.exit(2);
}, RUN_LIMIT_MS);
limit.unref();
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    killEverything();
    process.exit(130);
  });
}

try {
  await main();
} catch (error) {
  process.exitCode = 1;
  process.stderr.write(
    `controller-scale failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  if (controllerOutput) process.stderr.write(`controller output (last part):\n${controllerOutput}\n`);
} finally {
  await workers?.stop().catch(() => undefined);
  await stopController().catch(() => undefined);
  if (stateDir) await rm(stateDir, { recursive: true, force: true });
  clearTimeout(limit);
}
