/**
 * Compression of the chunk transfer: every codec round-trips and refuses
 * damaged frames; `auto`'s choice as a pure function of link rate and
 * measured codecs; and the real `sendChunks` into a real `ReplicaStore`
 * over loopback HTTP in every setting, chunks verified by their raw hash.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { CorruptCheckpointError, InvalidArgumentError } from '../../src/core/errors.js';
import { CHUNK_BYTES, sha256 } from '../../src/replication/chunks.js';
import {
  AutoCodec,
  bestCodec,
  CODEC_IDS,
  CODECS,
  compress,
  decompress,
  parseCompressSetting,
  throughputOf,
  type CodecMeasure,
} from '../../src/replication/compression.js';
import { ReplicaStore } from '../../src/replication/replica-store.js';
import { FRAMES_HEADER, readFrames, sendChunks } from '../../src/replication/transfer.js';

/** Text-like bytes: words from a small vocabulary with numbers, as logs and keys are. */
function textLike(bytes: number, seed: number): Buffer {
  const words = ['alpha', 'beta', 'gamma', 'key:', 'value', 'user', 'session', '=', '\n', 'GET', '/api/v1'];
  const parts: string[] = [];
  let size = 0;
  let x = seed;
  while (size < bytes) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    const w = `${words[x % words.length]} ${x % 1000} `;
    parts.push(w);
    size += w.length;
  }
  return Buffer.from(parts.join('')).subarray(0, bytes);
}

test('every codec round-trips text and random chunks; none of them is trusted blindly', async () => {
  for (const data of [textLike(CHUNK_BYTES, 1), randomBytes(CHUNK_BYTES), Buffer.from('x')]) {
    for (const codec of CODECS) {
      const packed = await compress(codec, data);
      assert.deepEqual(await decompress(codec, packed, data.length, CHUNK_BYTES), data, codec);
    }
  }
  const text = textLike(CHUNK_BYTES, 2);
  for (const codec of ['lz4', 'zstd', 'gzip'] as const) {
    assert.ok((await compress(codec, text)).length < text.length / 2, `${codec} shrinks text`);
    const packed = await compress(codec, text);
    // A frame that claims another length, or more than a chunk, is refused.
    await assert.rejects(decompress(codec, packed, text.length - 1, CHUNK_BYTES), CorruptCheckpointError);
    await assert.rejects(decompress(codec, packed, CHUNK_BYTES + 1, CHUNK_BYTES), InvalidArgumentError);
    // Damage is refused by the codec, or yields other bytes that the raw hash then refuses.
    const damaged = Buffer.from(packed);
    damaged.fill(0xff, 8, 40);
    const outcome = await decompress(codec, damaged, text.length, CHUNK_BYTES).then(
      (d) => (sha256(d) === sha256(text) ? 'undetected' : 'hash differs'),
      (error: unknown) => (error instanceof CorruptCheckpointError ? 'refused' : String(error)),
    );
    assert.ok(['refused', 'hash differs'].includes(outcome), `${codec}: ${outcome}`);
  }
  assert.equal(parseCompressSetting('auto'), 'auto');
  assert.throws(() => parseCompressSetting('brotli'), InvalidArgumentError);
});

