import { Value } from '@sinclair/typebox/value';
import { describe, expect, it } from 'vitest';
import { filterStage, matches, type Predicate } from '../../../../../../runtime/pipeline/nodes/stages/filter.js';
import { RateLimiter, throttleStage } from '../../../../../../runtime/pipeline/nodes/stages/throttle.js';
import { defaults, startStage } from './harness.js';

const MS = 1_000_000n;

describe('RateLimiter / throttle', () => {
  /** Sensor times of a `hz` stream over `seconds` with ±`jitterMs` jitter, in ns. */
  function times(hz: number, seconds: number, jitterMs: number, seed = 9): bigint[] {
    let s = seed;
    return Array.from({ length: Math.round(hz * seconds) }, (_, i) => {
      s = (s * 1103515245 + 12345) >>> 0;
      return BigInt(Math.round(((i * 1000) / hz + ((s / 2 ** 32) * 2 - 1) * jitterMs) * 1e6)) + 5_000_000_000n;
    });
  }

  it('30 Hz with ±3 ms jitter to 10 Hz: every third frame, evenly', () => {
    const limiter = new RateLimiter(10);
    const input = times(30, 10, 3);
    const passed = input.filter((t) => limiter.admit(t));
    expect(passed).toHaveLength(100);
    expect(input.map((t, i) => (passed.includes(t) ? i : -1)).filter((i) => i >= 0)).toEqual(Array.from({ length: 100 }, (_, k) => 3 * k));
    const gaps = passed.slice(1).map((t, i) => Number(t - (passed[i] as bigint)) / 1e6);
    expect(Math.min(...gaps)).toBeGreaterThan(90);
    expect(Math.max(...gaps)).toBeLessThan(110);
    expect([limiter.passed, limiter.dropped]).toEqual([100, 200]);
  });

  it('never exceeds the rate on average, for rates that do not divide the input rate', () => {
    const limiter = new RateLimiter(7);
    const passed = times(30, 20, 3).filter((t) => limiter.admit(t));
    expect(passed.length).toBeLessThanOrEqual(7 * 20 + 1);
    expect(passed.length).toBeGreaterThanOrEqual(7 * 20 - 2);
    const gaps = passed.slice(1).map((t, i) => Number(t - (passed[i] as bigint)) / 1e6);
    expect(Math.min(...gaps)).toBeGreaterThan(1000 / 7 - 1000 / 7 / 4 - 6);
  });

  it('passes everything slower than the rate; restarts after a gap or when time goes back', () => {
    const limiter = new RateLimiter(10);
    expect([0n, 200n, 400n].map((ms) => limiter.admit(ms * MS))).toEqual([true, true, true]);
    expect(limiter.admit(450n * MS)).toBe(false);
    expect(limiter.admit(10_000n * MS)).toBe(true); // a gap: new grid
    expect(limiter.admit(10_050n * MS)).toBe(false);
    expect(limiter.admit(1_000n * MS)).toBe(true); // a sensor restart
  });

  it('the stage passes values through with their envelopes; its type is the input type', async () => {
    const image = { kind: 'image', width: 640, height: 480, format: 'rgb24' } as const;
    expect(throttleStage.types?.(defaults(throttleStage, { rate: 5 }), { in: image })).toEqual({ out: image });
    const s = await startStage(throttleStage, { rate: 5 });
    for (const ms of [0n, 100n, 200n, 300n, 400n]) await s.send(`f${ms}`, { sensorTimeNs: ms * MS });
    expect(s.emitted.map((e) => [e.value, e.from.sensorTimeNs])).toEqual([['f0', 0n], ['f200', 200n * MS], ['f400', 400n * MS]]);
  });
});

describe('filter', () => {
  const detections = { boxes: [{ label: 'person', score: 0.9 }, { label: 'dog', score: 0.4 }], imageWidth: 300, imageHeight: 300 };

  it.each<[string, Predicate, boolean]>([
    ['count > 0', { field: 'boxes.length', op: '>', value: 0 }, true],
    ['count > 2', { field: 'boxes.length', op: '>', value: 2 }, false],
    ['some person', { field: 'boxes', some: { field: 'label', op: '==', value: 'person' } }, true],
    ['some cat', { field: 'boxes', some: { field: 'label', op: '==', value: 'cat' } }, false],
    ['every score > 0.3', { field: 'boxes', every: { field: 'score', op: '>', value: 0.3 } }, true],
    ['first label in list', { field: 'boxes.0.label', op: 'in', value: ['car', 'person'] }, true],
    ['all', { all: [{ field: 'imageWidth', op: '>=', value: 300 }, { field: 'imageHeight', op: '<', value: 300 }] }, false],
    ['any', { any: [{ field: 'imageWidth', op: '==', value: 1 }, { field: 'imageHeight', op: '!=', value: 1 }] }, true],
    ['not', { not: { field: 'boxes.length', op: '==', value: 0 } }, true],
    ['exists', { field: 'imageWidth', op: 'exists' }, true],
    ['missing field', { field: 'boxes.5.label', op: '!=', value: 'x' }, false],
    ['number vs string never orders', { field: 'imageWidth', op: '>', value: '1' }, false],
    ['no prototype walking', { field: 'boxes.constructor', op: 'exists' }, false],
  ])('%s', (_name, predicate, want) => {
    expect(matches(predicate, detections)).toBe(want);
  });

  it('on plain values: the empty field is the value itself', () => {
    expect(matches({ field: '', op: '>', value: 0.5 }, 0.7)).toBe(true);
    expect(matches({ field: 'score', op: '>', value: 0.5 }, { score: 0.7 })).toBe(true);
    expect(matches({ field: 'score', op: '>', value: 0.5 }, null)).toBe(false);
  });

  it('params are data checked by the schema (recursive, no code)', () => {
    expect(Value.Check(filterStage.params, { where: { all: [{ field: 'a', op: '>', value: 1 }, { not: { field: 'b', op: 'exists' } }] } })).toBe(true);
    expect(Value.Check(filterStage.params, { where: { field: 'a', op: '=~', value: 1 } })).toBe(false);
    expect(Value.Check(filterStage.params, { where: 'score > 0.5' })).toBe(false);
  });

  it('the stage passes matching messages only', async () => {
    const s = await startStage(filterStage, { where: { field: 'boxes.length', op: '>', value: 0 } });
    await s.send(detections);
    await s.send({ ...detections, boxes: [] });
    expect(s.emitted.map((e) => e.value)).toEqual([detections]);
  });
});
