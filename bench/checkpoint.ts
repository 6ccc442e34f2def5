/**
 * bench/checkpoint.ts: what a checkpoint costs, Haven beside plain runc and
 * Podman, in one run on one machine (machines here are noisy: compare rows,
 * not runs).
 *
 * For the C workload (random content, 1,000 dirty pages/s) at each size:
 *  - freeze of a leave-running checkpoint, three ways: a client pinging the
 *    container every 2 ms over TCP (longest gap between replies), the
 *    workload's own longest stall, and CRIU's statistics (`frozen_time`);
 *    one warm-up, then the median of 5;
 *  - checkpoint to a restorable archive (Haven, Podman) or image directory
 *    (runc: it has no archive), and restore from it: the wall time of the
 *    command a user runs (`haven`, `podman`, `runc`), process start to exit.
 *    Haven's rows also give its commands' own count (call to answer). Before
 *    each timed step the disk is synced (untimed), and the original
 *    container is removed before its archive is imported (untimed, as
 *    `podman rm -f`).
 *
 * Podman runs with --network none (the recipe in shared/DESIGN.md), so no
 * client can ping it: its freeze is the workload's stall and CRIU's count.
 *
 * Usage: node dist/bench/checkpoint.js [--sizes 16,64,256,1024] [--no-podman]
 * Writes bench/results/checkpoint-<time>.json and prints a table.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT } from '../src/core/config.js';
import { run } from '../src/core/exec.js';
import { memhogImage } from '../src/fixtures/images.js';
import { readDumpStats } from '../src/runtime/runc/criu-images.js';
import { containerNetnsName, netnsPath } from '../src/runtime/network.js';
import { TestHost } from '../test/support/test-host.js';
import { benchArgs } from './support/args.js';

interface Row {
  system: 'haven' | 'runc' | 'podman';
  sizeMb: number;
  clientFreezeMs?: number;
  workloadStallMs?: number;
  criuFrozenMs?: number;
  /** Haven's own count: cgroup freeze to thaw, network lock included. */
  havenFrozenMs?: number;
  /** Wall time of the command a user runs (`haven`, `runc` or `podman`), process start to exit. */
  checkpointMs: number;
  archiveBytes?: number;
  restoreMs: number;
  /**
   * Haven only: checkpoint→archive + restore as the commands count them
   * themselves (from the call to the answer): without the node process's
   * start and module loading, and without the work left after the answer
   * (the stopped container's tear-down, the staging copy's removal) that
   * the process waits for before it exits.
   */
  inCommandMs?: number;
  verified: boolean;
}

const { values } = benchArgs(import.meta.url, {
  options: { sizes: { type: 'string', default: '16,64,256,1024' }, 'no-podman': { type: 'boolean' } },
});
const sizes = (values.sizes ?? '')
  .split(',')
  .map(Number)
  .filter((n) => n > 0);
const ip = '10.88.9.2';
const port = 7000;

function memhogArgs(mb: number): string[] {
  return [
    '/bin/memhog',
    '--mb',
    String(mb),
    '--mode',
    'random',
    '--dirty',
    '1000',
    '--seed',
    '7',
    '--port',
    String(port),
  ];
}

/** Starts the pinger in the client namespace; resolves with what it measured. */
function ping(host: TestHost, durationMs: number): Promise<{ maxGapMs: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn('nsenter', [
      `--net=/run/netns/${host.clientNetns}`,
      process.execPath,
      join(REPO_ROOT, 'fixtures', 'clients', 'echo-pinger.mjs'),
      ip,
      String(port),
      String(durationMs),
      '2',
    ]);
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.on('close', () => {
      try {
        resolve(JSON.parse(out.trim().split('\n').pop() ?? '{}') as { maxGapMs: number });
      } catch (error) {
        reject(new Error(`pinger printed ${out}: ${String(error)}`));
      }
    });
  });
}

