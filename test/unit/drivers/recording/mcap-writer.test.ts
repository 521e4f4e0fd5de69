import { spawn } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { existsSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FileWritable } from '../../../../drivers/recording/file-writable.js';
import { McapWriter } from '@mcap/core';
import { McapRecorder, type RecordedMessage } from '../../../../drivers/recording/mcap-writer.js';
import { RecordingError } from '../../../../drivers/recording/recording-error.js';
import { json, readIndexed, readStream, walkRecords } from './read-mcap.js';
import { until } from '../../../support/wait.js';

const T0 = 1_700_000_000_000_000_000n;
const SCHEMA = { name: 'test.Count', encoding: 'jsonschema', data: '{"type":"object","properties":{"i":{"type":"integer"}}}' };

function message(i: number, over: Partial<RecordedMessage> = {}): RecordedMessage {
  return {
    topic: '/count',
    schema: SCHEMA,
    messageEncoding: 'json',
    data: new TextEncoder().encode(JSON.stringify({ i })),
    logTimeNs: T0 + BigInt(i) * 10_000_000n,
    publishTimeNs: T0 + BigInt(i) * 10_000_000n + 5_000n,
    ...over,
  };
}

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'aios-mcap-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('McapRecorder', () => {
  it('writes a complete, indexed file: topics, schemas, times, sequences, statistics', async () => {
    const file = path.join(dir, 'run.mcap');
    const rec = await McapRecorder.open({ path: file, chunkSize: 2048 });
    for (let i = 0; i < 200; i++) {
      await rec.write(message(i));
      if (i % 4 === 0) await rec.write(message(i, { topic: '/note', schema: null, data: new TextEncoder().encode(JSON.stringify({ note: `n${i}` })), sequence: 1000 + i }));
    }
    await rec.close();

    const { reader, messages } = await readIndexed(file);
    expect(messages).toHaveLength(250);
    const counts = messages.filter((m) => m.topic === '/count');
    expect(counts.map((m) => (json(m) as { i: number }).i)).toEqual([...Array(200).keys()]);
    expect(counts.map((m) => m.sequence)).toEqual([...Array(200).keys()]);
    expect(counts[7]?.logTime).toBe(T0 + 70_000_000n);
    expect(counts[7]?.publishTime).toBe(T0 + 70_005_000n);
    expect(counts[0]?.schemaName).toBe('test.Count');
    const notes = messages.filter((m) => m.topic === '/note');
    expect(notes).toHaveLength(50);
    expect(notes[1]?.sequence).toBe(1004);
    expect(notes[1]?.schemaName).toBeUndefined();
    expect(json(notes[1]!)).toEqual({ note: 'n4' });

    const schemas = [...reader.schemasById.values()];
    expect(schemas.map((s) => [s.name, s.encoding, new TextDecoder().decode(s.data)])).toEqual([[SCHEMA.name, SCHEMA.encoding, SCHEMA.data]]);
    expect([...reader.channelsById.values()].map((c) => [c.topic, c.messageEncoding, c.schemaId]).sort()).toEqual([['/count', 'json', 1], ['/note', 'json', 0]]);
    expect(reader.statistics?.messageCount).toBe(250n);
    expect(reader.statistics?.messageStartTime).toBe(T0);
    expect(reader.statistics?.messageEndTime).toBe(T0 + 199n * 10_000_000n);
    expect(reader.chunkIndexes.length).toBeGreaterThan(3);
    expect(reader.header.library).toBe('aios');
    expect(rec.files).toEqual([{ path: file, messages: 250n, bytes: expect.any(BigInt) as bigint, chunks: reader.chunkIndexes.length }]);

    // Summary offsets point at the first record of their group.
    const bytes = await readFile(file);
    expect([...reader.summaryOffsetsByOpcode.keys()].sort((a, b) => a - b)).toEqual([0x03, 0x04, 0x08, 0x0b]);
    for (const [opcode, offset] of reader.summaryOffsetsByOpcode) expect(bytes[Number(offset.groupStart)]).toBe(opcode);

    // Checked a second way, by walking the records per the specification.
    const walk = walkRecords(bytes);
    expect(walk).toMatchObject({ dataCrcOk: true, summaryCrcOk: true, chunkCrcsOk: true });
    expect(walk.opcodes[0]).toBe(0x01); // Header
    expect(walk.opcodes.filter((op) => op === 0x06)).toHaveLength(reader.chunkIndexes.length);
    expect(walk.opcodes.slice(-1)).toEqual([0x02]); // Footer last
  });

  it("writes byte for byte what @mcap/core's own McapWriter writes for the same messages", async () => {
    const file = path.join(dir, 'same.mcap');
    const rec = await McapRecorder.open({ path: file, chunkSize: 3000, chunkDurationMs: 3_600_000 });
    const chunks: Uint8Array[] = [];
    let size = 0n;
    const reference = new McapWriter({
      chunkSize: 3000,
      writable: {
        write: async (b: Uint8Array) => {
          chunks.push(b.slice());
          size += BigInt(b.byteLength);
        },
        position: () => size,
      },
    });
    await reference.start({ profile: '', library: 'aios' });
    const schemaId = await reference.registerSchema({ name: SCHEMA.name, encoding: SCHEMA.encoding, data: new TextEncoder().encode(SCHEMA.data) });
    const counts = await reference.registerChannel({ topic: '/count', schemaId, messageEncoding: 'json', metadata: new Map() });
    const notes = await reference.registerChannel({ topic: '/note', schemaId: 0, messageEncoding: 'json', metadata: new Map() });
    for (let i = 0; i < 100; i++) {
      const m = message(i, { sequence: i });
      await rec.write(m);
      await reference.addMessage({ channelId: counts, sequence: i, logTime: m.logTimeNs, publishTime: m.publishTimeNs, data: m.data });
      if (i % 7 === 0) {
        const n = message(i, { topic: '/note', schema: null, sequence: i });
        await rec.write(n);
        await reference.addMessage({ channelId: notes, sequence: i, logTime: n.logTimeNs, publishTime: n.publishTimeNs, data: n.data });
      }
    }
    await rec.close();
    await reference.end();
    expect(Buffer.compare(await readFile(file), Buffer.concat(chunks))).toBe(0);
  });

  it('rotates by size: every file complete, none past the limit by more than one message, nothing lost', async () => {
    const rec = await McapRecorder.open({ path: path.join(dir, 'rec-{index}.mcap'), maxFileBytes: 8_000, chunkSize: 1_500 });
    const pad = 'x'.repeat(400);
    for (let i = 0; i < 100; i++) await rec.write(message(i, { data: new TextEncoder().encode(JSON.stringify({ i, pad })) }));
    await rec.close();

    const names = (await readdir(dir)).sort();
    expect(names.length).toBeGreaterThanOrEqual(5);
    expect(names[0]).toBe('rec-0000.mcap');
    expect(rec.files.map((f) => path.basename(f.path))).toEqual(names);
    const all: number[] = [];
    for (const name of names) {
      const { reader, messages } = await readIndexed(path.join(dir, name));
      expect(reader.dataEndOffset).toBeLessThanOrEqual(8_000 + 450);
      expect(reader.statistics?.messageCount).toBe(BigInt(messages.length));
      all.push(...messages.map((m) => m.sequence));
    }
    expect(all).toEqual([...Array(100).keys()]);
  });

  it('rotates by duration on the injected clock and names files by {time}', async () => {
    let now = Date.UTC(2024, 0, 31, 12, 0, 0, 0);
    const rec = await McapRecorder.open({ path: path.join(dir, 'drive-{time}.mcap'), maxFileDurationMs: 60_000, now: () => now });
    for (let i = 0; i < 30; i++) {
      await rec.write(message(i));
      now += 5_000; // 12 messages a minute
    }
    await rec.close();
    expect(rec.files.map((f) => [path.basename(f.path), f.messages])).toEqual([
      ['drive-20240131T120000.000Z.mcap', 12n],
      ['drive-20240131T120100.000Z.mcap', 12n],
      ['drive-20240131T120200.000Z.mcap', 6n],
    ]);
    const third = await readIndexed(path.join(dir, 'drive-20240131T120200.000Z.mcap'));
    expect(third.messages.map((m) => m.sequence)).toEqual([24, 25, 26, 27, 28, 29]);
  });

  it('adds _{index} when rotating without a placeholder, and skips numbers already taken', async () => {
    await writeFile(path.join(dir, 'log_0000.mcap'), 'earlier run');
    const rec = await McapRecorder.open({ path: path.join(dir, 'log.mcap'), maxFileBytes: 1_000 });
    for (let i = 0; i < 30; i++) await rec.write(message(i, { data: new TextEncoder().encode(JSON.stringify({ i, pad: 'y'.repeat(100) })) }));
    await rec.close();
    expect(await readFile(path.join(dir, 'log_0000.mcap'), 'utf8')).toBe('earlier run');
    expect(path.basename(rec.files[0]?.path ?? '')).toBe('log_0001.mcap');
  });

  it('refuses to overwrite a recording, and rejects unknown placeholders and bad sizes', async () => {
    const file = path.join(dir, 'a.mcap');
    await writeFile(file, 'keep me');
    await expect(McapRecorder.open({ path: file })).rejects.toMatchObject({ code: 'EAI_RECORDING_EXISTS' });
    expect(await readFile(file, 'utf8')).toBe('keep me');
    await expect(McapRecorder.open({ path: path.join(dir, '{date}.mcap') })).rejects.toMatchObject({ code: 'EAI_RECORDING_PATH', message: expect.stringContaining('{date}') as string });
    await expect(McapRecorder.open({ path: path.join(dir, 'b.mcap'), chunkSize: 0 })).rejects.toBeInstanceOf(RecordingError);
    const over = await McapRecorder.open({ path: file, overwrite: true });
    await over.close();
    expect((await readIndexed(file)).messages).toEqual([]);
  });

  it('reports a file it cannot create with EAI_RECORDING_OPEN', async () => {
    await writeFile(path.join(dir, 'not-a-folder'), '');
    await expect(McapRecorder.open({ path: path.join(dir, 'not-a-folder', 'x.mcap') })).rejects.toMatchObject({ code: 'EAI_RECORDING_OPEN' });
  });

  it.skipIf(!existsSync('/dev/full'))('reports a full disk with EAI_RECORDING_WRITE', async () => {
    // /dev/full fails every write with ENOSPC, as a full disk does.
    await expect(McapRecorder.open({ path: '/dev/full', overwrite: true })).rejects.toMatchObject({ code: 'EAI_RECORDING_WRITE', details: { errno: 'ENOSPC' } });
  });

  it('after a failed write rejects every later write with the same error, and close() only releases the file', async () => {
    const rec = await McapRecorder.open({ path: path.join(dir, 'fail.mcap'), chunkSize: 1024 });
    const real = FileWritable.prototype.write;
    const failure = new RecordingError('EAI_RECORDING_WRITE', 'disk gone');
    const spy = vi.spyOn(FileWritable.prototype, 'write').mockImplementation(async function (this: FileWritable, bytes: Uint8Array) {
      if (bytes.byteLength > 100) throw failure;
      return real.call(this, bytes);
    });
    try {
      let first: unknown;
      for (let i = 0; i < 50 && first === undefined; i++) await rec.write(message(i)).catch((err: unknown) => (first = err));
      expect(first).toBe(failure);
      await expect(rec.write(message(99))).rejects.toBe(failure);
      await rec.close();
      expect(rec.files).toEqual([]);
    } finally {
      spy.mockRestore();
    }
  });

  it('rejects writes after close', async () => {
    const rec = await McapRecorder.open({ path: path.join(dir, 'c.mcap') });
    await rec.close();
    await rec.close();
    await expect(rec.write(message(0))).rejects.toMatchObject({ code: 'EAI_RECORDING_CLOSED' });
  });
});

