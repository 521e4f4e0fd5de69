import { Value } from '@sinclair/typebox/value';
import { describe, expect, it } from 'vitest';
import type { AudioFrame, ImageFrame } from '../../../../../../drivers/sensors/types.js';
import { syntheticSource } from '../../../../../../runtime/pipeline/nodes/sources/synthetic.js';
import { sourceContext } from './context.js';

const defaults = (p: Record<string, unknown>) => Value.Default(syntheticSource.params, structuredClone(p)) as Parameters<NonNullable<typeof syntheticSource.check>>[0];

describe('synthetic source', () => {
  it('types `out` by pattern: image, audio or json', async () => {
    expect([syntheticSource.use, syntheticSource.role, syntheticSource.inputs, syntheticSource.outputs]).toEqual(['synthetic', 'source', [], ['out']]);
    expect(await syntheticSource.types?.(defaults({ pattern: 'color-bars', width: 128, height: 128 }), {})).toEqual({ out: { kind: 'image', width: 128, height: 128, format: 'rgb24' } });
    expect(await syntheticSource.types?.(defaults({ pattern: 'noise', format: 'gray8' }), {})).toEqual({ out: { kind: 'image', width: 320, height: 240, format: 'gray8' } });
    expect(await syntheticSource.types?.(defaults({ pattern: 'sine', frameSize: 256 }), {})).toEqual({ out: { kind: 'audio', sampleRate: 16_000, channels: 1, frameSize: 256 } });
    expect(await syntheticSource.types?.(defaults({ pattern: 'json' }), {})).toEqual({ out: { kind: 'json' } });
  });

  it('check: a sine rate that disagrees with sampleRate / frameSize is a problem at params.rate', async () => {
    const check = syntheticSource.check as NonNullable<typeof syntheticSource.check>;
    expect(await check(defaults({ pattern: 'sine', rate: 31.25 }), { baseDir: '.', inputs: {} })).toEqual([]);
    expect(await check(defaults({ pattern: 'sine', rate: 30 }), { baseDir: '.', inputs: {} })).toEqual([
      { path: ['params', 'rate'], message: 'sine frames come at sampleRate / frameSize = 31.25 Hz, not 30: drop rate or change frameSize' },
    ]);
    expect(Value.Check(syntheticSource.params, defaults({ pattern: 'plaid' }))).toBe(false);
  });

  it('emits `count` messages on `out` at the rate, with seq and origin, then returns', async () => {
    const { ctx, recorded } = sourceContext(syntheticSource, { pattern: 'counter', rate: 100, count: 10, width: 4, height: 4, format: 'gray8' }, { baseDir: '.', signal: new AbortController().signal });
    const started = performance.now();
    await syntheticSource.run?.(ctx, undefined);
    expect(performance.now() - started).toBeGreaterThanOrEqual(89);
    expect(recorded.emits.map((e) => [e.port, e.envelope.origin, e.envelope.seq])).toEqual([...Array(10).keys()].map((i) => ['out', 'cam', i]));
    const t = recorded.emits.map((e) => e.envelope.sensorTimeNs);
    expect(t.slice(1).map((v, i) => v - (t[i] as bigint))).toEqual(Array(9).fill(10_000_000n));
    expect(((recorded.emits[9]?.envelope.value as ImageFrame).data[4])).toBe(9);
  });

  it('sine runs at sampleRate / frameSize and stops when the pipeline aborts', async () => {
    const controller = new AbortController();
    const { ctx, recorded } = sourceContext(syntheticSource, { pattern: 'sine', sampleRate: 8000, frameSize: 400 }, {
      baseDir: '.',
      signal: controller.signal,
      onEmit: (_, __, rec) => {
        if (rec.emits.length === 3) controller.abort();
      },
    });
    await syntheticSource.run?.(ctx, undefined);
    expect(recorded.emits).toHaveLength(3);
    expect((recorded.emits[0]?.envelope.value as AudioFrame).samples).toHaveLength(400);
    expect((recorded.emits[2]?.envelope.sensorTimeNs as bigint) - (recorded.emits[0]?.envelope.sensorTimeNs as bigint)).toBe(100_000_000n);
  });
});