test('auto picks what moves raw bytes fastest: strong codecs on a slow link, none for data that does not shrink', () => {
  const m = (ratio: number, compressMBps: number, decompressMBps = 1000): CodecMeasure => ({
    ratio,
    compressBps: compressMBps * 1e6,
    decompressBps: decompressMBps * 1e6,
  });
  const text = {
    none: m(1, 10_000, 10_000),
    lz4: m(0.45, 600, 2000),
    zstd: m(0.25, 400, 800),
    gzip: m(0.2, 40, 300),
  };
  // 5 MB/s: the link is everything; the best ratio whose speed keeps up wins.
  assert.equal(bestCodec(text, 5e6), 'gzip');
  // 125 MB/s (1 Gbit/s): gzip cannot keep up (40 MB/s); zstd moves 400 MB/s of raw data, lz4 only 278.
  assert.equal(bestCodec(text, 125e6), 'zstd');
  // 2 GB/s: compression is the bottleneck for everyone but none.
  assert.equal(bestCodec(text, 2e9), 'none');
  assert.ok(throughputOf(text.zstd, 125e6) > throughputOf(text.lz4, 125e6));
  const random = { none: m(1, 10_000, 10_000), lz4: m(1, 3000), zstd: m(1, 900), gzip: m(1, 30) };
  for (const link of [1e6, 125e6, 1e10]) assert.equal(bestCodec(random, link), 'none');
  // What a codec achieved end to end caps its model: lz4 modelled at 278 MB/s but seen at 89 loses to the link's 125.
  assert.equal(bestCodec(text, 125e6, { lz4: 89e6, zstd: 58e6, gzip: 40e6 }), 'none');
  assert.equal(bestCodec(text, 125e6, { zstd: 58e6 }), 'lz4');
  // Near-ties go to none: 2% is not worth the CPU.
  assert.equal(bestCodec({ none: m(1, 10_000, 10_000), lz4: m(0.98, 5000, 5000) }, 100e6), 'none');
  // The codec in use stays unless another promises more than 10% over it (no wavering between near-equals).
  const near = { none: m(1, 10_000, 10_000), lz4: m(0.573, 250, 2000), zstd: m(0.341, 70, 500) };
  // At 25 MB/s: zstd is capped to 70 MB/s by its speed, lz4 reaches 43.6 by the link: zstd wins.
  assert.equal(bestCodec(near, 25e6), 'zstd');
  // Seen at 42 MB/s, zstd loses to lz4's 43.6 modelled — but not by 10%: in use, it stays.
  assert.equal(bestCodec(near, 25e6, { zstd: 42e6 }), 'lz4');
  assert.equal(bestCodec(near, 25e6, { zstd: 42e6 }, 'zstd'), 'zstd');
  // Seen at 35 MB/s it is left.
  assert.equal(bestCodec(near, 25e6, { zstd: 35e6 }, 'zstd'), 'lz4');
  // gzip packing no better than zstd is never taken for a faster-looking sample, nor kept in use;
  // packing 3% better it is (the 5 MB/s case above: 0.2 against 0.25).
  const gzipFast = { ...near, gzip: m(0.372, 200, 300) };
  assert.equal(bestCodec(gzipFast, 25e6), 'zstd');
  assert.equal(bestCodec(gzipFast, 25e6, {}, 'gzip'), 'zstd');
  assert.equal(bestCodec({ ...near, gzip: m(0.3, 200, 300) }, 25e6), 'gzip');
  // Data that stopped shrinking is left at once, whatever is in use.
  assert.equal(bestCodec(random, 125e6, {}, 'zstd'), 'none');
});

test('auto sends the zstd output it measured a window on, once, and only for that chunk', async () => {
  const auto = new AutoCodec(4 * CHUNK_BYTES, 1e6); // a slow link: zstd's ratio wins
  const data = textLike(CHUNK_BYTES, 7);
  assert.equal(await auto.codecFor(data), 'zstd');
  assert.equal(auto.takePacked(textLike(CHUNK_BYTES, 7), 'zstd'), undefined, 'another buffer, same bytes');
  const again = textLike(CHUNK_BYTES, 8);
  assert.equal(await auto.codecFor(again), 'zstd'); // same window: nothing measured
  assert.equal(auto.takePacked(again, 'zstd'), undefined);
  const next = textLike(CHUNK_BYTES, 9);
  for (let i = 0; i < 2; i++) await auto.codecFor(textLike(CHUNK_BYTES, 10 + i));
  assert.equal(await auto.codecFor(next), 'zstd'); // a new window: measured on `next`
  const packed = auto.takePacked(next, 'zstd');
  assert.ok(packed && packed.length < next.length);
  assert.deepEqual(await decompress('zstd', packed, next.length, CHUNK_BYTES), next);
  assert.equal(auto.takePacked(next, 'zstd'), undefined, 'taken once');
});

test('auto re-decides each window on the data at hand, and learns the link only when it was the bottleneck', async () => {
  const auto = new AutoCodec(4 * CHUNK_BYTES, 1e6); // a slow link, known: any codec's speed beats it
  const first = await auto.codecFor(textLike(CHUNK_BYTES, 3));
  assert.notEqual(first, 'none');
  for (let i = 0; i < 3; i++) assert.equal(await auto.codecFor(randomBytes(CHUNK_BYTES)), first); // same window
  assert.equal(await auto.codecFor(randomBytes(CHUNK_BYTES)), 'none'); // new window: random data
  assert.deepEqual(
    auto.decisions.map((d) => d.codec),
    [first, 'none'],
  );
  // A window in which the sender waited on its own frames caps the codec in use at what it achieved.
  const capped = new AutoCodec(CHUNK_BYTES, 1e6);
  const chosen = await capped.codecFor(textLike(CHUNK_BYTES, 4));
  assert.notEqual(chosen, 'none');
  // 0.5 MB/s of raw data: worse than sending raw over this link.
  capped.observe({ rawBytes: 5e4, wireBytes: 2e4, ms: 100, waitedSocketMs: 5, waitedFramesMs: 80 });
  assert.notEqual(await capped.codecFor(textLike(CHUNK_BYTES, 5)), chosen);
  // A window spent waiting on the socket measures the link; one spent compressing cannot lower it.
  const learner = new AutoCodec();
  learner.observeLink(10e6, 1000, 900);
  assert.equal(learner.linkEstimate, 10e6);
  learner.observeLink(2e6, 1000, 50);
  assert.equal(learner.linkEstimate, 10e6);
  learner.observeLink(50e6, 1000, 100); // a buffer refilling: not the link either
  assert.equal(learner.linkEstimate, 10e6);
  learner.observeLink(4e6, 1000, 800);
  assert.equal(learner.linkEstimate, 7e6);
});

