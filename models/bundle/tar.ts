/**
 * A small, strict POSIX tar (ustar) writer and streaming reader: just enough for model bundles,
 * and standard enough that GNU tar, bsdtar and Python's tarfile read what we write and we read
 * what they write for regular files.
 *
 * The reader is the first line of the bundle verifier, so it refuses rather than guesses: every
 * header's checksum is checked, its checksum field must be in the canonical `dddddd\0 ` form (so
 * that no byte of a header can change unnoticed), numeric fields must be octal (or GNU base-256
 * for sizes past 8 GiB), data padding must be zeros, the archive must end with two zero blocks,
 * and what follows them may only be whole blocks of zeros (GNU tar pads to a 10 KiB record), at
 * most `maxTrailingBytes`. It never buffers an entry's data: `body()` hands out the source's chunks
 * as they arrive. Entry types other than regular files are reported, not interpreted; pax and GNU
 * long-name headers are not supported (names up to 255 bytes fit ustar's prefix field).
 */
import { readSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { BundleError } from './errors.js';

export const BLOCK_SIZE = 512;

export type TarEntryType = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'directory' | 'fifo' | 'contiguous' | 'pax' | 'pax-global' | 'gnu-longname' | 'gnu-longlink' | 'other';

/** One header as read: the name joins ustar's prefix and name fields. */
export interface TarHeader {
  readonly name: string;
  readonly type: TarEntryType;
  /** The raw type flag character (`'0'`, `'2'`, `'x'`...), for messages. */
  readonly typeflag: string;
  readonly size: number;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  /** Seconds since the epoch. */
  readonly mtime: number;
  readonly linkname: string;
  /** Byte offset of this header in the archive. */
  readonly offset: number;
}

/** What the writer needs for one regular file. */
export interface TarFileHeader {
  readonly name: string;
  readonly size: number;
  /** Permission bits; default 0o644. */
  readonly mode?: number;
  /** Seconds since the epoch; default 0 (bundles use their `created` time, so they are reproducible). */
  readonly mtime?: number;
}

const TYPES: Readonly<Record<string, TarEntryType>> = {
  '0': 'file', '\0': 'file', '1': 'hardlink', '2': 'symlink', '3': 'char', '4': 'block', '5': 'directory', '6': 'fifo', '7': 'contiguous',
  x: 'pax', g: 'pax-global', L: 'gnu-longname', K: 'gnu-longlink',
};
const USTAR_MAGIC = Buffer.from('ustar\x0000', 'latin1'); // POSIX: magic "ustar\0", version "00"
const GNU_MAGIC = Buffer.from('ustar  \x00', 'latin1'); // GNU tar's default format: "ustar ", " \0"
const MAX_OCTAL_SIZE = 8 ** 11 - 1;
const ZEROS = Buffer.alloc(BLOCK_SIZE * 2);
const EMPTY = Buffer.alloc(0);

/** Zero bytes that pad `size` bytes of data to a whole block. */
export function padding(size: number): Buffer {
  return ZEROS.subarray(0, (BLOCK_SIZE - (size % BLOCK_SIZE)) % BLOCK_SIZE);
}

/** The end-of-archive marker: two zero blocks. */
export function endOfArchive(): Buffer {
  return Buffer.from(ZEROS);
}

/** The 512-byte ustar header of a regular file. Names over 100 bytes are split into prefix/name at a '/'. */
export function encodeHeader(file: TarFileHeader): Buffer {
  const h = Buffer.alloc(BLOCK_SIZE);
  const name = Buffer.from(file.name, 'utf8');
  if (name.length <= 100) {
    name.copy(h, 0);
  } else {
    // ustar: prefix (155 bytes) + '/' + name (100 bytes); split at the first '/' that makes both fit.
    let split = -1;
    for (let i = name.indexOf(0x2f); i !== -1; i = name.indexOf(0x2f, i + 1)) {
      if (i <= 155 && name.length - i - 1 <= 100 && name.length - i - 1 > 0) {
        split = i;
        break;
      }
    }
    if (split === -1) throw new BundleError('EAI_BUNDLE_PATH_INVALID', `'${file.name}' is ${name.length} bytes and cannot be split into a ustar prefix (155) and name (100); use a shorter path.`, { details: { name: file.name } });
    name.copy(h, 0, split + 1);
    name.copy(h, 345, 0, split);
  }
  if (!Number.isSafeInteger(file.size) || file.size < 0) throw new RangeError(`tar entry size ${file.size}`);
  writeOctal(h, 100, 8, file.mode ?? 0o644);
  writeOctal(h, 108, 8, 0);
  writeOctal(h, 116, 8, 0);
  if (file.size <= MAX_OCTAL_SIZE) {
    writeOctal(h, 124, 12, file.size);
  } else {
    // GNU base-256: high bit set in the first byte, the value big-endian in the rest.
    h[124] = 0x80;
    let v = file.size;
    for (let i = 135; i > 124; i--) {
      h[i] = v % 256;
      v = Math.floor(v / 256);
    }
  }
  writeOctal(h, 136, 12, file.mtime ?? 0);
  h[156] = 0x30; // '0': regular file
  USTAR_MAGIC.copy(h, 257);
  writeOctal(h, 329, 8, 0);
  writeOctal(h, 337, 8, 0);
  h.fill(0x20, 148, 156);
  h.write(`${checksum(h).toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}

function writeOctal(h: Buffer, offset: number, length: number, value: number): void {
  h.write(`${value.toString(8).padStart(length - 1, '0')}\0`, offset, 'latin1');
}

/** Unsigned sum of the header bytes, the checksum field counted as eight spaces. */
function checksum(h: Buffer): number {
  let sum = 0;
  for (let i = 0; i < BLOCK_SIZE; i++) sum += i >= 148 && i < 156 ? 0x20 : (h[i] as number);
  return sum;
}

function allZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/**
 * Decodes one header block; `null` for a zero block (the start of the end-of-archive marker).
 * Throws EAI_BUNDLE_TAR_HEADER for a block that is not a ustar header and EAI_BUNDLE_TAR_CHECKSUM
 * for one whose checksum does not match.
 */
export function decodeHeader(h: Buffer, offset: number): TarHeader | null {
  if (h.length !== BLOCK_SIZE) throw new RangeError('a tar header is 512 bytes');
  if (allZero(h)) return null;
  const magic = h.subarray(257, 265);
  const ustar = magic.equals(USTAR_MAGIC);
  if (!ustar && !magic.equals(GNU_MAGIC)) throw headerError(offset, `no ustar magic (found ${JSON.stringify(magic.toString('latin1'))})`);
  // Canonical form only ("%06o\0 ", as GNU tar, bsdtar and Python write it): a checksum field that
  // can be written two ways would let one byte of a header change without notice.
  const field = h.subarray(148, 156);
  if (!/^[0-7]{6}\0 $/u.test(field.toString('latin1'))) {
    throw new BundleError('EAI_BUNDLE_TAR_CHECKSUM', `tar header at byte ${offset}: checksum field ${JSON.stringify(field.toString('latin1'))} is not six octal digits, NUL, space; the bundle is corrupt.`, { details: { offset } });
  }
  const stored = Number.parseInt(field.toString('latin1', 0, 6), 8);
  const actual = checksum(h);
  if (stored !== actual) throw new BundleError('EAI_BUNDLE_TAR_CHECKSUM', `tar header at byte ${offset}: checksum is ${stored}, the header sums to ${actual}; the bundle is corrupt (a changed or damaged header).`, { details: { offset, stored, actual } });
  const typeflag = String.fromCharCode(h[156] as number);
  const name = text(h, 0, 100, offset);
  const prefix = ustar ? text(h, 345, 155, offset) : '';
  return {
    name: prefix === '' ? name : `${prefix}/${name}`,
    type: TYPES[typeflag] ?? 'other',
    typeflag,
    mode: number(h, 100, 8, 'mode', offset),
    uid: number(h, 108, 8, 'uid', offset),
    gid: number(h, 116, 8, 'gid', offset),
    size: number(h, 124, 12, 'size', offset),
    mtime: number(h, 136, 12, 'mtime', offset),
    linkname: text(h, 157, 100, offset),
    offset,
  };
}

function headerError(offset: number, what: string): BundleError {
  return new BundleError('EAI_BUNDLE_TAR_HEADER', `byte ${offset} should start a ustar header but has ${what}; this is not a bundle, or it is corrupt.`, { details: { offset } });
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function text(h: Buffer, start: number, length: number, offset: number): string {
  const field = h.subarray(start, start + length);
  const end = field.indexOf(0);
  try {
    return utf8.decode(end === -1 ? field : field.subarray(0, end));
  } catch {
    throw new BundleError('EAI_BUNDLE_PATH_INVALID', `tar header at byte ${offset}: a name is not UTF-8.`, { details: { offset } });
  }
}

/** Octal with optional leading spaces and NUL/space terminators, or GNU base-256 (positive). */
function number(h: Buffer, start: number, length: number, field: string, offset: number): number {
  const end = start + length;
  if (h[start] === 0x80) {
    let v = 0;
    for (let i = start + 1; i < end; i++) v = v * 256 + (h[i] as number);
    if (!Number.isSafeInteger(v)) throw headerError(offset, `a ${field} too large to handle`);
    return v;
  }
  let i = start;
  while (i < end && h[i] === 0x20) i++;
  let v = 0;
  for (; i < end && (h[i] as number) >= 0x30 && (h[i] as number) <= 0x37; i++) v = v * 8 + (h[i] as number) - 0x30;
  while (i < end && (h[i] === 0 || h[i] === 0x20)) i++;
  if (i !== end) throw headerError(offset, `a ${field} field that is not an octal number (${JSON.stringify(h.toString('latin1', start, end))})`);
  return v;
}

/**
 * Marks a byte source that reuses its buffers: a chunk it yielded stays valid only until the
 * chunk after the next one is requested. The reader and the bundle verifier copy what they keep
 * longer (the envelope, data handed to a sink or a decrypter) from such a source, and use the
 * rest in place: hashing a file read this way is about as fast as `openssl dgst`
 * (bench/bundle-verify.ts), where a stream that allocates a fresh buffer per chunk costs half as
 * much time again.
 */
export const REUSES_BUFFERS: unique symbol = Symbol.for('aios.bundle.reusesBuffers');

export interface ReusingSource extends AsyncIterable<Buffer> {
  readonly [REUSES_BUFFERS]: true;
}

export interface FileSourceOptions {
  /** Bytes per read; default 1 MiB (256 KiB with `sync`, where a chunk that stays in the L2 cache wins). */
  readonly chunkSize?: number;
  /**
   * Read with `readSync` on the calling thread. A little faster (the bytes are still in this
   * core's cache when they are hashed), but each read blocks the event loop (tens of µs from the
   * page cache, a disk's latency otherwise): for command-line tools and worker threads, not for a
   * process that also runs pipelines.
   */
  readonly sync?: boolean;
}

/**
 * A file's bytes read into a ring of three buffers (see REUSES_BUFFERS), the next read already
 * under way on libuv's threads while the consumer works on the current chunk. The file is opened
 * on first read and closed at the end or when iteration stops.
 */
export function fileSource(file: string, options: FileSourceOptions = {}): ReusingSource {
  const chunkSize = options.chunkSize ?? (options.sync === true ? 256 * 1024 : 1024 * 1024);
  return {
    [REUSES_BUFFERS]: true,
    async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
      const handle = await open(file, 'r');
      const ring = [Buffer.allocUnsafe(chunkSize), Buffer.allocUnsafe(chunkSize), Buffer.allocUnsafe(chunkSize)];
      const at = (i: number): Buffer => ring[i % ring.length] as Buffer;
      let pending: Promise<unknown> = Promise.resolve();
      try {
        if (options.sync === true) {
          for (let i = 0; ; i++) {
            const bytesRead = readSync(handle.fd, at(i), 0, chunkSize, null);
            if (bytesRead === 0) return;
            yield at(i).subarray(0, bytesRead);
          }
        }
        let next = handle.read(at(0), 0, chunkSize, null);
        for (let i = 0; ; i++) {
          const { bytesRead } = await next;
          if (bytesRead === 0) return;
          // Only one read in flight, so reads at the file position stay in order. Buffer i+1 held
          // chunk i-2, which the contract lets us overwrite now.
          next = handle.read(at(i + 1), 0, chunkSize, null);
          pending = next;
          yield at(i).subarray(0, bytesRead);
        }
      } finally {
        await pending.catch(() => undefined); // never close the file under a read in flight
        await handle.close();
      }
    },
  };
}

export interface TarReaderOptions {
  /** Zero bytes allowed after the end-of-archive marker (record padding). Default 64 KiB. */
  readonly maxTrailingBytes?: number;
}

/**
 * Reads a tar archive from a byte stream, one entry at a time: `next()` returns the next header
 * (or `null` once the end-of-archive marker and whatever zero padding follows it have been read
 * and checked to the end of the source), then `body()` yields that entry's data as the source
 * delivers it and checks its padding. Calling `next()` before a body is read skips it.
 *
 * Calls must not overlap. The reader owns the source's iterator: `close()` releases it (which
 * destroys a Node stream), and the caller should call it when it stops early.
 */
export class TarReader {
  /** Whether the source reuses its buffers (REUSES_BUFFERS): then chunks from `body()` must be copied to be kept. */
  readonly reusesBuffers: boolean;
  readonly #it: AsyncIterator<unknown>;
  readonly #maxTrailing: number;
  #buf: Buffer = EMPTY;
  #position = 0;
  #remaining = 0;
  #pad = 0;
  #state: 'header' | 'body' | 'end' = 'header';

  constructor(source: AsyncIterable<unknown>, options: TarReaderOptions = {}) {
    this.reusesBuffers = (source as { [REUSES_BUFFERS]?: unknown })[REUSES_BUFFERS] === true;
    this.#it = source[Symbol.asyncIterator]();
    this.#maxTrailing = options.maxTrailingBytes ?? 64 * 1024;
  }

  /** Offset of the next byte the reader will consume. */
  get position(): number {
    return this.#position;
  }

  async next(): Promise<TarHeader | null> {
    if (this.#state === 'end') return null;
    if (this.#state === 'body') for await (const _ of this.body()) void _;
    const offset = this.#position;
    const block = await this.#take(BLOCK_SIZE, 'a tar header (the archive has no end-of-archive marker)');
    const header = decodeHeader(block, offset);
    if (header === null) {
      await this.#end();
      return null;
    }
    // Only regular files (and the pax/GNU headers we refuse anyway) carry data blocks.
    const hasData = header.type === 'file' || header.type === 'contiguous' || header.type.startsWith('pax') || header.type.startsWith('gnu') || header.type === 'other';
    this.#remaining = hasData ? header.size : 0;
    this.#pad = hasData ? padding(header.size).length : 0;
    this.#state = 'body';
    return header;
  }

  /** The current entry's data, chunk by chunk (views of the source's buffers; copy to keep them). */
  async *body(): AsyncGenerator<Buffer, void, undefined> {
    if (this.#state !== 'body') throw new Error('TarReader.body() without a current entry');
    while (this.#remaining > 0) {
      if (this.#buf.length === 0 && !(await this.#pull())) throw this.#truncated('entry data');
      const n = Math.min(this.#remaining, this.#buf.length);
      const chunk = this.#buf.subarray(0, n);
      this.#buf = this.#buf.subarray(n);
      this.#remaining -= n;
      this.#position += n;
      yield chunk;
    }
    if (this.#pad > 0) {
      const offset = this.#position;
      const pad = await this.#take(this.#pad, 'the padding after entry data');
      this.#pad = 0;
      if (!allZero(pad)) throw new BundleError('EAI_BUNDLE_TAR_PADDING', `the padding after an entry's data at byte ${offset} is not zeros; the bundle is corrupt.`, { details: { offset } });
    }
    this.#state = 'header';
  }

  /** The whole body of the current entry, refused when larger than `max` bytes before any is read. */
  async readBody(max: number): Promise<Buffer> {
    if (this.#remaining > max) throw new RangeError(`entry of ${this.#remaining} bytes exceeds ${max}`);
    const chunks: Buffer[] = [];
    for await (const chunk of this.body()) chunks.push(Buffer.from(chunk)); // kept across pulls: copied
    return Buffer.concat(chunks);
  }

  async close(): Promise<void> {
    this.#state = 'end';
    try {
      await this.#it.return?.();
    } catch {
      // The source failing as it is released changes nothing for the caller.
    }
  }

  /** After the first zero block: a second one, then only zeros to the end of the source. */
  async #end(): Promise<void> {
    const offset = this.#position;
    const second = await this.#take(BLOCK_SIZE, 'the second end-of-archive block');
    if (!allZero(second)) throw trailing(offset, 'a non-zero block after the first end-of-archive block');
    let extra = 0;
    for (;;) {
      if (this.#buf.length === 0 && !(await this.#pull())) break;
      const at = this.#position;
      extra += this.#buf.length;
      if (!allZero(this.#buf)) throw trailing(at, 'non-zero bytes after the end-of-archive marker');
      if (extra > this.#maxTrailing) throw trailing(at, `over ${this.#maxTrailing} bytes after the end-of-archive marker`);
      this.#position += this.#buf.length;
      this.#buf = EMPTY;
    }
    // Tar archives are whole blocks; a stray byte more is not padding (and would go unnoticed).
    if (extra % BLOCK_SIZE !== 0) throw trailing(this.#position, `${extra} bytes after the end-of-archive marker, not a whole number of blocks`);
    this.#state = 'end';
  }

  /** Exactly `n` bytes (copied when they span chunks); TRUNCATED when the source ends first. */
  async #take(n: number, what: string): Promise<Buffer> {
    while (this.#buf.length < n) {
      const had = this.#buf;
      if (!(await this.#pull())) {
        this.#buf = had;
        throw this.#truncated(what);
      }
      if (had.length > 0) this.#buf = Buffer.concat([had, this.#buf]);
    }
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    this.#position += n;
    return out;
  }

  /** Replaces the (consumed or kept-aside) buffer with the next non-empty chunk; false at the end. */
  async #pull(): Promise<boolean> {
    for (;;) {
      const r = await this.#it.next();
      if (r.done === true) return false;
      const v: unknown = r.value;
      const chunk = Buffer.isBuffer(v) ? v : v instanceof Uint8Array ? Buffer.from(v.buffer, v.byteOffset, v.byteLength) : typeof v === 'string' ? Buffer.from(v, 'latin1') : undefined;
      if (chunk === undefined) throw new TypeError('a tar source must yield bytes');
      if (chunk.length === 0) continue;
      this.#buf = chunk;
      return true;
    }
  }

  #truncated(what: string): BundleError {
    const at = this.#position + this.#buf.length;
    this.#state = 'end';
    return new BundleError('EAI_BUNDLE_TRUNCATED', `the bundle ends at byte ${at}, inside ${what}; it was cut short (an interrupted download or copy). Fetch it again.`, { details: { offset: at } });
  }
}

function trailing(offset: number, what: string): BundleError {
  return new BundleError('EAI_BUNDLE_TRAILING_DATA', `${what} (byte ${offset}); a bundle ends with its end-of-archive marker. Something was appended to it.`, { details: { offset } });
}
