/**
 * The device agent's on-disk spool: order and acks across reopen, the byte budget, replay while
 * appending, recovery from torn and corrupted segments, a child process SIGKILLed while it appends,
 * and random operation sequences against an in-memory model (fast-check).
 *
 * What the SIGKILL test proves and what not (as in test/unit/models/store/power-loss.test.ts): the
 * kernel keeps its page cache across the kill, so it proves the order of writes and the recovery
 * leave a consistent spool at any instant, not that fsyncs put the data on the disk before a power
 * cut. The torn and corrupt tests stand in for what a power cut or bad flash leaves.
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Spool, type SpoolOptions, type SpoolRecord } from '../../../../deploy/fleet/spool.js';
import { SpoolError } from '../../../../deploy/fleet/spool-errors.js';
import { AiosError } from '../../../../drivers/errors.js';
import { transpileGraph } from '../../../support/transpile.js';
import { mulberry32 } from '../../../support/random.js';

const repo = path.resolve(import.meta.dirname, '../../../..');
const FRAME = 20;
const SEGMENT_HEADER = 16;
let work: string;
let n = 0;

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'aios-spool-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

const fresh = (): string => path.join(work, `s${n++}`);
const quiet: SpoolOptions['warn'] = () => undefined;
const body = (i: number, size = 100): Buffer => Buffer.from(Array.from({ length: size }, (_, j) => (i * 31 + j * 7) & 0xff));

async function all(spool: Spool): Promise<SpoolRecord[]> {
  const out: SpoolRecord[] = [];
  for await (const r of spool.replay()) out.push(r);
  return out;
}

async function segmentFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((f) => f.endsWith('.seg')).sort();
}

/** A spool with `count` records of 100 payload bytes on topic 't' in one segment, closed. Returns the segment file. */
async function oneSegment(dir: string, count: number): Promise<string> {
  const spool = await Spool.open(dir, { maxBytes: 1 << 20, segmentBytes: 1 << 20, warn: quiet });
  for (let i = 1; i <= count; i++) await spool.append(body(i), { topic: 't' });
  await spool.close();
  const [seg] = await segmentFiles(dir);
  return path.join(dir, seg ?? 'missing');
}

