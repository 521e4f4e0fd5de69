import { execFileSync, spawn } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHash } from 'node:crypto';
import { closeSync, copyFileSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SensorError } from '../../../../drivers/sensors/errors.js';
import type { ImageFrame, SensorMessage } from '../../../../drivers/sensors/types.js';
import { VideoSensor, type VideoOptions } from '../../../../drivers/sensors/video.js';
import { childPids, exists, FFMPEG } from './processes.js';

const FIXTURES = path.resolve(import.meta.dirname, '../../../fixtures/video');
const VTEST = path.join(FIXTURES, 'vtest-3s.avi'); // 30 frames, 10 fps
const FACE = path.join(FIXTURES, 'face-zoom.mp4'); // 40 frames, 10 fps, 384x240
const tmp = mkdtempSync(path.join(tmpdir(), 'aios-video-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

interface Seen {
  readonly sensorTimeNs: bigint;
  readonly arrivalMs: number;
  readonly sha: string;
  readonly head: number[];
}

/** Reads up to `limit` messages, hashing each frame as it comes (its buffer is reused later). */
async function collect(options: VideoOptions, limit = Infinity, onFrame?: (m: SensorMessage<ImageFrame>, i: number) => void): Promise<{ seen: Seen[]; error?: unknown }> {
  const seen: Seen[] = [];
  try {
    for await (const m of new VideoSensor(options).messages(new AbortController().signal)) {
      expect(m.value.data.length).toBe(m.value.width * m.value.height * (m.value.format === 'gray8' ? 1 : 3));
      seen.push({ sensorTimeNs: m.sensorTimeNs, arrivalMs: m.arrivalMs, sha: sha(m.value.data), head: [...m.value.data.subarray(0, 6)] });
      onFrame?.(m, seen.length - 1);
      if (seen.length >= limit) break;
    }
    return { seen };
  } catch (error) {
    return { seen, error };
  }
}

function sha(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** The same decode by the ffmpeg command line, frame by frame. */
function cliFrames(file: string, filter: string, pixFmt: string, frameBytes: number): string[] {
  const out = execFileSync(FFMPEG as string, ['-v', 'error', '-i', file, '-vf', filter, '-pix_fmt', pixFmt, '-f', 'rawvideo', '-'], { maxBuffer: 1 << 28 });
  return Array.from({ length: out.length / frameBytes }, (_, i) => sha(out.subarray(i * frameBytes, (i + 1) * frameBytes)));
}

const diffs = (seen: readonly Seen[]): bigint[] => seen.slice(1).map((s, i) => s.sensorTimeNs - (seen[i] as Seen).sensorTimeNs);

describe.skipIf(FFMPEG === undefined)('VideoSensor on real video (ffmpeg)', () => {
  it('decodes every frame of the fixture, scaled, byte-identical to the ffmpeg command line, 100 ms apart', async () => {
    const started = Date.now();
    const { seen, error } = await collect({ url: VTEST, width: 192, height: 144, realtime: false });
    expect(error).toBeUndefined();
    expect(seen).toHaveLength(30);
    expect(seen.map((s) => s.sha)).toEqual(cliFrames(VTEST, 'scale=192:144', 'rgb24', 192 * 144 * 3));
    // The top-left pixels of the first frame (pale brick wall), as Debian 12's ffmpeg 5.1 scales them.
    (seen[0] as Seen).head.forEach((v, i) => expect(Math.abs(v - ([178, 144, 104, 176, 143, 103][i] as number))).toBeLessThanOrEqual(2));
    expect(diffs(seen)).toEqual(Array(29).fill(100_000_000n));
    const firstMs = Number((seen[0] as Seen).sensorTimeNs / 1_000_000n);
    expect(Math.abs(firstMs - started)).toBeLessThan(5000);
    expect(seen.every((s, i) => i === 0 || s.arrivalMs >= (seen[i - 1] as Seen).arrivalMs)).toBe(true);
  });

  it('converts to gray8 and bgr24, and resamples with fps', async () => {
    const gray = await collect({ url: VTEST, width: 64, height: 48, format: 'gray8', realtime: false });
    expect(gray.seen.map((s) => s.sha)).toEqual(cliFrames(VTEST, 'scale=64:48', 'gray', 64 * 48));
    const rgb = await collect({ url: VTEST, width: 64, height: 48, realtime: false }, 1);
    const bgr = await collect({ url: VTEST, width: 64, height: 48, format: 'bgr24', realtime: false }, 1);
    const [r = 0, g = 0, b = 0] = (rgb.seen[0] as Seen).head;
    // Channels swapped; swscale's rgb and bgr paths round a little differently.
    (bgr.seen[0] as Seen).head.slice(0, 3).forEach((v, i) => expect(Math.abs(v - ([b, g, r][i] as number))).toBeLessThanOrEqual(4));
    const slow = await collect({ url: VTEST, width: 64, height: 48, fps: 5, realtime: false });
    expect(slow.seen).toHaveLength(15);
    expect(diffs(slow.seen)).toEqual(Array(14).fill(200_000_000n));
  });

  it('realtime paces frames by their timestamps; fast replay does not', async () => {
    const paced = await collect({ url: VTEST, width: 64, height: 48, realtime: true }, 8);
    const span = (paced.seen[7] as Seen).arrivalMs - (paced.seen[0] as Seen).arrivalMs;
    expect(span).toBeGreaterThanOrEqual(699);
    expect(span).toBeLessThan(900);
    const gaps = paced.seen.slice(1).map((s, i) => s.arrivalMs - (paced.seen[i] as Seen).arrivalMs);
    for (const gap of gaps) expect(gap).toBeGreaterThan(60);
    const fast = await collect({ url: VTEST, width: 64, height: 48, realtime: false });
    const fastSpan = (fast.seen[29] as Seen).arrivalMs - (fast.seen[0] as Seen).arrivalMs;
    expect(fastSpan).toBeLessThan(1500); // 2.9 s of video
    expect(diffs(fast.seen)).toEqual(diffs(paced.seen).concat(Array(22).fill(100_000_000n)));
  });

  it('loop replays the file forever with sensor times that keep counting', async () => {
    const { seen } = await collect({ url: VTEST, width: 64, height: 48, realtime: false, loop: true }, 75);
    expect(seen).toHaveLength(75);
    expect(diffs(seen)).toEqual(Array(74).fill(100_000_000n));
    expect((seen[30] as Seen).sha).toBe((seen[0] as Seen).sha);
    expect((seen[61] as Seen).sha).toBe((seen[1] as Seen).sha);
  });

  it('decodes the face clip (MP4, MPEG-4 Part 2)', async () => {
    const { seen, error } = await collect({ url: FACE, width: 384, height: 240, realtime: false });
    expect(error).toBeUndefined();
    expect(seen).toHaveLength(40);
    expect(seen.map((s) => s.sha)).toEqual(cliFrames(FACE, 'scale=384:240', 'rgb24', 384 * 240 * 3));
  });

  it('a missing file is EAI_SENSOR_NOT_FOUND before ffmpeg starts', async () => {
    const before = childPids('ffmpeg');
    const { seen, error } = await collect({ url: path.join(tmp, 'nope.avi'), width: 8, height: 8 });
    expect(seen).toEqual([]);
    expect(error).toBeInstanceOf(SensorError);
    expect((error as SensorError).code).toBe('EAI_SENSOR_NOT_FOUND');
    expect((error as SensorError).message).toMatch(/nope\.avi does not exist/u);
    expect(childPids('ffmpeg')).toEqual(before);
  });

  it('a truncated file delivers the frames it holds, then EAI_SENSOR_FFMPEG_EXIT naming the corruption', async () => {
    const cut = path.join(tmp, 'truncated.avi');
    const fd = openSync(VTEST, 'r');
    const head = Buffer.alloc(200_000);
    readSync(fd, head, 0, head.length, 0);
    closeSync(fd);
    writeFileSync(cut, head);
    const { seen, error } = await collect({ url: cut, width: 64, height: 48, realtime: false });
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.length).toBeLessThan(30);
    expect((error as SensorError).code).toBe('EAI_SENSOR_FFMPEG_EXIT');
    expect((error as SensorError).message).toMatch(/corrupt/u);
  });

  it('ffmpeg killed mid-stream is EAI_SENSOR_FFMPEG_EXIT; a later messages() call starts again', async () => {
    const copy = path.join(tmp, 'copy.avi');
    copyFileSync(VTEST, copy);
    const before = new Set(childPids('ffmpeg'));
    // Large frames, so little more than the queued frames is buffered in the pipe when it dies.
    const { seen, error } = await collect({ url: copy, width: 384, height: 288, realtime: true }, Infinity, (_, i) => {
      if (i === 2) for (const pid of childPids('ffmpeg').filter((p) => !before.has(p))) process.kill(pid, 'SIGKILL');
    });
    expect(seen.length).toBeGreaterThanOrEqual(3);
    expect(seen.length).toBeLessThan(10);
    expect((error as SensorError).code).toBe('EAI_SENSOR_FFMPEG_EXIT');
    expect((error as SensorError).message).toBe('ffmpeg was killed by SIGKILL mid-stream');
    const again = await collect({ url: copy, width: 384, height: 288, realtime: false }, 2);
    expect(again.seen.map((s) => s.sha)).toEqual(seen.slice(0, 2).map((s) => s.sha));
  });

  it('aborting (or breaking out) stops ffmpeg: its pid is gone, not a zombie', async () => {
    const before = new Set(childPids('ffmpeg'));
    const controller = new AbortController();
    let pid: number | undefined;
    let count = 0;
    for await (const _ of new VideoSensor({ url: VTEST, width: 64, height: 48, realtime: true }).messages(controller.signal)) {
      void _;
      pid ??= childPids('ffmpeg').find((p) => !before.has(p));
      if (++count === 2) controller.abort();
    }
    expect(count).toBe(2);
    expect(pid).toBeDefined();
    expect(exists(pid as number)).toBe(false);
    const broke = await collect({ url: VTEST, width: 64, height: 48, realtime: true }, 1);
    expect(broke.seen).toHaveLength(1);
    expect(childPids('ffmpeg').filter((p) => !before.has(p))).toEqual([]);
  });

  it('a missing ffmpeg is EAI_SENSOR_FFMPEG_MISSING', async () => {
    const { error } = await collect({ url: VTEST, width: 8, height: 8, ffmpegPath: '/nonexistent/ffmpeg' });
    expect((error as SensorError).code).toBe('EAI_SENSOR_FFMPEG_MISSING');
  });
});

describe.skipIf(FFMPEG === undefined)('VideoSensor on live streams (ffmpeg)', () => {
  it('an HTTP URL is live: wall-clock times at arrival, and its end is EAI_SENSOR_STREAM_ENDED; live: false replays it as a file', async () => {
    const body = readFileSync(VTEST);
    const server = createServer((_, res) => res.writeHead(200, { 'content-type': 'video/x-msvideo', 'content-length': body.length }).end(body));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/vtest.avi`;
      const live = await collect({ url, width: 64, height: 48 });
      expect((live.error as SensorError).code).toBe('EAI_SENSOR_STREAM_ENDED');
      expect(live.seen.length).toBeGreaterThan(0);
      expect(live.seen.length).toBeLessThanOrEqual(30);
      // Arrival-stamped: sensor time and arrival advance together, whatever the file's timestamps.
      const first = live.seen[0] as Seen;
      for (const s of live.seen) expect(Math.abs(Number(s.sensorTimeNs - first.sensorTimeNs) / 1e6 - (s.arrivalMs - first.arrivalMs))).toBeLessThan(2);
      const replay = await collect({ url, width: 64, height: 48, live: false, realtime: false });
      expect(replay.error).toBeUndefined();
      expect(replay.seen).toHaveLength(30);
      expect(diffs(replay.seen)).toEqual(Array(29).fill(100_000_000n));
    } finally {
      server.close();
    }
  });

  it('a UDP stream whose sender goes quiet is EAI_SENSOR_STALLED after stallTimeoutMs', async () => {
    const port = 20_000 + (process.pid % 20_000);
    // MPEG-2 in MPEG-TS repeats its headers, so a receiver can join mid-stream, as with a camera.
    const sender = spawn(FFMPEG as string, ['-v', 'error', '-re', '-stream_loop', '-1', '-i', VTEST, '-c:v', 'mpeg2video', '-g', '5', '-q:v', '5', '-f', 'mpegts', `udp://127.0.0.1:${port}?pkt_size=1316`], { stdio: 'ignore' });
    try {
      let stoppedAt = 0;
      const { seen, error } = await collect(
        // A short probe, as for a low-latency camera: ffmpeg's default waits up to 5 s of stream.
        // 2.5 s: on a loaded 2-core machine (the whole suite at once) ffmpeg's start can take over a second.
        { url: `udp://127.0.0.1:${port}`, width: 64, height: 48, stallTimeoutMs: 2500, inputOptions: ['-analyzeduration', '300000', '-probesize', '32768'] },
        Infinity,
        (_, i) => {
          if (i === 4) {
            sender.kill('SIGKILL');
            stoppedAt = performance.now();
          }
        },
      );
      expect(seen.length).toBeGreaterThanOrEqual(5);
      expect((error as SensorError).code).toBe('EAI_SENSOR_STALLED');
      // Frames already decoded may still arrive after the sender died; then silence for 2.5 s.
      const waited = performance.now() - stoppedAt;
      expect(waited).toBeGreaterThanOrEqual(2490);
      expect(waited).toBeLessThan(5000);
      const gaps = seen.slice(1, 5).map((s, i) => s.arrivalMs - (seen[i] as Seen).arrivalMs);
      expect(gaps.reduce((a, b) => a + b, 0) / gaps.length).toBeGreaterThan(50); // paced by the sender's -re, not a burst
    } finally {
      sender.kill('SIGKILL');
    }
  });
});

describe('VideoSensor arguments', () => {
  it('opens V4L2 cameras with -f v4l2 and treats them as live (no showinfo, no -xerror)', () => {
    const cam = new VideoSensor({ url: '/dev/video0', width: 640, height: 480, inputOptions: ['-input_format', 'mjpeg'] });
    expect(cam.live).toBe(true);
    const args = cam.args();
    expect(args.slice(args.indexOf('-f'), args.indexOf('-i') + 2)).toEqual(['-f', 'v4l2', '-input_format', 'mjpeg', '-i', '/dev/video0']);
    expect(args).not.toContain('-xerror');
    expect(args[args.indexOf('-vf') + 1]).toBe('scale=640:480');
  });

  it('files: showinfo for timestamps, fps before scaling, loop with -stream_loop, gray8 as ffmpeg gray', () => {
    const file = new VideoSensor({ url: 'a.mp4', width: 32, height: 16, fps: 15, loop: true, format: 'gray8' });
    expect(file.live).toBe(false);
    const args = file.args();
    expect(args[args.indexOf('-vf') + 1]).toBe('fps=15,scale=32:16,showinfo');
    expect(args.slice(args.indexOf('-stream_loop'), args.indexOf('-stream_loop') + 2)).toEqual(['-stream_loop', '-1']);
    expect(args[args.indexOf('-pix_fmt') + 1]).toBe('gray');
    expect(args.at(-1)).toBe('pipe:1');
    expect(file.frameBytes).toBe(32 * 16);
  });

  it('rejects impossible options with EAI_SENSOR_CONFIG', () => {
    expect(() => new VideoSensor({ url: 'a.mp4', width: 0, height: 10 })).toThrow(expect.objectContaining({ code: 'EAI_SENSOR_CONFIG', retryable: false }));
    expect(() => new VideoSensor({ url: 'a.mp4', width: 10, height: 10, fps: -1 })).toThrow(/fps must be a positive number/u);
    expect(() => new VideoSensor({ url: 'a.mp4', width: 10, height: 10, poolSize: 0 })).toThrow(/poolSize/u);
  });
});
