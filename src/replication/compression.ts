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
import { gunzip, gzip } from 'node:zlib';
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
export const AUTO_WINDOW_BYTES = 8 << 20;

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
 * The codec with the highest {@link throughputOf} among `measures`. `none`
 * wins ties and near-ties (within 3%): compressing for no gain costs CPU
 * that the container's host may need. Pure.
 */
export function bestCodec(measures: Partial<Record<Codec, CodecMeasure>>, linkBps: number): Codec {
  let best: Codec = 'none';
  let bestRate = measures.none ? throughputOf(measures.none, linkBps) : linkBps;
  for (const codec of CODECS) {
    const m = measures[codec];
    if (codec === 'none' || !m) continue;
    const rate = throughputOf(m, linkBps);
    const margin = best === 'none' ? 1.03 : 1;
    if (rate > bestRate * margin) {
      best = codec;
      bestRate = rate;
    }
  }
  return best;
}

/** What `auto` decided, for reports: the codec, and from what. */
export interface AutoDecision {
  codec: Codec;
  /** The link's estimated rate (wire bytes per second) when deciding; undefined before any measure. */
  linkBps?: number;
  /** The sample's ratio per codec. */
  ratios: Partial<Record<Codec, number>>;
}

/**
 * `auto`: measures every codec on one chunk of each window (compress and
 * decompress it, timed), estimates the link from how fast the transfer
 * drains, and picks the codec that moves raw bytes fastest.
 *
 * The link's rate is only learnt from windows in which the sender waited on
 * the socket for most of the time (the link was the bottleneck); in other
 * windows the measured rate is a lower bound (compression was), so the
 * estimate may rise but not fall — else a slow codec would make the link
 * look slow and keep itself chosen. Before any window is measured, the link
 * is assumed as fast as the cheapest codec, which picks lz4 for data that
 * shrinks and `none` for data that does not.
 */
export class AutoCodec {
  private linkBps: number | undefined;
  private current: Codec = 'none';
  private sinceDecision = Number.POSITIVE_INFINITY;
  private lastRatios: Partial<Record<Codec, number>> = {};
  /** Every decision made, in order (a codec is listed again only when it changed). */
  readonly decisions: AutoDecision[] = [];

  constructor(
    private readonly windowBytes = AUTO_WINDOW_BYTES,
    linkBpsHint?: number,
  ) {
    this.linkBps = linkBpsHint;
  }

  /** The link's estimated rate in wire bytes per second, if known. */
  get linkEstimate(): number | undefined {
    return this.linkBps;
  }

  /** The codec for the next chunk, `data`: a new decision at the start of each window. */
  async codecFor(data: Buffer): Promise<Codec> {
    if (this.sinceDecision < this.windowBytes) {
      this.sinceDecision += data.length;
      return this.current;
    }
    this.sinceDecision = data.length;
    const measures = await measureCodecs(data);
    // Unknown link: as fast as lz4 compresses, so only a codec at least that fast can win on speed.
    const link = this.linkBps ?? measures.lz4?.compressBps ?? 1e9;
    const codec = bestCodec(measures, link);
    this.lastRatios = Object.fromEntries(CODECS.map((c) => [c, round3(measures[c]?.ratio ?? 1)]));
    if (codec !== this.current || this.decisions.length === 0) {
      this.decisions.push({
        codec,
        ...(this.linkBps !== undefined ? { linkBps: Math.round(this.linkBps) } : {}),
        ratios: this.lastRatios,
      });
    }
    this.current = codec;
    return codec;
  }

  /**
   * Tells what the link did over a stretch: `wireBytes` left in `ms`, of
   * which `waitedMs` the sender spent waiting for the socket to take more.
   */
  observeLink(wireBytes: number, ms: number, waitedMs: number): void {
    if (ms <= 0 || wireBytes <= 0) return;
    const rate = (wireBytes / ms) * 1000;
    const linkBound = waitedMs / ms >= 0.5;
    if (this.linkBps === undefined) this.linkBps = rate;
    else if (linkBound) this.linkBps = 0.5 * this.linkBps + 0.5 * rate;
    else this.linkBps = Math.max(this.linkBps, rate);
  }
}

function round3(n: number): number {
  return Math.round(n * 1000) / 1000;
}

/** Each codec measured on `sample`: ratio and speeds (raw bytes per second). */
export async function measureCodecs(sample: Buffer): Promise<Record<Codec, CodecMeasure>> {
  const out: Partial<Record<Codec, CodecMeasure>> = {
    // Handing a buffer on costs a copy at most: memory speed.
    none: { ratio: 1, compressBps: 10e9, decompressBps: 10e9 },
  };
  for (const codec of CODECS) {
    if (codec === 'none') continue;
    const started = performance.now();
    const packed = await compress(codec, sample);
    const compressMs = Math.max(performance.now() - started, 0.01);
    const unpacking = performance.now();
    await decompress(codec, packed, sample.length, sample.length);
    const decompressMs = Math.max(performance.now() - unpacking, 0.01);
    out[codec] = {
      // A chunk that does not shrink travels raw: never worse than 1.
      ratio: Math.min(1, packed.length / sample.length),
      compressBps: (sample.length / compressMs) * 1000,
      decompressBps: (sample.length / decompressMs) * 1000,
    };
  }
  return out as Record<Codec, CodecMeasure>;
}
