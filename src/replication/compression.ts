/**
 * Compression of the chunk transfer, per stream: `none`, `lz4`, `zstd`,
 * `gzip`, or `auto`, which picks one from what it measures — the link's rate
 * as the transfer drains, and each codec's speed and ratio on the very chunks
 * being sent — and decides again every {@link AUTO_WINDOW_BYTES} of data.
 *
 * Chunks stay named by the SHA-256 of their *uncompressed* bytes: the
 * receiver decompresses and then hashes, so a chunk is verified exactly as
 * before and dedup across epochs, codecs and hosts is unchanged. A chunk
 * that a codec does not shrink (random memory) travels raw, tagged `none`.
 *
 * Codecs: lz4 from `lz4-napi` (lz4_flex, block format with the size in
 * front), zstd from `@mongodb-js/zstd` (level 1), gzip from `node:zlib`
 * (level 1). Both native packages are napi-rs builds whose binaries are npm
 * packages of their own (`optionalDependencies`), nothing is fetched at
 * install; they run in libuv's thread pool, so compressing the next chunks
 * overlaps the socket's writes of the last ones.
 *
 * ```ts
 * const auto = new AutoCodec();
 * const codec = await auto.codecFor(chunk);          // measures, decides
 * const payload = await compress(codec, chunk);
 * auto.observeLink(wireBytes, ms, waitedMs);         // the link as it drains
 * ```
 */
import { promisify } from 'node:util';
import { gunzip, gunzipSync, gzip, gzipSync } from 'node:zlib';
import { CorruptCheckpointError, InvalidArgumentError } from '../core/errors.js';

/** A codec a chunk travels in. */
export type Codec = 'none' | 'lz4' | 'zstd' | 'gzip';
/** What a caller asks for: a codec, or `auto`. */
export type CompressSetting = Codec | 'auto';

/** Every setting, for flags and schemas. */
export const COMPRESS_SETTINGS = ['auto', 'none', 'lz4', 'zstd', 'gzip'] as const;
/** The codecs `auto` chooses among. */
export const CODECS: readonly Codec[] = ['none', 'lz4', 'zstd', 'gzip'];

/** The codec's byte in a frame (wire format 2, see `transfer.ts`). Append-only. */
export const CODEC_IDS: Readonly<Record<Codec, number>> = { none: 0, lz4: 1, zstd: 2, gzip: 3 };
const CODEC_BY_ID: readonly Codec[] = ['none', 'lz4', 'zstd', 'gzip'];

/** How much data `auto` sends between two decisions. */
export const AUTO_WINDOW_BYTES = 4 << 20;
/** A codec shrinking a sample less than this (to more than 95%) is no use on that data. */
const INCOMPRESSIBLE = 0.95;

// The native codecs load on first use: the CLI and the controller import this
// module for its settings only and never pay for (or depend on) the addons.
const lz4 = (): Promise<typeof import('lz4-napi')> => import('lz4-napi');
const zstd = (): Promise<typeof import('@mongodb-js/zstd')> => import('@mongodb-js/zstd');
const gzipAsync = promisify(gzip);
const gunzipAsync = promisify(gunzip);
const ZSTD_LEVEL = 1;
const GZIP_LEVEL = 1;

/** Parses a `--compress` value. */
export function parseCompressSetting(text: string): CompressSetting {
  if ((COMPRESS_SETTINGS as readonly string[]).includes(text)) return text as CompressSetting;
  throw new InvalidArgumentError(`invalid --compress "${text}": ${COMPRESS_SETTINGS.join(', ')}`);
}

/** The codec of a frame's codec byte. */
export function codecOfId(id: number): Codec {
  const codec = CODEC_BY_ID[id];
  if (codec === undefined) throw new CorruptCheckpointError(`unknown chunk codec ${id}`);
  return codec;
}

/** `data` in `codec` (a copy for `none`, so callers may keep it). */
export async function compress(codec: Codec, data: Buffer): Promise<Buffer> {
  switch (codec) {
    case 'none':
      return data;
    case 'lz4':
      return (await lz4()).compress(data);
    case 'zstd':
      return (await zstd()).compress(data, ZSTD_LEVEL);
    case 'gzip':
      return gzipAsync(data, { level: GZIP_LEVEL });
  }
}

/**
 * Undoes {@link compress}. `rawLength` (from the frame) bounds what may come
 * out: a frame that claims more than `maxBytes`, or decompresses to another
 * length, is refused before its hash is even checked.
 */