describe('McapRecorder crash safety', () => {
  it('a file copied mid-recording (what SIGKILL leaves) holds every message of the closed chunks', async () => {
    const file = path.join(dir, 'live.mcap');
    const rec = await McapRecorder.open({ path: file, chunkSize: 4096, chunkDurationMs: 60_000, fsyncIntervalMs: null });
    for (let i = 0; i < 120; i++) await rec.write(message(i));
    await rec.flush();
    for (let i = 120; i < 125; i++) await rec.write(message(i)); // still in the open chunk

    const { messages, complete } = readStream(await readFile(file));
    expect(complete).toBe(false);
    expect(messages.map((m) => m.sequence)).toEqual([...Array(120).keys()]);
    expect(messages[0]?.schemaName).toBe('test.Count');
    await rec.close();
    expect((await readIndexed(file)).messages).toHaveLength(125);
  });

  it('closes an idle chunk after chunkDurationMs, without another write', async () => {
    const file = path.join(dir, 'idle.mcap');
    const rec = await McapRecorder.open({ path: file, chunkDurationMs: 200 });
    for (let i = 0; i < 3; i++) await rec.write(message(i));
    expect(readStream(await readFile(file)).messages).toHaveLength(0);
    await until(async () => readStream(await readFile(file)).messages.length > 0);
    expect(readStream(await readFile(file)).messages.map((m) => m.sequence)).toEqual([0, 1, 2]);
    await rec.close();
  });

  it('a SIGKILLed recorder process leaves a file readable up to its last flushed chunk', async () => {
    const file = path.join(dir, 'killed.mcap');
    const child = startChild(file, 'flush');
    const durable = await child.until((line) => /^durable (\d+)$/u.exec(line)?.[1], (n) => Number(n) >= 60);
    child.proc.kill('SIGKILL');
    await child.exited;
    const { messages, complete } = readStream(await readFile(file));
    expect(complete).toBe(false);
    expect(messages.length).toBeGreaterThanOrEqual(Number(durable));
    expect(messages.map((m) => (json(m) as { i: number }).i)).toEqual([...Array(messages.length).keys()]);
  });

  it('a SIGKILLed process that went idle still has its last messages: the timer closed the chunk', async () => {
    const file = path.join(dir, 'idle-killed.mcap');
    const child = startChild(file, 'idle');
    await child.until((line) => (line === 'written 25' ? line : undefined), () => true);
    // The child writes nothing more: only its chunk timer can put the messages on disk.
    await until(async () => readStream(await readFile(file)).messages.length === 25);
    child.proc.kill('SIGKILL');
    await child.exited;
    expect(readStream(await readFile(file)).messages).toHaveLength(25);
  });

  it('SIGTERM handled with close() leaves a complete, indexed file', async () => {
    const file = path.join(dir, 'term.mcap');
    const child = startChild(file, 'term');
    await child.until((line) => (line === 'ready' ? line : undefined), () => true);
    await new Promise((r) => setTimeout(r, 300));
    child.proc.kill('SIGTERM');
    const closed = await child.until((line) => /^closed (\d+)$/u.exec(line)?.[1], () => true);
    expect(await child.exited).toBe(0);
    const { reader, messages } = await readIndexed(file);
    expect(messages).toHaveLength(Number(closed));
    expect(messages.length).toBeGreaterThan(10);
    expect(reader.statistics?.messageCount).toBe(BigInt(closed));
  });
});

