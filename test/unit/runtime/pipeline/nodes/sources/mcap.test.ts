import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { McapWriter, type IWritable } from '@mcap/core';
import { Value } from '@sinclair/typebox/value';
import { afterAll, describe, expect, it } from 'vitest';
import type { McapMessage } from '../../../../../../drivers/sensors/mcap-replay.js';
import { mcapSource } from '../../../../../../runtime/pipeline/nodes/sources/mcap.js';
import { sourceContext } from './context.js';

const DIR = mkdtempSync(path.join(tmpdir(), 'aios-mcap-node-'));
afterAll(() => rmSync(DIR, { recursive: true, force: true }));
const defaults = (p: Record<string, unknown>) => Value.Default(mcapSource.params, structuredClone(p)) as Parameters<NonNullable<typeof mcapSource.check>>[0];

describe('mcap source', () => {
  it('is a source with one json output; topics default to all', async () => {
    expect([mcapSource.use, mcapSource.role, mcapSource.inputs, mcapSource.outputs]).toEqual(['mcap', 'source', [], ['messages']]);
    expect(await mcapSource.types?.(defaults({ file: 'x.mcap' }), {})).toEqual({ messages: { kind: 'json' } });
    expect(defaults({ file: 'x.mcap' })).toMatchObject({ topics: [], realtime: true });
    expect(Value.Check(mcapSource.params, defaults({}))).toBe(false);
  });

  it('check: the recording must exist and be MCAP', async () => {
    await writeRecording('good.mcap');
    writeFileSync(path.join(DIR, 'notes.mcap'), 'not really');
    const check = mcapSource.check as NonNullable<typeof mcapSource.check>;
    const env = { baseDir: DIR, inputs: {} };
    expect(await check(defaults({ file: 'good.mcap' }), env)).toEqual([]);
    expect(await check(defaults({ file: 'gone.mcap' }), env)).toEqual([{ path: ['params', 'file'], message: expect.stringMatching(/^MCAP recording .*gone\.mcap does not exist/u) as unknown }]);
    expect(await check(defaults({ file: 'notes.mcap' }), env)).toEqual([{ path: ['params', 'file'], message: `${path.join(DIR, 'notes.mcap')} is not an MCAP file (no MCAP magic at its start)` }]);
  });

  it('replays the selected topics on `messages` with their log times', async () => {
    await writeRecording('topics.mcap');
    const { ctx, recorded } = sourceContext(mcapSource, { file: 'topics.mcap', topics: ['/b'], realtime: false }, { baseDir: DIR, signal: new AbortController().signal });
    await mcapSource.run?.(ctx, undefined);
    expect(recorded.emits.map((e) => [e.port, e.envelope.sensorTimeNs, e.envelope.seq, (e.envelope.value as McapMessage).decoded])).toEqual([
      ['messages', 1_000_000_001n, 0, { i: 1 }],
      ['messages', 1_000_000_003n, 1, { i: 3 }],
    ]);
    expect(recorded.warnings).toEqual([]);
  });

  it('a recording cut by a crash: the complete messages, one warning, a normal end (not restarted)', async () => {
    const bytes = await writeRecording('full.mcap');
    const cut = bytes.indexOf(Buffer.from('{"i":3}')) + 3;
    writeFileSync(path.join(DIR, 'cut.mcap'), bytes.subarray(0, cut));
    const { ctx, recorded } = sourceContext(mcapSource, { file: 'cut.mcap', realtime: false }, { baseDir: DIR, signal: new AbortController().signal });
    await expect(mcapSource.run?.(ctx, undefined)).resolves.toBeUndefined();
    expect(recorded.emits.map((e) => (e.envelope.value as McapMessage).decoded)).toEqual([{ i: 0 }, { i: 1 }, { i: 2 }]);
    expect(recorded.warnings.map((w) => w.message)).toEqual([expect.stringMatching(/^EAI_SENSOR_TRUNCATED: MCAP recording .*cut\.mcap ends in the middle of a record .*replayed the 3 complete messages/u)]);
  });
});

/** Four JSON messages alternating between /a and /b, 1 ns apart. */
async function writeRecording(name: string): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  let size = 0n;
  const writable: IWritable = {
    write: async (buffer) => {
      parts.push(buffer.slice());
      size += BigInt(buffer.length);
    },
    position: () => size,
  };
  const writer = new McapWriter({ writable });
  await writer.start({ profile: '', library: 'aios-test' });
  const a = await writer.registerChannel({ schemaId: 0, topic: '/a', messageEncoding: 'json', metadata: new Map() });
  const b = await writer.registerChannel({ schemaId: 0, topic: '/b', messageEncoding: 'json', metadata: new Map() });
  for (let i = 0; i < 4; i++) await writer.addMessage({ channelId: i % 2 === 0 ? a : b, sequence: i, logTime: 1_000_000_000n + BigInt(i), publishTime: 1_000_000_000n + BigInt(i), data: new TextEncoder().encode(JSON.stringify({ i })) });
  await writer.end();
  const bytes = Buffer.concat(parts);
  writeFileSync(path.join(DIR, name), bytes);
  return bytes;
}