export async function decompress(
  codec: Codec,
  payload: Buffer,
  rawLength: number,
  maxBytes: number,
): Promise<Buffer> {
  if (rawLength > maxBytes)
    throw new InvalidArgumentError(`chunk of ${rawLength} bytes is over ${maxBytes}: refused`);
  let data: Buffer;
  try {
    switch (codec) {
      case 'none':
        data = payload;
        break;
      case 'lz4':
        // lz4_flex puts the size in front (u32 LE): check it before it allocates that much.
        if (payload.length < 4 || payload.readUInt32LE(0) !== rawLength)
          throw new Error('lz4 size prefix does not match the frame');
        data = await (await lz4()).uncompress(payload);
        break;
      case 'zstd':
        data = await (await zstd()).decompress(payload);
        break;
      case 'gzip':
        data = await gunzipAsync(payload, { maxOutputLength: maxBytes });
        break;
    }
  } catch (error) {
    throw new CorruptCheckpointError(`a ${codec} chunk does not decompress: ${(error as Error).message}`);
  }
  if (data.length !== rawLength)
    throw new CorruptCheckpointError(
      `a ${codec} chunk decompressed to ${data.length} bytes, not ${rawLength}`,
    );
  return data;
}

/** One codec as measured on a sample: compressed/raw, and raw bytes per second each way. */
export interface CodecMeasure {
  ratio: number;
  compressBps: number;
  decompressBps: number;
}

/**
 * Raw bytes per second a transfer would move with a codec, given the link's
 * rate (wire bytes per second): compression, the link and decompression form
 * a pipeline, so the slowest stage sets the pace. Pure.
 */
export function throughputOf(measure: CodecMeasure, linkBps: number): number {
  const perByte = Math.max(measure.ratio / linkBps, 1 / measure.compressBps, 1 / measure.decompressBps);
  return 1 / perByte;
}

/**
 * The codec with the highest {@link throughputOf} among `measures`, each
 * capped by what it was seen to achieve (`caps`, raw bytes per second) — the
 * model knows nothing of the receiver's CPU or of other load on the host,
 * the transfer itself does. `none` wins ties and near-ties (within 3%),
 * and against any codec that does not shrink the sample below 95%:
 * compressing for no gain costs CPU the container's host may need. With
 * `current`, the codec in use is kept unless another promises more than
 * {@link SWITCH_GAIN} over it: the codec in use is capped by what it really
 * achieved, the others only by a sample's optimism, so near-equals must not
 * trade places on noise. (It does not cure the zstd/gzip wavering on text at
 * 200 Mbit/s, where gzip's sampled speed is far from what it achieves beside
 * the receiver on two shared cores: docs/BENCHMARKS.md.) Pure.
 */
export function bestCodec(
  measures: Partial<Record<Codec, CodecMeasure>>,
  linkBps: number,
  caps: Partial<Record<Codec, number>> = {},
  current?: Codec,
): Codec {
  const rateOf = (codec: Codec): number => {
    const m = measures[codec];
    const modelled = m ? throughputOf(m, linkBps) : codec === 'none' ? linkBps : 0;
    return Math.min(modelled, caps[codec] ?? Number.POSITIVE_INFINITY);
  };
  let best: Codec = 'none';
  let bestRate = rateOf('none');
  for (const codec of CODECS) {
    // A codec that does not shrink the data only costs CPU: it sends raw frames anyway.
    if (codec === 'none' || !measures[codec] || measures[codec].ratio > INCOMPRESSIBLE) continue;
    if (dominatedByZstd(codec, measures)) continue;
    const rate = rateOf(codec);
    const margin = best === 'none' ? 1.03 : 1;
    if (rate > bestRate * margin) {
      best = codec;
      bestRate = rate;
    }
  }
  const currentUsable =
    current === 'none' ||
    (current !== undefined &&
      (measures[current]?.ratio ?? 1) <= INCOMPRESSIBLE &&
      !dominatedByZstd(current, measures));
  if (currentUsable && current !== best && rateOf(current) * SWITCH_GAIN >= bestRate) return current;
  return best;
}

/**
 * gzip (level 1) where zstd (level 1) was measured too and packs the data
 * about as well: zstd compresses at least as fast and decompresses 3–4×
 * faster on any data, so gzip can only win such a comparison on its sample's
 * optimism — its speed is timed synchronously on 64 KiB, zstd's through the
 * thread pool on a whole chunk, and the two cannot be compared that closely
 * (text at 200 Mbit/s wavered between them, gzip achieving less:
 * docs/BENCHMARKS.md). gzip stays a candidate where it packs the data 3%
 * better than zstd, on a link slow enough for that to count.
 */
