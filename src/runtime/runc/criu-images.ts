/**
 * Reads CRIU's `stats-dump` and `stats-restore` images (CRIU's own timings).
 *
 * Layout (CRIU's images/stats.proto, criu/image.c): a service-image magic
 * (u32), the stats magic (u32), then one length-prefixed (u32 LE) protobuf
 * `StatsEntry { optional DumpStatsEntry dump = 1; optional RestoreStatsEntry restore = 2; }`.
 * Times are in microseconds. The decoder below reads varints and nested
 * messages only: that is all these two messages use.
 */
import { existsSync, readFileSync } from 'node:fs';
import type { DumpStats, RestoreStats } from '../driver.js';

type Fields = Map<number, bigint | Buffer>;

/** Decodes the top-level fields of a protobuf message (varint and length-delimited only). */
export function decodeFields(buf: Buffer): Fields {
  const fields: Fields = new Map();
  let pos = 0;
  const varint = (): bigint => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      const byte = buf[pos++];
      if (byte === undefined) throw new Error('truncated varint');
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7n;
    }
  };
  while (pos < buf.length) {
    const key = Number(varint());
    const field = key >> 3;
    const wire = key & 7;
    if (wire === 0) fields.set(field, varint());
    else if (wire === 2) {
      const len = Number(varint());
      fields.set(field, buf.subarray(pos, pos + len));
      pos += len;
    } else if (wire === 5) pos += 4;
    else if (wire === 1) pos += 8;
    else throw new Error(`unsupported wire type ${wire}`);
  }
  return fields;
}

function statsEntry(path: string, field: 1 | 2): Fields | undefined {
  if (!existsSync(path)) return undefined;
  const buf = readFileSync(path);
  if (buf.length < 12) return undefined;
  const len = buf.readUInt32LE(8);
  const entry = decodeFields(buf.subarray(12, 12 + len));
  const nested = entry.get(field);
  return Buffer.isBuffer(nested) ? decodeFields(nested) : undefined;
}

const num = (f: Fields, n: number): number => {
  const v = f.get(n);
  return typeof v === 'bigint' ? Number(v) : 0;
};

/** Parses `stats-dump`, or undefined if CRIU wrote none. */
export function readDumpStats(path: string): DumpStats | undefined {
  const f = statsEntry(path, 1);
  if (!f) return undefined;
  return {
    freezingMs: num(f, 1) / 1000,
    frozenMs: num(f, 2) / 1000,
    memdumpMs: num(f, 3) / 1000,
    memwriteMs: num(f, 4) / 1000,
    pagesScanned: num(f, 5),
    pagesSkippedParent: num(f, 6),
    pagesWritten: num(f, 7),
    pagesLazy: num(f, 9),
  };
}

/** Parses `stats-restore`, or undefined if CRIU wrote none. */
export function readRestoreStats(path: string): RestoreStats | undefined {
  const f = statsEntry(path, 2);
  if (!f) return undefined;
  return { forkingMs: num(f, 3) / 1000, restoreMs: num(f, 4) / 1000, pagesRestored: num(f, 5) };
}
