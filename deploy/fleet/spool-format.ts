/**
 * The on-disk format of the device agent's spool (deploy/fleet/spool.ts): segment files, record
 * and skip frames with their CRC-32, and head.json. Only bytes here: what the spool does with them
 * is in spool.ts, and how `open` recovers from a crash or a power cut in spool-recovery.ts.
 *
 * On disk (one directory, mode 0700, files 0600), all integers little-endian:
 *
 *   head.json               {"version":1,"firstPending":N,"lease":M}, replaced atomically
 *                           (models/atomic-write.ts). firstPending: every record with a smaller
 *                           sequence number was acknowledged or dropped. lease: no sequence number
 *                           >= lease has been handed out.
 *   <16-digit base>.seg     a segment: its first record has sequence number `base`, each next one
 *                           base+1, base+2, ... A segment is only ever appended to, by the process
 *                           that created it; a new process always starts a new segment.
 *     segment header (16 B) "AIOSSPL" + format version (1 byte, 1) + base (u64)
 *     record frame          u32 length (bytes after the crc field) | u32 CRC-32 (IEEE, zlib's) of
 *                           the length field and of everything after the crc field | u64 seq |
 *                           u8 qos | u8 flags | u16 topic length | topic (UTF-8) | payload
 *     skip frame            flags bit 0 set: written by recovery over bytes it found damaged in the
 *                           middle of a segment; its CRC covers only its 20-byte header; it says
 *                           "the records from seq up to the next frame's seq are lost (already
 *                           counted)" so a later open neither trips over them nor counts them again
 */
import { Buffer } from 'node:buffer';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../../models/atomic-write.js';
import { SpoolError, spoolIoError } from './spool-errors.js';
import { crc32 } from '../../drivers/crc32.js';

export const FORMAT_VERSION = 1;
export const MAGIC = Buffer.from('AIOSSPL', 'latin1');
/** Bytes of a segment header: magic, format version, base. */
export const SEGMENT_HEADER = 16;
/** Bytes of a frame header: length, CRC, seq, qos, flags, topic length. */
export const FRAME_HEADER = 20;
/** The flags bit of a skip frame. */
export const FLAG_SKIP = 1;
/** Sequence numbers are leased through head.json in blocks of this many. */
export const LEASE = 1 << 16;
/** The sequence number of the first record of a new spool. */
export const FIRST_SEQ = 1;
export const HEAD_FILE = 'head.json';
const TWO_32 = 0x1_0000_0000;

/** A record to frame: `size` is the whole frame's bytes (FRAME_HEADER + topicBytes + payload). */
export interface Entry {
  readonly payload: Uint8Array;
  readonly topic: string;
  readonly topicBytes: number;
  readonly qos: 0 | 1;
  readonly size: number;
}

/** A record read back from its frame (the spool hands it out as a `SpoolRecord`). */
export interface FrameRecord {
  readonly seq: number;
  readonly topic: string;
  readonly qos: 0 | 1;
  readonly payload: Uint8Array;
}

// ---- head.json -----------------------------------------------------------------------------------

/**
 * Reads head.json. Undefined, after a warning (`EAI_SPOOL_HEAD_CORRUPT`), when it is missing while
 * segments exist or is unreadable; throws `EAI_SPOOL_UNSUPPORTED_VERSION` or `EAI_SPOOL_IO`.
 */
export async function readHead(dir: string, warn: (problem: SpoolError) => void, haveSegments: boolean): Promise<{ firstPending: number; lease: number } | undefined> {
  const file = path.join(dir, HEAD_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as { code?: unknown }).code !== 'ENOENT') throw spoolIoError('read', file, error);
    if (haveSegments) warn(new SpoolError('EAI_SPOOL_HEAD_CORRUPT', `spool: ${file} is missing but segments exist; every record present will be replayed and sequence numbers jump ahead. Fix: nothing to do; do not delete head.json by hand`, { details: { file } }));
    return undefined;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const h = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Record<string, unknown>;
  if (typeof h.version === 'number' && h.version > FORMAT_VERSION) {
    throw new SpoolError('EAI_SPOOL_UNSUPPORTED_VERSION', `spool: ${file} is format version ${h.version}; this aios reads version ${FORMAT_VERSION}. Fix: run the newer aios that wrote it, or move the directory away to start an empty spool`, { details: { file, version: h.version } });
  }
  const { firstPending, lease } = h;
  if (h.version === FORMAT_VERSION && Number.isSafeInteger(firstPending) && Number.isSafeInteger(lease) && (firstPending as number) >= 0 && (lease as number) >= 0) {
    return { firstPending: firstPending as number, lease: lease as number };
  }
  warn(new SpoolError('EAI_SPOOL_HEAD_CORRUPT', `spool: ${file} is unreadable; every record present will be replayed (some perhaps a second time) and sequence numbers jump ahead. Fix: nothing to do; check the storage if it happens again`, { details: { file } }));
  return undefined;
}

