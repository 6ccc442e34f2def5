/**
 * A dirty rate measured without stalling the workload, for `auto` on a
 * kernel without soft-dirty tracking (where the only other way is a full
 * dump, a stall as long as a stop-and-copy's freeze).
 *
 * It reads a random sample of the process's private writable pages through
 * `/proc/PID/mem` twice, `intervalMs` apart, and counts the pages whose
 * content changed: that share of all such pages, per second, estimates the
 * pages written per second (a page written twice counts once, so it errs
 * low at high rates). Reading another process's memory does not stop it.
 * Only the container's first process is sampled (Redis, the C workload and
 * most single-process services: all of it).
 *
 * Why `auto` needs it: post-copy's pause does not grow with the dirty rate,
 * but a workload that writes fast at random faults on pages not yet there,
 * and CRIU's lazy-pages daemon pulls the rest in the background only while
 * no fault is waiting — measured here, 1 GB at 10,000 pages/s stalled for
 * minutes, at 1,000 pages/s not at all (docs/BENCHMARKS.md).
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { setImmediate as yieldToLoop, setTimeout as sleep } from 'node:timers/promises';

const PAGE = 4096;

/** What {@link sampleDirtyRate} measured. */
export interface DirtySample {
  /** Estimated pages written per second (distinct pages changed, scaled to all private writable pages). */
  pagesPerSecond: number;
  sampledPages: number;
  changedPages: number;
  /** Private writable pages of the process (its maps), of which the sample was drawn. */
  writablePages: number;
  intervalMs: number;
}

/** Private writable mappings of `pid` (anonymous, heap, stack, and private file copies), as [start, end). */
async function writableRegions(pid: number): Promise<Array<[number, number]>> {
  const maps = await readFile(`/proc/${pid}/maps`, 'utf8');
  const regions: Array<[number, number]> = [];
  for (const line of maps.split('\n')) {
    const [range, perms, , , , path = ''] = line.split(/\s+/);
    if (!range || !perms || !perms.startsWith('rw') || perms[3] !== 'p') continue;
    if (path.startsWith('[v') || path === '[vvar]' || path === '[vsyscall]') continue; // vdso, vvar
    const [start, end] = range.split('-').map((x) => parseInt(x, 16));
    if (start !== undefined && end !== undefined && end > start) regions.push([start, end]);
  }
  return regions;
}

/** Pages read between two turns of the event loop (each read takes a few µs). */
const READS_PER_TURN = 512;

/**
 * Samples `pages` random private writable pages of `pid` twice, `intervalMs`
 * apart. Undefined if the process cannot be read (gone, or no access).
 *
 * The defaults (8,192 pages, 300 ms) see ~9 changed pages at 1,000 pages/s
 * in 1 GB, ~28 at `auto`'s 3,000 threshold. The reads are synchronous (a
 * few µs each), in batches between turns of the event loop: awaited one by
 * one through the thread pool, a sample of 4,096 pages 500 ms apart took
 * 0.87–1.18 s, which `auto` added to a migration's total; now 0.40–0.44 s
 * (1 GB, measured beside each other).
 */
export async function sampleDirtyRate(
  pid: number,
  options: { pages?: number; intervalMs?: number } = {},
): Promise<DirtySample | undefined> {
  const count = options.pages ?? 8192;
  const intervalMs = options.intervalMs ?? 300;
  try {
    const regions = await writableRegions(pid);
    const writablePages = regions.reduce((sum, [s, e]) => sum + (e - s) / PAGE, 0);
    if (writablePages === 0) return undefined;
    // Addresses drawn uniformly over all writable pages, sorted (reads in address order).
    const addresses: number[] = [];
    for (let i = 0; i < Math.min(count, writablePages); i++) {
      let n = Math.floor(Math.random() * writablePages);
      for (const [s, e] of regions) {
        const size = (e - s) / PAGE;
        if (n < size) {
          addresses.push(s + n * PAGE);
          break;
        }
        n -= size;
      }
    }
    addresses.sort((a, b) => a - b);
    const mem = openSync(`/proc/${pid}/mem`, 'r');
    try {
      const read = async (): Promise<Array<Buffer | undefined>> => {
        const out: Array<Buffer | undefined> = [];
        for (const [i, address] of addresses.entries()) {
          if (i > 0 && i % READS_PER_TURN === 0) await yieldToLoop();
          const buffer = Buffer.alloc(PAGE);
          let ok = false;
          try {
            ok = readSync(mem, buffer, 0, PAGE, address) === PAGE;
          } catch {
            // A guard page or a mapping gone meanwhile reads as an error: left out.
          }
          out.push(ok ? buffer : undefined);
        }
        return out;
      };
      const first = await read();
      const began = performance.now();
      await sleep(intervalMs);
      const second = await read();
      const elapsed = performance.now() - began;
      let sampled = 0;
      let changed = 0;
      for (let i = 0; i < first.length; i++) {
        const a = first[i];
        const b = second[i];
        if (!a || !b) continue;
        sampled++;
        if (!a.equals(b)) changed++;
      }
      if (sampled === 0) return undefined;
      return {
        pagesPerSecond: Math.round((changed / sampled) * writablePages * (1000 / elapsed)),
        sampledPages: sampled,
        changedPages: changed,
        writablePages,
        intervalMs: Math.round(elapsed),
      };
    } finally {
      closeSync(mem);
    }
  } catch {
    return undefined;
  }
}