describe('Spool: order, acks and sequence numbers', () => {
  it('replays every record in append order, with topic, qos and payload, across close and reopen', async () => {
    const dir = fresh();
    const options = { maxBytes: 1 << 20, segmentBytes: 2048, warn: quiet };
    let spool = await Spool.open(dir, options);
    const sent: { topic: string; qos: 0 | 1; payload: Buffer }[] = [];
    for (let i = 0; i < 60; i++) {
      const r = { topic: `fleet/v1/dev/${i % 3}/telemetry`, qos: (i % 2) as 0 | 1, payload: body(i, (i * 37) % 500) };
      sent.push(r);
      expect(await spool.append(r.payload, { topic: r.topic, qos: r.qos })).toBe(i + 1);
    }
    expect(spool.stats().segments).toBeGreaterThan(5);
    await spool.close();
    spool = await Spool.open(dir, options);
    const got = await all(spool);
    expect(got.map((r) => r.seq)).toEqual(sent.map((_, i) => i + 1));
    expect(got.map((r) => ({ topic: r.topic, qos: r.qos, payload: Buffer.from(r.payload) }))).toEqual(sent);
    // A clean close records the exact next number: no jump.
    expect(spool.stats()).toMatchObject({ pending: 60, nextSeq: 61, dropped: 0, corruptDropped: 0 });
    expect(await spool.append(body(99), { topic: 'x' })).toBe(61);
    expect(await spool.append(body(100))).toBe(62);
    const [last] = await spool.peek(1, 62);
    expect(last).toMatchObject({ seq: 62, topic: '', qos: 1 });
    await spool.close();
  });

  it('persists acks: acknowledged records are not replayed after reopen, and their segments are deleted', async () => {
    const dir = fresh();
    const options = { maxBytes: 1 << 20, segmentBytes: 1024, warn: quiet };
    let spool = await Spool.open(dir, options);
    for (let i = 1; i <= 40; i++) await spool.append(body(i));
    const filesBefore = (await segmentFiles(dir)).length;
    spool.ack(25);
    expect(spool.stats()).toMatchObject({ pending: 15, pendingBytes: 15 * (FRAME + 100) });
    expect((await spool.peek(1))[0]?.seq).toBe(26);
    await spool.close();
    expect(JSON.parse(await readFile(path.join(dir, 'head.json'), 'utf8'))).toEqual({ version: 1, firstPending: 26, lease: 41 });
    spool = await Spool.open(dir, options);
    expect((await all(spool)).map((r) => r.seq)).toEqual(Array.from({ length: 15 }, (_, i) => 26 + i));
    expect((await segmentFiles(dir)).length).toBeLessThan(filesBefore);
    // Acking an old number again is harmless; acking one never handed out is a bug in the caller.
    spool.ack(3);
    expect(() => spool.ack(41)).toThrow(expect.objectContaining({ code: 'EAI_SPOOL_BAD_SEQ' }));
    await spool.close();
  });

  it("writes an ack to head.json without a close: at once with fsync 'always', at the next tick with 'interval'", async () => {
    for (const fsync of ['always', 'interval'] as const) {
      const dir = fresh();
      const spool = await Spool.open(dir, { maxBytes: 1 << 20, fsync, fsyncIntervalMs: 20, warn: quiet });
      for (let i = 1; i <= 5; i++) await spool.append(body(i));
      spool.ack(3);
      await expect.poll(async () => JSON.parse(await readFile(path.join(dir, 'head.json'), 'utf8')).firstPending, { timeout: 2000, interval: 5 }).toBe(4);
      await spool.close();
    }
  });

  it('never reuses a sequence number, even once everything was acknowledged and deleted', async () => {
    const dir = fresh();
    const options = { maxBytes: 1 << 20, segmentBytes: 512, warn: quiet };
    let spool = await Spool.open(dir, options);
    for (let i = 1; i <= 12; i++) await spool.append(body(i));
    spool.ack(12);
    await spool.close();
    spool = await Spool.open(dir, options);
    expect(spool.stats()).toMatchObject({ pending: 0, nextSeq: 13, segments: 0 });
    expect(await segmentFiles(dir)).toEqual([]);
    expect(await spool.append(body(13))).toBe(13);
    await spool.close();
  });

  it('jumps past the leased numbers after an unclean stop, and replays everything still pending', async () => {
    const dir = fresh();
    const first = await Spool.open(dir, { maxBytes: 1 << 20, fsyncIntervalMs: 60_000, warn: quiet });
    for (let i = 1; i <= 5; i++) await first.append(body(i));
    // No close: the process "dies" (this object is dropped; its files stay as the kernel has them).
    const second = await Spool.open(dir, { maxBytes: 1 << 20, warn: quiet });
    expect((await all(second)).map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(second.stats().nextSeq).toBe(1 + 65_536);
    expect(await second.append(body(6))).toBe(65_537);
    await second.close();
    const third = await Spool.open(dir, { maxBytes: 1 << 20, warn: quiet });
    expect((await all(third)).map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 65_537]);
    third.ack(65_537);
    await third.close();
    // An unclean stop with nothing appended: nothing to replay, and still a jump.
    const fourth = await Spool.open(dir, { maxBytes: 1 << 20, fsyncIntervalMs: 60_000, warn: quiet });
    const fifth = await Spool.open(dir, { maxBytes: 1 << 20, warn: quiet });
    expect(await all(fifth)).toEqual([]);
    expect(fifth.stats()).toMatchObject({ pending: 0, nextSeq: 65_538 + 65_536 });
    await fifth.close();
    expect(fourth.stats().nextSeq).toBe(65_538);
  });

  it('keeps the layout it documents: mode 0700 directory, 0600 files, 16-digit segment names, a magic header', async () => {
    const dir = fresh();
    const spool = await Spool.open(dir, { maxBytes: 1 << 20, warn: quiet });
    await spool.append(Buffer.from('hello'), { topic: 'a/b', qos: 0 });
    await spool.close();
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect((await readdir(dir)).sort()).toEqual(['0000000000000001.seg', 'head.json']);
    for (const f of ['0000000000000001.seg', 'head.json']) expect((await stat(path.join(dir, f))).mode & 0o777).toBe(0o600);
    const seg = await readFile(path.join(dir, '0000000000000001.seg'));
    expect(seg.subarray(0, 8).toString('latin1')).toBe('AIOSSPL\x01');
    expect(seg.readUInt32LE(8)).toBe(1);
    // One frame: length, crc, seq 1, qos 0, flags 0, topic length 3, topic, payload.
    expect(seg.length).toBe(SEGMENT_HEADER + FRAME + 3 + 5);
    expect(seg.readUInt32LE(16)).toBe(FRAME - 8 + 3 + 5);
    expect(seg.readUInt32LE(24)).toBe(1);
    expect([seg[32], seg[33], seg.readUInt16LE(34)]).toEqual([0, 0, 3]);
    expect(seg.subarray(36).toString()).toBe('a/bhello');
  });
});

