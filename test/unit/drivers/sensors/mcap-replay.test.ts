import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { McapWriter, type IWritable, type McapWriterOptions } from '@mcap/core';
import { afterAll, describe, expect, it } from 'vitest';
import { McapReplay, type McapMessage } from '../../../../drivers/sensors/mcap-replay.js';
import type { SensorMessage } from '../../../../drivers/sensors/types.js';

const DIR = mkdtempSync(path.join(tmpdir(), 'aios-mcap-'));
afterAll(() => rmSync(DIR, { recursive: true, force: true }));
const T0 = 1_700_000_000_000_000_000n;
const utf8 = new TextEncoder();

/** The bytes of an MCAP recording: `count` messages on three topics, `stepNs` apart in log time. */
async function recording(options: Partial<McapWriterOptions> = {}, count = 30, stepNs = 10_000_000n): Promise<Buffer> {
  const out = new MemoryWritable();
  const writer = new McapWriter({ writable: out, chunkSize: 256, ...options });
  await writer.start({ profile: '', library: 'aios-test' });
  const schema = await writer.registerSchema({ name: 'aios.GnssFix', encoding: 'jsonschema', data: utf8.encode('{"type":"object"}') });
  const gnss = await writer.registerChannel({ schemaId: schema, topic: '/gnss', messageEncoding: 'json', metadata: new Map() });
  const can = await writer.registerChannel({ schemaId: 0, topic: '/can', messageEncoding: 'json', metadata: new Map() });
  const raw = await writer.registerChannel({ schemaId: 0, topic: '/raw', messageEncoding: 'protobuf', metadata: new Map() });
  for (let n = 0; n < count; n++) {
    const channelId = [gnss, can, raw][n % 3] ?? gnss;
    const data = channelId === raw ? Uint8Array.from([0x08, n, 0x10, 0xff, 0x7f]) : utf8.encode(JSON.stringify(channelId === gnss ? { n, latitude: 36.7 + n / 1e5 } : { n, id: 0x100 + n }));
    const logTime = T0 + BigInt(n) * stepNs;
    await writer.addMessage({ channelId, sequence: n, logTime, publishTime: logTime, data });
  }
  await writer.end();
  return out.bytes();
}

function save(name: string, bytes: Uint8Array): string {
  const file = path.join(DIR, name);
  writeFileSync(file, bytes);
  return file;
}

async function replayAll(file: string, options: ConstructorParameters<typeof McapReplay>[1] = {}): Promise<{ messages: SensorMessage<McapMessage>[]; error: unknown; replay: McapReplay }> {
  const replay = new McapReplay(file, { speed: 0, ...options });
  const messages: SensorMessage<McapMessage>[] = [];
  let error: unknown;
  try {
    for await (const m of replay.messages(new AbortController().signal)) messages.push(m);
  } catch (e) {
    error = e;
  }
  return { messages, error, replay };
}

const ns = (m: SensorMessage<McapMessage>): number => (m.value.decoded as { n?: number } | undefined)?.n ?? (m.value.data[1] ?? -1);