function dominatedByZstd(codec: Codec, measures: Partial<Record<Codec, CodecMeasure>>): boolean {
  const zstdMeasure = measures.zstd;
  return codec === 'gzip' && zstdMeasure !== undefined && measures.gzip!.ratio > zstdMeasure.ratio * 0.97;
}

/** How much more another codec must promise before `auto` leaves the one in use (see {@link bestCodec}). */
export const SWITCH_GAIN = 1.1;

/** What `auto` decided, for reports: the codec, and from what. */
export interface AutoDecision {
  codec: Codec;
  /** The link's estimated rate (wire bytes per second) when deciding; undefined before any measure. */
  linkBps?: number;
  /** The sample's ratio per codec (codecs not measured: the data did not shrink with lz4). */
  ratios: Partial<Record<Codec, number>>;
}

/** The link's rate `auto` assumes if 16 windows went by without one it could measure (1 Gbit/s, bytes/s). */
export const ASSUMED_LINK_BPS = 125e6;
/** A cap learnt for a codec not in use is relaxed by this factor per window, so it is tried again in time. */
const CAP_RELAX = 1.05;

/**
 * `auto`: measures the codecs on one chunk per window (compress and
 * decompress, timed: lz4 and gzip on a 64 KiB slice, zstd on the chunk; lz4
 * first — data lz4 cannot shrink by 5% is taken as incompressible and the
 * slower codecs are not tried on it; speeds are the best of the last four),
 * estimates the link from how fast the transfer drains, and picks the codec
 * that moves raw bytes fastest. A window in which the sender waited on its
 * own frames more than on the socket shows what the codec in use really
 * achieves here (raw bytes per second, with the host's other load): that
 * caps its model next time; a cap relaxes while the codec is not in use.
 *
 * The link's rate is only learnt from windows in which the sender waited on
 * the socket for half the time (a third until first measured): in others
 * the wire rate says nothing of it — lower when compression held the stream
 * back (a slow codec would make the link look slow and keep itself chosen),
 * higher while a socket buffer refills after a switch. Until the link is
 * measured (a few MB) it sends lz4 where lz4 shrinks the data and raw
 * otherwise, unless the link's rate is given: neither is far off, and the
 * link shows as it is.
 */
export class AutoCodec {
  private linkBps: number | undefined;
  private current: Codec = 'none';
  private sinceDecision = Number.POSITIVE_INFINITY;
  private readonly caps: Partial<Record<Codec, number>> = {};
  /** Raw bytes per second each codec achieved in its last few sender-bound windows (its cap: the best). */
  private readonly achieved: Partial<Record<Codec, number[]>> = {};
  /** Bytes of the current decision's window (0: decide at the next chunk). */
  private windowLength = 0;
  private decisionCount = 0;
  private lastGzip: CodecMeasure | undefined;
  private readonly speeds: Partial<Record<Codec, CodecMeasure[]>> = {};
  /** zstd's output for the chunk the last decision was measured on, when it chose zstd. */
  private packed: { data: Buffer; payload: Buffer } | undefined;
  /** Every decision made, in order (a codec is listed again only when it changed). */
  readonly decisions: AutoDecision[] = [];

  constructor(
    private readonly windowBytes = AUTO_WINDOW_BYTES,
    linkBpsHint?: number,
  ) {
    this.linkBps = linkBpsHint;
  }

  /** Whether the link is still being measured (the first windows, up to 16, until one measures it). */
  private probing(): boolean {
    return this.linkBps === undefined && this.decisionCount <= 16;
  }

  /**
   * Wire bytes per look at the link: 1 MiB until it is first measured (the
   * sooner it shows, the sooner the start-up's guess ends), 2 MiB after (a
   * window at 1 Gbit/s is ~16 ms: shorter ones are noise).
   */
  get linkWindowBytes(): number {
    return this.linkBps === undefined ? 1 << 20 : 2 << 20;
  }

  /** The link's estimated rate in wire bytes per second, if known. */
  get linkEstimate(): number | undefined {
    return this.linkBps;
  }