describe('Spool: durability calls and failures', () => {
  it('flush resolves while appends go on, with what came before it written and fsynced', async () => {
    const dir = fresh();
    const spool = await Spool.open(dir, { maxBytes: 1 << 20, fsync: 'never', warn: quiet });
    let stop = false;
    const writer = (async () => {
      for (let i = 1; !stop; i++) await spool.append(body(i));
    })();
    await new Promise((r) => setTimeout(r, 20));
    const before = spool.stats().nextSeq - 1;
    spool.ack(1);
    await spool.flush();
    stop = true;
    await writer;
    // Everything appended before the flush is on disk, in however many segments it took (a fast
    // machine fills more than the first 128 KiB one in those 20 ms).
    let written = 0;
    for (const seg of await segmentFiles(dir)) written += (await stat(path.join(dir, seg))).size - SEGMENT_HEADER;
    expect(before).toBeGreaterThan(0);
    expect(written).toBeGreaterThanOrEqual(before * (FRAME + 100));
    expect(JSON.parse(await readFile(path.join(dir, 'head.json'), 'utf8')).firstPending).toBe(2);
    await spool.close();
  });

  it('a segment that cannot be written fails its appends with EAI_SPOOL_IO; the next append starts a new segment', async () => {
    const dir = fresh();
    const frame = FRAME + 100;
    const options = { maxBytes: 1 << 20, segmentBytes: SEGMENT_HEADER + 3 * frame, warn: quiet };
    let spool = await Spool.open(dir, options);
    for (let i = 1; i <= 3; i++) await spool.append(body(i));
    // The 4th record opens segment 4: a directory in its place makes creating it fail.
    const blocker = path.join(dir, '0000000000000004.seg');
    await mkdir(blocker);
    const error = await spool.append(body(4)).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'EAI_SPOOL_IO', details: { file: blocker, errno: 'EEXIST' } });
    expect(spool.stats()).toMatchObject({ pending: 3, pendingBytes: 3 * frame, nextSeq: 5 });
    expect(await spool.append(body(5))).toBe(5);
    expect((await all(spool)).map((r) => r.seq)).toEqual([1, 2, 3, 5]);
    await spool.close();
    await rm(blocker, { recursive: true });
    spool = await Spool.open(dir, options);
    expect((await all(spool)).map((r) => r.seq)).toEqual([1, 2, 3, 5]);
    expect(spool.stats()).toMatchObject({ nextSeq: 6, corruptDropped: 0 });
    await spool.close();
  });
});

