/**
 * The one chunk transfer, shared by replication (a primary's epochs to its
 * backup) and live migration (a source's rounds to its destination): ask the
 * receiver which chunks it lacks, send only those in one framed stream, and —
 * when the caller wants an epoch — commit the manifest, which the receiver
 * acknowledges once it holds all of it on disk.
 *
 * Two frame formats, told apart by the request header `x-haven-frames`:
 *
 *   1 (no header)  [u32 length][32-byte hash][bytes]                    raw
 *   2              [u32 length][32-byte hash][u8 codec][u32 raw length][payload]
 *
 * Format 2 carries each chunk compressed (`compression.ts`), the codec per
 * frame so `auto` can change its mind mid-stream; the hash is always that of
 * the raw bytes, checked after decompression. Without `compress` (replication
 * today) format 1 is sent, byte for byte as before.
 *
 * ```ts
 * const sent = await sendChunks(address, token, name, hashes, chunked.read, { idleTimeoutMs: 5000, compress: 'auto' });
 * await commitEpoch(address, token, manifest);
 * ```
 */
import { Readable } from 'node:stream';
import { CorruptCheckpointError, InvalidArgumentError } from '../core/errors.js';
import { callJson, errorFrom, openRequest } from '../core/http-client.js';
import { trace } from '../core/exec.js';
import { CHUNK_BYTES, type EpochManifest } from './chunks.js';
import { manifestKey, signManifest } from './manifest-mac.js';
import {
  AutoCodec,
  CODEC_IDS,
  codecOfId,
  compress,
  decompress,
  type AutoDecision,
  type Codec,
  type CompressSetting,
} from './compression.js';

/** The request header naming the frame format (absent: format 1). */
export const FRAMES_HEADER = 'x-haven-frames';
const HEADER_V1 = 36;
const HEADER_V2 = 41;
/** Chunks read and compressed ahead of the socket (libuv's pool does the work). */
const LOOKAHEAD = 3;

/** What one transfer moved. */
export interface TransferResult {
  /** Chunks the receiver lacked, and their bytes (what travelled). */
  sentChunks: number;
  sentBytes: number;
  /** Milliseconds: the `missing` question, and the stream of chunks. */
  askMs: number;
  sendMs: number;
  /** Bytes on the wire (frames' payloads): `sentBytes` after compression. */
  wireBytes: number;
  /** The setting used, and how many chunks travelled in each codec. */
  compress: CompressSetting | 'off';
  codecs: Partial<Record<Codec, number>>;
  /** `auto`: its decisions in order, and its final estimate of the link (wire bytes/s). */
  decisions?: AutoDecision[];
  linkBps?: number;
}

/** Options of {@link sendChunks}. */
export interface TransferOptions {
  /**
   * Milliseconds without progress before the transfer is given up (the
   * socket's idle timeout, not a bound on the whole). A receiver that dies or
   * a link that is cut sends nothing back — no reset — so only silence tells.
   */
  idleTimeoutMs?: number;
  /** Called after each chunk is handed to the socket, with the bytes so far. */
  onProgress?: (sentBytes: number) => void;
  /**
   * Compress each chunk (frame format 2). Absent: format 1, uncompressed, as
   * receivers before compression expect.
   */
  compress?: CompressSetting;
  /** `auto`: the link's rate in wire bytes per second, if known (else it is measured). */
  linkBpsHint?: number;
}

