/**
 * bench/migrate.ts: live migration of the C workload (fixtures/workload/memhog.c,
 * random content) between two lab hosts whose links are shaped to 1 Gbit/s
 * with tbf, for every strategy, beside Podman (checkpoint --export, the
 * archive copied over the same shaped link, restore --import) in the same run.
 *
 * Per case (size × dirty rate × strategy), a fresh workload on h1 moves to h2:
 *   - downtime seen by the workload: its own longest stall (a 1 ms ticker,
 *     read with SIGUSR2 after the move, reset just before it);
 *   - downtime seen by a client: the longest gap between replies of a TCP
 *     echo ping every 2 ms from the lab's client (bench/support/ping-until.mjs);
 *   - the controller's downtime (freeze to running on the destination);
 *   - total time: from the order until every page is on the destination and
 *     the workload's own check of all its memory passed there. The order,
 *     the look-ups and the log reads inside that window go to the
 *     controller's API from this process: each `haven` CLI process costs
 *     ~0.4 s to start on this machine, and the polls of `haven logs` for the
 *     check's answer had added 1–1.5 s to every total.
 * Issue 6's goals: downtime ≤ 300 ms for 1 GB at 1,000 pages/s with
 * post-copy and auto; total ≤ 1.3 × M/B.
 *
 * Usage: npm run bench:migrate -- [--sizes 256,1024] [--dirty 0,1000,10000]
 *          [--strategies stop-copy,pre-copy,post-copy,hybrid,auto] [--rate 1gbit] [--no-podman]
 *          [--stop-at HH:MM]   (no new case after that UTC time; the table says which were not run)
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT } from '../src/core/config.js';
import { run } from '../src/core/exec.js';
import { memhogImage } from '../src/fixtures/images.js';
import { runHaven, waitUntil } from '../src/lab/cli-driver.js';
import { ClusterClient, findCluster } from '../src/cli/cluster-client.js';
import { CLIENT_NETNS } from '../src/lab/index.js';
import { benchArgs } from './support/args.js';

const { values } = benchArgs(import.meta.url, {
  options: {
    sizes: { type: 'string', default: '256,1024' },
    dirty: { type: 'string', default: '0,1000,10000' },
    strategies: { type: 'string', default: 'stop-copy,pre-copy,post-copy,hybrid,auto' },
    rate: { type: 'string', default: '1gbit' },
    'no-podman': { type: 'boolean' },
    /** Start no new case after this time of day, UTC (HH:MM); the rows so far are still reported. */
    'stop-at': { type: 'string' },
  },
});
const STOP_AT = values['stop-at']
  ? new Date(`${new Date().toISOString().slice(0, 10)}T${values['stop-at']}:00Z`).getTime()
  : Number.POSITIVE_INFINITY;
const overBudget = (): boolean => Date.now() > STOP_AT;
const SIZES = values.sizes.split(',').map(Number);
const DIRTY = values.dirty.split(',').map(Number);
const STRATEGIES = values.strategies.split(',');
const PORT = 7000;

interface Row {
  sizeMb: number;
  dirty: number;
  asked: string;
  strategy: string;
  ok: boolean;
  workloadStallMs?: number;
  clientGapMs?: number;
  connection?: string;
  controllerDowntimeMs?: number;
  totalMs?: number;
  checked?: boolean;
  rounds?: string;
  note?: string;
}

async function haven(args: string[], timeoutMs = 600_000): Promise<string> {
  const result = await runHaven(args, {}, timeoutMs);
  if (result.code !== 0) throw new Error(`haven ${args.join(' ')}: ${result.stderr.trim()}`);
  return result.stdout;
}

/** The lab's controller, called from this process (set once the lab is up). */
let api: ClusterClient;

async function view(name: string): Promise<{ pid: number; ip: string; host: string; state: string }> {
  return api.call(`/v1/containers/${encodeURIComponent(name)}`);
}

function logs(name: string): Promise<string> {
  return api.call<string>(`/v1/containers/${encodeURIComponent(name)}/logs`);
}

/** The first match of `pattern` in the container's log after offset `from` (polled every 10 ms). */
async function logLine(name: string, pattern: RegExp, from: number, timeoutMs = 300_000): Promise<string> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const found = pattern.exec((await logs(name).catch(() => '')).slice(from))?.[0];
    if (found !== undefined) return found;
    if (performance.now() > deadline)
      throw new Error(`timed out waiting for ${String(pattern)} in ${name}'s log`);
    await sleep(10);
  }
}

