/**
 * haven-netlock, the network lock's tool, against the kernel: in a network
 * namespace of its own with Haven's lock table, each command leaves the sets
 * as `nft` reads them back, and a missing table is a clear error; a
 * restore's hold keeps a client's packets through the lock and lets them
 * through on unlock, and so does a continuous container's epoch holder, epoch
 * after epoch.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { run } from '../../src/core/exec.js';
import { NETLOCK_PATH } from '../../src/core/config.js';
import {
  epochHolder,
  HOLD_QUEUE,
  HOLD_RULE,
  lockTableRuleset,
  netnsPath,
  prepareUnlock,
  stopEpochHolder,
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

/**
 * A container's namespace (`box`, with Haven's lock table, locked or not, and
 * the hold rule) with a server on 10.99.7.2:7000 answering "hi", and a client
 * namespace at the other end of a veth pair. Returns a connect from the
 * client (resolving with ms until the answer) and the cleanup.
 */
async function boxWithClient(
  tag: string,
  locked: boolean,
): Promise<{ box: string; connect: () => Promise<number>; cleanup: () => Promise<void> }> {
  const box = `hvt-${tag}-${process.pid}`;
  const client = `hvt-${tag}-c-${process.pid}`;
  const server = `require('net').createServer((s) => s.end('hi')).listen(7000, () => console.log('listening'))`;
  let listener: ReturnType<typeof spawn> | undefined;
  const cleanup = async (): Promise<void> => {
    listener?.kill();
    for (const ns of [box, client]) await run(['ip', 'netns', 'del', ns], { allowFailure: true });
  };
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
    await run(['ip', 'netns', 'exec', box, 'nft', '-f', '-'], { input: lockTableRuleset(locked) });
    await run(['ip', 'netns', 'exec', box, 'sh', '-c', HOLD_RULE]);
    listener = spawn('nsenter', [`--net=${netnsPath(box)}`, process.execPath, '-e', server], {
      stdio: 'pipe',
    });
    await new Promise((resolve) => listener?.stdout?.once('data', resolve));
  } catch (error) {
    await cleanup();
    throw error;
  }
  const script = `const t = Date.now(); require('net').connect(7000, '10.99.7.2').on('data', () => { console.log(Date.now() - t); process.exit(0); })`;
  const connect = async (): Promise<number> =>
    Number((await run(['ip', 'netns', 'exec', client, process.execPath, '-e', script])).stdout.trim());
  return { box, connect, cleanup };
}

/** Waits until `box`'s hold queue has a listener. */
async function queueBound(box: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const queues = await run(['ip', 'netns', 'exec', box, 'cat', '/proc/net/netfilter/nfnetlink_queue']);
    if (new RegExp(`^\\s*${HOLD_QUEUE}\\s`, 'm').test(queues.stdout)) return;
    await sleep(20);
  }
  assert.fail('the hold queue was never bound');
}

test(
  'a restore hold keeps what clients send while locked and lets it through on unlock',
  { timeout: 60_000 },
  async () => {
    // Locked as a restore makes it, with a server already listening (as
    // CRIU's restored sockets are by the unlock).
    const { box, connect, cleanup } = await boxWithClient('hold', true);
    try {
      const holder = prepareUnlock(box, '10.99.7.2');
      // Bound once the namespace's queue shows up; then the client connects.
      await queueBound(box);
      holder.announce();
      const started = Date.now();
      const connecting = connect();
      // Locked for 1.5 s: the SYN and its retransmission after 1 s are held, not dropped.
      await sleep(1500);
      const held = await holder.unlock();
      const answeredAfter = await connecting;
      assert.ok(held >= 1, `packets were held (${held})`);
      // Dropped, the SYN's next retransmission would have come 3 s after the first.
      assert.ok(
        answeredAfter < 2500,
        `answered ${answeredAfter} ms after the connect (${Date.now() - started} ms)`,
      );
    } finally {
      await cleanup();
    }
  },
);

test(
  "an epoch holder keeps what arrives during each epoch's lock, passes everything between, and ends with its pipe",
  { timeout: 60_000 },
  async () => {
    const { box, connect, cleanup } = await boxWithClient('epochs', false);
    try {
      const holder = await epochHolder(box);
      assert.ok(holder, 'the holder started');
      assert.equal(await epochHolder(box), holder, 'one holder per namespace, kept');
      await queueBound(box);
      // Idle: nothing is kept.
      assert.ok((await connect()) < 500, 'answered at once while no epoch is locked');
      for (let epoch = 1; epoch <= 2; epoch++) {
        // As an epoch's chain does: lock, SIGUSR1; (the dump); unlock, SIGUSR2; reset after.
        assert.equal((await netlock(box, ['lock'])).code, 0);
        process.kill(holder.pid, 'SIGUSR1');
        await sleep(50);
        const connecting = connect();
        await sleep(1500);
        assert.equal((await netlock(box, ['unlock'])).code, 0);
        process.kill(holder.pid, 'SIGUSR2');
        const answeredAfter = await connecting;
        // Dropped, the SYN's retransmissions would have come after 1 s and 3 s.
        assert.ok(answeredAfter < 2500, `epoch ${epoch}: answered ${answeredAfter} ms after the connect`);
        assert.equal((await netlock(box, ['reset'])).code, 0);
        assert.ok(holder.alive(), `epoch ${epoch}: the holder serves the next epoch`);
      }
      await stopEpochHolder(box);
      assert.equal(holder.alive(), false, 'ended with its pipe');
    } finally {
      await stopEpochHolder(box);
      await cleanup();
    }
  },
);