/** Sends the chunks among `hashes` that the receiver (an agent's replica store) lacks. */
export async function sendChunks(
  address: string,
  token: string,
  name: string,
  hashes: readonly string[],
  read: (hash: string) => Promise<Buffer>,
  options: TransferOptions = {},
): Promise<TransferResult> {
  const base = `/v1/replicas/${encodeURIComponent(name)}`;
  const idle = options.idleTimeoutMs ?? 120_000;
  const asked = performance.now();
  const { missing } = await callJson<{ missing: string[] }>(address, `${base}/missing`, token, {
    body: { hashes },
    timeoutMs: Math.min(idle, 30_000),
  });
  const askMs = performance.now() - asked;
  let sent = 0;
  let wire = 0;
  const codecs: Partial<Record<Codec, number>> = {};
  const setting = options.compress;
  const auto = setting === 'auto' ? new AutoCodec(undefined, options.linkBpsHint) : undefined;
  const sending = performance.now();
  if (missing.length > 0) {
    const onProgress = options.onProgress;
    // One chunk read (and compressed) into its frame.
    const frameOf = async (hash: string): Promise<{ frame: Buffer; raw: number }> => {
      const data = await read(hash);
      if (setting === undefined) {
        const header = Buffer.alloc(HEADER_V1);
        header.writeUInt32BE(data.length, 0);
        Buffer.from(hash, 'hex').copy(header, 4);
        codecs.none = (codecs.none ?? 0) + 1;
        return { frame: Buffer.concat([header, data]), raw: data.length };
      }
      let codec: Codec = auto ? await auto.codecFor(data) : (setting as Codec);
      let payload =
        codec === 'none' ? data : (auto?.takePacked(data, codec) ?? (await compress(codec, data)));
      // A chunk the codec does not shrink (random memory) travels raw.
      if (payload.length >= data.length) {
        codec = 'none';
        payload = data;
      }
      codecs[codec] = (codecs[codec] ?? 0) + 1;
      const header = Buffer.alloc(HEADER_V2);
      header.writeUInt32BE(payload.length, 0);
      Buffer.from(hash, 'hex').copy(header, 4);
      header.writeUInt8(CODEC_IDS[codec], 36);
      header.writeUInt32BE(data.length, 37);
      return { frame: Buffer.concat([header, payload]), raw: data.length };
    };
    const frames = Readable.from(
      (async function* () {
        // A few chunks in flight ahead of the socket, in order.
        const ahead: Array<Promise<{ frame: Buffer; raw: number }>> = [];
        let next = 0;
        const fill = (): void => {
          while (ahead.length < (setting === undefined ? 1 : LOOKAHEAD) && next < missing.length) {
            const pending = frameOf(missing[next++]!);
            pending.catch(() => undefined); // awaited below, in order; never an unhandled rejection
            ahead.push(pending);
          }
        };
        let windowStart = performance.now();
        let linkWindows = 0;
        let windowWire = 0;
        let windowRaw = 0;
        let waitedSocket = 0;
        let waitedFrames = 0;
        // Over the whole transfer, for HAVEN_TRACE: where a slow send spent its time.
        let framesTotal = 0;
        let socketTotal = 0;
        fill();
        while (ahead.length > 0) {
          const asked = performance.now();
          const { frame, raw } = await ahead.shift()!;
          // Time the next frame was not ready: reading and compressing held the stream back.
          waitedFrames += performance.now() - asked;
          framesTotal += performance.now() - asked;
          fill();
          sent += raw;
          wire += frame.length - (setting === undefined ? HEADER_V1 : HEADER_V2);
          windowWire += frame.length;
          windowRaw += raw;
          const handed = performance.now();
          yield frame;
          // Time until the stream wanted more: the socket (the link, the receiver) was full.
          waitedSocket += performance.now() - handed;
          socketTotal += performance.now() - handed;
          onProgress?.(sent);
          if (auto && windowWire >= auto.linkWindowBytes) {
            const now = performance.now();
            // The first window only fills the socket's buffers: it says nothing of the link.
            if (linkWindows++ > 0)
              auto.observe({
                rawBytes: windowRaw,
                wireBytes: windowWire,
                ms: now - windowStart,
                waitedSocketMs: waitedSocket,
                waitedFramesMs: waitedFrames,
              });
            windowStart = now;
            windowWire = 0;
            windowRaw = 0;
            waitedSocket = 0;
            waitedFrames = 0;
          }
        }
        trace(
          `sending ${missing.length} chunks of ${name}: waited ${framesTotal.toFixed(1)} ms for frames, ` +
            `${socketTotal.toFixed(1)} ms for the socket`,
          sending,
        );
      })(),
      { highWaterMark: 1 },
    );
    const res = await openRequest(address, `${base}/chunks`, token, {
      method: 'POST',
      payload: frames,
      headers: {
        'content-type': 'application/octet-stream',
        ...(setting === undefined ? {} : { [FRAMES_HEADER]: '2' }),
      },
      timeoutMs: idle,
    });
    if ((res.statusCode ?? 500) >= 300) throw await errorFrom(res);
    res.resume();
  }
  return {
    sentChunks: missing.length,
    sentBytes: sent,
    askMs,
    sendMs: performance.now() - sending,
    wireBytes: wire,
    compress: setting ?? 'off',
    codecs,
    ...(auto
      ? {
          decisions: auto.decisions,
          ...(auto.linkEstimate !== undefined ? { linkBps: Math.round(auto.linkEstimate) } : {}),
        }
      : {}),
  };
}

