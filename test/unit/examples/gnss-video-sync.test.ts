import { readFileSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import type { GnssFix } from '../../../drivers/sensors/types.js';
import type { Envelope } from '../../../runtime/pipeline/definition.js';
import { Pipeline } from '../../../runtime/pipeline/pipeline.js';
import { until } from '../../support/wait.js';

const repo = path.resolve(import.meta.dirname, '../../..');
const example = path.join(repo, 'examples/pipelines/gnss-video-sync.yaml');
const output = path.join(repo, 'out/gnss-video-sync.jsonl');
const RECORDING = path.join(repo, 'test/fixtures/gnss/test_rtk_path_GPS_RTK_FRONT_L.txt');
const MS = 1_000_000n;

/** The recording's rows: recorded time (ns) and position in degrees, as MRPT exported them (radians). */
const ROWS = readFileSync(RECORDING, 'utf8')
  .split('\n')
  .filter((l) => l.trim() !== '' && !l.startsWith('%'))
  .map((l) => {
    const [time = '', lat = '', lon = ''] = l.trim().split(/\s+/u);
    const [s = '0', frac = ''] = time.split('.');
    return { ns: BigInt(s) * 1_000_000_000n + BigInt(frac.padEnd(9, '0')), latitude: (Number(lat) * 180) / Math.PI, longitude: (Number(lon) * 180) / Math.PI };
  });

interface Line {
  readonly time: string;
  readonly origin: string;
  readonly seq: number;
  readonly port: string;
  readonly value: { readonly a: GnssFix; readonly b: { readonly width: number; readonly height: number; readonly format: string; readonly data: string } };
}

describe('examples/pipelines/gnss-video-sync.yaml', () => {
  it('pairs each of the clip’s 30 frames with the nearest real fix, rebased onto the replay, within the 200 ms tolerance', async () => {
    await rm(output, { force: true });
    // The file as written, plus two callback taps the test reads sensor times from: every fix the
    // GNSS source emits, and every fused message (the same objects, so a pair's fix is found by identity).
    const config = parse(readFileSync(example, 'utf8')) as { sinks: Record<string, unknown>; flows: string[]; stages: { sync: { params: { tolerance: number } } } };
    config.sinks['fixes'] = { use: 'callback' };
    config.sinks['fused'] = { use: 'callback' };
    config.flows.push('gps -> fixes', 'sync -> fused');
    const pipeline = await Pipeline.fromConfig(config, { baseDir: path.dirname(example), statsIntervalMs: 0 });
    const fixes = new Map<unknown, bigint>();
    const fixTimes: bigint[] = [];
    const fused: Envelope[] = [];
    pipeline.on('result', (sink: string, message: Envelope) => {
      if (sink === 'fixes') {
        fixes.set(message.value, message.sensorTimeNs);
        fixTimes.push(message.sensorTimeNs);
      } else if (sink === 'fused') fused.push(message);
    });
    const node = (name: string): number => pipeline.stats().nodes.find((n) => n.node === name)?.out ?? -1;
    const startedNs = BigInt(Date.now()) * MS;
    await pipeline.start();
    await until(() => node('camera') === 30, 20_000);
    // The last frame is paired once the fix after it arrives: at most 0.4 s (the largest gap) later.
    await new Promise((r) => setTimeout(r, 800));
    await pipeline.stop();

    const tolerance = BigInt(config.stages.sync.params.tolerance) * MS;
    expect(tolerance).toBe(200n * MS);
    // The clip is 3 s at 10 fps: 30 frames. A fix comes at least every 0.4 s, so with 200 ms of
    // tolerance every frame has one: 30 fused messages, one per frame, in order.
    const lines = (await readFile(output, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Line);
    expect(lines).toHaveLength(30);
    expect(lines.map((l) => l.seq)).toEqual(Array.from({ length: 30 }, (_, i) => i));
    expect(lines.every((l) => l.origin === 'camera' && l.port === 'sync.out' && l.value.b.width === 160 && l.value.b.height === 120 && l.value.b.format === 'gray8')).toBe(true);
    expect(Buffer.from(lines[0]?.value.b.data ?? '', 'base64')).toHaveLength(160 * 120);
    const stats = Object.fromEntries(pipeline.stats().nodes.map((n) => [n.node, n]));
    expect(stats['camera']?.out).toBe(30);
    expect(stats['sync']).toMatchObject({ out: 30, dropped: 0, errors: 0 });
    expect(stats['pairs']).toMatchObject({ in: 30, dropped: 0, errors: 0 });

    // Rebased: the first fix is stamped with the wall clock at the replay's start, and every later
    // one keeps its recorded spacing to the nanosecond.
    const first = fixTimes[0] ?? 0n;
    expect(first).toBeGreaterThanOrEqual(startedNs);
    expect(first - startedNs).toBeLessThan(1000n * MS);
    expect(fixTimes.length).toBeGreaterThanOrEqual(15);
    expect(fixTimes.map((t) => t - first)).toEqual(ROWS.slice(0, fixTimes.length).map((r) => r.ns - (ROWS[0]?.ns ?? 0n)));

    // Each pair: the frame's time (the fused message's) and its fix's time differ by at most the
    // tolerance, and no other fix was nearer. Frames are 100 ms apart, by their timestamps.
    const frameTimes = fused.map((m) => m.sensorTimeNs);
    expect(frameTimes.map((t) => t - (frameTimes[0] ?? 0n))).toEqual(Array.from({ length: 30 }, (_, i) => BigInt(i) * 100n * MS));
    const gaps = fused.map((m) => {
      const fixTime = fixes.get((m.value as { a: unknown }).a);
      if (fixTime === undefined) throw new Error(`fused message #${m.seq} holds a fix the GNSS source never emitted`);
      const gap = abs(m.sensorTimeNs - fixTime);
      expect(fixTimes.every((t) => abs(m.sensorTimeNs - t) >= gap)).toBe(true);
      return gap;
    });
    expect(gaps.every((g) => g <= tolerance)).toBe(true);
    // The video's first frame comes after ffmpeg has started, shortly after the first fix.
    expect((frameTimes[0] ?? 0n) - first).toBeGreaterThanOrEqual(0n);
    expect((frameTimes[0] ?? 0n) - first).toBeLessThan(1000n * MS);

    // Real coordinates: the fixes written out are the recording's rows, in order, starting with the
    // row nearest the first frame (one of the first few: the frame came within a second of the
    // first fix); 3 s of a 5 Hz receiver with 0.4 s holes is 11 to 16 distinct fixes.
    const rowOf = lines.map((l) => ROWS.findIndex((r) => r.latitude === l.value.a.latitude && r.longitude === l.value.a.longitude));
    expect(rowOf.every((i, k) => i >= 0 && i >= (rowOf[k - 1] ?? 0))).toBe(true);
    const nearestToFirstFrame = fixTimes.reduce((best, t, i) => (abs(t - (frameTimes[0] ?? 0n)) < abs((fixTimes[best] ?? 0n) - (frameTimes[0] ?? 0n)) ? i : best), 0);
    expect(rowOf[0]).toBe(nearestToFirstFrame);
    expect(rowOf[0]).toBeLessThanOrEqual(5);
    expect(lines[0]?.value.a).toMatchObject({ latitude: ROWS[rowOf[0] ?? 0]?.latitude, longitude: ROWS[rowOf[0] ?? 0]?.longitude, quality: 4 });
    expect(lines[0]?.value.a.latitude).toBeCloseTo(36.7162, 3);
    expect(lines[0]?.value.a.longitude).toBeCloseTo(-4.4742, 3);
    const distinct = new Set(rowOf).size;
    expect(distinct).toBeGreaterThanOrEqual(11);
    expect(distinct).toBeLessThanOrEqual(16);
  }, 60_000);
});

function abs(v: bigint): bigint {
  return v < 0n ? -v : v;
}