describe('Spool: the byte budget', () => {
  it('drops the oldest unacknowledged records, only as many as needed, and counts them exactly', async () => {
    const dir = fresh();
    const frame = FRAME + 1 + 100;
    const spool = await Spool.open(dir, { maxBytes: 10 * frame, segmentBytes: 3 * frame + SEGMENT_HEADER, warn: quiet });
    for (let i = 1; i <= 25; i++) await spool.append(body(i), { topic: 't' });
    expect(spool.stats()).toMatchObject({ pending: 10, pendingBytes: 10 * frame, dropped: 15, droppedBytes: 15 * frame });
    const got = await all(spool);
    expect(got.map((r) => r.seq)).toEqual(Array.from({ length: 10 }, (_, i) => 16 + i));
    expect(Buffer.from(got[0]?.payload ?? [])).toEqual(body(16));
    // A record of three frames' worth drops exactly the three oldest (the newest data wins).
    await spool.append(body(26, 3 * frame - FRAME - 1), { topic: 't' });
    expect(spool.stats()).toMatchObject({ pending: 8, pendingBytes: 10 * frame, dropped: 18, droppedBytes: 18 * frame });
    expect((await spool.peek(1))[0]?.seq).toBe(19);
    // Whole segments behind the head are deleted: the files hold at most one segment more than the budget.
    await spool.flush();
    const files = await segmentFiles(dir);
    const bytes = (await Promise.all(files.map(async (f) => (await stat(path.join(dir, f))).size))).reduce((a, b) => a + b, 0);
    expect(bytes).toBeLessThanOrEqual(10 * frame + 3 * frame + SEGMENT_HEADER * files.length);
    await spool.close();
  });

  it('refuses a record larger than the budget with EAI_SPOOL_RECORD_TOO_LARGE and goes on', async () => {
    const spool = await Spool.open(fresh(), { maxBytes: 1000, warn: quiet });
    await spool.append(body(1));
    const error = await spool.append(Buffer.alloc(1000), { topic: 't' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SpoolError);
    expect(error).toBeInstanceOf(AiosError);
    expect(error).toMatchObject({ code: 'EAI_SPOOL_RECORD_TOO_LARGE', details: { size: 1021, maxBytes: 1000 } });
    expect((error as Error).message).toMatch(/split the message, or raise maxBytes/u);
    // Exactly the budget fits, after dropping the one before.
    expect(await spool.append(Buffer.alloc(1000 - FRAME))).toBe(2);
    expect(spool.stats()).toMatchObject({ pending: 1, pendingBytes: 1000, dropped: 1, droppedBytes: FRAME + 100 });
    await spool.close();
  });

  it('drops at open when maxBytes shrank, and counts it', async () => {
    const dir = fresh();
    let spool = await Spool.open(dir, { maxBytes: 1 << 20, warn: quiet });
    for (let i = 1; i <= 10; i++) await spool.append(body(i));
    await spool.close();
    spool = await Spool.open(dir, { maxBytes: 4 * (FRAME + 100), warn: quiet });
    expect(spool.stats()).toMatchObject({ pending: 4, dropped: 6, droppedBytes: 6 * (FRAME + 100) });
    expect((await all(spool)).map((r) => r.seq)).toEqual([7, 8, 9, 10]);
    await spool.close();
  });
});

describe('Spool: replay while appending', () => {
  it('a replay sees the records appended while it runs, in order', async () => {
    const spool = await Spool.open(fresh(), { maxBytes: 1 << 20, segmentBytes: 600, warn: quiet });
    for (let i = 1; i <= 10; i++) await spool.append(body(i));
    const seen: number[] = [];
    for await (const r of spool.replay({ batch: 3 })) {
      seen.push(r.seq);
      expect(Buffer.from(r.payload)).toEqual(body(r.seq));
      // Appends not awaited: they are written while the replay reads.
      if (r.seq === 5) for (let i = 11; i <= 15; i++) void spool.append(body(i));
      spool.ack(r.seq);
    }
    expect(seen).toEqual(Array.from({ length: 15 }, (_, i) => i + 1));
    expect(spool.stats().pending).toBe(0);
    await spool.close();
  });

  it('overlapping appends get numbers in call order, and a following replay gets them all until aborted', async () => {
    const spool = await Spool.open(fresh(), { maxBytes: 1 << 20, segmentBytes: 4096, fsync: 'always', warn: quiet });
    const controller = new AbortController();
    const seen: SpoolRecord[] = [];
    const consumer = (async () => {
      for await (const r of spool.replay({ follow: true, signal: controller.signal })) {
        seen.push(r);
        if (seen.length === 200) controller.abort();
      }
    })();
    const seqs: Promise<number>[] = [];
    for (let round = 0; round < 10; round++) {
      for (let i = 0; i < 20; i++) seqs.push(spool.append(body(round * 20 + i + 1), { topic: `r${round}` }));
      await new Promise((r) => setTimeout(r, 2));
    }
    expect(await Promise.all(seqs)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    await consumer;
    expect(seen.map((r) => r.seq)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    expect(seen.every((r) => Buffer.from(r.payload).equals(body(r.seq)))).toBe(true);
    await spool.close();
  });

  it('a following replay ends when the spool closes', async () => {
    const spool = await Spool.open(fresh(), { maxBytes: 1 << 20, warn: quiet });
    await spool.append(body(1));
    const seen: number[] = [];
    const consumer = (async () => {
      for await (const r of spool.replay({ follow: true })) seen.push(r.seq);
    })();
    await expect.poll(() => seen.length).toBe(1);
    await spool.close();
    await consumer;
    expect(seen).toEqual([1]);
    await expect(spool.append(body(2))).rejects.toMatchObject({ code: 'EAI_SPOOL_CLOSED' });
    await expect(spool.peek(1)).rejects.toMatchObject({ code: 'EAI_SPOOL_CLOSED' });
  });
});

describe('Spool: recovery from torn and corrupted segments', () => {
  it('a segment cut in the middle of its last record: that record is counted lost, the rest kept, the file truncated', async () => {
    for (const keep of [FRAME + 50, 12, 3]) {
      const dir = fresh();
      const file = await oneSegment(dir, 10);
      const frame = FRAME + 1 + 100;
      const goodEnd = SEGMENT_HEADER + 9 * frame;
      await truncate(file, goodEnd + keep);
      const problems: SpoolError[] = [];
      let spool = await Spool.open(dir, { maxBytes: 1 << 20, warn: (p) => problems.push(p) });
      expect(spool.stats(), `keep ${keep}`).toMatchObject({ pending: 9, corruptDropped: 1, corruptBytes: keep });
      expect((await all(spool)).map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
      expect(problems.map((p) => p.code)).toEqual(['EAI_SPOOL_CORRUPT']);
      expect(await spool.append(body(11))).toBe(11);
      await spool.close();
      expect((await stat(file)).size).toBe(goodEnd);
      // Counted once: the next open finds nothing wrong.
      spool = await Spool.open(dir, { maxBytes: 1 << 20, warn: quiet });
      expect(spool.stats()).toMatchObject({ pending: 10, corruptDropped: 0, corruptBytes: 0 });
      await spool.close();
    }
  });

  it('garbage appended after the last record is cut off and counts as no record, only as bytes', async () => {
    const dir = fresh();
    const file = await oneSegment(dir, 10);
    await writeFile(file, Buffer.alloc(37, 0xab), { flag: 'a' });
    const spool = await Spool.open(dir, { maxBytes: 1 << 20, warn: quiet });
    expect(spool.stats()).toMatchObject({ pending: 10, corruptDropped: 0, corruptBytes: 37 });
    expect((await all(spool)).map((r) => Buffer.from(r.payload))).toEqual(Array.from({ length: 10 }, (_, i) => body(i + 1)));
    await spool.close();
  });

  it.each([
    ['payload', FRAME + 1 + 50],
    ['length field', 1],
    ['crc field', 5],
    ['sequence number', 9],
    ['topic', FRAME],
  ])('a flipped byte in the middle record (%s): only that record is lost and counted, once', async (_, offsetInFrame) => {
    const dir = fresh();
    const file = await oneSegment(dir, 9);
    const frame = FRAME + 1 + 100;
    const data = await readFile(file);
    const at = SEGMENT_HEADER + 4 * frame + offsetInFrame;
    data[at] = (data[at] ?? 0) ^ 0x10;
    await writeFile(file, data);
    const problems: SpoolError[] = [];
    let spool = await Spool.open(dir, { maxBytes: 1 << 20, warn: (p) => problems.push(p) });
    expect(spool.stats()).toMatchObject({ pending: 8, pendingBytes: 8 * frame, corruptDropped: 1, corruptBytes: frame });
    expect(problems[0]).toMatchObject({ code: 'EAI_SPOOL_CORRUPT', details: { lost: 1, bytes: frame } });
    const expected = [1, 2, 3, 4, 6, 7, 8, 9];
    let got = await all(spool);
    expect(got.map((r) => r.seq)).toEqual(expected);
    expect(got.every((r) => Buffer.from(r.payload).equals(body(r.seq)) && r.topic === 't')).toBe(true);
    await spool.close();
    // A skip frame now covers the damage: the next open neither stumbles nor counts it again.
    spool = await Spool.open(dir, { maxBytes: 1 << 20, warn: quiet });
    expect(spool.stats()).toMatchObject({ pending: 8, corruptDropped: 0, corruptBytes: 0, nextSeq: 10 });
    got = await all(spool);
    expect(got.map((r) => r.seq)).toEqual(expected);
    spool.ack(9);
    await spool.close();
  });

  it('a damaged segment header is rewritten from the file name; the records are kept', async () => {
    const dir = fresh();
    const file = await oneSegment(dir, 3);
    const data = await readFile(file);
    data.fill(0x5a, 0, SEGMENT_HEADER);
    await writeFile(file, data);
    const spool = await Spool.open(dir, { maxBytes: 1 << 20, warn: quiet });
    expect(spool.stats()).toMatchObject({ pending: 3, corruptDropped: 0 });
    expect((await all(spool)).map((r) => r.seq)).toEqual([1, 2, 3]);
    await spool.close();
    expect((await readFile(file)).subarray(0, 9)).toEqual(Buffer.from('AIOSSPL\x01\x01', 'latin1'));
  });

  it('a record damaged on disk after open is dropped and counted when read, without a crash', async () => {
    const dir = fresh();
    const problems: SpoolError[] = [];
    const spool = await Spool.open(dir, { maxBytes: 1 << 20, warn: (p) => problems.push(p) });
    for (let i = 1; i <= 5; i++) await spool.append(body(i));
    await spool.flush();
    const [seg] = await segmentFiles(dir);
    const handle = await open(path.join(dir, seg ?? ''), 'r+');
    await handle.write(Buffer.from([0xee]), 0, 1, SEGMENT_HEADER + 2 * (FRAME + 100) + FRAME + 10);
    await handle.close();
    expect((await all(spool)).map((r) => r.seq)).toEqual([1, 2, 4, 5]);
    expect(spool.stats()).toMatchObject({ pending: 4, corruptDropped: 1 });
    expect(problems.map((p) => p.code)).toEqual(['EAI_SPOOL_CORRUPT']);
    await spool.close();
  });

  it('an unreadable head.json is reported, everything present is replayed, and numbers jump ahead', async () => {
    const dir = fresh();
    let spool = await Spool.open(dir, { maxBytes: 1 << 20, warn: quiet });
    for (let i = 1; i <= 4; i++) await spool.append(body(i));
    spool.ack(2);
    await spool.close();
    await writeFile(path.join(dir, 'head.json'), '{"version":1,"firstPe');
    const problems: SpoolError[] = [];
    spool = await Spool.open(dir, { maxBytes: 1 << 20, warn: (p) => problems.push(p) });
    expect(problems.map((p) => p.code)).toEqual(['EAI_SPOOL_HEAD_CORRUPT']);
    expect((await all(spool)).map((r) => r.seq)).toEqual([1, 2, 3, 4]);
    expect(spool.stats().nextSeq).toBeGreaterThan(4 + 65_535);
    await spool.close();
  });

  it('refuses a spool written by a newer format, changing nothing', async () => {
    const dir = fresh();
    await oneSegment(dir, 2);
    await writeFile(path.join(dir, 'head.json'), JSON.stringify({ version: 2, firstPending: 1, lease: 10 }));
    await expect(Spool.open(dir, { maxBytes: 1 << 20, warn: quiet })).rejects.toMatchObject({ code: 'EAI_SPOOL_UNSUPPORTED_VERSION' });
    expect(JSON.parse(await readFile(path.join(dir, 'head.json'), 'utf8')).version).toBe(2);
  });
});

describe('Spool: options and bad input', () => {
  it.each([
    [{ maxBytes: 0 }],
    [{ maxBytes: 1.5e6 + 0.5 }],
    [{ maxBytes: 1 << 20, segmentBytes: 10 }],
    [{ maxBytes: 1 << 20, fsync: 'sometimes' as never }],
    [{ maxBytes: 1 << 20, fsyncIntervalMs: 0 }],
  ])('rejects %o with EAI_SPOOL_OPTIONS', async (options) => {
    await expect(Spool.open(fresh(), { warn: quiet, ...options })).rejects.toMatchObject({ code: 'EAI_SPOOL_OPTIONS' });
  });

  it('rejects a bad record with EAI_SPOOL_BAD_RECORD and a bad peek with EAI_SPOOL_OPTIONS', async () => {
    const spool = await Spool.open(fresh(), { maxBytes: 1 << 20, warn: quiet });
    await expect(spool.append('text' as never)).rejects.toMatchObject({ code: 'EAI_SPOOL_BAD_RECORD' });
    await expect(spool.append(body(1), { topic: 't', qos: 2 as never })).rejects.toMatchObject({ code: 'EAI_SPOOL_BAD_RECORD' });
    await expect(spool.append(body(1), { topic: 'x'.repeat(70_000) })).rejects.toMatchObject({ code: 'EAI_SPOOL_BAD_RECORD' });
    await expect(spool.peek(0)).rejects.toMatchObject({ code: 'EAI_SPOOL_OPTIONS' });
    expect(spool.stats()).toMatchObject({ pending: 0, nextSeq: 1 });
    await spool.close();
  });
});

describe('Spool: random operations against a model (fast-check)', () => {
  type Op = { kind: 'append'; size: number; topic: number; qos: 0 | 1 } | { kind: 'ack'; at: number } | { kind: 'reopen' } | { kind: 'peek'; max: number; from: number };
  const op: fc.Arbitrary<Op> = fc.oneof(
    { weight: 6, arbitrary: fc.record({ kind: fc.constant('append' as const), size: fc.integer({ min: 0, max: 300 }), topic: fc.integer({ min: 0, max: 3 }), qos: fc.constantFrom(0 as const, 1 as const) }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('ack' as const), at: fc.double({ min: 0, max: 1, noNaN: true }) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('reopen' as const) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('peek' as const), max: fc.integer({ min: 1, max: 20 }), from: fc.double({ min: 0, max: 1, noNaN: true }) }) },
  );

  it('append / ack / reopen / peek behave like a bounded FIFO with counted drops', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 200, max: 3000 }), fc.integer({ min: 60, max: 900 }), fc.array(op, { maxLength: 40 }), async (maxBytes, segmentBytes, ops) => {
        const dir = fresh();
        const options: SpoolOptions = { maxBytes, segmentBytes, fsync: 'never', warn: quiet };
        let spool = await Spool.open(dir, options);
        interface Model {
          seq: number;
          topic: string;
          qos: 0 | 1;
          payload: Buffer;
          bytes: number;
        }
        let model: Model[] = [];
        let nextSeq = 1;
        let dropped = 0;
        let droppedBytes = 0;
        try {
          for (const o of ops) {
            if (o.kind === 'append') {
              const payload = body(nextSeq, o.size);
              const topic = `t/${o.topic}`;
              const bytes = FRAME + topic.length + o.size;
              if (bytes > maxBytes) {
                await expect(spool.append(payload, { topic, qos: o.qos })).rejects.toMatchObject({ code: 'EAI_SPOOL_RECORD_TOO_LARGE' });
                continue;
              }
              let total = model.reduce((a, m) => a + m.bytes, 0);
              while (total + bytes > maxBytes) {
                const gone = model.shift() as Model;
                total -= gone.bytes;
                dropped += 1;
                droppedBytes += gone.bytes;
              }
              model.push({ seq: nextSeq, topic, qos: o.qos, payload, bytes });
              expect(await spool.append(payload, { topic, qos: o.qos })).toBe(nextSeq);
              nextSeq += 1;
            } else if (o.kind === 'ack') {
              if (nextSeq === 1) continue;
              const seq = 1 + Math.floor(o.at * (nextSeq - 1));
              spool.ack(Math.min(seq, nextSeq - 1));
              model = model.filter((m) => m.seq > Math.min(seq, nextSeq - 1));
            } else if (o.kind === 'reopen') {
              await spool.close();
              spool = await Spool.open(dir, options);
              dropped = 0;
              droppedBytes = 0;
            } else {
              const from = Math.floor(o.from * nextSeq);
              const got = await spool.peek(o.max, from);
              const want = model.filter((m) => m.seq >= from).slice(0, o.max);
              expect(got.map((r) => [r.seq, r.topic, r.qos, Buffer.from(r.payload)])).toEqual(want.map((m) => [m.seq, m.topic, m.qos, m.payload]));
            }
            expect(spool.stats()).toEqual({
              pending: model.length,
              pendingBytes: model.reduce((a, m) => a + m.bytes, 0),
              dropped,
              droppedBytes,
              corruptDropped: 0,
              corruptBytes: 0,
              nextSeq,
              segments: spool.stats().segments,
            });
          }
          const got = await all(spool);
          expect(got.map((r) => r.seq)).toEqual(model.map((m) => m.seq));
          expect(got.every((r, i) => Buffer.from(r.payload).equals(model[i]?.payload ?? Buffer.alloc(0)))).toBe(true);
        } finally {
          await spool.close();
          await rm(dir, { recursive: true, force: true });
        }
      }),
      { numRuns: 60 },
    );
  });
});