describe('MCAP replay', () => {
  it('reads an indexed file through its index: every message at its log time, JSON decoded, other encodings as bytes', async () => {
    const { messages, error, replay } = await replayAll(save('indexed.mcap', await recording()));
    expect(error).toBeUndefined();
    expect(replay.stats).toEqual({ reader: 'indexed', messages: 30, decodeErrors: 0, recovered: 0 });
    expect(messages.map(ns)).toEqual(Array.from({ length: 30 }, (_, n) => n));
    expect(messages.map((m) => m.sensorTimeNs)).toEqual(Array.from({ length: 30 }, (_, n) => T0 + BigInt(n) * 10_000_000n));
    expect(messages[0]?.value).toEqual({ topic: '/gnss', schemaName: 'aios.GnssFix', encoding: 'json', data: utf8.encode('{"n":0,"latitude":36.7}'), decoded: { n: 0, latitude: 36.7 } });
    expect(messages[1]?.value).toMatchObject({ topic: '/can', schemaName: '', encoding: 'json', decoded: { n: 1, id: 0x101 } });
    expect(messages[2]?.value).toEqual({ topic: '/raw', schemaName: '', encoding: 'protobuf', data: Uint8Array.from([0x08, 2, 0x10, 0xff, 0x7f]) });
  });

  it('replays only the selected topics', async () => {
    const { messages } = await replayAll(save('topics.mcap', await recording()), { topics: ['/can', '/raw'] });
    expect(messages.map((m) => m.value.topic)).toEqual(Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? '/can' : '/raw')));
  });

  it('keeps the recorded pace: 30 messages 10 ms apart take 290 ms', async () => {
    const file = save('pace.mcap', await recording());
    const start = performance.now();
    const paced = [];
    for await (const m of new McapReplay(file).messages(new AbortController().signal)) paced.push(m);
    expect(paced).toHaveLength(30);
    expect(performance.now() - start).toBeGreaterThanOrEqual(285);
  });

  it('speed 0 does not wait: 30 messages an hour apart replay at once', async () => {
    const file = save('hours.mcap', await recording({}, 30, 3_600_000_000_000n));
    const start = performance.now();
    const { messages } = await replayAll(file);
    expect(messages).toHaveLength(30);
    expect(performance.now() - start).toBeLessThan(5000);
  });

  it('scans a file written without chunks or index', async () => {
    const { messages, error, replay } = await replayAll(save('flat.mcap', await recording({ useChunks: false, useChunkIndex: false, useMessageIndex: false, useStatistics: false, useSummaryOffsets: false, repeatChannels: false, repeatSchemas: false })));
    expect(error).toBeUndefined();
    expect(replay.stats.reader).toBe('stream');
    expect(messages.map(ns)).toEqual(Array.from({ length: 30 }, (_, n) => n));
  });

  it('a recording cut by a crash replays every complete message, inside a cut chunk too, then says it was truncated', async () => {
    const full = await recording();
    // Where each message's payload ends in the file: it is complete when the cut is past that.
    const ends = Array.from({ length: 30 }, (_, n) => payloadEnd(full, n));
    expect(ends.every((e, i) => i === 0 || e > (ends[i - 1] ?? 0))).toBe(true);
    const lastEnd = ends[29] ?? 0;
    for (let cut = 200; cut < lastEnd + 40; cut += 37) {
      const { messages, error, replay } = await replayAll(save(`cut-${cut}.mcap`, full.subarray(0, cut)));
      const complete = ends.filter((e) => e <= cut).length;
      expect([cut, messages.map(ns)]).toEqual([cut, Array.from({ length: complete }, (_, n) => n)]);
      expect(replay.stats.reader).toBe('stream');
      expect(error).toMatchObject({ code: 'EAI_SENSOR_TRUNCATED', retryable: false, message: expect.stringContaining(`replayed the ${complete} complete messages`) as unknown });
    }
    // Some of those came out of the middle of a chunk.
    const { replay } = await replayAll(save('cut-mid.mcap', full.subarray(0, (ends[20] ?? 0) + 3)));
    expect(replay.stats.recovered).toBeGreaterThan(0);
  });

  it('a truncated file written without chunks replays up to its last whole message', async () => {
    const flat = await recording({ useChunks: false, useChunkIndex: false, useMessageIndex: false, useStatistics: false, useSummaryOffsets: false });
    const cut = payloadEnd(flat, 17) + 5;
    const { messages, error } = await replayAll(save('flat-cut.mcap', flat.subarray(0, cut)));
    expect(messages.map(ns)).toEqual(Array.from({ length: 18 }, (_, n) => n));
    expect(error).toMatchObject({ code: 'EAI_SENSOR_TRUNCATED' });
  });

  it('JSON that does not parse goes out as bytes and is counted', async () => {
    const out = new MemoryWritable();
    const writer = new McapWriter({ writable: out });
    await writer.start({ profile: '', library: 'aios-test' });
    const channelId = await writer.registerChannel({ schemaId: 0, topic: '/broken', messageEncoding: 'json', metadata: new Map() });
    await writer.addMessage({ channelId, sequence: 0, logTime: T0, publishTime: T0, data: utf8.encode('{"n": 1') });
    await writer.end();
    const { messages, replay } = await replayAll(save('broken.mcap', out.bytes()));
    expect(messages.map((m) => m.value)).toEqual([{ topic: '/broken', schemaName: '', encoding: 'json', data: utf8.encode('{"n": 1') }]);
    expect(replay.stats.decodeErrors).toBe(1);
  });

  it('compressed chunks need their decompressor: without it EAI_SENSOR_CONFIG names the compression', async () => {
    // A stand-in "compression" that stores the bytes unchanged, so the test needs no codec.
    const file = save('zstd.mcap', await recording({ compressChunk: (data) => ({ compression: 'zstd', compressedData: data }) }));
    const without = await replayAll(file);
    expect(without.messages).toEqual([]);
    expect(without.error).toMatchObject({ code: 'EAI_SENSOR_CONFIG', message: expect.stringContaining('zstd-compressed chunks') as unknown });
    const withHandler = await replayAll(file, { decompressHandlers: { zstd: (data) => data } });
    expect(withHandler.messages).toHaveLength(30);
  });

  it('a missing file and a file that is not MCAP are refused, not retried', async () => {
    expect((await replayAll(path.join(DIR, 'missing.mcap'))).error).toMatchObject({ code: 'EAI_SENSOR_NOT_FOUND', retryable: false });
    const bogus = await replayAll(save('bogus.mcap', utf8.encode('PK\u0003\u0004 a zip file')));
    expect(bogus.error).toMatchObject({ code: 'EAI_SENSOR_CONFIG', retryable: false, message: expect.stringContaining('is not an MCAP file') as unknown });
  });
});

/** End offset of message n's payload in the file (payloads are unique). */
function payloadEnd(file: Buffer, n: number): number {
  const payload = n % 3 === 2 ? Buffer.from([0x08, n, 0x10, 0xff, 0x7f]) : Buffer.from(JSON.stringify(n % 3 === 0 ? { n, latitude: 36.7 + n / 1e5 } : { n, id: 0x100 + n }));
  const at = file.indexOf(payload);
  if (at < 0) throw new Error(`message ${n} not found`);
  return at + payload.length;
}

class MemoryWritable implements IWritable {
  private readonly parts: Uint8Array[] = [];
  private size = 0n;

  async write(buffer: Uint8Array): Promise<void> {
    this.parts.push(buffer.slice());
    this.size += BigInt(buffer.length);
  }

  position(): bigint {
    return this.size;
  }

  bytes(): Buffer {
    return Buffer.concat(this.parts);
  }
}