let dir: string;
let server: Server;
let address: string;
const formats: Array<string | undefined> = [];
let store: ReplicaStore;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'haven-compress-'));
  store = new ReplicaStore(join(dir, 'replicas'));
  // The two routes of the agent's replica API that a transfer uses, over the same store code.
  server = createServer((req, res) => {
    const reply = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    void (async () => {
      try {
        if (req.url?.endsWith('/missing')) {
          const parts: Buffer[] = [];
          for await (const p of req) parts.push(p as Buffer);
          const { hashes } = JSON.parse(Buffer.concat(parts).toString()) as { hashes: string[] };
          return reply(200, { missing: await store.missing(hashes) });
        }
        const format = req.headers[FRAMES_HEADER];
        formats.push(typeof format === 'string' ? format : undefined);
        return reply(200, {
          stored: await store.receive(req, typeof format === 'string' ? format : undefined),
        });
      } catch (error) {
        return reply(422, { error: (error as Error).message, code: 'corrupt_checkpoint' });
      }
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  address = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server.close();
  await rm(dir, { recursive: true, force: true });
});

test('sendChunks in every setting: the store holds every chunk under its raw hash; text shrinks on the wire', async () => {
  let seed = 100;
  for (const setting of [undefined, ...CODECS, 'auto'] as const) {
    const chunks = new Map<string, Buffer>();
    for (let i = 0; i < 6; i++) {
      const data = i % 3 === 2 ? randomBytes(CHUNK_BYTES) : textLike(CHUNK_BYTES, seed++);
      chunks.set(sha256(data), data);
    }
    const result = await sendChunks(
      address,
      'token',
      'kv',
      [...chunks.keys()],
      (h) => Promise.resolve(chunks.get(h)!),
      // auto: a slow link, as if measured (else its first window goes raw, and these are all of it).
      setting === undefined ? {} : { compress: setting, ...(setting === 'auto' ? { linkBpsHint: 1e6 } : {}) },
    );
    assert.equal(result.sentChunks, 6, String(setting));
    assert.equal(result.sentBytes, 6 * CHUNK_BYTES);
    for (const [hash, data] of chunks) assert.deepEqual(await store.chunks.get(hash), data);
    assert.equal(formats.at(-1), setting === undefined ? undefined : '2');
    if (setting === undefined || setting === 'none') assert.equal(result.wireBytes, result.sentBytes);
    else {
      assert.ok(result.wireBytes < result.sentBytes * 0.8, `${setting}: ${result.wireBytes}`);
      // The random chunks travel raw even when a codec is asked for.
      assert.ok((result.codecs.none ?? 0) >= 2, `${setting}: ${JSON.stringify(result.codecs)}`);
    }
    if (setting === 'auto') assert.ok(result.decisions && result.decisions.length >= 1);
  }
});

test('a compressed frame damaged in flight is refused by its raw hash; a cut stream too', async () => {
  const data = textLike(CHUNK_BYTES, 7);
  const packed = await compress('zstd', data);
  const header = Buffer.alloc(41);
  header.writeUInt32BE(packed.length, 0);
  Buffer.from(sha256(textLike(CHUNK_BYTES, 8)), 'hex').copy(header, 4); // another chunk's name
  header.writeUInt8(CODEC_IDS.zstd, 36);
  header.writeUInt32BE(data.length, 37);
  await assert.rejects(
    store.receive(Readable.from([Buffer.concat([header, packed])]), '2'),
    CorruptCheckpointError,
  );
  const frames = readFrames(Readable.from([Buffer.concat([header, packed]).subarray(0, 100)]), '2');
  await assert.rejects(async () => {
    for await (const _ of frames) void _;
  }, CorruptCheckpointError);
  await assert.rejects(async () => {
    for await (const _ of readFrames(Readable.from([header]), '9')) void _;
  }, InvalidArgumentError);
});
