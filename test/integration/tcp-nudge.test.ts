/**
 * `haven-tcp-nudge` (native/haven-tcp-nudge.c), which a restore runs once
 * the network is unlocked: each established connection it is given answers
 * at once with an acknowledgement, and nothing of the connection changes.
 * On a real connection in a network namespace of the test's own, read
 * through the namespace's TCP counters.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { REPO_ROOT } from '../../src/core/config.js';
import { run } from '../../src/core/exec.js';

const NETNS = `hvtest-nudge-${process.pid}`;
const NUDGE = join(REPO_ROOT, 'build', 'haven-tcp-nudge');

// An echo server and a client connected to it, in the namespace; "ping" on
// stdin sends a byte and prints "pong" once it is echoed.
const PAIR = `
const net = require('node:net');
const server = net.createServer((s) => s.pipe(s)).listen(0, '127.0.0.1', () => {
  const client = net.connect(server.address().port, '127.0.0.1', () => {
    console.log(JSON.stringify({ server: server.address().port, client: client.localPort }));
  });
  client.on('data', () => console.log('pong'));
  require('node:readline').createInterface({ input: process.stdin }).on('line', () => client.write('x'));
});
`;

let pair: ChildProcessWithoutNullStreams;
let ports: { server: number; client: number };
const lines: string[] = [];

async function nextLine(match: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!lines.includes(match)) {
    if (Date.now() > deadline) throw new Error(`no "${match}" from the connection pair`);
    await new Promise((r) => setTimeout(r, 10));
  }
  lines.splice(lines.indexOf(match), 1);
}

/** Runs the helper in the namespace with `args`, whatever its exit status. */
function nudge(...args: string[]): ReturnType<typeof run> {
  return run(['ip', 'netns', 'exec', NETNS, NUDGE, ...args], { allowFailure: true });
}

/** The namespace's counters `Tcp: OutSegs` and `Tcp: InCsumErrors`. */
async function counters(): Promise<{ outSegs: number; csumErrors: number }> {
  const snmp = (await run(['ip', 'netns', 'exec', NETNS, 'cat', '/proc/net/snmp'])).stdout;
  const [names, values] = snmp.split('\n').filter((l) => l.startsWith('Tcp:'));
  const table = Object.fromEntries(
    names!
      .split(/\s+/)
      .slice(1)
      .map((n, i) => [n, Number(values!.split(/\s+/)[i + 1])]),
  );
  return { outSegs: table.OutSegs!, csumErrors: table.InCsumErrors! };
}

before(async () => {
  await run(['ip', 'netns', 'add', NETNS]);
  await run(['ip', '-n', NETNS, 'link', 'set', 'lo', 'up']);
  pair = spawn('ip', ['netns', 'exec', NETNS, process.execPath, '-e', PAIR]);
  let partial = '';
  pair.stdout.on('data', (b: Buffer) => {
    partial += b.toString();
    const complete = partial.split('\n');
    partial = complete.pop() ?? '';
    lines.push(...complete);
  });
  const deadline = Date.now() + 10_000;
  while (!lines.some((l) => l.startsWith('{'))) {
    if (Date.now() > deadline) throw new Error('the connection pair did not start');
    await new Promise((r) => setTimeout(r, 10));
  }
  ports = JSON.parse(lines.find((l) => l.startsWith('{'))!) as typeof ports;
});

after(async () => {
  if (pair && pair.exitCode === null) {
    pair.kill();
    await once(pair, 'exit');
  }
  await run(['ip', 'netns', 'del', NETNS], { allowFailure: true });
});

test('a nudged connection answers with one acknowledgement and carries on', async () => {
  pair.stdin.write('ping\n');
  await nextLine('pong');
  await new Promise((r) => setTimeout(r, 300)); // delayed acknowledgements out of the way
  const before = await counters();
  const nudged = await nudge('127.0.0.1', String(ports.server), '127.0.0.1', String(ports.client));
  assert.equal(nudged.code, 0, nudged.stderr);
  await new Promise((r) => setTimeout(r, 100));
  const now = await counters();
  assert.equal(now.csumErrors, before.csumErrors, 'the nudge segment had a bad checksum');
  // The server's duplicate acknowledgement; the client has nothing to say to it.
  assert.equal(now.outSegs - before.outSegs, 1, 'one acknowledgement answered the nudge');
  pair.stdin.write('ping\n');
  await nextLine('pong');
});

test('bad connections are refused by name, the good ones still nudged', async () => {
  const usage = await nudge('127.0.0.1');
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /usage/);
  // The kernel answers out-of-window segments at most every 500 ms per socket.
  await new Promise((r) => setTimeout(r, 600));
  const before = await counters();
  const mixed = await nudge(
    ...['127.0.0.1', '99999', '127.0.0.1', '1'],
    ...['127.0.0.1', String(ports.server), '127.0.0.1', String(ports.client)],
  );
  assert.equal(mixed.code, 1);
  assert.match(mixed.stderr, /bad connection 127\.0\.0\.1:99999/);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal((await counters()).outSegs - before.outSegs, 1);
});