/** One chunk as a receiver takes it from a stream: its hash, and its raw (decompressed) bytes. */
export interface ReceivedChunk {
  hash: string;
  data: Buffer;
}

/**
 * The chunks of a framed stream (format 1 or 2, see the module comment),
 * decompressed; the caller verifies each hash (`ChunkStore.put`). A frame
 * over {@link CHUNK_BYTES}, an unknown codec or a stream cut mid-frame is
 * refused.
 */
export async function* readFrames(
  stream: AsyncIterable<Buffer>,
  format: string | undefined,
): AsyncGenerator<ReceivedChunk> {
  const v2 = format === '2';
  if (format !== undefined && format !== '1' && !v2)
    throw new InvalidArgumentError(`unknown chunk frame format "${format.slice(0, 20)}"`);
  const headerBytes = v2 ? HEADER_V2 : HEADER_V1;
  let pending: Buffer = Buffer.alloc(0);
  for await (const data of stream) {
    pending = pending.length ? Buffer.concat([pending, data]) : data;
    for (;;) {
      if (pending.length < headerBytes) break;
      const length = pending.readUInt32BE(0);
      if (length > CHUNK_BYTES)
        throw new InvalidArgumentError(`chunk frame of ${length} bytes is over ${CHUNK_BYTES}`);
      if (pending.length < headerBytes + length) break;
      const hash = pending.subarray(4, 36).toString('hex');
      const payload = Buffer.from(pending.subarray(headerBytes, headerBytes + length));
      if (v2) {
        const codec = codecOfId(pending.readUInt8(36));
        const raw = pending.readUInt32BE(37);
        pending = pending.subarray(headerBytes + length);
        yield { hash, data: await decompress(codec, payload, raw, CHUNK_BYTES) };
      } else {
        pending = pending.subarray(headerBytes + length);
        yield { hash, data: payload };
      }
    }
  }
  if (pending.length > 0) throw new CorruptCheckpointError('the chunk stream ended in the middle of a chunk');
}

/**
 * Commits an epoch on the receiver: acknowledged once its manifest and every
 * chunk are on its disk — synced there unless `durable` is false (see
 * {@link ReplicaStore.commit}).
 */
/**
 * Tells a post-copy destination that the source is frozen and locked: its
 * network, made ahead, announces itself (see ContainerHost.announcePremade).
 * Best effort and quick: without it the restore announces, later.
 */
export async function announceDestination(address: string, token: string, name: string): Promise<boolean> {
  const answer = await callJson<{ announced?: boolean }>(
    address,
    `/v1/replicas/${encodeURIComponent(name)}/announce`,
    token,
    { body: {}, timeoutMs: 2000 },
  );
  return answer.announced === true;
}

export async function commitEpoch(
  address: string,
  token: string,
  manifest: EpochManifest,
  timeoutMs = 120_000,
  options: { durable?: boolean } = {},
): Promise<void> {
  const query = options.durable === false ? '?durable=false' : '';
  await callJson(address, `/v1/replicas/${encodeURIComponent(manifest.container)}/epochs${query}`, token, {
    // Authenticated end to end: the receiver refuses a manifest without this cluster's MAC.
    body: signManifest(manifest, manifestKey(token)),
    timeoutMs,
  });
}
