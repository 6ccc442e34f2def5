/**
 * Heartbeat datagrams: the wire format refuses what it should, and the
 * controller's receiver (real UDP sockets on loopback, a real Controller on
 * an in-memory store) counts a beat only with the key of the host's current
 * registration, acknowledges it, and tells a stale or unknown sender to
 * register again.
 */
import assert from 'node:assert/strict';
import { createSocket, type Socket } from 'node:dgram';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { CachedStore } from '../../src/controller/cached-store.js';
import { Controller } from '../../src/controller/controller.js';
import { receiveHeartbeatDatagrams, type DatagramStats } from '../../src/controller/heartbeat-udp.js';
import { ImageRegistry } from '../../src/controller/image-registry.js';
import { SqliteStore } from '../../src/controller/sqlite-store.js';
import {
  encodeHeartbeatDatagram,
  parseHeartbeatAnswer,
  parseHeartbeatDatagram,
  type HeartbeatDatagramAnswer,
} from '../../src/core/heartbeat-datagram.js';

const KEY = '0123456789abcdef0123456789abcdef';

test('a heartbeat datagram round-trips; anything else is refused', () => {
  const beat = { host: 'h1', bootId: 'b00710aa', key: KEY, seq: 7 };
  assert.deepEqual(parseHeartbeatDatagram(encodeHeartbeatDatagram(beat)), beat);
  const bad = [
    'not json',
    'null',
    '[]',
    JSON.stringify({ ...beat, seq: -1 }),
    JSON.stringify({ ...beat, seq: 1.5 }),
    JSON.stringify({ ...beat, seq: '7' }),
    JSON.stringify({ ...beat, key: 'short' }),
    JSON.stringify({ ...beat, key: KEY.toUpperCase() }),
    JSON.stringify({ ...beat, host: '' }),
    JSON.stringify({ ...beat, host: 'h'.repeat(64) }),
    JSON.stringify({ ...beat, bootId: 'b'.repeat(65) }),
    JSON.stringify({ host: 'h1', key: KEY, seq: 1 }),
    JSON.stringify({ ...beat, pad: 'x'.repeat(600) }),
  ];
  for (const text of bad) assert.equal(parseHeartbeatDatagram(Buffer.from(text)), null, text);
  assert.deepEqual(parseHeartbeatAnswer(Buffer.from('{"ack":12}')), { ack: 12 });
  assert.deepEqual(parseHeartbeatAnswer(Buffer.from('{"error":"register"}')), { error: 'register' });
  assert.equal(parseHeartbeatAnswer(Buffer.from('{"error":"other"}')), null);
});

let dir: string;
let controller: Controller;
let receiver: Socket;
let sender: Socket;
const stats: DatagramStats = { beats: 0, refused: 0, malformed: 0 };
const answers: HeartbeatDatagramAnswer[] = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'haven-datagram-'));
  controller = new Controller({
    store: await CachedStore.over(new SqliteStore(':memory:')),
    images: new ImageRegistry(join(dir, 'images')),
    callAgent: () => Promise.reject(new Error('no agents here')),
  });
  receiver = await receiveHeartbeatDatagrams(controller, { host: '127.0.0.1', port: 0 }, stats);
  sender = createSocket('udp4');
  sender.on('message', (bytes) => {
    const answer = parseHeartbeatAnswer(bytes);
    if (answer) answers.push(answer);
  });
  await new Promise<void>((resolve) => sender.bind(0, '127.0.0.1', resolve));
});
after(async () => {
  receiver.close();
  sender.close();
  await rm(dir, { recursive: true, force: true });
});

/** Sends one datagram and waits (≤ 2 s) until the receiver has handled it. */
async function send(beat: object | string): Promise<void> {
  const before = stats.beats + stats.refused + stats.malformed;
  const bytes = typeof beat === 'string' ? Buffer.from(beat) : encodeHeartbeatDatagram(beat as never);
  sender.send(bytes, receiver.address().port, '127.0.0.1');
  const until = Date.now() + 2000;
  while (stats.beats + stats.refused + stats.malformed === before) {
    assert.ok(Date.now() < until, 'the receiver never handled the datagram');
    await new Promise((r) => setTimeout(r, 5));
  }
  await new Promise((r) => setTimeout(r, 20)); // room for the answer to come back
}

test('only the current registration key counts; the rest are told to register', async () => {
  const registered = await controller.registerHost({
    name: 'h1',
    address: 'http://127.0.0.1:7071',
    labels: {},
    cpuMillis: 1000,
    memoryBytes: 1 << 30,
    bootId: 'b00710aa',
    heartbeatMs: 100,
  });
  assert.match(registered.beatKey, /^[0-9a-f]{32}$/);
  await send({ host: 'h1', bootId: 'b00710aa', key: registered.beatKey, seq: 1 });
  assert.equal(stats.beats, 1);
  assert.deepEqual(answers.at(-1), { ack: 1 });

  // A wrong key, an unknown host, a stale boot: refused, and told (once a second at most) to register.
  await send({ host: 'h1', bootId: 'b00710aa', key: KEY, seq: 2 });
  await send({ host: 'h9', bootId: 'b00710aa', key: registered.beatKey, seq: 3 });
  await send({ host: 'h1', bootId: 'ffff0000', key: registered.beatKey, seq: 4 });
  assert.equal(stats.refused, 3);
  assert.deepEqual(
    answers.filter((a) => 'error' in a),
    [{ error: 'register' }],
    'one refusal answered per source per second',
  );

  // A new registration makes the old key stale.
  const again = await controller.registerHost({
    name: 'h1',
    address: 'http://127.0.0.1:7071',
    labels: {},
    cpuMillis: 1000,
    memoryBytes: 1 << 30,
    bootId: 'b00710aa',
    heartbeatMs: 100,
  });
  assert.notEqual(again.beatKey, registered.beatKey);
  await send({ host: 'h1', bootId: 'b00710aa', key: registered.beatKey, seq: 5 });
  assert.equal(stats.refused, 4);

  await send('{"host":"h1"');
  assert.equal(stats.malformed, 1);
  const [view] = await controller.listHosts();
  assert.equal(view?.state, 'up');
});