async function waitFor(
  read: () => Promise<string>,
  pattern: RegExp,
  from = 0,
  timeoutMs = 120_000,
): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const m = pattern.exec((await read()).slice(from));
    if (m) return m[0];
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${String(pattern)}`);
}

/** Asks memhog for its longest stall since the last ask (SIGUSR2) and returns it. */
async function stallOf(pid: number, logs: () => Promise<string>): Promise<number> {
  const from = (await logs()).length;
  process.kill(pid, 'SIGUSR2');
  const line = await waitFor(logs, /stall max_ms=([\d.]+)/, from);
  return Number(/([\d.]+)/.exec(line)?.[1]);
}

const REPEATS = 5;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

/**
 * One warm-up checkpoint, then REPEATS measured ones, each inside its own
 * ping window; medians of the three views of the freeze.
 */
async function freezeMeasured(
  host: TestHost | undefined,
  pid: number,
  logs: () => Promise<string>,
  checkpoint: () => Promise<number | undefined>,
): Promise<{ clientFreezeMs?: number; workloadStallMs: number; criuFrozenMs?: number }> {
  await checkpoint();
  const client: number[] = [];
  const stall: number[] = [];
  const criu: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    await stallOf(pid, logs); // reset the workload's maximum
    const pinging = host ? ping(host, 800) : undefined;
    await sleep(300);
    const frozen = await checkpoint();
    if (frozen !== undefined) criu.push(frozen);
    if (pinging) client.push((await pinging).maxGapMs);
    stall.push(await stallOf(pid, logs));
  }
  return {
    ...(client.length ? { clientFreezeMs: median(client) } : {}),
    workloadStallMs: median(stall),
    ...(criu.length ? { criuFrozenMs: median(criu) } : {}),
  };
}

/**
 * Writes back what earlier steps left dirty (the freeze measurements' own
 * checkpoints, a removed container's upper layer) before a timed step, for
 * every system alike: otherwise the next `fsync` — Haven's export syncs its
 * archive — pays for writeback that belongs to no one's checkpoint.
 */
async function settleDisk(): Promise<void> {
  await run(['sync']);
}

async function benchHaven(host: TestHost, image: string, mb: number, work: string): Promise<Row> {
  const h = host.host;
  await h.run({
    name: 'hb',
    image,
    ip: `${ip}/16`,
    args: memhogArgs(mb),
    memoryBytes: (mb + 256) * 1024 * 1024,
  });
  const logs = () => h.logs('hb');
  await waitFor(logs, /ready mb=/);
  const pid = (await h.inspect('hb')).pid;
  const havenFrozen: number[] = [];
  const freeze = await freezeMeasured(host, pid, logs, async () => {
    const report = await h.checkpoint('hb', { leaveRunning: true });
    havenFrozen.push(report.frozenMs);
    if (process.env.HAVEN_BENCH_VERBOSE) {
      const phases = Object.entries(report.phases).map(([k, v]) => `${k}=${v.toFixed(1)}`);
      process.stderr.write(
        `  haven ${mb} MB: frozen ${report.frozenMs.toFixed(1)} ms (${phases.join(' ')})\n`,
      );
    }
    return report.stats?.frozenMs;
  });

  const archive = join(work, `haven-${mb}.tar`);
  await settleDisk();
  // Through the CLI, as Podman's and runc's rows are: what a user waits for.
  let started = performance.now();
  const exportRun = await host.cli(['checkpoint', 'hb', '--export', archive, '--compress', 'none']);
  const checkpointMs = performance.now() - started;
  if (exportRun.code !== 0) throw new Error(`haven checkpoint --export: ${exportRun.stderr}`);
  const exportAnswered = Number(/checkpoint and export took (\d+) ms/.exec(exportRun.stdout)?.[1]);
  // The original removed before the import, untimed, as Podman's flow below
  // removes its own (`podman rm -f`): its tear-down — the kill, the unmount
  // and the sync of the upper file system that comes with it — does not
  // share the two cores and the disk with the import it is compared to.
  await h.remove('hb', { force: true });
  await settleDisk();
  started = performance.now();
  const importRun = await host.cli(['restore', '--import', archive, '--name', 'hb2']);
  const restoreMs = performance.now() - started;
  if (importRun.code !== 0) throw new Error(`haven restore --import: ${importRun.stderr}`);
  const importAnswered = Number(/restored from \S+ in (\d+) ms/.exec(importRun.stdout)?.[1]);
  const archiveBytes = (await stat(archive)).size;
  if (process.env.HAVEN_BENCH_VERBOSE) {
    // With HAVEN_TRACE=1 too, the commands' own traces (each step's time since its start).
    process.stderr.write(`  haven ${mb} MB export: ${exportRun.stdout}${exportRun.stderr}`);
    process.stderr.write(`  haven ${mb} MB import: ${importRun.stdout}${importRun.stderr}`);
  }
  const logs2 = () => h.logs('hb2');
  const from = (await logs2()).length;
  process.kill((await h.inspect('hb2')).pid, 'SIGUSR1');
  const verified = /check ok/.test(await waitFor(logs2, /check (ok|FAILED)/, from));
  await h.remove('hb2', { force: true });
  await rm(archive, { force: true });
  return {
    system: 'haven',
    sizeMb: mb,
    ...freeze,
    havenFrozenMs: median(havenFrozen.slice(1)), // the first was the warm-up
    checkpointMs,
    archiveBytes,
    restoreMs,
    inCommandMs: exportAnswered + importAnswered,
    verified,
  };
}

async function benchRunc(host: TestHost, image: string, mb: number, work: string): Promise<Row> {
  // The same container, checkpointed through runc's own path (CRIU freezes, runc drives).
  const h = host.host;
  const c = host.config;
  await h.run({
    name: 'rb',
    image,
    ip: `${ip}/16`,
    args: memhogArgs(mb),
    memoryBytes: (mb + 256) * 1024 * 1024,
  });
  const logs = () => h.logs('rb');
  await waitFor(logs, /ready mb=/);
  const pid = (await h.inspect('rb')).pid;
  const netns = netnsPath(containerNetnsName(c, 'rb'));
  const runc = ['nsenter', `--net=${netns}`, 'runc', '--root', c.runcRoot, '--criu', c.criuPath];
  const dir = join(work, `runc-${mb}`);
  // Plain runc: CRIU's defaults (iptables network lock, cgroups dumped), not Haven's CRIU config.
  await writeFile(join(c.stateDir, 'containers', 'rb', 'criu.conf'), '');
  const freeze = await freezeMeasured(host, pid, logs, async () => {
    await run([
      ...runc,
      'checkpoint',
      '--leave-running',
      '--tcp-established',
      '--image-path',
      join(dir, 'lr'),
      '--work-path',
      join(dir, 'lr-work'),
      'rb',
    ]);
    return readDumpStats(join(dir, 'lr-work', 'stats-dump'))?.frozenMs;
  });
  await settleDisk();
  let started = performance.now();
  await run([
    ...runc,
    'checkpoint',
    '--tcp-established',
    '--image-path',
    join(dir, 'img'),
    '--work-path',
    join(dir, 'work'),
    'rb',
  ]);
  const checkpointMs = performance.now() - started;
  await settleDisk();
  started = performance.now();
  // runc restore re-attaches pipes as stdio; node would hand it sockets, so it runs under haven-shim.
  const bundle = join(c.stateDir, 'containers', 'rb', 'bundle');
  const restore = spawn(
    c.shimPath,
    [
      join(dir, 'restored.log'),
      join(dir, 'restored.exit'),
      '--',
      ...runc,
      'restore',
      '--detach',
      '--tcp-established',
      '--image-path',
      join(dir, 'img'),
      '--work-path',
      join(dir, 'rwork'),
      '--bundle',
      bundle,
      'rb',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  // The shim outlives runc (it is the container's parent): wait for its "runc-exit N" line only.
  const code = await new Promise<number>((resolve) => {
    let out = '';
    restore.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const match = /runc-exit (\d+)/.exec(out);
      if (match) resolve(Number(match[1]));
    });
    restore.on('close', () => resolve(-1));
  });
  restore.unref();
  const restoreMs = performance.now() - started;
  if (code !== 0)
    process.stderr.write(await readFile(join(dir, 'rwork', 'restore.log'), 'utf8').catch(() => ''));
  await h.remove('rb', { force: true });
  await rm(dir, { recursive: true, force: true });
  return { system: 'runc', sizeMb: mb, ...freeze, checkpointMs, restoreMs, verified: code === 0 };
}

const PODMAN = ['podman', '--cgroup-manager', 'cgroupfs', '--runtime', 'runc'];
const PODMAN_RUN = ['--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024', '--network', 'none'];

async function podmanImage(rootfs: string, work: string): Promise<string> {
  const tar = join(work, 'memhog-rootfs.tar');
  await run(['tar', '-C', rootfs, '-cf', tar, '.']);
  await run([...PODMAN, 'import', tar, 'localhost/haven-bench-memhog:latest']);
  return 'localhost/haven-bench-memhog:latest';
}

async function benchPodman(image: string, mb: number, work: string): Promise<Row> {
  const name = `havenbench-${process.pid}`;
  await run([...PODMAN, 'run', '-d', '--name', name, ...PODMAN_RUN, image, ...memhogArgs(mb)]);
  const logs = async () => (await run([...PODMAN, 'logs', name], { allowFailure: true })).stdout;
  await waitFor(logs, /ready mb=/);
  const pid = Number((await run([...PODMAN, 'inspect', '--format', '{{.State.Pid}}', name])).stdout.trim());
  const freeze = await freezeMeasured(undefined, pid, logs, async () =>
    podmanFrozenMs(
      (await run([...PODMAN, 'container', 'checkpoint', '--leave-running', '--print-stats', name])).stdout,
    ),
  );
  const archive = join(work, `podman-${mb}.tar`);
  await settleDisk();
  let started = performance.now();
  await run([...PODMAN, 'container', 'checkpoint', '--export', archive, name]);
  const checkpointMs = performance.now() - started;
  await run([...PODMAN, 'rm', '-f', name]);
  await settleDisk();
  started = performance.now();
  await run([...PODMAN, 'container', 'restore', '--import', archive, '--name', `${name}-2`]);
  const restoreMs = performance.now() - started;
  const { size } = await import('node:fs/promises').then((fs) => fs.stat(archive));
  const pid2 = Number(
    (await run([...PODMAN, 'inspect', '--format', '{{.State.Pid}}', `${name}-2`])).stdout.trim(),
  );
  const logs2 = async () => (await run([...PODMAN, 'logs', `${name}-2`], { allowFailure: true })).stdout;
  const from = (await logs2()).length;
  process.kill(pid2, 'SIGUSR1');
  const verified = /check ok/.test(await waitFor(logs2, /check (ok|FAILED)/, from));
  await run([...PODMAN, 'rm', '-f', `${name}-2`]);
  await rm(archive, { force: true });
  process.stderr.write(`podman ${mb} MB done\n`);
  return {
    system: 'podman',
    sizeMb: mb,
    ...freeze,
    checkpointMs,
    archiveBytes: size,
    restoreMs,
    verified,
  };
}

/** Podman's --print-stats JSON holds CRIU's dump statistics in microseconds. */
function podmanFrozenMs(stdout: string): number | undefined {
  const match = /"frozen_time":\s*(\d+)/.exec(stdout);
  return match ? Number(match[1]) / 1000 : undefined;
}

function table(rows: Row[]): string {
  const header = [
    'system',
    'MB',
    'freeze: client',
    'freeze: workload',
    'freeze: CRIU',
    'freeze: Haven',
    'checkpoint→archive',
    'restore',
    'total',
    'total in-command',
    'archive MB',
    'state ok',
  ];
  const fmt = (n: number | undefined, d = 1) => (n === undefined ? '-' : n.toFixed(d));
  const lines = rows.map((r) => [
    r.system,
    String(r.sizeMb),
    fmt(r.clientFreezeMs),
    fmt(r.workloadStallMs),
    fmt(r.criuFrozenMs),
    fmt(r.havenFrozenMs),
    fmt(r.checkpointMs, 0),
    fmt(r.restoreMs, 0),
    fmt(r.checkpointMs + r.restoreMs, 0),
    fmt(r.inCommandMs, 0),
    r.archiveBytes ? fmt(r.archiveBytes / 1048576, 0) : '-',
    r.verified ? 'yes' : 'NO',
  ]);
  const all = [header, ...lines];
  const widths = header.map((_, i) => Math.max(...all.map((l) => (l[i] ?? '').length)));
  const render = (l: string[]) => `| ${l.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ')} |`;
  return [render(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...lines.map(render)].join(
    '\n',
  );
}

async function main(): Promise<void> {
  const host = await TestHost.create('bench');
  const work = await mkdtemp(join(tmpdir(), 'haven-bench-'));
  const rows: Row[] = [];
  const podman = !values['no-podman'] && existsSync('/usr/bin/podman');
  try {
    await host.startClient();
    const image = await memhogImage();
    const podImage = podman ? await podmanImage(image, work) : '';
    for (const mb of sizes) {
      rows.push(await benchHaven(host, image, mb, work));
      rows.push(await benchRunc(host, image, mb, work));
      if (podman) rows.push(await benchPodman(podImage, mb, work));
      process.stderr.write(`${mb} MB done\n`);
    }
  } finally {
    await host.dispose();
    await rm(work, { recursive: true, force: true });
    if (podman)
      await run([...PODMAN, 'rmi', '-f', 'localhost/haven-bench-memhog:latest'], { allowFailure: true });
  }
  const out = join(REPO_ROOT, 'bench', 'results');
  await mkdir(out, { recursive: true });
  const file = join(out, `checkpoint-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  await writeFile(
    file,
    JSON.stringify(
      {
        date: new Date().toISOString(),
        kernel: (await readFile('/proc/sys/kernel/osrelease', 'utf8')).trim(),
        rows,
      },
      null,
      2,
    ),
  );
  console.log(table(rows));
  console.log(`\nresults: ${file}`);
  if (!podman) console.log('(podman rows skipped: install podman to include them)');
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
