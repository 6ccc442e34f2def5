/**
 * The controller's heartbeat receiver: plain heartbeats as UDP datagrams on
 * the API's own port number (format and the reasons for datagrams in
 * `core/heartbeat-datagram.ts`). Reports (containers, protection, probes)
 * still come over the API, a request each, every tenth beat at most.
 */
import { createSocket, type Socket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { DATAGRAM_ACK_EVERY_MS, parseHeartbeatDatagram } from '../core/heartbeat-datagram.js';
import type { Controller } from './controller.js';

const REGISTER = Buffer.from('{"error":"register"}');

/** Tells a sender to register again at most this often (a refused sender must not make the controller flood it). */
const REFUSAL_EVERY_MS = 1000;

/** Counts of what the receiver did, for metrics and the benchmark. */
export interface DatagramStats {
  beats: number;
  refused: number;
  malformed: number;
}

/**
 * Receives heartbeat datagrams on `host:port` (UDP) and feeds them to the
 * controller. Resolves once bound; close the returned socket to stop.
 */
export async function receiveHeartbeatDatagrams(
  controller: Controller,
  listen: { host: string; port: number },
  stats: DatagramStats = { beats: 0, refused: 0, malformed: 0 },
): Promise<Socket> {
  const socket = createSocket({ type: isIPv6(listen.host) ? 'udp6' : 'udp4', recvBufferSize: 4 << 20 });
  /** Per host, when it was last acknowledged. */
  const lastAck = new Map<string, number>();
  /** Per source address, when it was last told to register. */
  const lastRefusal = new Map<string, number>();
  socket.on('message', (bytes, from) => {
    const beat = parseHeartbeatDatagram(bytes);
    if (!beat) {
      stats.malformed++;
      return;
    }
    const now = Date.now();
    if (!controller.datagramHeartbeat(beat.host, beat.bootId, beat.key, beat.seq)) {
      stats.refused++;
      const source = `${from.address}:${from.port}`;
      if (now - (lastRefusal.get(source) ?? 0) < REFUSAL_EVERY_MS) return;
      if (lastRefusal.size > 10_000) lastRefusal.clear();
      lastRefusal.set(source, now);
      socket.send(REGISTER, from.port, from.address);
      return;
    }
    stats.beats++;
    if (now - (lastAck.get(beat.host) ?? 0) < DATAGRAM_ACK_EVERY_MS) return;
    lastAck.set(beat.host, now);
    socket.send(`{"ack":${beat.seq}}`, from.port, from.address);
  });
  // A send to a vanished agent fails with ECONNREFUSED on some kernels: no reason to stop receiving.
  socket.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(listen.port, listen.host, () => {
      socket.off('error', reject);
      resolve();
    });
  });
  return socket;
}
