/**
 * The wire format of heartbeat datagrams, shared by the agent that sends them
 * and the controller that receives them (`controller/heartbeat-udp.ts`).
 *
 * A beat is one UDP datagram holding a JSON object:
 *
 *     {"host":"h1","bootId":"…","key":"<32 hex>","seq":123}
 *
 * `key` is the secret the controller handed this host when it last
 * registered (over the token-authenticated API); a beat without the current
 * key is refused, so the controller never counts a forged or stale beat. The
 * controller answers `{"ack":123}` (at most one per host every
 * {@link DATAGRAM_ACK_EVERY_MS}; the agent's lease runs from it) or
 * `{"error":"register"}` when the host must register again (controller
 * restarted, new boot, new key).
 *
 * Why datagrams: a failure detector must not wait behind a retransmission. On
 * a TCP stream one lost segment holds every later beat back for at least the
 * retransmission timeout (200 ms on Linux), which at 2% loss fakes silences
 * of several beats; a lost datagram costs one beat. They are also the
 * cheapest way in: ~15 µs of controller CPU a beat against ~21 µs for a raw
 * TCP stream and ~28 µs for an HTTP request body stream (measured side by
 * side, 1,000 senders × 10/s; docs/BENCHMARKS.md).
 */

/** Largest heartbeat datagram accepted. */
export const MAX_HEARTBEAT_DATAGRAM_BYTES = 512;

/**
 * The controller acknowledges a host's datagrams at most this often: every
 * other 100 ms beat (an acknowledgement costs the controller a send, ~2 µs a
 * beat at every beat), twice inside the agent's 500 ms lease even if one is lost.
 */
export const DATAGRAM_ACK_EVERY_MS = 190;

/** One heartbeat datagram. */
export interface HeartbeatDatagram {
  host: string;
  bootId: string;
  key: string;
  seq: number;
}

/** What the controller answers a datagram with. */
export type HeartbeatDatagramAnswer = { ack: number } | { error: 'register' };

const KEY = /^[0-9a-f]{32}$/;

/** Encodes a beat as the bytes of one datagram. */
export function encodeHeartbeatDatagram(beat: HeartbeatDatagram): Buffer {
  return Buffer.from(JSON.stringify(beat));
}

/**
 * Decodes and validates a beat; null for anything else (a datagram is
 * unauthenticated input from the network: checked by hand, field by field,
 * because this runs ten thousand times a second).
 */
export function parseHeartbeatDatagram(bytes: Buffer): HeartbeatDatagram | null {
  if (bytes.length > MAX_HEARTBEAT_DATAGRAM_BYTES) return null;
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString('latin1'));
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null) return null;
  const { host, bootId, key, seq } = value as Record<string, unknown>;
  if (typeof host !== 'string' || host.length === 0 || host.length > 63) return null;
  if (typeof bootId !== 'string' || bootId.length === 0 || bootId.length > 64) return null;
  if (typeof key !== 'string' || !KEY.test(key)) return null;
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 0) return null;
  return { host, bootId, key, seq };
}

/** Decodes the controller's answer; null for anything else. */
export function parseHeartbeatAnswer(bytes: Buffer): HeartbeatDatagramAnswer | null {
  if (bytes.length > MAX_HEARTBEAT_DATAGRAM_BYTES) return null;
  try {
    const value = JSON.parse(bytes.toString('latin1')) as Record<string, unknown>;
    if (typeof value.ack === 'number' && Number.isSafeInteger(value.ack)) return { ack: value.ack };
    if (value.error === 'register') return { error: 'register' };
  } catch {
    // fall through
  }
  return null;
}
