/**
 * The one chunk transfer, shared by replication (a primary's epochs to its
 * backup) and live migration (a source's rounds to its destination): ask the
 * receiver which chunks it lacks, send only those in one framed stream
 * (`[u32 length][32-byte hash][bytes]`, see `ReplicaStore.receive`), and —
 * when the caller wants an epoch — commit the manifest, which the receiver
 * acknowledges once it holds all of it on disk.
 *
 * ```ts
 * const sent = await sendChunks(address, token, name, hashes, chunked.read, { idleTimeoutMs: 5000 });
 * await commitEpoch(address, token, manifest);
 * ```
 */
import { Readable } from 'node:stream';
import { callJson, errorFrom, openRequest } from '../core/http-client.js';
import type { EpochManifest } from './chunks.js';

/** What one transfer moved. */
export interface TransferResult {
  /** Chunks the receiver lacked, and their bytes (what travelled). */
  sentChunks: number;
  sentBytes: number;
  /** Milliseconds: the `missing` question, and the stream of chunks. */
  askMs: number;
  sendMs: number;
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
  const sending = performance.now();
  if (missing.length > 0) {
    const onProgress = options.onProgress;
    const frames = Readable.from(
      (async function* () {
        for (const hash of missing) {
          const data = await read(hash);
          const header = Buffer.alloc(36);
          header.writeUInt32BE(data.length, 0);
          Buffer.from(hash, 'hex').copy(header, 4);
          sent += data.length;
          yield Buffer.concat([header, data]);
          onProgress?.(sent);
        }
      })(),
    );
    const res = await openRequest(address, `${base}/chunks`, token, {
      method: 'POST',
      payload: frames,
      headers: { 'content-type': 'application/octet-stream' },
      timeoutMs: idle,
    });
    if ((res.statusCode ?? 500) >= 300) throw await errorFrom(res);
    res.resume();
  }
  return { sentChunks: missing.length, sentBytes: sent, askMs, sendMs: performance.now() - sending };
}

/** Commits an epoch on the receiver: acknowledged once its manifest and every chunk are on its disk. */
export async function commitEpoch(
  address: string,
  token: string,
  manifest: EpochManifest,
  timeoutMs = 120_000,
): Promise<void> {
  await callJson(address, `/v1/replicas/${encodeURIComponent(manifest.container)}/epochs`, token, {
    body: manifest,
    timeoutMs,
  });
}