  /** The codec for the next chunk, `data`: a new decision at the start of each window. */
  async codecFor(data: Buffer): Promise<Codec> {
    if (this.sinceDecision < this.windowLength) {
      this.sinceDecision += data.length;
      return this.current;
    }
    for (const codec of CODECS) {
      const cap = this.caps[codec];
      if (codec !== this.current && cap !== undefined) this.caps[codec] = cap * CAP_RELAX;
    }
    this.sinceDecision = data.length;
    this.decisionCount++;
    if (this.probing()) {
      // Until the link is measured (a few MB): lz4 if it shrinks the data, else raw. Either is
      // never far off: on a fast link lz4 is the codec that keeps up (text at 1 Gbit/s: zstd
      // sent these MB ~35% slower), on a slow one it is link-bound and shows the link within
      // 2 MB on the wire (text at 200 Mbit/s: ~4 MB sent with lz4, ~40 ms lost against zstd).
      this.windowLength = 1 << 20;
      const codec = (await lz4Ratio(data)) <= INCOMPRESSIBLE ? 'lz4' : 'none';
      if (codec !== this.current || this.decisions.length === 0) this.decisions.push({ codec, ratios: {} });
      return (this.current = codec);
    }
    // gzip is the slow one to measure: every fourth decision (its speed and ratio change slowly).
    let zstdPacked: Buffer | undefined;
    const measures = await measureCodecs(
      data,
      this.decisionCount % 4 !== 2 ? this.lastGzip : undefined,
      (packed) => (zstdPacked = packed),
    );
    if (measures.gzip) this.lastGzip = measures.gzip;
    // Speeds: the best of the last few measures (a preempted or collected sample is not the codec's speed).
    for (const codec of CODECS) {
      const m = measures[codec];
      if (!m || codec === 'none') continue;
      const recent = (this.speeds[codec] = [...(this.speeds[codec] ?? []), m].slice(-4));
      measures[codec] = {
        ratio: m.ratio,
        compressBps: Math.max(...recent.map((r) => r.compressBps)),
        decompressBps: Math.max(...recent.map((r) => r.decompressBps)),
      };
    }
    const codec = bestCodec(measures, this.linkBps ?? ASSUMED_LINK_BPS, this.caps, this.current);
    this.windowLength = this.windowBytes;
    if (codec !== this.current || this.decisions.length === 0) {
      this.decisions.push({
        codec,
        ...(this.linkBps !== undefined ? { linkBps: Math.round(this.linkBps) } : {}),
        ratios: Object.fromEntries(
          CODECS.filter((c) => measures[c]).map((c) => [c, Math.round(measures[c]!.ratio * 1000) / 1000]),
        ),
      });
    }
    this.current = codec;
    this.packed = codec === 'zstd' && zstdPacked ? { data, payload: zstdPacked } : undefined;
    return codec;
  }

  /**
   * The payload of `data` with `codec` if deciding already made it (zstd is
   * measured on the whole chunk it then sends: compressing it twice was 6%
   * more zstd work — a chunk in 16 — where zstd barely keeps up with the link).
   */
  takePacked(data: Buffer, codec: Codec): Buffer | undefined {
    const packed = this.packed;
    this.packed = undefined;
    return packed && packed.data === data && codec === 'zstd' ? packed.payload : undefined;
  }

  /**
   * Tells what a stretch of the transfer did: raw and wire bytes in `ms`, of
   * which the sender spent `waitedSocketMs` waiting for the socket to take
   * more (downstream — the link, the receiver — was the bottleneck) and
   * `waitedFramesMs` waiting for the next frame (reading and compressing
   * were). Downstream-bound, the wire rate is the link's rate; upstream-bound,
   * the raw rate is what the codec in use achieves here, and caps it; other
   * windows teach nothing.
   */
  observe(window: {
    rawBytes: number;
    wireBytes: number;
    ms: number;
    waitedSocketMs: number;
    waitedFramesMs: number;
  }): void {
    const { rawBytes, wireBytes, ms, waitedSocketMs, waitedFramesMs } = window;
    if (ms <= 0 || wireBytes <= 0) return;
    const wireRate = (wireBytes / ms) * 1000;
    // The socket was full whenever the sender waited on it, and a full buffer keeps the link busy:
    // a window with much waiting ran at the link's rate. Half the window normally (a buffer that
    // refills after a switch waits a little); a third until the link is first measured, when the
    // alternative is a guess.
    if (waitedSocketMs / ms >= (this.probing() ? 0.3 : 0.5)) {
      this.linkBps = this.linkBps === undefined ? wireRate : 0.5 * this.linkBps + 0.5 * wireRate;
      return;
    }
    // Not the link's window: it says nothing of the link (a slow codec must not make the link look
    // slow; a socket buffer refilling after a switch must not make it look fast). Nor, while the
    // link is still being measured, of the codec: its 1 MB start-up windows are no steady state.
    // The best of the codec's last three such windows: a window is ~20 ms at 1 Gbit/s, and one
    // that a collection or the receiver preempted would cap a codec far below what it achieves
    // (lz4 on text at 1 Gbit/s went to raw for a third of the transfer on one slow window).
    if (waitedFramesMs > waitedSocketMs && !this.probing()) {
      const achieved = (this.achieved[this.current] = [
        ...(this.achieved[this.current] ?? []),
        (rawBytes / ms) * 1000,
      ].slice(-3));
      this.caps[this.current] = Math.max(...achieved);
    }
  }

