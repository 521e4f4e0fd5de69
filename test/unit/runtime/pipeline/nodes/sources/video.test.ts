import path from 'node:path';
import { Value } from '@sinclair/typebox/value';
import { describe, expect, it } from 'vitest';
import { SensorError } from '../../../../../../drivers/sensors/errors.js';
import type { ImageFrame } from '../../../../../../drivers/sensors/types.js';
import { videoSource } from '../../../../../../runtime/pipeline/nodes/sources/video.js';
import { childPids, exists, FFMPEG, waitFor } from '../../../../drivers/sensors/processes.js';
import { sourceContext } from './context.js';

const FIXTURES = path.resolve(import.meta.dirname, '../../../../../fixtures');
const params = (more: Record<string, unknown> = {}): Record<string, unknown> => ({ url: 'video/vtest-3s.avi', width: 64, height: 48, ...more });
const defaults = (p: Record<string, unknown>) => Value.Default(videoSource.params, structuredClone(p)) as Parameters<NonNullable<typeof videoSource.check>>[0];

describe('video source: definition', () => {
  it('is a source with one output, an image of the configured size and format', async () => {
    expect([videoSource.use, videoSource.role, videoSource.inputs, videoSource.outputs]).toEqual(['video', 'source', [], ['frames']]);
    expect(await videoSource.types?.(defaults(params({ format: 'gray8' })), {})).toEqual({ frames: { kind: 'image', width: 64, height: 48, format: 'gray8' } });
  });

  it('fills defaults and refuses unknown params', () => {
    const p = defaults(params());
    expect(p).toMatchObject({ format: 'rgb24', realtime: true, loop: false, poolSize: 8, stallTimeoutMs: 10_000, inputOptions: [], restart: { initialMs: 500, maxMs: 30_000 } });
    expect(Value.Check(videoSource.params, p)).toBe(true);
    expect(Value.Check(videoSource.params, { ...p, colour: 'red' })).toBe(false);
    expect(Value.Check(videoSource.params, { ...p, format: 'yuv420p' })).toBe(false);
  });

  it('check: a missing file is a problem at params.url; URLs and cameras are left to run time', async () => {
    const check = videoSource.check as NonNullable<typeof videoSource.check>;
    expect(await check(defaults(params()), { baseDir: FIXTURES, inputs: {} })).toEqual([]);
    const missing = await check(defaults(params({ url: 'video/missing.avi' })), { baseDir: FIXTURES, inputs: {} });
    expect(missing).toEqual([{ path: ['params', 'url'], message: expect.stringMatching(/^file .*video\/missing\.avi does not exist/u) as unknown }]);
    expect(await check(defaults(params({ url: 'video' })), { baseDir: FIXTURES, inputs: {} })).toEqual([{ path: ['params', 'url'], message: `${path.join(FIXTURES, 'video')} is not a file` }]);
    expect(await check(defaults(params({ url: 'rtsp://10.0.0.9/live' })), { baseDir: FIXTURES, inputs: {} })).toEqual([]);
    expect(await check(defaults(params({ url: '/dev/video7' })), { baseDir: FIXTURES, inputs: {} })).toEqual([]);
    const backwards = await check(defaults(params({ restart: { initialMs: 1000, maxMs: 10 } })), { baseDir: FIXTURES, inputs: {} });
    expect(backwards.map((p) => p.path)).toEqual([['params', 'restart', 'maxMs']]);
  });

  it('check: says how to install ffmpeg when it is not on PATH', async () => {
    const saved = process.env['PATH'];
    process.env['PATH'] = '/nonexistent';
    try {
      const problems = await (videoSource.check as NonNullable<typeof videoSource.check>)(defaults(params()), { baseDir: FIXTURES, inputs: {} });
      expect(problems).toEqual([{ path: ['use'], message: 'video needs ffmpeg, which is not installed or not on PATH: apt install ffmpeg' }]);
    } finally {
      process.env['PATH'] = saved;
    }
  });
});

