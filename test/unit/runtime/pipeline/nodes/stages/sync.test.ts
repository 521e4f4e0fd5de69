import { describe, expect, it } from 'vitest';
import type { Envelope } from '../../../../../../runtime/pipeline/definition.js';
import { PortTypeMismatch } from '../../../../../../runtime/pipeline/definition.js';
import { syncStage, Synchronizer, type Fused, type SyncPort } from '../../../../../../runtime/pipeline/nodes/stages/sync.js';
import { defaults, startStage } from './harness.js';

const MS = 1_000_000n;

/** A stream at `hz` for `seconds`, each sensor time jittered by up to ±`jitterMs`, arriving `latencyMs` later. */
function stream(name: string, hz: number, seconds: number, jitterMs: number, latencyMs: number, seed: number): Envelope[] {
  let s = seed;
  const rand = (): number => {
    s = (s * 1103515245 + 12345) >>> 0;
    return s / 2 ** 32;
  };
  return Array.from({ length: Math.round(hz * seconds) }, (_, i) => {
    const ms = (i * 1000) / hz + (rand() * 2 - 1) * jitterMs;
    return { value: `${name}${i}`, sensorTimeNs: BigInt(Math.round(ms * 1e6)) + 1_000_000_000n, arrivalMs: ms + latencyMs, origin: name, seq: i };
  });
}

/** Both streams in arrival order, as a pipeline would deliver them. */
function interleave(a: readonly Envelope[], b: readonly Envelope[]): [SyncPort, Envelope][] {
  return [...a.map((m) => ['a', m] as [SyncPort, Envelope]), ...b.map((m) => ['b', m] as [SyncPort, Envelope])].sort((x, y) => x[1].arrivalMs - y[1].arrivalMs);
}

/** What `nearest` must produce, by brute force: each reference with its closest partner within tolerance. */
function expected(refs: readonly Envelope[], partners: readonly Envelope[], toleranceMs: number): [string, string][] {
  const out: [string, string][] = [];
  for (const r of refs) {
    let best: Envelope | undefined;
    for (const p of partners) {
      const d = (m: Envelope): bigint => (m.sensorTimeNs > r.sensorTimeNs ? m.sensorTimeNs - r.sensorTimeNs : r.sensorTimeNs - m.sensorTimeNs);
      if (best === undefined || d(p) < d(best) || (d(p) === d(best) && p.sensorTimeNs < best.sensorTimeNs)) best = p;
    }
    if (best !== undefined) {
      const gap = best.sensorTimeNs > r.sensorTimeNs ? best.sensorTimeNs - r.sensorTimeNs : r.sensorTimeNs - best.sensorTimeNs;
      if (gap <= BigInt(toleranceMs) * MS) out.push([r.value as string, best.value as string]);
    }
  }
  return out;
}

function run(sync: Synchronizer, messages: readonly [SyncPort, Envelope][]): Fused[] {
  return messages.flatMap(([port, m]) => sync.push(port, m));
}

