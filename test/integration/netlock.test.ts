/**
 * haven-netlock, the network lock's tool, against the kernel: in a network
 * namespace of its own with Haven's lock table, each command leaves the sets
 * as `nft` reads them back, and a missing table is a clear error; a
 * restore's hold keeps a client's packets through the lock and lets them
 * through on unlock.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { run } from '../../src/core/exec.js';
import { NETLOCK_PATH } from '../../src/core/config.js';
import {
  HOLD_QUEUE,
  HOLD_RULE,
  lockTableRuleset,
  netnsPath,
  prepareUnlock,
} from '../../src/runtime/network.js';

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

test(
  'a restore hold keeps what clients send while locked and lets it through on unlock',
  { timeout: 60_000 },
  async () => {
    // The container's namespace, locked as a restore makes it, with a server
    // already listening (as CRIU's restored sockets are by the unlock), and a
    // client namespace on the other end of a veth pair.
    const box = `hvt-hold-${process.pid}`;
    const client = `hvt-hold-c-${process.pid}`;
    const server = `require('net').createServer((s) => s.end('hi')).listen(7000, () => console.log('listening'))`;
    let listener: ReturnType<typeof spawn> | undefined;
    try {
      for (const ns of [box, client]) await run(['ip', 'netns', 'add', ns]);
      await run([
        'ip',
        '-n',
        client,
        'link',
        'add',
        'veth0',
        'type',
        'veth',
        'peer',
        'name',
        'eth0',
        'netns',
        box,
      ]);
      await run(['ip', '-n', client, 'addr', 'add', '10.99.7.1/24', 'dev', 'veth0']);
      await run(['ip', '-n', box, 'addr', 'add', '10.99.7.2/24', 'dev', 'eth0']);
      for (const [ns, dev] of [
        [client, 'veth0'],
        [box, 'eth0'],
        [box, 'lo'],
      ] as const)
        await run(['ip', '-n', ns, 'link', 'set', dev, 'up']);
      await run(['ip', 'netns', 'exec', box, 'nft', '-f', '-'], { input: lockTableRuleset(true) });
      await run(['ip', 'netns', 'exec', box, 'sh', '-c', HOLD_RULE]);
      listener = spawn('nsenter', [`--net=${netnsPath(box)}`, process.execPath, '-e', server], {
        stdio: 'pipe',
      });
      await new Promise((resolve) => listener?.stdout?.once('data', resolve));

      const holder = prepareUnlock(box, '10.99.7.2');
      // Bound once the namespace's queue shows up; then the client connects.
      for (let i = 0; i < 100; i++) {
        const queues = await run(['ip', 'netns', 'exec', box, 'cat', '/proc/net/netfilter/nfnetlink_queue']);
        if (new RegExp(`^\\s*${HOLD_QUEUE}\\s`, 'm').test(queues.stdout)) break;
        await sleep(20);
      }
      holder.announce();
      const connect = `const t = Date.now(); require('net').connect(7000, '10.99.7.2').on('data', () => { console.log(Date.now() - t); process.exit(0); })`;
      const started = Date.now();
      const connecting = run(['ip', 'netns', 'exec', client, process.execPath, '-e', connect]);
      // Locked for 1.5 s: the SYN and its retransmission after 1 s are held, not dropped.
      await sleep(1500);
      const held = await holder.unlock();
      const answeredAfter = Number((await connecting).stdout.trim());
      assert.ok(held >= 1, `packets were held (${held})`);
      // Dropped, the SYN's next retransmission would have come 3 s after the first.
      assert.ok(
        answeredAfter < 2500,
        `answered ${answeredAfter} ms after the connect (${Date.now() - started} ms)`,
      );
    } finally {
      listener?.kill();
      for (const ns of [box, client]) await run(['ip', 'netns', 'del', ns], { allowFailure: true });
    }
  },
);
