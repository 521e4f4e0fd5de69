import { chmodSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { SensorError } from '../../../../drivers/sensors/errors.js';
import { sleepUntil } from '../../../../drivers/sensors/clock.js';
import { ffmpegFrames, findFfmpeg, inputArgs, inputKind, type FfmpegFramesOptions, type RawFrame } from '../../../../drivers/sensors/ffmpeg.js';
import { FrameRing } from '../../../../drivers/sensors/frame-ring.js';
import { restarting, type RestartNotice } from '../../../../drivers/sensors/restart.js';
import { childPids, exists } from './processes.js';

const FAKE = path.join(import.meta.dirname, 'fake-ffmpeg.mjs');

beforeAll(() => chmodSync(FAKE, 0o755));

function options(args: string[], more: Partial<FfmpegFramesOptions> = {}): FfmpegFramesOptions {
  return { args, frameBytes: 4, poolSize: 2, queue: 2, live: false, partial: 'error', stallTimeoutMs: 0, ffmpegPath: FAKE, ...more };
}

/** Reads every frame (copying its bytes: the pool reuses them), then the outcome. */
async function drain(o: FfmpegFramesOptions, signal = new AbortController().signal): Promise<{ frames: { index: number; bytes: number[] }[]; error?: unknown }> {
  const frames: { index: number; bytes: number[] }[] = [];
  try {
    for await (const f of ffmpegFrames(o, signal)) frames.push({ index: f.index, bytes: [...f.data] });
    return { frames };
  } catch (error) {
    return { frames, error };
  }
}

describe('inputKind / inputArgs', () => {
  it('tells files, stream URLs, V4L2 cameras and audio devices apart', () => {
    expect(inputKind('clips/a.mp4')).toBe('file');
    expect(inputKind('/data/a b.avi')).toBe('file');
    expect(inputKind('rtsp://10.0.0.5:554/stream1')).toBe('stream');
    expect(inputKind('http://cam.local/mjpeg')).toBe('stream');
    expect(inputKind('/dev/video0')).toBe('v4l2');
    expect(inputKind('/dev/v4l/by-id/usb-Logitech-video-index0')).toBe('v4l2');
    expect(inputKind('alsa:hw:1,0')).toBe('alsa');
    expect(inputKind('pulse:default')).toBe('pulse');
  });

  it('opens cameras with -f v4l2, loops files, and keeps a colon in a path from reading as a protocol', () => {
    expect(inputArgs('/dev/video2', { inputOptions: ['-input_format', 'mjpeg'] })).toEqual(['-f', 'v4l2', '-input_format', 'mjpeg', '-i', '/dev/video2']);
    expect(inputArgs('a.avi', { loop: true })).toEqual(['-stream_loop', '-1', '-i', 'a.avi']);
    expect(inputArgs('/x/12:30.avi')).toEqual(['-i', 'file:/x/12:30.avi']);
    expect(inputArgs('alsa:hw:0')).toEqual(['-f', 'alsa', '-i', 'hw:0']);
    expect(inputArgs('rtsp://h/s', { loop: true, inputOptions: ['-rtsp_transport', 'tcp'] })).toEqual(['-rtsp_transport', 'tcp', '-i', 'rtsp://h/s']);
  });

  it('finds executables on PATH or by path', () => {
    expect(findFfmpeg('node')).toMatch(/node$/u);
    expect(findFfmpeg(FAKE)).toBe(FAKE);
    expect(findFfmpeg('/nonexistent/ffmpeg')).toBeUndefined();
    expect(findFfmpeg('no-such-tool-aios')).toBeUndefined();
  });
});

describe('FrameRing', () => {
  it('reuses a delivered buffer only after `hold` later deliveries', () => {
    const pool = new FrameRing(3, 2, 1);
    const a = pool.take();
    expect(a.buffer).toBeInstanceOf(SharedArrayBuffer);
    pool.deliver(a);
    const b = pool.take();
    pool.deliver(b);
    const c = pool.take();
    expect(new Set([a, b, c]).size).toBe(3);
    expect(() => pool.take()).toThrow(/exhausted/u); // a and b held, c taken: none free
    pool.deliver(c); // a has now seen two later deliveries: free again
    expect(pool.take()).toBe(a);
  });

  it('takes released (never delivered) buffers back at once', () => {
    const pool = new FrameRing(3, 1, 1);
    const a = pool.take();
    pool.release(a);
    expect(pool.take()).toBe(a);
  });
});

describe('ffmpegFrames', () => {
  it('cuts the output into fixed-size frames across chunk boundaries, in order', async () => {
    const { frames, error } = await drain(options(['frames', '300', '1000'], { frameBytes: 1000 }));
    expect(error).toBeUndefined();
    expect(frames.map((f) => f.index)).toEqual([...Array(300).keys()]);
    for (const [i, f] of frames.entries()) expect(new Set(f.bytes)).toEqual(new Set([i & 0xff]));
  });

  it('keeps a frame intact until the consumer has received poolSize later ones, and never allocates more', async () => {
    const seen: RawFrame[] = [];
    const buffers = new Set<Uint8Array>();
    for await (const f of ffmpegFrames(options(['frames', '200', '1000'], { frameBytes: 1000, poolSize: 3 }), new AbortController().signal)) {
      seen.push(f);
      buffers.add(f.data);
      // Slow consumer: ffmpeg is held back rather than frames piling up. The newest frame and the
      // two before it (poolSize 3 in all) must still hold their bytes.
      if (f.index % 50 === 0) await new Promise((resolve) => setTimeout(resolve, 20));
      for (let back = 0; back < 3 && back < seen.length; back++) {
        const old = seen[seen.length - 1 - back] as RawFrame;
        expect(old.data[0]).toBe(old.index & 0xff);
      }
    }
    expect(seen).toHaveLength(200);
    expect(buffers.size).toBeLessThanOrEqual(3 + 2 + 1); // poolSize + queue + the frame being filled
  });

  it('live: a slow reader gets the newest frames and the oldest are dropped', async () => {
    const frames: number[] = [];
    for await (const f of ffmpegFrames(options(['frames', '50', '100'], { frameBytes: 100, live: true }), new AbortController().signal)) {
      if (frames.length === 0) await new Promise((resolve) => setTimeout(resolve, 300));
      frames.push(f.index);
    }
    expect(frames.length).toBeLessThan(10);
    expect(frames.slice(-2)).toEqual([48, 49]);
  });

  it('output ending inside a frame fails with EAI_SENSOR_TRUNCATED, or is zero-padded', async () => {
    const truncated = await drain(options(['bytes', '10']));
    expect(truncated.frames.map((f) => f.bytes)).toEqual([
      [0, 1, 2, 3],
      [4, 5, 6, 7],
    ]);
    expect(truncated.error).toBeInstanceOf(SensorError);
    expect((truncated.error as SensorError).code).toBe('EAI_SENSOR_TRUNCATED');
    const padded = await drain(options(['bytes', '10'], { partial: 'pad' }));
    expect(padded.error).toBeUndefined();
    expect(padded.frames.map((f) => f.bytes)).toEqual([
      [0, 1, 2, 3],
      [4, 5, 6, 7],
      [8, 9, 0, 0],
    ]);
  });

  it('a non-zero exit delivers the frames before it, then EAI_SENSOR_FFMPEG_EXIT with the last meaningful stderr line', async () => {
    const { frames, error } = await drain(options(['fail', '3', 'input.avi: corrupt input packet in stream 0']));
    expect(frames.map((f) => f.bytes)).toEqual([[7, 7, 7, 7]]);
    expect(error).toBeInstanceOf(SensorError);
    const e = error as SensorError;
    expect(e.code).toBe('EAI_SENSOR_FFMPEG_EXIT');
    expect(e.retryable).toBe(true);
    expect(e.message).toBe('ffmpeg exited with code 3: input.avi: corrupt input packet in stream 0');
    expect(e.details['exitCode']).toBe(3);
  });

  it('"No such file or directory" from ffmpeg is EAI_SENSOR_NOT_FOUND', async () => {
    const { error } = await drain(options(['fail', '1', 'rtsp://x/y: No such file or directory']));
    expect((error as SensorError).code).toBe('EAI_SENSOR_NOT_FOUND');
  });

  it('a missing executable is EAI_SENSOR_FFMPEG_MISSING, not retryable, with the fix', async () => {
    const { frames, error } = await drain(options(['frames', '1', '4'], { ffmpegPath: '/nonexistent/ffmpeg' }));
    expect(frames).toEqual([]);
    expect(error).toBeInstanceOf(SensorError);
    expect((error as SensorError).code).toBe('EAI_SENSOR_FFMPEG_MISSING');
    expect((error as SensorError).retryable).toBe(false);
    expect((error as SensorError).message).toMatch(/apt install ffmpeg/u);
  });

  it('no data for stallTimeoutMs is EAI_SENSOR_STALLED, and the process is ended', async () => {
    const before = new Set(childPids('node'));
    const started = performance.now();
    const { error } = await drain(options(['hang'], { stallTimeoutMs: 300 }));
    const elapsed = performance.now() - started;
    expect((error as SensorError).code).toBe('EAI_SENSOR_STALLED');
    expect(elapsed).toBeGreaterThanOrEqual(290);
    expect(elapsed).toBeLessThan(3000);
    expect(childPids('node').filter((p) => !before.has(p))).toEqual([]);
  });

  it('abort ends the iteration, and a process ignoring SIGTERM is killed and reaped', async () => {
    const before = new Set(childPids('node'));
    const controller = new AbortController();
    const frames: number[] = [];
    let pid: number | undefined;
    const started = performance.now();
    for await (const f of ffmpegFrames(options(['ignore-term', '4']), controller.signal)) {
      frames.push(f.data[0] as number);
      pid = childPids('node').find((p) => !before.has(p));
      controller.abort();
    }
    expect(frames).toEqual([1]);
    expect(pid).toBeDefined();
    expect(exists(pid as number)).toBe(false);
    expect(performance.now() - started).toBeLessThan(3000);
  });
});

describe('restarting', () => {
  const failing = (code: 'EAI_SENSOR_FFMPEG_EXIT' | 'EAI_SENSOR_CONFIG', retryable = true): SensorError => new SensorError(code, 'boom', { retryable });

  it('reopens after retryable failures with doubling delays, capped, reset after a delivered message', async () => {
    // Runs: fail, fail, fail, deliver 1 then fail, fail, deliver 2 and end.
    const script: (number[] | 'fail')[] = ['fail', 'fail', 'fail', [1], 'fail', [2]];
    let run = 0;
    const open = async function* (): AsyncGenerator<number> {
      const step = script[run++];
      if (step === 'fail') throw failing('EAI_SENSOR_FFMPEG_EXIT');
      yield* step ?? [];
      if (run === 4) throw failing('EAI_SENSOR_FFMPEG_EXIT');
    };
    const notices: RestartNotice[] = [];
    const got: number[] = [];
    for await (const m of restarting(open, { initialMs: 10, maxMs: 25 }, new AbortController().signal, (n) => notices.push(n))) got.push(m);
    expect(got).toEqual([1, 2]);
    expect(notices.map((n) => [n.attempt, n.delayMs])).toEqual([
      [1, 10],
      [2, 20],
      [3, 25],
      [1, 10],
      [2, 20],
    ]);
    expect(notices.every((n) => n.error.code === 'EAI_SENSOR_FFMPEG_EXIT')).toBe(true);
  });

  it('rethrows errors that are not retryable', async () => {
    const open = async function* (): AsyncGenerator<number> {
      yield* [];
      throw failing('EAI_SENSOR_CONFIG', false);
    };
    await expect(async () => {
      for await (const _ of restarting(open, { initialMs: 1, maxMs: 1 }, new AbortController().signal, () => undefined)) void _;
    }).rejects.toMatchObject({ code: 'EAI_SENSOR_CONFIG' });
  });

  it('returns promptly when aborted during a backoff wait', async () => {
    const controller = new AbortController();
    const open = async function* (): AsyncGenerator<number> {
      yield* [];
      throw failing('EAI_SENSOR_FFMPEG_EXIT');
    };
    setTimeout(() => controller.abort(), 50);
    const started = performance.now();
    for await (const _ of restarting(open, { initialMs: 10_000, maxMs: 10_000 }, controller.signal, () => undefined)) void _;
    expect(performance.now() - started).toBeLessThan(1000);
  });
});

describe('sleepUntil', () => {
  it('wakes at the target, never before it, and reports an abort', async () => {
    const target = performance.now() + 30;
    expect(await sleepUntil(target, new AbortController().signal)).toBe(true);
    expect(performance.now()).toBeGreaterThanOrEqual(target);
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 10);
    expect(await sleepUntil(performance.now() + 10_000, controller.signal)).toBe(false);
  });
});
