/**
 * Reading `criu lazy-pages`' log (at `-v4`) for what it transferred.
 *
 * Whether every page arrived is the daemon's exit status, not these counts:
 * it exits 0 only once no live process has a page left to receive, and
 * non-zero when the page server goes away first ("Remote side closed
 * connection"). A process's count can rightly stay short of its total: one
 * that exits during the transfer (a short-lived child), or unmaps memory,
 * needs no more pages. So the counts are reported, never judged.
 */

/** Pages copied into the restored processes, of those they had when dumped; with how many processes, and how many exited meanwhile. */
export interface LazyPagesSummary {
  copied: number;
  total: number;
  processes: number;
  exited: number;
}

/**
 * Sums the per-process summaries ("PID-FD: UFFD transferred pages: (n/N)")
 * and counts the processes that exited ("PID-FD: EXIT"). `undefined` if the
 * log has no summary (the daemon ended before any process finished).
 */
export function lazyPagesSummary(log: string): LazyPagesSummary | undefined {
  let copied = 0;
  let total = 0;
  let processes = 0;
  for (const m of log.matchAll(/(\d+)--?\d+: UFFD transferred pages: \((\d+)\/(\d+)\)/g)) {
    copied += Number(m[2]);
    total += Number(m[3]);
    processes++;
  }
  if (processes === 0) return undefined;
  const exited = new Set([...log.matchAll(/(\d+)--?\d+: EXIT$/gm)].map((m) => m[1])).size;
  return { copied, total, processes, exited };
}