/** Runs child/record.mjs under node with the TypeScript hooks; lines of its stdout on demand. */
function startChild(file: string, mode: string) {
  const childDir = path.join(import.meta.dirname, 'child');
  const proc = spawn(process.execPath, ['--import', './register-ts.mjs', 'record.mjs', file, mode], { cwd: childDir, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const lines: string[] = [];
  const waiters: (() => void)[] = [];
  let buffered = '';
  proc.stdout.on('data', (d: Buffer) => {
    buffered += d.toString();
    const parts = buffered.split('\n');
    buffered = parts.pop() ?? '';
    lines.push(...parts);
    waiters.splice(0).forEach((w) => w());
  });
  /** Resolves with the first line `pick` maps to a value that `ok` accepts. */
  const until = (pick: (line: string) => string | undefined, ok: (value: string) => boolean): Promise<string> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`child never printed the expected line; stdout: ${lines.join(' | ')}; stderr: ${stderr}`)), 20_000);
      const check = (): void => {
        for (const line of lines) {
          const v = pick(line);
          if (v !== undefined && ok(v)) {
            clearTimeout(timer);
            resolve(v);
            return;
          }
        }
        waiters.push(check);
      };
      void exited.then(() => setTimeout(check, 0));
      check();
    });
  return { proc, exited, until };
}
