/**
 * bench/continuous.ts: what continuous protection (Remus, output commit)
 * costs a Redis server. On a 3-host lab, in one run: redis-benchmark from the
 * lab's client (SET and GET, 50 clients, pipelining -P 64) against
 * unprotected Redis, then against Haven `--ha continuous` at each epoch
 * length, each Redis holding ~64 MB. Per row: throughput, p50 and p99
 * latency (redis-benchmark's own), and from the primary's reports: epochs
 * committed per second, freeze per epoch, bytes shipped per epoch, where an
 * epoch's time goes (checkpoint, chunking, transfer), and the CPU the primary's
 * and the backup's agents used per epoch (their own and their children's:
 * CRIU, runc, tar); and the TCP retransmission time-outs the primary host's
 * sockets took during the run (the output-commit proxy's: a request the
 * container's lock dropped waits out such a timer unless it is held).
 *
 * Goals (issue 7), for a 64 MB Redis: throughput ≥ 50% of unprotected at
 * 100 ms epochs and ≥ 70% at 500 ms; p99 ≤ epoch + freeze + 30 ms.
 *
 * Usage: npm run bench:continuous -- [--epochs 50,100,200,500] [--mb 64] [--requests 100000]
 */
import { readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT } from '../src/core/config.js';
import { run } from '../src/core/exec.js';
import { redisImage, REDIS_ARGS } from '../src/fixtures/images.js';
import { runHaven, waitUntil } from '../src/lab/cli-driver.js';
import { CLIENT_NETNS, hostNetns, readSupervisorStatus } from '../src/lab/index.js';
import { benchArgs } from './support/args.js';

const { values } = benchArgs(import.meta.url, {
  options: {
    epochs: { type: 'string', default: '50,100,200,500' },
    mb: { type: 'string', default: '64' },
    requests: { type: 'string', default: '100000' },
  },
});
const EPOCHS = values.epochs.split(',').map(Number);
const MB = Number(values.mb);
const REQUESTS = Number(values.requests);

async function haven(args: string[]): Promise<string> {
  const result = await runHaven(args);
  if (result.code !== 0) throw new Error(`haven ${args.join(' ')} failed: ${result.stderr.trim()}`);
  return result.stdout;
}

const inClient = (argv: string[], input?: string, timeoutMs = 300_000) =>
  run(['nsenter', `--net=/run/netns/${CLIENT_NETNS}`, ...argv], {
    timeoutMs,
    ...(input !== undefined ? { input } : {}),
  });

interface View {
  host: string;
  ip: string;
  protection: {
    backup: string | null;
    committedEpoch: number | null;
    serviceAddress?: string;
    epochRate: number | null;
    frozenMs: number | null;
    sentBytes: number | null;
    totalBytes: number | null;
    epochMs: number | null;
    phases?: { checkpointMs: number; chunkMs: number; transferMs: number };
    output?: { mode: string; outputDelayMs: number };
    epochsCommitted?: number;
  };
}

const inspect = async (name: string): Promise<View> =>
  JSON.parse(await haven(['inspect', name, '--json'])) as View;

/** CPU seconds of a process and its waited-for children (utime + stime + cutime + cstime). */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  // Fields 14–17 of stat (1-based), i.e. 11–14 after the "(comm) " split.
  const ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i]), 0);
  return ticks / 100;
}

/** TCP retransmission time-outs so far in a lab host's network namespace (nstat's TcpExtTCPTimeouts). */
async function tcpTimeouts(host: string): Promise<number> {
  const out = await run(['ip', 'netns', 'exec', hostNetns(host), 'nstat', '-saz', 'TcpExtTCPTimeouts']);
  return Number(/TcpExtTCPTimeouts\s+(\d+)/.exec(out.stdout)?.[1] ?? NaN);
}

function agentPid(host: string): number {
  const pid = readSupervisorStatus()?.hosts[host]?.pid;
  if (!pid) throw new Error(`no agent pid for ${host}`);
  return pid;
}

