/**
 * Tickle ACKs (`haven-netlock tickle`, native/haven-netlock.c) on real
 * network namespaces: a client waiting for a reply on a connection whose
 * server side vanished without a word (its host died) waits for ever; after
 * a tickle from the address's new holder it sees a reset at once.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';
import { run } from '../../src/core/exec.js';
import { NETLOCK_PATH } from '../../src/core/config.js';

const SERVER_NS = `hvt-tk-${process.pid}-s`;
const CLIENT_NS = `hvt-tk-${process.pid}-c`;
const SERVER_IP = '10.77.91.1';
const CLIENT_IP = '10.77.91.2';
const PORT = 7777;

async function inNs(ns: string, argv: string[]): Promise<string> {
  return (await run(['ip', 'netns', 'exec', ns, ...argv])).stdout;
}

before(async () => {
  await run(['ip', 'netns', 'add', SERVER_NS]);
  await run(['ip', 'netns', 'add', CLIENT_NS]);
  await run(`ip -n ${SERVER_NS} link add eth0 type veth peer name eth0 netns ${CLIENT_NS}`.split(' '));
  await run(['ip', '-n', SERVER_NS, 'addr', 'add', `${SERVER_IP}/24`, 'dev', 'eth0']);
  await run(['ip', '-n', CLIENT_NS, 'addr', 'add', `${CLIENT_IP}/24`, 'dev', 'eth0']);
  await run(['ip', '-n', SERVER_NS, 'link', 'set', 'eth0', 'up']);
  await run(['ip', '-n', CLIENT_NS, 'link', 'set', 'eth0', 'up']);
});

after(async () => {
  await run(['ip', 'netns', 'del', SERVER_NS], { allowFailure: true });
  await run(['ip', 'netns', 'del', CLIENT_NS], { allowFailure: true });
});

/**
 * A server that never answers, a client that sent a request and waits; then
 * the server's side is destroyed silently (its reset dropped). Returns the
 * client's port and a promise of what the client saw within `waitMs` after
 * `release()`.
 */
async function orphanedClient(
  waitMs: number,
): Promise<{ clientPort: number; outcome: () => Promise<string> }> {
  const server = spawn('ip', [
    'netns',
    'exec',
    SERVER_NS,
    process.execPath,
    '-e',
    `require('net').createServer((s) => { s.on('data', () => {}); s.on('error', () => {}); }).listen(${PORT}, '${SERVER_IP}', () => console.log('listening'))`,
  ]);
  await once(createInterface({ input: server.stdout }), 'line');
  const client = spawn('ip', [
    'netns',
    'exec',
    CLIENT_NS,
    process.execPath,
    '-e',
    `const s = require('net').connect(${PORT}, '${SERVER_IP}', () => { s.write('request\\n'); console.log(s.localPort); });
     process.stdin.once('data', () => {
       const t0 = Date.now();
       s.on('error', (e) => { console.log(e.code + ' after ' + (Date.now() - t0) + ' ms'); process.exit(0); });
       setTimeout(() => { console.log('still waiting after ${waitMs} ms'); process.exit(0); }, ${waitMs});
     });`,
  ]);
  const lines = createInterface({ input: client.stdout })[Symbol.asyncIterator]();
  const clientPort = Number((await lines.next()).value);
  // The server's host "dies": its side of the connection goes, and the reset that would tell the client is dropped.
  await inNs(SERVER_NS, ['iptables', '-A', 'OUTPUT', '-p', 'tcp', '--sport', String(PORT), '-j', 'DROP']);
  await inNs(SERVER_NS, ['ss', '-K', '-t', 'dst', CLIENT_IP]);
  await inNs(SERVER_NS, ['iptables', '-D', 'OUTPUT', '-p', 'tcp', '--sport', String(PORT), '-j', 'DROP']);
  server.kill('SIGKILL');
  assert.doesNotMatch(await inNs(SERVER_NS, ['ss', '-tn']), new RegExp(CLIENT_IP), 'the server side is gone');
  return {
    clientPort,
    outcome: async () => {
      client.stdin.write('go\n');
      const line = String((await lines.next()).value);
      client.kill('SIGKILL');
      return line;
    },
  };
}

test('without a tickle, a client whose server vanished keeps waiting', async () => {
  const { outcome } = await orphanedClient(1500);
  assert.equal(await outcome(), 'still waiting after 1500 ms');
});

test("a tickle from the address's holder resets the orphaned connection at once", async () => {
  const { clientPort, outcome } = await orphanedClient(3000);
  const seen = outcome();
  // The agent's helper, run where the address is (as on the host that took it over).
  await run([
    'ip',
    'netns',
    'exec',
    SERVER_NS,
    process.execPath,
    '--input-type=module',
    '-e',
    `import { tickleClients } from '${new URL('../../src/runtime/service-address.js', import.meta.url).href}';
     await tickleClients('${SERVER_IP}', [{ port: ${PORT}, address: '${CLIENT_IP}', clientPort: ${clientPort} }]);`,
  ]);
  assert.match(await seen, /^ECONNRESET after \d+ ms$/);
});

test('a malformed pair is refused by name', async () => {
  const bad = await run(
    ['ip', 'netns', 'exec', SERVER_NS, NETLOCK_PATH, 'tickle', 'nonsense', `${CLIENT_IP}:1`],
    { allowFailure: true },
  );
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /not IP:PORT IP:PORT: nonsense/);
});
