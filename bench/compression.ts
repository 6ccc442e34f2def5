/**
 * bench/compression.ts: the chunk transfer's compression over a shaped lab
 * link — each setting (none, lz4, zstd, gzip, auto) sending the same amount
 * of fresh content, random (as a C workload's memory) and text-like (words
 * and numbers, as keys, logs and heaps of strings), from the lab's `client`
 * into host h2's agent (its replica store: every chunk decompressed and
 * hash-checked there, as in a migration), with tbf on h2's link.
 *
 * Settings are interleaved, in a rotating order, trial by trial. Time = the
 * `missing` question plus the stream until h2 has stored the last
 * chunk. Every trial sends new content (chunks are content-addressed: a
 * repeat would send nothing). The goal (issue 6): `auto` within 10% of the
 * best fixed codec on each case.
 *
 * Usage (root; it brings a 2-host lab up and down, so hold the lab lock):
 *   flock /run/haven-lab.lock node dist/bench/compression.js [--rates 1gbit,200mbit] [--mb 64] [--trials 3]
 * It runs itself again inside the client's network namespace (`--send`).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO_ROOT } from '../src/core/config.js';
import { run } from '../src/core/exec.js';
import { runHaven, waitUntil } from '../src/lab/cli-driver.js';
import { AGENT_PORT, CLIENT_NETNS, hostAddress, LAB_PATHS } from '../src/lab/index.js';
import { CHUNK_BYTES, sha256 } from '../src/replication/chunks.js';
import { COMPRESS_SETTINGS, type CompressSetting } from '../src/replication/compression.js';
import { sendChunks, type TransferResult } from '../src/replication/transfer.js';
import { benchArgs } from './support/args.js';

const { values } = benchArgs(import.meta.url, {
  options: {
    rates: { type: 'string', default: '1gbit,200mbit' },
    mb: { type: 'string', default: '64' },
    trials: { type: 'string', default: '3' },
    send: { type: 'boolean', default: false },
    setting: { type: 'string' },
    content: { type: 'string' },
    seed: { type: 'string', default: '1' },
  },
});
const MB = Number(values.mb);
const TRIALS = Number(values.trials);
const CONTENTS = ['random', 'text'] as const;
type Content = (typeof CONTENTS)[number];

/**
 * Text-like bytes: words, keys and numbers from a pseudo-random sequence
 * (fresh per seed). lz4 shrinks it about 2.5×, zstd and gzip about 4×.
 */
function textLike(bytes: number, seed: number): Buffer {
  const words = [
    'user',
    'session',
    'id',
    'GET',
    'POST',
    '/api/v1/items',
    'status',
    'ok',
    'error',
    'timeout',
    'value',
    'key:',
    'the',
    'of',
    'and',
    'cache',
    'hit',
    'miss',
  ];
  const out = Buffer.alloc(bytes);
  let at = 0;
  let x = seed >>> 0 || 1;
  while (at < bytes) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    const word = x % 3 === 0 ? String(x % 100_000) : words[x % words.length]!;
    at += out.write(`${word}${x % 7 === 0 ? '\n' : ' '}`, at);
  }
  return out;
}

/** One transfer, inside the client's namespace: prints its result as JSON. */
async function send(): Promise<void> {
  const setting = values.setting as CompressSetting;
  const content = values.content as Content;
  const seed = Number(values.seed);
  const token = (await readFile(join(LAB_PATHS.stateDir, 'token'), 'utf8')).trim();
  const chunks = new Map<string, Buffer>();
  for (let i = 0; i < (MB << 20) / CHUNK_BYTES; i++) {
    const data = content === 'random' ? randomBytes(CHUNK_BYTES) : textLike(CHUNK_BYTES, seed * 100_003 + i);
    chunks.set(sha256(data), data);
  }
  const address = `http://${hostAddress('h2')}:${AGENT_PORT}`;
  // An agent is a long-lived process that loaded its codecs once: the native addons' first load
  // (~20 ms here) is not part of a transfer, whatever the setting.
  await Promise.all([import('lz4-napi'), import('@mongodb-js/zstd')]);
  const started = performance.now();
  const result = await sendChunks(
    address,
    token,
    `bench-${seed}`,
    [...chunks.keys()],
    (h) => Promise.resolve(chunks.get(h)!),
    setting === 'none' ? {} : { compress: setting },
  );
  process.stdout.write(JSON.stringify({ ...result, wallMs: performance.now() - started }));
}

