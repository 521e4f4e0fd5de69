/**
 * Crash recovery for the device agent's spool (deploy/fleet/spool.ts): `recover` reads the spool
 * directory back when the spool opens, repairs what a crash or a power cut left, and builds each
 * segment's index. The bytes it reads are described in spool-format.ts.
 *
 * Crash safety. A record is one frame written by one `writev` with the others of its batch, after
 * every earlier frame of its segment; its length, sequence number and CRC let recovery find the
 * last good record of a torn or corrupted segment. Recovery (`open`) reads every segment: a frame
 * that fails its check is followed by a search for the next valid frame of the chain; when one is
 * found, the records between are counted as lost (their count is exact: sequence numbers are
 * consecutive within a segment) and a skip frame is written over the damaged bytes; when none is,
 * the segment is truncated at the last good record and the unreadable tail is counted as the
 * frames it walks through by their length fields, plus one for a piece that starts like the record
 * that was due (a torn write). Garbage that does not start like that record counts as no record,
 * only as bytes (`corruptBytes`). What is lost is counted in `stats().corruptDropped` (records
 * already acknowledged are not counted) and reported through `warn` (`EAI_SPOOL_CORRUPT`). A
 * record damaged after open is found by the same CRC when read, dropped and counted the same way.
 * Records a power cut took without leaving a byte behind cannot be seen, so are not counted (zeros
 * the file system left in their place count as bytes); the sequence-number lease in head.json
 * (see spool.ts) keeps their numbers unused. Recovery reads every segment once at open: about
 * maxBytes of sequential reads.
 */
