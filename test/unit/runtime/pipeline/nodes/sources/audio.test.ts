import path from 'node:path';
import { Value } from '@sinclair/typebox/value';
import { describe, expect, it } from 'vitest';
import type { AudioFrame } from '../../../../../../drivers/sensors/types.js';
import { audioSource } from '../../../../../../runtime/pipeline/nodes/sources/audio.js';
import { FFMPEG } from '../../../../drivers/sensors/processes.js';
import { sourceContext } from './context.js';

const FIXTURES = path.resolve(import.meta.dirname, '../../../../../fixtures');
const RAW = { url: 'audio/goforward.raw', inputOptions: ['-f', 's16le', '-ar', '16000', '-ac', '1'] };
const defaults = (p: Record<string, unknown>) => Value.Default(audioSource.params, structuredClone(p)) as Parameters<NonNullable<typeof audioSource.check>>[0];

describe('audio source: definition', () => {
  it('outputs audio of the configured rate, channels and frame size', async () => {
    expect([audioSource.use, audioSource.role, audioSource.inputs, audioSource.outputs]).toEqual(['audio', 'source', [], ['audio']]);
    expect(await audioSource.types?.(defaults(RAW), {})).toEqual({ audio: { kind: 'audio', sampleRate: 16_000, channels: 1, frameSize: 512 } });
    expect(await audioSource.types?.(defaults({ ...RAW, sampleRate: 48_000, channels: 2, frameSize: 480 }), {})).toEqual({ audio: { kind: 'audio', sampleRate: 48_000, channels: 2, frameSize: 480 } });
  });

  it('check: a missing file is a problem at params.url; devices are not checked', async () => {
    const check = audioSource.check as NonNullable<typeof audioSource.check>;
    expect(await check(defaults(RAW), { baseDir: FIXTURES, inputs: {} })).toEqual([]);
    expect((await check(defaults({ url: 'audio/nope.wav' }), { baseDir: FIXTURES, inputs: {} })).map((p) => p.path)).toEqual([['params', 'url']]);
    expect(await check(defaults({ url: 'alsa:hw:0' }), { baseDir: FIXTURES, inputs: {} })).toEqual([]);
  });
});

describe.skipIf(FFMPEG === undefined)('audio source: run (ffmpeg)', () => {
  it('emits fixed-size frames of the speech file on `audio`, then returns at its end', async () => {
    const lengths: number[] = [];
    const { ctx, recorded } = sourceContext(audioSource, { ...RAW, realtime: false }, {
      baseDir: FIXTURES,
      signal: new AbortController().signal,
      onEmit: (_, e) => lengths.push((e.value as AudioFrame).samples.length),
    });
    await audioSource.run?.(ctx, undefined);
    expect(recorded.warnings).toEqual([]);
    expect(recorded.emits).toHaveLength(88);
    expect(new Set(recorded.emits.map((e) => e.port))).toEqual(new Set(['audio']));
    expect(lengths).toEqual(Array(88).fill(512));
    expect(recorded.emits.map((e) => e.envelope.seq)).toEqual([...Array(88).keys()]);
    const t = recorded.emits.map((e) => e.envelope.sensorTimeNs);
    expect((t[87] as bigint) - (t[0] as bigint)).toBe(87n * 32_000_000n);
  });
});