interface Row {
  rate: string;
  content: Content;
  setting: CompressSetting;
  trialsMs: number[];
  medianMs: number;
  mbPerS: number;
  wireRatio: number;
  codecs: TransferResult['codecs'];
  decisions?: TransferResult['decisions'];
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function haven(args: string[]): Promise<string> {
  const result = await runHaven(args, {}, 300_000);
  if (result.code !== 0) throw new Error(`haven ${args.join(' ')} failed: ${result.stderr.trim()}`);
  return result.stdout;
}

async function main(): Promise<void> {
  if (values.send) return send();
  const rates = values.rates.split(',');
  await runHaven(['lab', 'down']);
  await haven(['lab', 'up', '--hosts', '2']);
  await waitUntil(
    'both hosts up',
    async () => {
      const hosts = JSON.parse(await haven(['host', 'ls', '--json'])) as Array<{ state: string }>;
      return hosts.filter((h) => h.state === 'up').length === 2 ? true : undefined;
    },
    60_000,
  );
  const rows: Row[] = [];
  let seed = Date.now() % 1_000_000;
  try {
    for (const rate of rates) {
      await haven(['lab', 'shape', 'h2', '--rate', rate]);
      for (const content of CONTENTS) {
        // Settings interleaved, in a rotating order: load on a shared machine drifts, and
        // every setting should meet the same drift.
        const bySetting = new Map<CompressSetting, Array<TransferResult & { wallMs: number }>>(
          COMPRESS_SETTINGS.map((s) => [s, []]),
        );
        for (let t = 0; t < TRIALS; t++) {
          for (let k = 0; k < COMPRESS_SETTINGS.length; k++) {
            const setting = COMPRESS_SETTINGS[(k + t) % COMPRESS_SETTINGS.length]!;
            const out = await run(
              [
                'nsenter',
                `--net=/run/netns/${CLIENT_NETNS}`,
                process.execPath,
                join(REPO_ROOT, 'dist', 'bench', 'compression.js'),
                '--send',
                '--setting',
                setting,
                '--content',
                content,
                '--mb',
                String(MB),
                '--seed',
                String(seed++),
              ],
              { timeoutMs: 600_000, allowFailure: true },
            );
            if (out.code !== 0) throw new Error(`a transfer failed: ${out.stderr.trim().slice(0, 2000)}`);
            bySetting.get(setting)!.push(JSON.parse(out.stdout) as TransferResult & { wallMs: number });
          }
        }
        for (const setting of COMPRESS_SETTINGS) {
          const trials = bySetting.get(setting)!;
          const times = trials.map((r) => Math.round(r.askMs + r.sendMs));
          const mid = trials[times.indexOf(median(times))]!;
          const row: Row = {
            rate,
            content,
            setting,
            trialsMs: times,
            medianMs: median(times),
            mbPerS: Math.round((MB * 1.048576 * 1000) / median(times)),
            wireRatio: Math.round((mid.wireBytes / mid.sentBytes) * 1000) / 1000,
            codecs: mid.codecs,
            ...(mid.decisions ? { decisions: mid.decisions } : {}),
          };
          rows.push(row);
          process.stdout.write(
            `${rate.padEnd(8)} ${content.padEnd(7)} ${setting.padEnd(5)} ${String(row.medianMs).padStart(6)} ms ` +
              `(${times.join(', ')})  ${String(row.mbPerS).padStart(5)} MB/s  wire ${row.wireRatio}  ${JSON.stringify(row.codecs)}` +
              `${row.decisions ? `  auto: ${row.decisions.map((d) => d.codec).join(' → ')}` : ''}\n`,
          );
        }
      }
    }
  } finally {
    await runHaven(['lab', 'down']);
  }
  // The goal: auto within 10% of the best fixed codec on each case.
  const verdicts: string[] = [];
  for (const rate of rates) {
    for (const content of CONTENTS) {
      const fixed = rows.filter((r) => r.rate === rate && r.content === content && r.setting !== 'auto');
      const best = fixed.reduce((a, b) => (b.medianMs < a.medianMs ? b : a));
      const auto = rows.find((r) => r.rate === rate && r.content === content && r.setting === 'auto')!;
      const ratio = auto.medianMs / best.medianMs;
      verdicts.push(
        `${rate} ${content}: auto ${auto.medianMs} ms, best fixed ${best.setting} ${best.medianMs} ms → ` +
          `${ratio.toFixed(2)}× (${ratio <= 1.1 ? 'within 10%' : 'NOT within 10%'})`,
      );
    }
  }
  process.stdout.write(`${verdicts.join('\n')}\n`);
  const dir = join(REPO_ROOT, 'bench', 'results');
  await mkdir(dir, { recursive: true });
  const file = join(dir, `compression-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  await writeFile(file, JSON.stringify({ mb: MB, trials: TRIALS, rows, verdicts }, null, 2));
  process.stdout.write(`results: ${file}\n`);
}

await main();