describe('Spool: a process SIGKILLed while it appends', () => {
  const CHILD = `
const { Spool } = await import(process.env.SPOOL_MODULE);
const run = Number(process.env.SPOOL_RUN);
const spool = await Spool.open(process.env.SPOOL_DIR, {
  maxBytes: Number(process.env.SPOOL_MAX_BYTES), segmentBytes: 8192, fsync: process.env.SPOOL_FSYNC, fsyncIntervalMs: 5, warn: () => {},
});
process.stdout.write('open\\n');
const payload = ${payloadOf.toString()};
for (let k = 0; ; ) {
  // Several appends in flight at once, as a busy agent has; a line per append that resolved.
  const flight = [];
  for (let j = 0; j < 8; j++, k++) {
    const kk = k;
    flight.push(spool.append(payload(run, kk), { topic: 't/' + run, qos: kk % 2 }).then((seq) => [kk, seq]));
  }
  for (const [kk, seq] of await Promise.all(flight)) process.stdout.write(kk + ' ' + seq + ' ' + spool.stats().dropped + '\\n');
}
`;
  const MAX_BYTES = 48 * 1024;
  const MAX_FRAME = FRAME + 5 + 1200;

  it('after any kill the records are an in-order, gap-free run of what was appended, less counted drops, each intact', async () => {
    const module = pathToFileURL(await transpileGraph(repo, 'deploy/fleet/spool.ts', path.join(work, 'build'))).href;
    const script = path.join(work, 'build', 'spool-child.mjs');
    await writeFile(script, CHILD);
    const dir = fresh();
    const seedValue = Number(process.env.AIOS_CRASH_SEED ?? Date.now() % 100_000);
    const random = mulberry32(seedValue);
    interface Kept {
      run: number;
      k: number;
      seq: number;
      bytes: number;
    }
    let kept: Kept[] = [];
    let maxSeq = 0;
    let killedMidRun = 0;
    for (let run = 0; run < 24; run++) {
      const fsync = (['interval', 'never', 'always'] as const)[run % 3] ?? 'interval';
      // Most kills land a random time after the spool opened (so a slow machine does not turn them
      // into kills before open); every fourth lands at a random time from the start, often inside open's recovery.
      const duringOpen = run % 4 === 3;
      const delay = duringOpen ? Math.floor(random() * 120) : 2 + Math.floor(random() * 60);
      const label = `run ${run} (${fsync}, killed ${delay} ms after ${duringOpen ? 'start' : 'open'}, AIOS_CRASH_SEED=${seedValue})`;
      const out = await runChild(script, { SPOOL_MODULE: module, SPOOL_DIR: dir, SPOOL_RUN: String(run), SPOOL_MAX_BYTES: String(MAX_BYTES), SPOOL_FSYNC: fsync }, delay, !duringOpen);
      expect(out.signal, `${label}: ${out.stderr}`).toBe('SIGKILL');
      const confirmed = new Map<number, number>();
      let reportedDrops = 0;
      for (const line of out.stdout.split('\n')) {
        const [k, seq, dropped] = line.split(' ').map(Number);
        if (k === undefined || seq === undefined || dropped === undefined || Number.isNaN(dropped)) continue;
        confirmed.set(k, seq);
        reportedDrops = Math.max(reportedDrops, dropped);
      }
      if (confirmed.size > 0 && !duringOpen) killedMidRun += 1;

      const spool = await Spool.open(dir, { maxBytes: MAX_BYTES, warn: quiet });
      const records = await all(spool);
      const stats = spool.stats();
      const now: Kept[] = records.map((r) => {
        const run0 = Buffer.from(r.payload).readUInt32LE(0);
        const k = Buffer.from(r.payload).readUInt32LE(4);
        // Intact: every byte is what the child appended for (run, k), under its topic and qos.
        expect(Buffer.from(r.payload).equals(Buffer.from(payloadOf(run0, k))), `${label}: payload of ${r.seq}`).toBe(true);
        expect([r.topic, r.qos], label).toEqual([`t/${run0}`, k % 2]);
        return { run: run0, k, seq: r.seq, bytes: FRAME + r.topic.length + r.payload.length };
      });
      // In order, numbers strictly increasing and never seen before for new records.
      for (let i = 1; i < now.length; i++) expect((now[i]?.seq ?? 0) > (now[i - 1]?.seq ?? 0), `${label}: seq order`).toBe(true);
      const older = now.filter((r) => r.run < run);
      const mine = now.filter((r) => r.run === run);
      expect(now, `${label}: old records first`).toEqual([...older, ...mine]);
      // The older records are a suffix of what was pending before this run (a prefix may be dropped, nothing else).
      expect(older, label).toEqual(kept.slice(kept.length - older.length));
      // This run's records: k = first..last without a gap; first is 0 unless all older ones were dropped too.
      mine.forEach((r, i) => expect(r.k, `${label}: gap-free`).toBe((mine[0]?.k ?? 0) + i));
      if (older.length > 0) expect(mine[0]?.k ?? 0, label).toBe(0);
      for (const r of mine) {
        expect(r.seq, `${label}: new numbers`).toBeGreaterThan(maxSeq);
        if (confirmed.has(r.k)) expect(r.seq, `${label}: seq the child was given for k ${r.k}`).toBe(confirmed.get(r.k));
      }
      // Every append that resolved before the kill is there, unless dropped for room (only from the front).
      const lastConfirmed = Math.max(-1, ...confirmed.keys());
      const lastKept = mine.length > 0 ? (mine[mine.length - 1]?.k ?? -1) : -1;
      expect(lastKept, `${label}: resolved appends survive`).toBeGreaterThanOrEqual(lastConfirmed);
      // Drops are counted: what is missing from the front is at least what the child reported, and
      // nothing went missing while everything (plus the appends in flight) fitted the budget.
      const all0 = [...kept, ...Array.from({ length: lastKept + 1 }, (_, k) => ({ bytes: FRAME + `t/${run}`.length + payloadOf(run, k).length }))];
      const missing = all0.length - now.length;
      expect(missing, `${label}: drops`).toBeGreaterThanOrEqual(Math.min(reportedDrops, all0.length));
      if (all0.reduce((a, r) => a + r.bytes, 0) + 8 * MAX_FRAME <= MAX_BYTES) expect(missing, `${label}: no drop needed`).toBe(0);
      expect(stats.pendingBytes, label).toBeLessThanOrEqual(MAX_BYTES);
      expect(stats.pendingBytes, label).toBe(now.reduce((a, r) => a + r.bytes, 0));
      // A kill can tear at most the one frame being written, which never belonged to a resolved append.
      expect(stats.corruptDropped, label).toBeLessThanOrEqual(1);
      maxSeq = Math.max(maxSeq, ...now.map((r) => r.seq), ...confirmed.values());

      // The broker acknowledges the older half; that must hold across the next kill.
      const half = now.slice(0, Math.floor(now.length / 2));
      const lastAcked = half[half.length - 1];
      if (lastAcked !== undefined) spool.ack(lastAcked.seq);
      await spool.close();
      kept = now.slice(half.length);
    }
    expect(killedMidRun, 'kills after open land while appending').toBeGreaterThan(12);
  });
});

/** The child's payload for (run, k): run and k first, then bytes that depend on both; 50 to 1199 bytes. Stringified into the child. */
function payloadOf(run: number, k: number): Uint8Array {
  const size = 50 + ((run * 7919 + k * 104729) % 1150);
  const b = new Uint8Array(size);
  for (let i = 8; i < size; i++) b[i] = (run * 31 + k * 17 + i) & 0xff;
  new DataView(b.buffer).setUint32(0, run, true);
  new DataView(b.buffer).setUint32(4, k, true);
  return b;
}

/** Runs the child and SIGKILLs it `killAfterMs` after it starts, or after it prints its first line ("open"). */
function runChild(script: string, env: Record<string, string>, killAfterMs: number, afterOpen: boolean): Promise<{ signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [script], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timer: NodeJS.Timeout | undefined;
    const arm = (): void => {
      timer ??= setTimeout(() => p.kill('SIGKILL'), killAfterMs);
    };
    p.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (afterOpen) arm();
    });
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    if (!afterOpen) arm();
    p.on('error', reject);
    p.on('close', (_code, signal) => {
      clearTimeout(timer);
      resolve({ signal, stdout, stderr });
    });
  });
}
