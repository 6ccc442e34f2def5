/**
 * haven-netlock, the network lock's tool, against the kernel: in a network
 * namespace of its own with Haven's lock table, each command leaves the sets
 * as `nft` reads them back, and a missing table is a clear error.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { run } from '../../src/core/exec.js';
import { NETLOCK_PATH } from '../../src/core/config.js';
import { lockTableRuleset, netnsPath } from '../../src/runtime/network.js';

const netns = `hvt-netlock-${process.pid}`;
const bare = `hvt-netlock-bare-${process.pid}`;

before(async () => {
  for (const ns of [netns, bare]) await run(['ip', 'netns', 'add', ns]);
  await run(['ip', 'netns', 'exec', netns, 'nft', '-f', '-'], { input: lockTableRuleset(false) });
});
after(async () => {
  for (const ns of [netns, bare]) await run(['ip', 'netns', 'del', ns], { allowFailure: true });
});

function netlock(ns: string, args: string[]) {
  return run(['nsenter', `--net=${netnsPath(ns)}`, NETLOCK_PATH, ...args], { allowFailure: true });
}

/** The elements of @lock and @unlock, as nft lists them. */
async function sets(): Promise<{ lock: string[]; unlock: string[] }> {
  const listed = await run(['ip', 'netns', 'exec', netns, 'nft', '-j', 'list', 'table', 'inet', 'haven']);
  const result: Record<string, string[]> = { lock: [], unlock: [] };
  for (const item of (JSON.parse(listed.stdout) as { nftables: Array<Record<string, unknown>> }).nftables) {
    const set = item.set as { name: string; elem?: string[] } | undefined;
    if (set) result[set.name] = set.elem ?? [];
  }
  return { lock: result.lock ?? [], unlock: result.unlock ?? [] };
}

test('lock, unlock and reset set the lock table as nft reads it', async () => {
  assert.deepEqual(await sets(), { lock: [], unlock: [] });
  assert.equal((await netlock(netns, ['lock'])).code, 0);
  assert.deepEqual(await sets(), { lock: ['eth0'], unlock: [] });
  assert.equal((await netlock(netns, ['lock'])).code, 0, 'locking twice is no error');
  assert.equal((await netlock(netns, ['unlock'])).code, 0);
  assert.deepEqual(await sets(), { lock: ['eth0'], unlock: ['eth0'] });
  assert.equal((await netlock(netns, ['reset'])).code, 0);
  assert.deepEqual(await sets(), { lock: [], unlock: [] });
});

test('a namespace without the table and an unknown command fail with the reason', async () => {
  const missing = await netlock(bare, ['lock']);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /table inet haven: No such file or directory/);
  const unknown = await netlock(netns, ['open-sesame']);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /usage: haven-netlock lock\|unlock\|reset/);
});