describe('Synchronizer, nearest', () => {
  const camera = stream('a', 10, 10, 5, 20, 1); // 10 Hz, ±5 ms jitter, 20 ms late
  const imu = stream('b', 30, 10, 3, 5, 2); // 30 Hz, ±3 ms jitter, 5 ms late

  it('10 Hz reference with a 30 Hz partner: every frame fused with its nearest partner', () => {
    const sync = new Synchronizer({ inputs: ['a', 'b'], tolerance: 20, policy: 'nearest', buffer: 30 });
    const fused = run(sync, interleave(camera, imu));
    const want = expected(camera, imu, 20);
    expect(want).toHaveLength(100); // the partner is at most 16.7 + 8 ms away, always within 20
    expect(fused.map((f) => [f.value.a, f.value.b])).toEqual(want);
    // The reference's envelope carries through.
    expect(fused[3]?.from).toEqual({ sensorTimeNs: camera[3]?.sensorTimeNs, arrivalMs: camera[3]?.arrivalMs, origin: 'a', seq: 3 });
    // Two of three IMU messages are never the nearest: counted as unmatched, nothing else is lost.
    expect(sync.stats().fused).toBe(100);
    expect(sync.stats().unmatched['a']).toBeUndefined();
    expect(sync.stats().unmatched['b']).toBeGreaterThan(190);
  });

  it('30 Hz reference with a 10 Hz partner: frames with no partner within tolerance are dropped and counted', () => {
    const sync = new Synchronizer({ inputs: ['a', 'b'], reference: 'b', tolerance: 10, policy: 'nearest', buffer: 30 });
    const fused = run(sync, interleave(camera, imu));
    // IMU messages after the last camera frame still wait for a later one (the stream ended).
    const last = camera[camera.length - 1]?.sensorTimeNs ?? 0n;
    const waiting = imu.filter((m) => m.sensorTimeNs > last);
    const decided = imu.filter((m) => m.sensorTimeNs <= last);
    const want = expected(decided, camera, 10).map(([b, a]) => [a, b]);
    expect(want.length).toBeGreaterThan(80);
    expect(want.length).toBeLessThan(150);
    expect(fused.map((f) => [f.value.a, f.value.b])).toEqual(want);
    expect(sync.stats().unmatched['b']).toBe(decided.length - want.length);
    expect(waiting.length).toBeGreaterThan(0);
  });

  it('one partner message may serve several references', () => {
    const sync = new Synchronizer({ inputs: ['a', 'b'], reference: 'b', tolerance: 10, policy: 'nearest', buffer: 30 });
    const at = (ms: number, value: string): Envelope => ({ value, sensorTimeNs: BigInt(ms) * MS, arrivalMs: ms, origin: value, seq: 0 });
    sync.push('b', at(95, 'b0'));
    sync.push('b', at(105, 'b1'));
    expect(sync.push('a', at(100, 'a0')).map((f) => f.value)).toEqual([{ b: 'b0', a: 'a0' }]); // b1 still waits: a later a could be nearer
    expect(sync.push('a', at(200, 'a1')).map((f) => f.value)).toEqual([{ b: 'b1', a: 'a0' }]);
  });

  it('a partner that stops: the reference waits within its buffer, then drops the oldest', () => {
    const sync = new Synchronizer({ inputs: ['a', 'b'], tolerance: 20, policy: 'nearest', buffer: 5 });
    const early = imu.filter((m) => m.sensorTimeNs < 3_000_000_000n);
    const fused = run(sync, interleave(camera, early));
    // Camera frames up to 2 s find a partner; the last waits (no imu message after it has come).
    expect(fused).toHaveLength(20);
    // The rest queue up to 5 and the older ones are dropped: 100 - 20 - 5 pending.
    expect(sync.stats().unmatched['a']).toBe(75);
  });

  it('three inputs: a message from each, every partner within tolerance', () => {
    const gps = stream('c', 5, 10, 1, 50, 3); // every other camera frame is ~100 ms from a fix
    const sync = new Synchronizer({ inputs: ['a', 'b', 'c'], tolerance: 60, policy: 'nearest', buffer: 30 });
    const all = [...interleave(camera, imu), ...gps.map((m) => ['c', m] as [SyncPort, Envelope])].sort((x, y) => x[1].arrivalMs - y[1].arrivalMs);
    const fused = all.flatMap(([port, m]) => sync.push(port, m));
    const withB = new Map(expected(camera, imu, 60));
    const withC = new Map(expected(camera, gps, 60));
    const want = camera.filter((m) => withB.has(m.value as string) && withC.has(m.value as string) && m.sensorTimeNs <= (gps[gps.length - 1]?.sensorTimeNs ?? 0n));
    expect(want.length).toBeGreaterThan(45);
    expect(fused.map((f) => f.value)).toEqual(want.map((m) => ({ a: m.value, b: withB.get(m.value as string), c: withC.get(m.value as string) })));
  });
});

describe('Synchronizer, latest', () => {
  it('emits at once with the newest partner not later than the reference time plus tolerance', () => {
    const sync = new Synchronizer({ inputs: ['a', 'b'], tolerance: 50, policy: 'latest', buffer: 10 });
    const at = (ms: number, value: string): Envelope => ({ value, sensorTimeNs: BigInt(ms) * MS, arrivalMs: ms, origin: value, seq: 0 });
    expect(sync.push('b', at(0, 'b0'))).toEqual([]);
    expect(sync.push('b', at(30, 'b1'))).toEqual([]);
    expect(sync.push('a', at(40, 'a0')).map((f) => f.value)).toEqual([{ a: 'a0', b: 'b1' }]);
    expect(sync.push('a', at(70, 'a1')).map((f) => f.value)).toEqual([{ a: 'a1', b: 'b1' }]);
    // 200 ms: b1 is 170 ms old, beyond tolerance.
    expect(sync.push('a', at(200, 'a2'))).toEqual([]);
    expect(sync.stats()).toEqual({ fused: 2, unmatched: { a: 1, b: 1 } });
  });
});

describe('sync stage', () => {
  const any = { kind: 'any' } as const;

  it('types: the listed ports must be fed, and only those', () => {
    const p = defaults(syncStage, { inputs: ['a', 'c'] });
    expect(syncStage.types?.(p, { a: any, c: any })).toEqual({ out: { kind: 'any' } });
    expect(() => syncStage.types?.(p, { a: any })).toThrow(PortTypeMismatch);
    expect(() => syncStage.types?.(p, { a: any, b: any, c: any })).toThrow(/not listed/);
  });

  it('check: the reference must be an input', async () => {
    expect(await syncStage.check?.(defaults(syncStage, { reference: 'd' }), { baseDir: '.', inputs: {} })).toEqual([{ path: ['params', 'reference'], message: expect.stringContaining("'d' is not one of the inputs") }]);
  });

  it('emits fused values with the reference times, and warns when it drops', async () => {
    const s = await startStage(syncStage, { tolerance: 10 });
    await s.send('imu0', { sensorTimeNs: 95n * MS }, 'b');
    await s.send('cam0', { sensorTimeNs: 100n * MS, origin: 'camera', seq: 7 }, 'a');
    await s.send('imu1', { sensorTimeNs: 105n * MS }, 'b');
    expect(s.emitted.map((e) => [e.port, e.value, e.from.sensorTimeNs, e.from.origin, e.from.seq])).toEqual([['out', { a: 'cam0', b: 'imu0' }, 100n * MS, 'camera', 7]]);
    await s.send('cam1', { sensorTimeNs: 200n * MS }, 'a');
    await s.send('imu2', { sensorTimeNs: 300n * MS }, 'b');
    expect(s.emitted).toHaveLength(1);
    expect(s.warnings).toEqual([expect.stringContaining('1 reference messages dropped so far')]);
  });
});