  /** {@link observe} without the raw side: a window in which the sender waited `waitedMs` on the socket. */
  observeLink(wireBytes: number, ms: number, waitedMs: number): void {
    this.observe({ rawBytes: wireBytes, wireBytes, ms, waitedSocketMs: waitedMs, waitedFramesMs: 0 });
  }
}

/** Bytes of a chunk the codecs are measured on: enough for a ratio, cheap enough for every window. */
export const SAMPLE_BYTES = 64 * 1024;

/** The middle {@link SAMPLE_BYTES} of `data`, or all of it if shorter. */
function middleSlice(data: Buffer): Buffer {
  if (data.length <= SAMPLE_BYTES) return data;
  const start = (data.length - SAMPLE_BYTES) >> 1;
  return data.subarray(start, start + SAMPLE_BYTES);
}

/** lz4's ratio on a slice of `data` (compressed/raw, at most 1): the cheap test of compressibility. */
async function lz4Ratio(data: Buffer): Promise<number> {
  const slice = middleSlice(data);
  const { compressSync } = await lz4();
  return Math.min(1, compressSync(slice).length / Math.max(1, slice.length));
}

/**
 * Each codec measured on (a slice of) `sample`: ratio and speeds (raw bytes
 * per second). zstd and gzip are left out for data lz4 cannot shrink;
 * `gzipKnown` stands in for gzip's measure when given; `keepZstd` is handed
 * zstd's output for the whole sample (a sender that picks zstd sends it).
 */
export async function measureCodecs(
  sample: Buffer,
  gzipKnown?: CodecMeasure,
  keepZstd?: (packed: Buffer) => void,
): Promise<Partial<Record<Codec, CodecMeasure>>> {
  // Loaded before timing: the first use of a native module costs milliseconds.
  await Promise.all([lz4(), zstd()]);
  const slice = middleSlice(sample);
  const out: Partial<Record<Codec, CodecMeasure>> = {
    // Handing a buffer on costs a copy at most: memory speed.
    none: { ratio: 1, compressBps: 10e9, decompressBps: 10e9 },
  };
  // Timed synchronously where the library allows (lz4, gzip): an asynchronous call's trip through
  // the thread pool takes longer than compressing 64 KiB on a loaded host. zstd has no synchronous
  // call here: it is timed on the whole chunk, so that trip weighs less.
  const { compressSync, uncompressSync } = await lz4();
  const timed = async (
    data: Buffer,
    pack: () => Buffer | Promise<Buffer>,
    unpack: (packed: Buffer) => Buffer | Promise<Buffer>,
  ): Promise<CodecMeasure> => {
    const started = performance.now();
    const packed = await pack();
    const compressMs = Math.max(performance.now() - started, 0.005);
    const unpacking = performance.now();
    await unpack(packed);
    const decompressMs = Math.max(performance.now() - unpacking, 0.005);
    return {
      // A chunk that does not shrink travels raw: never worse than 1.
      ratio: Math.min(1, packed.length / data.length),
      compressBps: (data.length / compressMs) * 1000,
      decompressBps: (data.length / decompressMs) * 1000,
    };
  };
  out.lz4 = await timed(
    slice,
    () => compressSync(slice),
    (packed) => uncompressSync(packed),
  );
  if (out.lz4.ratio > INCOMPRESSIBLE) return out;
  const { compress: zstdCompress, decompress: zstdDecompress } = await zstd();
  out.zstd = await timed(
    sample,
    () => zstdCompress(sample, ZSTD_LEVEL),
    (packed) => {
      keepZstd?.(packed);
      return zstdDecompress(packed);
    },
  );
  out.gzip =
    gzipKnown ??
    (await timed(
      slice,
      () => gzipSync(slice, { level: GZIP_LEVEL }),
      (packed) => gunzipSync(packed),
    ));
  return out;
}
