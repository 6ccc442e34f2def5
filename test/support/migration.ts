/**
 * What the migration tests check on the lab, shared by `migrate.test.ts`,
 * `migrate-matrix.test.ts` and `compat.test.ts`: where copies of a container
 * run (asked of each host's own agent), Redis's keys and a write load's
 * acknowledged writes, the C workload's memory self-check, and files that
 * count on without a gap or a repeat.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO_ROOT } from '../../src/core/config.js';
import { run } from '../../src/core/exec.js';
import { CLIENT_NETNS } from '../../src/lab/index.js';
import { ok, waitFor, type LoadResult } from './lab-cli.js';

/** What the migration tests read of `haven inspect NAME --json`. */
export interface View {
  name: string;
  host: string;
  state: string;
  ip: string;
  pid: number;
}

/** The containers a host's own agent has (asked inside its namespaces). */
export async function copiesOn(host: string): Promise<Array<{ name: string; state: string }>> {
  const out = await ok(['lab', 'exec', host, '--', join(REPO_ROOT, 'bin', 'haven'), 'ps', '--json']);
  return JSON.parse(out) as Array<{ name: string; state: string }>;
}

/** Exactly one copy of `name`, running on `host`, and none on the other `hosts`. */
export async function oneCopyOn(name: string, host: string, hosts: readonly string[]): Promise<void> {
  for (const h of hosts) {
    const copies = (await copiesOn(h)).filter((c) => c.name === name).map((c) => c.state);
    assert.deepEqual(copies, h === host ? ['running'] : [], `copies of ${name} on ${h}`);
  }
}

/** `redis-cli -h IP COMMAND...` from the lab's client. */
export function redis(ip: string, ...command: string[]): Promise<string> {
  return run(['nsenter', `--net=/run/netns/${CLIENT_NETNS}`, 'redis-cli', '-h', ip, ...command]).then((r) =>
    r.stdout.trim(),
  );
}

/** `count` keys `k:<i>` of ~1 KB each, distinct (so chunks do not deduplicate). */
export async function fill(ip: string, count: number): Promise<void> {
  const script =
    "for i=1,tonumber(ARGV[1]) do redis.call('SET','k:'..i,string.rep(redis.sha1hex(tostring(i)),25)) end return 1";
  assert.equal(await redis(ip, 'EVAL', script, '0', String(count)), '1');
}

/** Key `k:<count>` holds what {@link fill} wrote, and there are `count` keys beside `extra` others. */
export async function keysIntact(ip: string, count: number, extra: number): Promise<void> {
  assert.equal(await redis(ip, 'DBSIZE'), String(count + extra), 'every key');
  assert.equal(
    await redis(ip, 'GET', `k:${count}`),
    await redis(ip, 'EVAL', `return string.rep(redis.sha1hex('${count}'),25)`, '0'),
    'a key intact',
  );
}

/**
 * Every write of a load acknowledged once, in order; with `connectionKept`,
 * the connection never broke. Returns the longest wait for a reply.
 */
export function checkLoad(load: LoadResult, what: string, connectionKept = true): number {
  assert.ok(load.acks.length > 0, `${what}: the load ran`);
  if (connectionKept) {
    const broken = load.errors.filter(([, message]) => message !== 'timeout');
    assert.deepEqual(broken, [], `${what}: the load's connection survived`);
  }
  // The load's own deadline can cut its last write off (done, never answered)
  // a millisecond before its loop ends and it writes once more: the last
  // 50 ms of the run are not counted.
  const end = load.acks.at(-1)![1] - 50;
  const steps = load.acks
    .map(([v, t], i) => ({ i, v, t }))
    .filter(({ i, v, t }) => i > 0 && t < end && v !== load.acks[i - 1]![0] + 1)
    .map(({ i }) => load.acks.slice(Math.max(0, i - 2), i + 3));
  assert.deepEqual(
    steps,
    [],
    `${what}: every acknowledged write is there, once (around each step: [value, ms])`,
  );
  let gap = 0;
  for (let i = 1; i < load.acks.length; i++) gap = Math.max(gap, load.acks[i]![1] - load.acks[i - 1]![1]);
  return gap;
}

/** The C workload's own check of all its memory (it answers SIGUSR1 in its log): the line. */
export async function memhogCheck(name: string, pid: number): Promise<string> {
  const before = (await ok(['logs', name])).length;
  process.kill(pid, 'SIGUSR1');
  return waitFor(
    'the memory check',
    async () => /check (ok|FAILED)[^\n]*/.exec((await ok(['logs', name])).slice(before))?.[0],
    60_000,
  );
}

/** Lines of a file on lab host `host`'s disk, as numbers (stop the container first). */
export async function counted(host: string, path: string): Promise<number[]> {
  const text = await readFile(`/var/lib/haven-lab/hosts/${host}/${path}`, 'utf8');
  return text
    .split('\n')
    .filter((l) => l.length > 0)
    .map(Number);
}

/** The lines count 0, 1, 2, … with no gap and no repeat (files and memory agreed at every freeze). */
export function assertCounts(lines: number[], what: string): void {
  assert.ok(lines.length > 10, `${what}: ${lines.length} lines`);
  lines.forEach((n, i) => assert.equal(n, i, `${what}: line ${i} is ${n}`));
}