/** Signals the workload and returns its answer line. */
async function ask(name: string, signal: 'SIGUSR1' | 'SIGUSR2', pattern: RegExp): Promise<string> {
  const from = (await logs(name)).length;
  process.kill((await view(name)).pid, signal);
  return logLine(name, pattern, from);
}

/** What the client felt (the last line of ping-until.mjs). */
interface Felt {
  maxGapMs: number;
  error?: string;
  /** False when no reply came after the move, even after a wait (see ping-until.mjs). */
  resumed?: boolean;
}

/** How a client's connection came through the move. */
function connectionOf(felt: Felt): string {
  if (felt.error) return `broken (${felt.error})`;
  return felt.resumed === false ? 'silent (no reply within 60 s)' : 'kept';
}

/** A client pinging the workload from the lab's client namespace until stopped. */
function pinger(ip: string): { stop: () => Promise<Felt> } {
  const child = spawn(
    'nsenter',
    [
      `--net=/run/netns/${CLIENT_NETNS}`,
      process.execPath,
      join(REPO_ROOT, 'bench', 'support', 'ping-until.mjs'),
      ip,
      String(PORT),
      '2',
      '60000',
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  const closed = new Promise<void>((resolve) => child.on('close', () => resolve()));
  return {
    stop: async () => {
      child.stdin.end();
      await closed;
      return JSON.parse(out.trim().split('\n').pop() ?? '{}') as Felt;
    },
  };
}

interface Report {
  strategy: string;
  finalFrozenMs: number;
  finalRoundMs: number;
  assembleMs: number;
  restoreMs: number;
  why: string;
  rounds: Array<{ round: number; frozenMs: number; sentBytes: number }>;
  downtimeMs: number;
  totalMs: number;
}

let serial = 0;

async function migrateCase(sizeMb: number, dirty: number, asked: string): Promise<Row> {
  const name = `mh${++serial}`;
  await haven([
    'run',
    name,
    '--image',
    'memhog',
    '--host',
    'h1',
    '--memory',
    `${Math.ceil(sizeMb * 1.25 + 64)}m`,
    '--',
    '/bin/memhog',
    '--mb',
    String(sizeMb),
    '--mode',
    'random',
    '--dirty',
    String(dirty),
    '--seed',
    String(serial),
    '--port',
    String(PORT),
  ]);
  const row: Row = { sizeMb, dirty, asked, strategy: asked, ok: false };
  try {
    await logLine(name, /ready mb=/, 0);
    const before = await view(name);
    const ping = pinger(before.ip);
    await sleep(1500);
    await ask(name, 'SIGUSR2', /stall max_ms=[\d.]+/); // resets the workload's maximum
    const started = performance.now();
    let report: Report;
    try {
      report = await api.call<Report>(`/v1/containers/${name}/migrate`, {
        method: 'POST',
        body: { to: 'h2', strategy: asked, maxDowntimeMs: 300 },
        timeoutMs: 1_800_000,
      });
    } catch (error) {
      row.note = error instanceof Error ? error.message : String(error);
      await ping.stop();
      return row;
    }
    const checked = /check ok/.test(await ask(name, 'SIGUSR1', /check (ok|FAILED)[^\n]*/));
    const totalMs = performance.now() - started;
    const stall = await ask(name, 'SIGUSR2', /stall max_ms=([\d.]+)/);
    await sleep(200);
    const felt = await ping.stop();
    Object.assign(row, {
      ok: checked && (await view(name)).host === 'h2',
      strategy: report.strategy,
      workloadStallMs: Number(/[\d.]+$/.exec(stall)?.[0] ?? NaN),
      clientGapMs: felt.maxGapMs,
      connection: connectionOf(felt),
      controllerDowntimeMs: report.downtimeMs,
      totalMs: Math.round(totalMs),
      checked,
      rounds: report.rounds
        .map((r) => `${r.round}: ${(r.sentBytes / 1e6).toFixed(0)} MB, stall ${r.frozenMs} ms`)
        .join('; '),
      // Where the controller's downtime went (post-copy: the freeze to the images, then the round's end).
      note: [
        `frozen to images/final checkpoint ${report.finalFrozenMs} ms, final round ${report.finalRoundMs} ms, ` +
          `assemble ${report.assembleMs} ms, restore ${report.restoreMs} ms`,
        asked === 'auto' ? `auto: ${report.why}` : '',
      ]
        .filter(Boolean)
        .join('; '),
    });
    return row;
  } finally {
    await haven(['rm', name, '--force']).catch(() => undefined);
  }
}

// ------------------------------------------------------------------ Podman

const PODMAN = ['podman', '--cgroup-manager', 'cgroupfs', '--runtime', 'runc'];
const PODMAN_RUN = ['--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024', '--network', 'none'];

/** Copies `file` from h1's namespace to h2's over the lab link (shaped like Haven's transfers). */
async function copyOverLink(file: string, to: string): Promise<void> {
  const receiver = spawn('nsenter', [
    '--net=/run/netns/hvlab-h2',
    process.execPath,
    '-e',
    `const s=require('net').createServer(c=>{c.pipe(require('fs').createWriteStream(process.argv[1])).on('finish',()=>{s.close();})});s.listen(7999,'10.88.0.12',()=>console.log('up'))`,
    to,
  ]);
  await new Promise<void>((resolve) => receiver.stdout.once('data', () => resolve()));
  const done = new Promise<void>((resolve) => receiver.on('close', () => resolve()));
  await run([
    'nsenter',
    '--net=/run/netns/hvlab-h1',
    process.execPath,
    '-e',
    `const c=require('net').connect(7999,'10.88.0.12',()=>require('fs').createReadStream(process.argv[1]).pipe(c));`,
    file,
  ]);
  await done;
}

async function podmanCase(sizeMb: number, dirty: number, image: string, work: string): Promise<Row> {
  const name = `havenbench-mig-${process.pid}`;
  const row: Row = { sizeMb, dirty, asked: 'podman', strategy: 'podman export→copy→import', ok: false };
  // One at a time: podman rm stops at the first name it does not know.
  for (const n of [name, `${name}-2`]) await run([...PODMAN, 'rm', '-f', n], { allowFailure: true });
  await run([
    ...PODMAN,
    'run',
    '-d',
    '--name',
    name,
    ...PODMAN_RUN,
    image,
    '/bin/memhog',
    '--mb',
    String(sizeMb),
    '--mode',
    'random',
    '--dirty',
    String(dirty),
    '--seed',
    '5',
  ]);
  const logs = async (n: string): Promise<string> =>
    (await run([...PODMAN, 'logs', n], { allowFailure: true })).stdout;
  const line = (n: string, pattern: RegExp, from: number): Promise<string> =>
    waitUntil(`${String(pattern)}`, async () => pattern.exec((await logs(n)).slice(from))?.[0], 300_000);
  const pidOf = async (n: string): Promise<number> =>
    Number((await run([...PODMAN, 'inspect', '--format', '{{.State.Pid}}', n])).stdout.trim());
  try {
    await line(name, /ready mb=/, 0);
    let from = (await logs(name)).length;
    process.kill(await pidOf(name), 'SIGUSR2');
    await line(name, /stall max_ms=/, from);
    const archive = join(work, 'podman.tar');
    const copied = join(work, 'podman-copied.tar');
    const started = performance.now();
    await run([...PODMAN, 'container', 'checkpoint', '--export', archive, name]);
    await copyOverLink(archive, copied);
    await run([...PODMAN, 'rm', '-f', name]);
    await run([...PODMAN, 'container', 'restore', '--import', copied, '--name', `${name}-2`]);
    const downtimeMs = performance.now() - started;
    const size = (await stat(archive)).size;
    await rm(archive, { force: true });
    from = (await logs(`${name}-2`)).length;
    process.kill(await pidOf(`${name}-2`), 'SIGUSR1');
    const checked = /check ok/.test(await line(`${name}-2`, /check (ok|FAILED)/, from));
    const totalMs = performance.now() - started;
    from = (await logs(`${name}-2`)).length;
    process.kill(await pidOf(`${name}-2`), 'SIGUSR2');
    const stall = await line(`${name}-2`, /stall max_ms=[\d.]+/, from);
    await rm(copied, { force: true });
    Object.assign(row, {
      ok: checked,
      workloadStallMs: Number(/[\d.]+$/.exec(stall)?.[0] ?? NaN),
      controllerDowntimeMs: Math.round(downtimeMs),
      totalMs: Math.round(totalMs),
      checked,
      note: `archive ${(size / 1e6).toFixed(0)} MB; no network (--network none): no client ping`,
    });
  } catch (error) {
    row.note = String(error).slice(0, 300);
  } finally {
    for (const n of [name, `${name}-2`]) await run([...PODMAN, 'rm', '-f', n], { allowFailure: true });
  }
  return row;
}

async function podmanImage(work: string): Promise<string> {
  const tar = join(work, 'memhog-rootfs.tar');
  await run(['tar', '-C', await memhogImage(), '-cf', tar, '.']);
  await run([...PODMAN, 'import', tar, 'localhost/haven-bench-memhog:latest']);
  await rm(tar, { force: true });
  return 'localhost/haven-bench-memhog:latest';
}

// ------------------------------------------------------------------ main

function table(rows: Row[]): string {
  const head =
    '| MB | dirty pages/s | strategy | workload stall ms | client gap ms | controller downtime ms | total ms | 1.3·M/B ms | check | connection | notes |';
  const lines = rows.map((r) => {
    // M in bytes (memhog's --mb is MiB) over 1 Gbit/s = 125,000 bytes per ms.
    const bound = Math.round((1.3 * r.sizeMb * 1024 * 1024) / 125_000);
    const n = (x: number | undefined): string =>
      x === undefined || Number.isNaN(x) ? '–' : String(Math.round(x));
    return (
      `| ${r.sizeMb} | ${r.dirty} | ${r.asked === r.strategy ? r.strategy : `${r.asked} → ${r.strategy}`} | ` +
      `${n(r.workloadStallMs)} | ${n(r.clientGapMs)} | ${n(r.controllerDowntimeMs)} | ${n(r.totalMs)} | ${bound} | ` +
      `${r.checked === undefined ? '–' : r.checked ? 'ok' : 'FAILED'} | ${r.connection ?? '–'} | ` +
      `${[r.rounds ? `rounds ${r.rounds}` : '', r.note ?? ''].filter(Boolean).join('; ').replace(/\|/g, '/')} |`
    );
  });
  return [head, `|${'---|'.repeat(11)}`, ...lines].join('\n');
}

async function main(): Promise<void> {
  const work = join('/var/tmp', `haven-bench-migrate-${process.pid}`);
  await mkdir(work, { recursive: true });
  const podman = !values['no-podman'] && existsSync('/usr/bin/podman');
  const rows: Row[] = [];
  const load = (await run(['cat', '/proc/loadavg'])).stdout.trim();
  try {
    await haven(['lab', 'down']);
    await haven(['lab', 'up', '--hosts', '2'], 180_000);
    await waitUntil(
      'two hosts up',
      async () => {
        const list = JSON.parse(await haven(['host', 'ls', '--json']).catch(() => '[]')) as Array<{
          state: string;
        }>;
        return list.filter((h) => h.state === 'up').length === 2 ? true : undefined;
      },
      120_000,
    );
    const cluster = findCluster();
    if (!cluster) throw new Error("the lab's hosts are up but its controller was not found");
    api = new ClusterClient(cluster);
    await haven(['image', 'push', await memhogImage(), '--name', 'memhog']);
    for (const h of ['h1', 'h2']) await haven(['lab', 'shape', h, '--rate', values.rate]);
    const podImage = podman ? await podmanImage(work) : '';
    for (const sizeMb of SIZES)
      for (const dirty of DIRTY) {
        for (const strategy of STRATEGIES) {
          if (overBudget()) {
            rows.push({
              sizeMb,
              dirty,
              asked: strategy,
              strategy,
              ok: false,
              note: 'not run (--stop-at)',
            });
            continue;
          }
          // One case failing (a time-out, a crash) is a row, not the end of the run.
          const row = await migrateCase(sizeMb, dirty, strategy).catch((error: unknown): Row => ({
            sizeMb,
            dirty,
            asked: strategy,
            strategy,
            ok: false,
            note: `bench error: ${String(error).slice(0, 300)}`,
          }));
          rows.push(row);
          process.stderr.write(`${JSON.stringify(row)}\n`);
        }
        if (podman && !overBudget()) {
          const row = await podmanCase(sizeMb, dirty, podImage, work);
          rows.push(row);
          process.stderr.write(`${JSON.stringify(row)}\n`);
        }
      }
  } finally {
    await haven(['lab', 'down']).catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  }
  const out = join(REPO_ROOT, 'bench', 'results');
  await mkdir(out, { recursive: true });
  const file = join(out, `migrate-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  await writeFile(file, JSON.stringify({ rate: values.rate, loadBefore: load, rows }, null, 2));
  console.log(`link ${values.rate} (tbf on both hosts' links); load average before: ${load}`);
  console.log(table(rows));
  console.log(`\n(rows also in ${file})`);
}

await main();
// Results are written: end here rather than wait for the event loop to drain
// (a run was seen to linger after its table, holding the lab lock).
process.exit(0);
