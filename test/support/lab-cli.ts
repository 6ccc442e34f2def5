/**
 * The `haven` CLI as the lab's end-to-end tests drive it: against the lab's
 * controller (found by its socket), failing the test on a non-zero exit; and
 * what every lab test needs: a lab with Redis, events, views, a write load.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../../src/core/config.js';
import { run, type ExecResult } from '../../src/core/exec.js';
import { redisImage, REDIS_ARGS } from '../../src/fixtures/images.js';
import { runHaven, waitUntil } from '../../src/lab/cli-driver.js';
import { CLIENT_NETNS } from '../../src/lab/index.js';
import { shortHash } from '../../src/runtime/network.js';

/** `haven ARGS`, whatever its exit status. */
export function haven(args: string[]): Promise<ExecResult> {
  return runHaven(args, {}, 180_000);
}

/** `haven ARGS`, which must succeed; its stdout. */
export async function ok(args: string[]): Promise<string> {
  const r = await haven(args);
  assert.equal(r.code, 0, `haven ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/**
 * `haven lab down` (which first copies the lab's logs to HAVEN_KEEP_LAB_LOGS
 * when that names a directory).
 */
export async function labDown(): Promise<void> {
  await haven(['lab', 'down']);
}

/** Waits (30 s by default) until `probe` returns a value. */
export function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 30_000,
): Promise<T> {
  return waitUntil(what, probe, timeoutMs);
}

/** A cluster event, as `haven events --json` prints it. */
export interface LabEvent {
  seq: number;
  at: string;
  kind: string;
  subject: string;
  data: Record<string, unknown>;
}

/** Every cluster event so far, oldest first. */
export async function events(): Promise<LabEvent[]> {
  return (await ok(['events', '--json']))
    .trim()
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l) as LabEvent);
}

/** `haven inspect NAME --json`, as the caller's view type. */
export async function inspect<T>(name: string): Promise<T> {
  return JSON.parse(await ok(['inspect', name, '--json'])) as T;
}

/**
 * A fresh lab of `hosts` hosts, every one seen up by the controller, with the
 * Redis image pushed as `redis`. `env` goes to `lab up` (e.g. a failpoint for
 * the controller it starts).
 */
export async function labWithRedis(hosts = 3, env: Record<string, string> = {}): Promise<void> {
  await haven(['lab', 'down']);
  const up = await runHaven(['lab', 'up', '--hosts', String(hosts)], env, 180_000);
  assert.equal(up.code, 0, `haven lab up: ${up.stderr}`);
  await waitFor(`${hosts} hosts up`, async () => {
    const list = JSON.parse(await ok(['host', 'ls', '--json'])) as Array<{ state: string }>;
    return list.filter((h) => h.state === 'up').length === hosts ? true : undefined;
  });
  await ok(['image', 'push', await redisImage(), '--name', 'redis']);
}

/** What fixtures/clients/write-load.mjs reports: writes acknowledged, connection errors, probes. */
export interface LoadResult {
  acks: Array<[number, number]>;
  errors: Array<[number, string]>;
  probes: Array<[number, boolean]>;
}

/** The write load (`INCR counter` back to back, and a prober) from the lab's client against Redis at `ip`, for `ms`. */
export async function writeLoad(ip: string, ms: number): Promise<LoadResult> {
  const result = await run(
    [
      'nsenter',
      `--net=/run/netns/${CLIENT_NETNS}`,
      process.execPath,
      join(REPO_ROOT, 'fixtures', 'clients', 'write-load.mjs'),
      ip,
      '6379',
      String(ms),
    ],
    { timeoutMs: ms + 60_000 },
  );
  return JSON.parse(result.stdout) as LoadResult;
}

/** What a protected container's view shows of its protection (the part tests wait on). */
export interface ProtectedView {
  name: string;
  host: string;
  state: string;
  ip: string;
  pid: number;
  protection: { backup: string | null; committedEpoch: number | null };
}

/**
 * Runs Redis as `name` with `--ha checkpoint --interval INTERVAL` (and `flags`, e.g. a pin) and waits
 * (60 s at most) until it runs with a backup and a first committed epoch.
 */
export async function protectedRedis<T extends ProtectedView = ProtectedView>(
  name: string,
  interval = '1s',
  flags: readonly string[] = [],
): Promise<T> {
  await ok([
    'run',
    name,
    '--image',
    'redis',
    '--memory',
    '256m',
    '--ha',
    'checkpoint',
    '--interval',
    interval,
    ...flags,
    '--',
    ...REDIS_ARGS,
  ]);
  return waitFor(
    `${name} protected, its first epoch committed`,
    async () => {
      const v = await inspect<T>(name);
      return v.state === 'running' && v.protection.backup && v.protection.committedEpoch ? v : undefined;
    },
    60_000,
  );
}

/** The freezer cgroup of container `name` on lab host `host` (it exists while a copy is there). */
export function copyCgroup(host: string, name: string): string {
  return join('/sys/fs/cgroup/freezer/haven', shortHash(host), name);
}

/**
 * Whether a copy of container `name` runs (has processes, not frozen) on lab
 * host `host`, read straight from its freezer cgroup: cheap enough to sample
 * every few milliseconds during a partition.
 */
export function copyRunsOn(host: string, name: string): boolean {
  const dir = copyCgroup(host, name);
  try {
    const procs = readFileSync(join(dir, 'cgroup.procs'), 'utf8').trim();
    return procs.length > 0 && readFileSync(join(dir, 'freezer.state'), 'utf8').trim() === 'THAWED';
  } catch {
    return false; // no such cgroup: no copy there
  }
}
