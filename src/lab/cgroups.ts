/**
 * Killing a lab host's processes through its cgroups (cgroup v1).
 *
 * A host's agent starts in `/haven/<hash>/agent`, its shims inherit that
 * cgroup, and runc puts its containers in `/haven/<hash>/<name>`, so the tree
 * `/haven/<hash>` holds everything the host runs, however processes were
 * re-parented. This kernel's v1 hierarchies have no `cgroup.kill`; instead:
 *
 *   freeze the tree ─► SIGKILL every PID in it ─► thaw ─► wait until empty ─► rmdir, deepest first
 *
 * Freezing first means nothing forks while the PIDs are read: a process
 * cannot escape by spawning a child between the read and the kill. A frozen
 * v1 task does not die until thawed, hence the thaw.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const ROOT = '/sys/fs/cgroup';
/** The hierarchies processes are placed in: `pids` to count them, `freezer` to stop them. */
const PLACED = ['pids', 'freezer'] as const;

/** Every mounted hierarchy (`cpu`, `memory`, …, and `unified`): runc creates directories in all of them. */
function hierarchies(): string[] {
  if (!existsSync(ROOT)) return [];
  return readdirSync(ROOT, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => d.name);
}

/** Creates `relative` (e.g. `/haven/<hash>/agent`) in the pids and freezer hierarchies. */
export function ensureCgroup(relative: string): void {
  for (const h of PLACED) mkdirSync(join(ROOT, h, relative), { recursive: true });
}

/** The `cgroup.procs` files a process writes its PID to, to join `relative`. */
export function cgroupProcsFiles(relative: string): string[] {
  return PLACED.map((h) => join(ROOT, h, relative, 'cgroup.procs'));
}

/** Every directory of a tree, parents before children (undefined-safe when it is gone). */
function walk(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out = [dir];
  try {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (entry.isDirectory()) out.push(...walk(join(dir, entry.name)));
    }
  } catch {
    // Removed while we looked: nothing below it to report.
  }
  return out;
}

/** PIDs of every process anywhere in the tree `relative` of the pids and freezer hierarchies. */
export function pidsInTree(relative: string): number[] {
  const pids = new Set<number>();
  for (const h of PLACED) {
    for (const dir of walk(join(ROOT, h, relative))) {
      let text = '';
      try {
        text = readFileSync(join(dir, 'cgroup.procs'), 'utf8');
      } catch {
        continue;
      }
      for (const line of text.split('\n')) if (line.trim()) pids.add(Number(line));
    }
  }
  return [...pids];
}

function setFreezer(relative: string, state: 'FROZEN' | 'THAWED'): void {
  try {
    writeFileSync(join(ROOT, 'freezer', relative, 'freezer.state'), state);
  } catch {
    // Tree gone or not ours to freeze: the kill below still runs.
  }
}

/** `relative` and every cgroup below it in the freezer hierarchy, parents first. */
function freezerTree(relative: string): string[] {
  const dirs = [relative];
  for (let i = 0; i < dirs.length; i++) {
    try {
      for (const entry of readdirSync(join(ROOT, 'freezer', dirs[i]!), { withFileTypes: true })) {
        if (entry.isDirectory()) dirs.push(join(dirs[i]!, entry.name));
      }
    } catch {
      // Gone meanwhile.
    }
  }
  return dirs;
}

async function waitFrozen(relative: string, timeoutMs: number): Promise<void> {
  const file = join(ROOT, 'freezer', relative, 'freezer.state');
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      if (readFileSync(file, 'utf8').trim() !== 'FREEZING') return;
    } catch {
      return;
    }
    setFreezer(relative, 'FROZEN'); // v1 may need asking again
    await sleep(5);
  }
}

function sigkill(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // Already gone.
  }
}

/**
 * SIGKILLs every process in the tree `relative` (see the module comment) and
 * waits until the tree is empty. Returns the PIDs still there after
 * `timeoutMs` (empty on success), e.g. a process stuck in the kernel.
 */
export async function killCgroupTree(relative: string, timeoutMs = 5_000): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  let remaining = pidsInTree(relative);
  while (remaining.length > 0 && Date.now() < deadline) {
    setFreezer(relative, 'FROZEN');
    // A task stuck in D state never freezes: kill anyway after a short wait.
    await waitFrozen(relative, 500);
    for (const pid of pidsInTree(relative)) sigkill(pid);
    // Thaw the whole tree, not only its top: a container frozen by itself (a
    // checkpoint cut short, a fenced primary) stays FROZEN under a thawed
    // parent, and a frozen task never dies of its SIGKILL.
    for (const dir of freezerTree(relative).reverse()) setFreezer(dir, 'THAWED');
    for (let i = 0; i < 10; i++) {
      await sleep(10);
      remaining = pidsInTree(relative);
      if (remaining.length === 0) break;
    }
  }
  return remaining;
}

/**
 * Removes the tree `relative` from every hierarchy, deepest directories first
 * (a v1 cgroup can only be removed when it has no children and no tasks).
 * Retries briefly: a cgroup may stay busy for a moment after its last task died.
 * Returns the directories that could not be removed.
 */
export async function removeCgroupTree(relative: string, timeoutMs = 2_000): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left: string[] = [];
    for (const h of hierarchies()) {
      const dirs = walk(join(ROOT, h, relative)).sort((a, b) => b.length - a.length);
      for (const dir of dirs) {
        try {
          rmdirSync(dir);
        } catch {
          if (existsSync(dir)) left.push(dir);
        }
      }
    }
    if (left.length === 0 || Date.now() > deadline) return left;
    await sleep(20);
  }
}

/**
 * Removes `relative` (e.g. the shared `/haven` parent) from every hierarchy
 * only if it is empty: other hosts or tests may still use it.
 */
export function removeCgroupIfEmpty(relative: string): void {
  for (const h of hierarchies()) {
    try {
      rmdirSync(join(ROOT, h, relative));
    } catch {
      // Busy (someone else's cgroups below it) or absent: leave it.
    }
  }
}

/** Directories of `relative` that still exist in any hierarchy. */
export function cgroupDirsLeft(relative: string): string[] {
  return hierarchies()
    .map((h) => join(ROOT, h, relative))
    .filter((dir) => existsSync(dir));
}

/** True while `pid` is a live process (a zombie counts as dead: it runs nothing). */
export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 3, after the parenthesised command name (which may itself hold spaces).
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** Whether `pid` is in the pids-hierarchy cgroup tree `relative`. */
export function inCgroupTree(pid: number, relative: string): boolean {
  try {
    const line = readFileSync(`/proc/${pid}/cgroup`, 'utf8')
      .split('\n')
      .find((l) => /^\d+:([^:]*,)?pids(,[^:]*)?:/.test(l));
    const path = line?.slice(line.indexOf(':', line.indexOf(':') + 1) + 1) ?? '';
    return path === relative || path.startsWith(`${relative}/`);
  } catch {
    return false;
  }
}
