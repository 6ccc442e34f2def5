/**
 * The output-commit proxy on loopback: a container's reply reaches the client
 * only once the epoch that covers it is committed — never earlier — and a
 * reset drops what was held.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, test } from 'node:test';
import { OutputCommitProxy } from '../../src/agent/output-commit.js';

/** The "container": an echo server on 127.0.0.1. */
let container: Server;
let port: number;
let proxy: OutputCommitProxy | undefined;

beforeEach(async () => {
  container = createServer((socket) => socket.pipe(socket));
  container.listen(0, '127.0.0.1');
  await once(container, 'listening');
  port = (container.address() as AddressInfo).port;
});

afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
  container.close();
});

async function startProxy(mode: 'held' | 'passthrough'): Promise<OutputCommitProxy> {
  // The service address: another loopback address, same port.
  proxy = new OutputCommitProxy({
    serviceAddress: '127.0.0.2',
    target: '127.0.0.1',
    ports: [port],
    mode,
    log: () => {},
  });
  await proxy.start();
  return proxy;
}

/** A client that collects what it receives. */
async function client(): Promise<{ socket: Socket; received: () => string; closed: Promise<unknown> }> {
  const socket = connect({ host: '127.0.0.2', port });
  await once(socket, 'connect');
  let text = '';
  socket.on('data', (d: Buffer) => (text += d.toString()));
  const closed = once(socket, 'close');
  return { socket, received: () => text, closed };
}

/** Waits until the proxy has read `bytes` from the container (held). */
async function heldAtLeast(p: OutputCommitProxy, bytes: number): Promise<void> {
  for (let i = 0; i < 200 && p.stats().heldBytes < bytes; i++) await sleep(5);
  assert.ok(p.stats().heldBytes >= bytes, `held ${p.stats().heldBytes} < ${bytes}`);
}

test('a reply is held until the epoch cut after it is committed, and released in order', async () => {
  const p = await startProxy('held');
  const c = await client();
  c.socket.write('one ');
  await heldAtLeast(p, 4);
  const first = p.cut(); // epoch A's checkpoint covers "one "
  c.socket.write('two ');
  await heldAtLeast(p, 8);
  await sleep(20);
  assert.equal(c.received(), '', 'nothing reaches the client before a commit');
  assert.ok(p.stats().outputDelayMs >= 20);
  p.release(first);
  await sleep(30);
  assert.equal(c.received(), 'one ', '"two " came after the cut: it waits for the next epoch');
  const second = p.cut();
  p.release(second);
  await sleep(30);
  assert.equal(c.received(), 'one two ');
  assert.equal(p.stats().heldBytes, 0);
  assert.equal(p.stats().outputDelayMs, 0);
  c.socket.destroy();
});

test('releasing an older generation again releases nothing new', async () => {
  const p = await startProxy('held');
  const c = await client();
  const before = p.cut(); // nothing read yet
  c.socket.write('late');
  await heldAtLeast(p, 4);
  p.release(before);
  await sleep(30);
  assert.equal(c.received(), '');
  c.socket.destroy();
});

test('passthrough (no backup) delivers at once; switching to it releases what was held', async () => {
  const p = await startProxy('held');
  const c = await client();
  c.socket.write('held ');
  await heldAtLeast(p, 5);
  p.setMode('passthrough');
  await sleep(30);
  assert.equal(c.received(), 'held ');
  c.socket.write('direct');
  for (let i = 0; i < 100 && c.received() !== 'held direct'; i++) await sleep(5);
  assert.equal(c.received(), 'held direct');
  assert.equal(p.stats().mode, 'passthrough');
  c.socket.destroy();
});

test('reset (restore from an older epoch) drops held output and resets the client', async () => {
  const p = await startProxy('held');
  const c = await client();
  c.socket.write('lost');
  await heldAtLeast(p, 4);
  const generation = p.cut();
  p.reset();
  await c.closed;
  p.release(generation);
  assert.equal(c.received(), '', 'output of a copy restored from an older epoch never reaches a client');
  assert.equal(p.stats().connections, 0);
});

test("the container's end of stream is held like its bytes", async () => {
  // A container that answers and closes.
  container.close();
  container = createServer((socket) => socket.end('bye'));
  container.listen(port, '127.0.0.1');
  await once(container, 'listening');
  const p = await startProxy('held');
  const c = await client();
  await heldAtLeast(p, 3);
  await sleep(20);
  assert.equal(c.socket.readableEnded, false);
  p.release(p.cut());
  await c.closed;
  assert.equal(c.received(), 'bye');
});