/** Replaces head.json (`file`) atomically: every sequence number below `firstPending` is done, none >= `lease` handed out. */
export function writeHead(file: string, firstPending: number, lease: number): Promise<void> {
  return writeFileAtomic(file, `${JSON.stringify({ version: FORMAT_VERSION, firstPending, lease })}\n`, { mode: 0o600 });
}

// ---- segments and frames -------------------------------------------------------------------------

export function segmentName(base: number): string {
  return `${String(base).padStart(16, '0')}.seg`;
}

/** The base of a segment file's name, or undefined for a name that is not a segment's. */
export function segmentBase(name: string): number | undefined {
  const m = /^(\d{16})\.seg$/u.exec(name);
  return m?.[1] === undefined ? undefined : Number(m[1]);
}

export function segmentHeader(base: number): Buffer {
  const b = Buffer.alloc(SEGMENT_HEADER);
  MAGIC.copy(b, 0);
  b[7] = FORMAT_VERSION;
  writeSeq(b, 8, base);
  return b;
}

export function encodeFrame(seq: number, entry: Entry): Buffer {
  const b = Buffer.allocUnsafe(entry.size);
  b.writeUInt32LE(entry.size - 8, 0);
  writeSeq(b, 8, seq);
  b[16] = entry.qos;
  b[17] = 0;
  b.writeUInt16LE(entry.topicBytes, 18);
  b.write(entry.topic, FRAME_HEADER, entry.topicBytes, 'utf8');
  b.set(entry.payload, FRAME_HEADER + entry.topicBytes);
  b.writeUInt32LE(frameCrc(b, 0, entry.size), 4);
  return b;
}

/** The record of the frame of `size` bytes at `at`, or undefined when the frame is not that record whole and intact. */
export function decodeFrame(buf: Buffer, at: number, size: number, seq: number): FrameRecord | undefined {
  if (at < 0 || at + size > buf.length || size < FRAME_HEADER) return undefined;
  if (buf.readUInt32LE(at) !== size - 8 || readSeq(buf, at + 8) !== seq) return undefined;
  if (frameCrc(buf, at, at + size) !== buf.readUInt32LE(at + 4)) return undefined;
  const qos = buf[at + 16];
  const topicBytes = buf.readUInt16LE(at + 18);
  if ((qos !== 0 && qos !== 1) || FRAME_HEADER + topicBytes > size) return undefined;
  return {
    seq,
    topic: buf.toString('utf8', at + FRAME_HEADER, at + FRAME_HEADER + topicBytes),
    qos,
    payload: buf.subarray(at + FRAME_HEADER + topicBytes, at + size),
  };
}

/** A skip frame for `span` damaged bytes: the records from `seq` up to the next frame's are lost. */
export function skipFrame(seq: number, span: number): Buffer {
  const b = Buffer.alloc(FRAME_HEADER);
  b.writeUInt32LE(span - 8, 0);
  writeSeq(b, 8, seq);
  b[17] = FLAG_SKIP;
  b.writeUInt32LE(frameCrc(b, 0, FRAME_HEADER), 4);
  return b;
}

/** The CRC of a frame spanning [at, end): its length field and everything after its CRC field. */
export function frameCrc(b: Buffer, at: number, end: number): number {
  return crc32(b.subarray(at + 8, end), crc32(b.subarray(at, at + 4)));
}

export function writeSeq(b: Buffer, at: number, seq: number): void {
  b.writeUInt32LE(seq % TWO_32, at);
  b.writeUInt32LE(Math.floor(seq / TWO_32), at + 4);
}

export function readSeq(b: Buffer, at: number): number {
  return b.readUInt32LE(at + 4) * TWO_32 + b.readUInt32LE(at);
}
