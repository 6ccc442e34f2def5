/**
 * A tar stream read as it passes by: member names and types, and the
 * SHA-256 of every regular file's content, without a second read of the data.
 *
 * Archives are written and extracted by GNU tar (it knows owners, modes,
 * links, device nodes and long names); Haven only stands in the pipe between
 * tar and the file and looks at the bytes once. That is how an archive is
 * hashed while it is written and verified while it is extracted — one pass
 * over the data where there were three (hash, write; list, extract, hash).
 *
 * ```ts
 * const scanner = new TarScanner((member) => check(member.name));
 * for await (const chunk of stream) { scanner.push(chunk); forward(chunk); }
 * scanner.finish();
 * scanner.files.get('checkpoint/criu/pages-1.img'); // { size, sha256 }
 * ```
 *
 * Understood: ustar and GNU headers, GNU long names and link names (`L`,
 * `K`), pax extended headers (`path`, `linkpath`, `size`), base-256 sizes.
 */
import { createHash, type Hash } from 'node:crypto';

const BLOCK = 512;

/** One member of the stream, as its header (and any long-name or pax record before it) says. */
export interface TarMember {
  name: string;
  /** The typeflag: '0' regular, '1' hard link, '2' symlink, '5' directory, … */
  type: string;
  size: number;
  linkName: string;
}

/** Size and SHA-256 of one regular file seen in the stream. */
export interface StreamedFile {
  size: number;
  sha256: string;
}

/** Why a stream could not be read as tar; `started` says whether any valid header came before. */
export class TarFormatError extends Error {
  constructor(
    message: string,
    readonly started: boolean,
  ) {
    super(message);
  }
}

/** `./a/b` → `a/b`. */
function clean(name: string): string {
  return name.replace(/^(\.\/)+/, '');
}

function cString(block: Buffer, start: number, length: number): string {
  const field = block.subarray(start, start + length);
  const end = field.indexOf(0);
  return field.subarray(0, end < 0 ? field.length : end).toString('utf8');
}

function numeric(block: Buffer, start: number, length: number): number {
  const field = block.subarray(start, start + length);
  if ((field[0] ?? 0) & 0x80) {
    // GNU base-256: big-endian, top bit of the first byte is the marker.
    let value = (field[0] ?? 0) & 0x7f;
    for (let i = 1; i < field.length; i++) value = value * 256 + (field[i] ?? 0);
    return value;
  }
  const text = field.toString('latin1').replace(/\0.*$/s, '').trim();
  return text.length === 0 ? 0 : parseInt(text, 8);
}

function checksumOk(block: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : (block[i] ?? 0);
  return numeric(block, 148, 8) === sum;
}