import { Buffer } from 'node:buffer';
import { mkdir, open, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { isTempOf, syncDir } from '../../models/atomic-write.js';
import { SpoolError, spoolIoError } from './spool-errors.js';
import { FIRST_SEQ, FLAG_SKIP, FORMAT_VERSION, FRAME_HEADER, HEAD_FILE, LEASE, MAGIC, SEGMENT_HEADER, frameCrc, readHead, readSeq, segmentBase, segmentHeader, segmentName, skipFrame, writeSeq } from './spool-format.js';

/**
 * A segment's index: one entry per sequence number from `base`, so a lookup is arithmetic.
 * `starts[i]` is -1 for a record found lost; `sizes[i]` is its frame's bytes.
 */
export interface Segment {
  readonly base: number;
  readonly file: string;
  readonly starts: number[];
  readonly sizes: number[];
  /** The end of the last frame assigned to it (written or queued). */
  size: number;
  /** Bytes in the file. */
  written: number;
  created: boolean;
  removed: boolean;
}

/** What `recover` found: the segments still holding records not yet acknowledged, oldest first, and the counts. */
export interface Recovered {
  readonly segments: Segment[];
  readonly head: number;
  readonly nextSeq: number;
  readonly corruptDropped: number;
  readonly corruptBytes: number;
}

export interface RecoverOptions {
  /** Problems recovered from: `EAI_SPOOL_CORRUPT`, `EAI_SPOOL_HEAD_CORRUPT`. */
  readonly warn: (problem: SpoolError) => void;
  /** Fsync the segments it repairs (false with fsync 'never'). */
  readonly syncRepairs: boolean;
}

/** Reads the directory back: head.json and every segment, repairing what a crash left. */
export async function recover(dir: string, options: RecoverOptions): Promise<Recovered> {
  let names: string[];
  try {
    const made = await mkdir(dir, { recursive: true, mode: 0o700 });
    if (made !== undefined) await syncDir(path.dirname(path.resolve(dir)));
    names = await readdir(dir);
  } catch (error) {
    throw spoolIoError('open the spool directory', dir, error);
  }
  for (const name of names) if (isTempOf(name, HEAD_FILE)) await rm(path.join(dir, name), { force: true }).catch(() => undefined);
  const bases = names.flatMap((n) => {
    const base = segmentBase(n);
    return base === undefined ? [] : [base];
  });
  bases.sort((a, b) => a - b);
  const saved = await readHead(dir, options.warn, bases.length > 0);
  const head = saved?.firstPending ?? (bases.length > 0 ? 0 : FIRST_SEQ);
  const segments: Segment[] = [];
  let corruptDropped = 0;
  let corruptBytes = 0;
  let last = FIRST_SEQ - 1;
  for (const base of bases) {
    const file = path.join(dir, segmentName(base));
    let data: Buffer;
    try {
      data = await readFile(file);
    } catch (error) {
      throw spoolIoError('read', file, error);
    }
    const scan = scanSegment(data, base, head, file);
    // The base was handed out when the segment was made, even if its record never reached the file.
    last = Math.max(last, base + scan.starts.length - 1, base);
    corruptDropped += scan.lost;
    corruptBytes += scan.badBytes;
    if (scan.badBytes > 0) {
      options.warn(new SpoolError('EAI_SPOOL_CORRUPT', `spool: ${file} held ${scan.badBytes} unreadable bytes (a torn write or damaged storage); ${scan.lost} unacknowledged record(s) lost, the rest kept. Fix: nothing to do if the machine lost power; otherwise check the storage (dmesg, smartctl)`, {
        details: { file, lost: scan.lost, bytes: scan.badBytes },
      }));
    }
    const live = scan.starts.some((s, i) => s >= 0 && base + i >= head);
    try {
      if (!live) {
        await rm(file, { force: true });
        continue;
      }
      await repair(file, base, scan, options.syncRepairs);
    } catch (error) {
      throw spoolIoError('repair', file, error);
    }
    segments.push({ base, file, starts: scan.starts, sizes: scan.sizes, size: scan.end, written: scan.end, created: true, removed: false });
  }
  let nextSeq = Math.max(last + 1, head, saved?.lease ?? 0, FIRST_SEQ);
  // Without head.json the old lease is unknown: numbers up to a lease past the last record may have been handed out.
  if (saved === undefined && bases.length > 0) nextSeq += LEASE;
  return { segments, head, nextSeq, corruptDropped, corruptBytes };
}

interface Scan {
  readonly starts: number[];
  readonly sizes: number[];
  /** Where the good data ends: the file is truncated there when `cut`. */
  readonly end: number;
  readonly cut: boolean;
  /** Skip frames to write over damaged bytes in the middle. */
  readonly skips: { readonly at: number; readonly to: number; readonly seq: number }[];
  readonly fixHeader: boolean;
  /** Lost unacknowledged records, newly found (not behind a skip frame). */
  readonly lost: number;
  readonly badBytes: number;
}

/** Walks a segment's frames, finding the good ones and accounting the damaged stretches (see the module comment). */
function scanSegment(buf: Buffer, base: number, head: number, file: string): Scan {
  const starts: number[] = [];
  const sizes: number[] = [];
  const skips: { at: number; to: number; seq: number }[] = [];
  let lost = 0;
  let badBytes = 0;
  if (buf.length < SEGMENT_HEADER) return { starts, sizes, end: 0, cut: true, skips, fixHeader: false, lost, badBytes: buf.length };
  const version = buf[7] ?? 0;
  const magicOk = buf.subarray(0, MAGIC.length).equals(MAGIC);
  if (magicOk && version > FORMAT_VERSION) {
    throw new SpoolError('EAI_SPOOL_UNSUPPORTED_VERSION', `spool: ${file} is segment format version ${version}; this aios reads version ${FORMAT_VERSION}. Fix: run the newer aios that wrote it, or move the directory away to start an empty spool`, { details: { file, version } });
  }
  const fixHeader = !magicOk || version !== FORMAT_VERSION || readSeq(buf, 8) !== base;
  // No frame of this segment can have a sequence number past this (each takes at least a header).
  const limit = base + Math.floor((buf.length - SEGMENT_HEADER) / FRAME_HEADER);
  let expected = base;
  let counted = true;
  const loseUpTo = (seq: number): void => {
    for (; expected < seq; expected++) {
      starts.push(-1);
      sizes.push(0);
      if (counted && expected >= head) lost += 1;
    }
  };
  let pos = SEGMENT_HEADER;
  while (pos < buf.length) {
    const f = frameAt(buf, pos, expected, limit);
    if (f !== undefined) {
      if (f.skip) {
        // Damage found and counted by an earlier open.
        counted = false;
        expected = f.seq;
      } else {
        loseUpTo(f.seq);
        counted = true;
        starts.push(pos);
        sizes.push(f.end - pos);
        expected = f.seq + 1;
      }
      pos = f.end;
      continue;
    }
    let next = pos + 1;
    while (next + FRAME_HEADER <= buf.length && frameAt(buf, next, expected, limit) === undefined) next += 1;
    if (next + FRAME_HEADER > buf.length) {
      loseUpTo(expected + tailRecords(buf, pos, expected));
      badBytes += buf.length - pos;
      return { starts, sizes, end: pos, cut: true, skips, fixHeader, lost, badBytes };
    }
    badBytes += next - pos;
    if (next - pos >= FRAME_HEADER) skips.push({ at: pos, to: next, seq: expected });
    pos = next;
  }
  return { starts, sizes, end: buf.length, cut: false, skips, fixHeader, lost, badBytes };
}

/** The frame at `pos` if it is whole, passes its CRC and could be the next of the chain. */
function frameAt(buf: Buffer, pos: number, expected: number, limit: number): { seq: number; end: number; skip: boolean } | undefined {
  if (buf.length - pos < FRAME_HEADER) return undefined;
  const seq = readSeq(buf, pos + 8);
  if (seq < expected || seq > limit) return undefined;
  const length = buf.readUInt32LE(pos);
  const end = pos + 8 + length;
  if (length < FRAME_HEADER - 8 || end > buf.length) return undefined;
  const skip = ((buf[pos + 17] ?? 0) & FLAG_SKIP) !== 0;
  if (!skip && (buf[pos + 16] ?? 2) > 1) return undefined;
  if (!skip && buf.readUInt16LE(pos + 18) > length - (FRAME_HEADER - 8)) return undefined;
  if (frameCrc(buf, pos, skip ? pos + FRAME_HEADER : end) !== buf.readUInt32LE(pos + 4)) return undefined;
  return { seq, end, skip };
}

/**
 * How many records an unreadable tail held: the frames its length fields walk through whole, plus
 * one for a piece that starts (as far as it goes) like the record that was due: a torn write.
 */
function tailRecords(buf: Buffer, pos: number, expected: number): number {
  let n = 0;
  let p = pos;
  while (p < buf.length) {
    if (buf.length - p >= FRAME_HEADER) {
      const length = buf.readUInt32LE(p);
      if (length >= FRAME_HEADER - 8 && p + 8 + length <= buf.length) {
        n += 1;
        p += 8 + length;
        continue;
      }
    }
    const want = Buffer.alloc(8);
    writeSeq(want, 0, expected + n);
    const have = buf.subarray(Math.min(p + 8, buf.length), Math.min(p + 16, buf.length));
    return n + (have.equals(want.subarray(0, have.length)) ? 1 : 0);
  }
  return n;
}

/** Writes what `scan` found to fix: the header, skip frames over damaged bytes, the cut of a torn tail. */
async function repair(file: string, base: number, scan: Scan, sync: boolean): Promise<void> {
  if (!scan.cut && scan.skips.length === 0 && !scan.fixHeader) return;
  const handle = await open(file, 'r+');
  try {
    if (scan.fixHeader) await handle.write(segmentHeader(base), 0, SEGMENT_HEADER, 0);
    for (const s of scan.skips) await handle.write(skipFrame(s.seq, s.to - s.at), 0, FRAME_HEADER, s.at);
    if (scan.cut) await handle.truncate(scan.end);
    if (sync) await handle.datasync();
  } finally {
    await handle.close();
  }
}