describe.skipIf(FFMPEG === undefined)('video source: run (ffmpeg)', () => {
  it('emits every frame of a file on `frames` with its times, origin and seq, then returns', async () => {
    const sizes: number[] = [];
    const { ctx, recorded } = sourceContext(videoSource, params({ realtime: false }), {
      baseDir: FIXTURES,
      signal: new AbortController().signal,
      onEmit: (_, e) => sizes.push((e.value as ImageFrame).data.length),
    });
    await videoSource.run?.(ctx, undefined);
    expect(recorded.warnings).toEqual([]);
    expect(recorded.emits).toHaveLength(30);
    expect(recorded.emits.map((e) => [e.port, e.envelope.origin, e.envelope.seq])).toEqual([...Array(30).keys()].map((i) => ['frames', 'cam', i]));
    expect(sizes).toEqual(Array(30).fill(64 * 48 * 3));
    const times = recorded.emits.map((e) => e.envelope.sensorTimeNs);
    expect(times.slice(1).map((t, i) => t - (times[i] as bigint))).toEqual(Array(29).fill(100_000_000n));
  });

  it('ffmpeg killed mid-stream: warns with the SensorError, restarts with backoff, frames continue until abort', async () => {
    const controller = new AbortController();
    const before = new Set(childPids('ffmpeg'));
    const pids = new Set<number>();
    let killed = false;
    let afterRestart = 0;
    const { ctx, recorded } = sourceContext(videoSource, params({ width: 384, height: 288, restart: { initialMs: 50, maxMs: 200 } }), {
      baseDir: FIXTURES,
      signal: controller.signal,
      onEmit: (_, envelope, rec) => {
        for (const pid of childPids('ffmpeg').filter((p) => !before.has(p))) pids.add(pid);
        if (envelope.seq === 2 && !killed) {
          killed = true;
          for (const pid of pids) process.kill(pid, 'SIGKILL');
        }
        // Frames from the replacement ffmpeg: three are enough.
        if (rec.warnings.length > 0 && ++afterRestart === 3) controller.abort();
      },
    });
    const started = performance.now();
    await videoSource.run?.(ctx, undefined);
    expect(performance.now() - started).toBeLessThan(10_000);
    expect(recorded.warnings).toHaveLength(1);
    const warning = recorded.warnings[0] as { message: string; cause: unknown };
    expect(warning.cause).toBeInstanceOf(SensorError);
    expect((warning.cause as SensorError).code).toBe('EAI_SENSOR_FFMPEG_EXIT');
    expect(warning.message).toMatch(/^EAI_SENSOR_FFMPEG_EXIT: ffmpeg was killed by SIGKILL mid-stream; .* in 50 ms/u);
    expect(afterRestart).toBe(3);
    expect(recorded.emits.map((e) => e.envelope.seq)).toEqual([...recorded.emits.keys()]);
    expect(pids.size).toBe(2); // the killed ffmpeg and its replacement
    // The restarted file starts over, later in wall time: sensor times never go back.
    const times = recorded.emits.map((e) => e.envelope.sensorTimeNs);
    expect(times.every((t, i) => i === 0 || t > (times[i - 1] as bigint))).toBe(true);
    for (const pid of pids) expect(exists(pid)).toBe(false);
    expect(childPids('ffmpeg').filter((p) => !before.has(p))).toEqual([]);
  });

  it('a file missing at run time: warnings with doubling delays until aborted', async () => {
    const controller = new AbortController();
    const { ctx, recorded } = sourceContext(videoSource, params({ url: 'video/not-yet.avi', restart: { initialMs: 20, maxMs: 40 } }), { baseDir: FIXTURES, signal: controller.signal });
    const running = videoSource.run?.(ctx, undefined);
    await waitFor(() => recorded.warnings.length >= 4);
    controller.abort();
    await running;
    expect(recorded.emits).toEqual([]);
    expect(recorded.warnings.slice(0, 4).map((w) => [(w.cause as SensorError).code, / in (\d+) ms/u.exec(w.message)?.[1]])).toEqual([
      ['EAI_SENSOR_NOT_FOUND', '20'],
      ['EAI_SENSOR_NOT_FOUND', '40'],
      ['EAI_SENSOR_NOT_FOUND', '40'],
      ['EAI_SENSOR_NOT_FOUND', '40'],
    ]);
  });

  it('ffmpeg not installed: warned about once with the fix, and the source ends', async () => {
    const saved = process.env['PATH'];
    process.env['PATH'] = '/nonexistent';
    try {
      const { ctx, recorded } = sourceContext(videoSource, params({ restart: { initialMs: 10, maxMs: 10 } }), { baseDir: FIXTURES, signal: new AbortController().signal });
      await videoSource.run?.(ctx, undefined);
      expect(recorded.emits).toEqual([]);
      expect(recorded.warnings.map((w) => (w.cause as SensorError).code)).toEqual(['EAI_SENSOR_FFMPEG_MISSING']);
      expect(recorded.warnings[0]?.message).toMatch(/apt install ffmpeg/u);
    } finally {
      process.env['PATH'] = saved;
    }
  });
});