/** Parses pax records: `LEN key=value\n` repeated. */
function paxRecords(data: Buffer): Map<string, string> {
  const records = new Map<string, string>();
  let at = 0;
  while (at < data.length) {
    const space = data.indexOf(0x20, at);
    if (space < 0) break;
    const length = parseInt(data.subarray(at, space).toString('latin1'), 10);
    if (!(length > 0)) break;
    const record = data.subarray(space + 1, at + length - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (eq > 0) records.set(record.slice(0, eq), record.slice(eq + 1));
    at += length;
  }
  return records;
}

/** Reads a tar stream chunk by chunk; see the module comment. */
export class TarScanner {
  /** Regular files (and hard links to them) by member name, `./` stripped. */
  readonly files = new Map<string, StreamedFile>();
  /** Offset of the end-of-archive marker (the first zero block), once seen. */
  endOffset = -1;

  private offset = 0;
  private header = Buffer.alloc(0);
  private state: 'header' | 'data' | 'padding' | 'end' = 'header';
  private remaining = 0;
  private paddingLeft = 0;
  private member: TarMember | undefined;
  private hash: Hash | undefined;
  private collected: Buffer[] | undefined;
  private longName: string | undefined;
  private longLink: string | undefined;
  private pax: Map<string, string> | undefined;
  private started = false;

  /**
   * @param onMember called for each member before any of its data is passed on; throw to refuse it.
   * @param options.headersOnly regular files' content is not hashed: the
   *   caller skips it ({@link skipContent}) and feeds only headers (and the
   *   small records of long names and pax attributes).
   */
  constructor(
    private readonly onMember: (member: TarMember) => void = () => undefined,
    private readonly options: { headersOnly?: boolean } = {},
  ) {}

  /** True once the end-of-archive marker has been read. */
  get ended(): boolean {
    return this.state === 'end';
  }

  /**
   * Headers-only: the bytes of content (and padding) that follow now, which
   * the caller skips instead of feeding; the scanner moves past them.
   */
  skipContent(): number {
    if (!this.options.headersOnly || this.state !== 'data' || this.collected) return 0;
    const skipped = this.remaining + this.paddingLeft;
    this.offset += skipped;
    this.paddingLeft = 0;
    this.remaining = 0;
    this.endMember();
    this.state = 'header';
    return skipped;
  }

  /** Feeds the next chunk. @throws TarFormatError, or whatever `onMember` throws. */
  push(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length && this.state !== 'end') {
      if (this.state === 'header') {
        const need = BLOCK - this.header.length;
        const take = chunk.subarray(at, at + need);
        this.header = this.header.length === 0 ? Buffer.from(take) : Buffer.concat([this.header, take]);
        at += take.length;
        if (this.header.length === BLOCK) {
          const block = this.header;
          this.header = Buffer.alloc(0);
          this.onHeader(block, this.offset + at - BLOCK);
        }
      } else if (this.state === 'data') {
        const take = chunk.subarray(at, at + Math.min(this.remaining, chunk.length - at));
        this.hash?.update(take);
        this.collected?.push(Buffer.from(take));
        this.remaining -= take.length;
        at += take.length;
        if (this.remaining === 0) this.endMember();
      } else {
        const take = Math.min(this.paddingLeft, chunk.length - at);
        this.paddingLeft -= take;
        at += take;
        if (this.paddingLeft === 0) this.state = 'header';
      }
    }
    this.offset += chunk.length;
  }

  /** The stream has ended. @throws TarFormatError if it ended inside a member or before the end marker. */
  finish(): void {
    if (this.state !== 'end') {
      throw new TarFormatError(
        this.started ? 'the archive ends in the middle (truncated)' : 'no tar header found',
        this.started,
      );
    }
  }

  private onHeader(block: Buffer, blockOffset: number): void {
    if (block.every((b) => b === 0)) {
      this.state = 'end';
      this.endOffset = blockOffset;
      return;
    }
    if (!checksumOk(block)) {
      throw new TarFormatError(`bad tar header checksum at byte ${blockOffset}`, this.started);
    }
    this.started = true;
    const type = String.fromCharCode(block[156] ?? 0) === '\0' ? '0' : String.fromCharCode(block[156] ?? 48);
    const magic = block.subarray(257, 263).toString('latin1');
    const prefix = magic === 'ustar\0' ? cString(block, 345, 155) : '';
    const rawName = cString(block, 0, 100);
    let size = numeric(block, 124, 12);
    if (type === 'L' || type === 'K' || type === 'x' || type === 'g') {
      // A record about the next member: collect its data, then parse it.
      this.member = { name: '', type, size, linkName: '' };
      this.startData(size, undefined, []);
      return;
    }
    const pax = this.pax;
    const name = clean(pax?.get('path') ?? this.longName ?? (prefix ? `${prefix}/${rawName}` : rawName));
    const linkName = clean(pax?.get('linkpath') ?? this.longLink ?? cString(block, 157, 100));
    if (pax?.has('size')) size = Number(pax.get('size'));
    this.pax = this.longName = this.longLink = undefined;
    const member: TarMember = { name, type, size, linkName };
    this.onMember(member);
    if (type === '1') {
      const target = this.files.get(linkName);
      if (target) this.files.set(name, target);
    }
    // Only regular files carry content that counts; directories, links and devices carry none.
    const regular = type === '0' || type === '7';
    this.member = member;
    this.startData(
      regular || !['1', '2', '3', '4', '5', '6'].includes(type) ? size : 0,
      regular && !this.options.headersOnly ? createHash('sha256') : undefined,
      undefined,
    );
  }

  private startData(size: number, hash: Hash | undefined, collected: Buffer[] | undefined): void {
    this.hash = hash;
    this.collected = collected;
    this.remaining = size;
    this.paddingLeft = (BLOCK - (size % BLOCK)) % BLOCK;
    if (size === 0) this.endMember();
    else this.state = 'data';
  }

  private endMember(): void {
    const member = this.member;
    if (member && this.hash)
      this.files.set(member.name, { size: member.size, sha256: this.hash.digest('hex') });
    if (member && this.collected) {
      const data = Buffer.concat(this.collected);
      if (member.type === 'L') this.longName = cString(data, 0, data.length);
      else if (member.type === 'K') this.longLink = cString(data, 0, data.length);
      else if (member.type === 'x') this.pax = paxRecords(data);
    }
    this.hash = undefined;
    this.collected = undefined;
    this.member = undefined;
    this.state = this.paddingLeft > 0 ? 'padding' : 'header';
  }
}

/** A ustar header and content for one small regular file (`name` ≤ 100 bytes), padded to whole blocks. */
export function tarFile(name: string, content: Buffer, mtimeSeconds: number): Buffer {
  if (Buffer.byteLength(name) > 100) throw new Error(`tar member name too long: ${name}`);
  const header = Buffer.alloc(BLOCK, 0);
  const put = (text: string, start: number, length: number): void => {
    header.write(text.slice(0, length), start, length, 'latin1');
  };
  const octal = (value: number, length: number): string => value.toString(8).padStart(length - 1, '0');
  header.write(name, 0, 100, 'utf8');
  put(octal(0o644, 8), 100, 8);
  put(octal(0, 8), 108, 8);
  put(octal(0, 8), 116, 8);
  put(octal(content.length, 12), 124, 12);
  put(octal(Math.floor(mtimeSeconds), 12), 136, 12);
  put('        ', 148, 8);
  put('0', 156, 1);
  put('ustar\0', 257, 6);
  put('00', 263, 2);
  put('root', 265, 32);
  put('root', 297, 32);
  let sum = 0;
  for (const b of header) sum += b;
  put(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8);
  const padding = Buffer.alloc((BLOCK - (content.length % BLOCK)) % BLOCK, 0);
  return Buffer.concat([header, content, padding]);
}

/** The end-of-archive marker (two zero blocks), padded to tar's 10 KiB record. */
export function tarEnd(bytesSoFar: number): Buffer {
  const RECORD = 20 * BLOCK;
  const withMarker = bytesSoFar + 2 * BLOCK;
  return Buffer.alloc(2 * BLOCK + ((RECORD - (withMarker % RECORD)) % RECORD), 0);
}