/** redis-benchmark --csv: test → [rps, p50, p99]. */
async function redisBenchmark(
  address: string,
): Promise<Record<string, { rps: number; p50: number; p99: number }>> {
  const result = await inClient(
    [
      'redis-benchmark',
      '-h',
      address,
      '-p',
      '6379',
      '-c',
      '50',
      '-P',
      '64',
      '-t',
      'set,get',
      '-n',
      String(REQUESTS),
      '-r',
      '100000',
      '--csv',
    ],
    undefined,
    600_000,
  );
  const rows: Record<string, { rps: number; p50: number; p99: number }> = {};
  const lines = result.stdout.trim().split('\n');
  const header = lines[0]!.split(',').map((h) => h.replace(/"/g, ''));
  for (const line of lines.slice(1)) {
    const cells = line.split(',').map((c) => c.replace(/"/g, ''));
    const at = (name: string): number => Number(cells[header.indexOf(name)]);
    rows[cells[0]!] = { rps: at('rps'), p50: at('p50_latency_ms'), p99: at('p99_latency_ms') };
  }
  return rows;
}

/** ~MB megabytes of 1 KiB values. */
async function load(address: string): Promise<void> {
  const value = 'x'.repeat(1000);
  const lines = Array.from({ length: MB * 1024 }, (_, i) => `SET key:${i} ${value}`).join('\n');
  await inClient(['redis-cli', '-h', address, '--pipe'], `${lines}\n`);
}

interface Row {
  system: string;
  epochMs: number | null;
  setRps: number;
  getRps: number;
  setP50: number;
  setP99: number;
  getP50: number;
  getP99: number;
  epochsPerSec: number | null;
  freezeMs: number | null;
  sentKB: number | null;
  totalMB: number | null;
  checkpointMs: number | null;
  chunkMs: number | null;
  transferMs: number | null;
  primaryCpuMsPerEpoch: number | null;
  backupCpuMsPerEpoch: number | null;
  /** On the primary's host during redis-benchmark (unprotected: the host the container runs on). */
  tcpTimeouts: number;
}

async function measure(name: string, epochMs: number | null): Promise<Row> {
  const args = ['run', name, '--image', 'redis', '--memory', `${MB * 4}m`];
  if (epochMs !== null) args.push('--ha', 'continuous', '--epoch', `${epochMs}ms`, '--publish', '6379');
  await haven([...args, '--', ...REDIS_ARGS]);
  let view = await inspect(name);
  const address = epochMs === null ? view.ip : view.protection.serviceAddress!;
  await waitUntil(
    'redis',
    async () =>
      (await inClient(['redis-cli', '-h', address, 'PING'], undefined, 10_000)).stdout.trim() === 'PONG'
        ? true
        : undefined,
    60_000,
  );
  await load(address);
  const loaded = Date.now();
  if (epochMs !== null) {
    view = await waitUntil(
      'an epoch after the load',
      async () => {
        const v = await inspect(name);
        return (v.protection.committedEpoch ?? 0) > loaded + 500 ? v : undefined;
      },
      120_000,
    );
  }
  const primaryPid = agentPid(view.host);
  const backupPid = view.protection.backup ? agentPid(view.protection.backup) : undefined;
  const cpuBefore = [cpuSeconds(primaryPid), backupPid ? cpuSeconds(backupPid) : 0];
  const epochsBefore = epochMs === null ? 0 : await epochsCommitted(name);
  const timeoutsBefore = await tcpTimeouts(view.host);
  const rows = await redisBenchmark(address);
  const timeouts = (await tcpTimeouts(view.host)) - timeoutsBefore;
  const after = await inspect(name);
  const epochs = epochMs === null ? 0 : (await epochsCommitted(name)) - epochsBefore;
  const cpuAfter = [cpuSeconds(primaryPid), backupPid ? cpuSeconds(backupPid) : 0];
  await haven(['rm', '--force', name]);
  const p = after.protection;
  const perEpoch = (i: number): number | null =>
    epochs > 0 ? Math.round(((cpuAfter[i]! - cpuBefore[i]!) * 1000) / epochs) : null;
  return {
    system: epochMs === null ? 'unprotected' : `continuous ${epochMs} ms`,
    epochMs,
    setRps: rows.SET?.rps ?? 0,
    getRps: rows.GET?.rps ?? 0,
    setP50: rows.SET?.p50 ?? 0,
    setP99: rows.SET?.p99 ?? 0,
    getP50: rows.GET?.p50 ?? 0,
    getP99: rows.GET?.p99 ?? 0,
    epochsPerSec: epochMs === null ? null : p.epochRate,
    freezeMs: epochMs === null ? null : p.frozenMs,
    sentKB: epochMs === null || p.sentBytes === null ? null : Math.round(p.sentBytes / 1024),
    totalMB: epochMs === null || p.totalBytes === null ? null : Math.round(p.totalBytes / 1e5) / 10,
    checkpointMs: p.phases?.checkpointMs ?? null,
    chunkMs: p.phases?.chunkMs ?? null,
    transferMs: p.phases?.transferMs ?? null,
    primaryCpuMsPerEpoch: perEpoch(0),
    backupCpuMsPerEpoch: perEpoch(1),
    tcpTimeouts: timeouts,
  };
}

/** Epochs committed so far, as the primary last reported (every ~1 s: one heartbeat report later). */
async function epochsCommitted(name: string): Promise<number> {
  await sleep(1200);
  return (await inspect(name)).protection.epochsCommitted ?? 0;
}

async function main(): Promise<void> {
  await runHaven(['lab', 'down']);
  await haven(['lab', 'up', '--hosts', '3']);
  await waitUntil(
    '3 hosts up',
    async () => {
      const hosts = JSON.parse(await haven(['host', 'ls', '--json'])) as Array<{ state: string }>;
      return hosts.filter((h) => h.state === 'up').length === 3 ? true : undefined;
    },
    60_000,
  );
  await haven(['image', 'push', await redisImage(), '--name', 'redis']);
  const results: Row[] = [];
  try {
    results.push(await measure('bench-plain', null));
    for (const epoch of EPOCHS) {
      results.push(await measure(`bench-c${epoch}`, epoch));
      await sleep(1000);
    }
  } finally {
    await runHaven(['lab', 'down']);
  }
  const plain = results[0]!;
  console.log(
    `\ncontinuous protection, Redis ~${MB} MB, redis-benchmark -c 50 -P 64 -n ${REQUESTS} (SET, GET); latencies in ms\n`,
  );
  console.table(
    results.map((r) => ({
      system: r.system,
      'SET rps': Math.round(r.setRps),
      'SET %': `${Math.round((100 * r.setRps) / plain.setRps)}%`,
      'GET rps': Math.round(r.getRps),
      'GET %': `${Math.round((100 * r.getRps) / plain.getRps)}%`,
      'SET p50/p99': `${r.setP50}/${r.setP99}`,
      'GET p50/p99': `${r.getP50}/${r.getP99}`,
      'epochs/s': r.epochsPerSec ?? '-',
      'freeze ms': r.freezeMs ?? '-',
      'sent KB/epoch': r.sentKB ?? '-',
      'checkpoint MB': r.totalMB ?? '-',
      'ckpt/chunk/xfer ms': r.checkpointMs === null ? '-' : `${r.checkpointMs}/${r.chunkMs}/${r.transferMs}`,
      'CPU ms/epoch (primary/backup)':
        r.primaryCpuMsPerEpoch === null ? '-' : `${r.primaryCpuMsPerEpoch}/${r.backupCpuMsPerEpoch}`,
      'TCP RTO time-outs': r.tcpTimeouts,
    })),
  );
  const dir = join(REPO_ROOT, 'bench', 'results');
  await mkdir(dir, { recursive: true });
  const file = join(dir, `continuous-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  await writeFile(file, JSON.stringify({ mb: MB, requests: REQUESTS, results }, null, 2));
  console.log(`\nJSON: ${file}`);
}

await main();
