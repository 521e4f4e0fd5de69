import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { PIXEL_CHANNELS, type ImageFrame, type PixelFormat } from '../../../../drivers/sensors/types.js';
import { FramePool, sharedBytes, sharedFloat32 } from '../../../../runtime/pipeline/frame-pool.js';
import { convertPixels, normalizePixels, normalizeTable, resizeBilinear, resizeNearest } from '../../../../runtime/pipeline/image-kernels.js';
import { measureTransfer, resolveTransformScript, TransformWorkers } from '../../../../runtime/pipeline/transform-worker.js';

const repo = path.resolve(import.meta.dirname, '../../../..');
const FORMATS: PixelFormat[] = ['rgb24', 'bgr24', 'rgba', 'gray8'];

/** A deterministic pseudo-random frame in shared memory (or not). */
function frame(width: number, height: number, format: PixelFormat, shared = true, seed = 1): ImageFrame {
  const n = width * height * PIXEL_CHANNELS[format];
  const data = shared ? sharedBytes(n) : new Uint8Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    data[i] = s >>> 24;
  }
  return { width, height, format, data };
}

const blank = (width: number, height: number, format: PixelFormat): ImageFrame => ({ width, height, format, data: sharedBytes(width * height * PIXEL_CHANNELS[format]) });

describe('TransformWorkers (worker threads over shared memory)', () => {
  let workers: TransformWorkers;
  beforeAll(async () => {
    workers = await TransformWorkers.start({ threads: 3 });
  });
  afterAll(async () => {
    await workers?.close();
  });

  it('runs the dev-tree script (plain .mjs) under vitest', () => {
    expect(resolveTransformScript()).toBe(path.join(repo, 'runtime/pipeline/transform-thread.mjs'));
    expect(workers.threads).toBe(3);
  });

  it.each(['bilinear', 'nearest'] as const)('resize %s: the same bytes as the in-thread kernel, split across threads', async (interpolation) => {
    const src = frame(641, 479, 'rgb24');
    const dst = blank(300, 517, 'rgb24');
    await workers.resize(src, dst, interpolation);
    const expected = new Uint8Array(dst.data.length);
    (interpolation === 'bilinear' ? resizeBilinear : resizeNearest)(src.data, 641, 479, expected, 300, 517, 3, 0, 517);
    expect(Buffer.compare(dst.data, expected)).toBe(0);
  });

  it('convert: every pair of formats equals the in-thread kernel', async () => {
    for (const from of FORMATS) {
      const src = frame(320, 200, from, true, 7);
      for (const to of FORMATS) {
        const dst = blank(320, 200, to);
        await workers.convert(src, dst);
        const expected = new Uint8Array(dst.data.length);
        convertPixels(src.data, from, expected, to, 0, 320 * 200);
        expect(Buffer.compare(dst.data, expected), `${from} -> ${to}`).toBe(0);
      }
    }
  });

  it.each(['NHWC', 'NCHW'] as const)('normalize %s: bit-identical floats', async (layout) => {
    const src = frame(256, 160, 'rgb24', true, 3);
    const options = { layout, scale: 1 / 255, offset: 0, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
    const dst = sharedFloat32(256 * 160 * 3);
    await workers.normalize(src, dst, options);
    const expected = new Float32Array(dst.length);
    normalizePixels(src.data, 256, 160, 3, expected, layout, normalizeTable(3, options.scale, options.offset, options.mean, options.std), 0, 160);
    expect(Buffer.compare(new Uint8Array(dst.buffer), new Uint8Array(expected.buffer))).toBe(0);
  });

  it('names frames in an attached pool by slot number, and posts other shared buffers as handles', async () => {
    const pool = new FramePool();
    workers.attach(pool);
    const lease = pool.acquire(64 * 48 * 3);
    lease.data.set(frame(64, 48, 'rgb24').data);
    const posted: Record<string, unknown>[] = [];
    // Record what goes to the threads while still delivering it.
    const original = Worker.prototype.postMessage;
    Worker.prototype.postMessage = function (this: Worker, message: unknown, transfer?: readonly unknown[]) {
      posted.push(message as Record<string, unknown>);
      return original.call(this, message, transfer as never);
    };
    try {
      const dst = blank(32, 24, 'rgb24');
      await workers.resize({ width: 64, height: 48, format: 'rgb24', data: lease.data }, dst, 'bilinear');
      const jobs = posted.filter((m) => m['kind'] === 'job').map((m) => m['job'] as { src: Record<string, unknown>; dst: Record<string, unknown> });
      expect(jobs.length).toBeGreaterThan(0);
      for (const job of jobs) {
        expect(job.src).toEqual({ pool: pool.id, slot: 0, byteOffset: 0, byteLength: 64 * 48 * 3 });
        expect(job.dst['buffer']).toBe(dst.data.buffer);
      }
      const expected = new Uint8Array(dst.data.length);
      resizeBilinear(lease.data, 64, 48, expected, 32, 24, 3, 0, 24);
      expect(Buffer.compare(dst.data, expected)).toBe(0);
    } finally {
      Worker.prototype.postMessage = original;
      lease.release();
      workers.detach(pool);
    }
  });

  it('refuses frames that are not in shared memory', () => {
    expect(() => workers.resize(frame(10, 10, 'gray8', false), blank(5, 5, 'gray8'), 'nearest')).toThrow(expect.objectContaining({ code: 'EAI_FRAME_NOT_SHARED' }));
  });

  it('runs overlapping jobs from several callers', async () => {
    const srcs = [1, 2, 3, 4, 5, 6].map((seed) => frame(200, 150, 'rgb24', true, seed));
    const dsts = srcs.map(() => blank(100, 75, 'gray8'));
    const grays = srcs.map((s) => blank(200, 150, 'gray8'));
    await Promise.all(srcs.map((s, i) => workers.convert(s, grays[i] as ImageFrame)));
    await Promise.all(grays.map((g, i) => workers.resize(g, dsts[i] as ImageFrame, 'bilinear')));
    srcs.forEach((s, i) => {
      const gray = new Uint8Array(200 * 150);
      convertPixels(s.data, 'rgb24', gray, 'gray8', 0, 200 * 150);
      const small = new Uint8Array(100 * 75);
      resizeBilinear(gray, 200, 150, small, 100, 75, 1, 0, 75);
      expect(Buffer.compare((dsts[i] as ImageFrame).data, small)).toBe(0);
    });
  });

  it('ping: shared, pooled and copied bytes all reach the thread (it flips the first byte)', async () => {
    const shared = sharedBytes(16);
    await workers.ping(shared);
    expect(shared[0]).toBe(1); // last byte 0, xor 1: written through shared memory
    const plain = new Uint8Array(16);
    await workers.ping(plain);
    expect(plain[0]).toBe(0); // a copy went over; the original is untouched
  });
});

describe('measureTransfer', () => {
  it('measures pooled, shared and copied round trips of a frame', async () => {
    const cost = await measureTransfer({ bytes: 1920 * 1080 * 3, rounds: 20 });
    expect(cost.bytes).toBe(6_220_800);
    for (const us of [cost.pooledUs, cost.sharedUs, cost.copiedUs]) expect(us).toBeGreaterThan(0);
    // Copying 6 MB per message costs far more than posting a reference to it.
    expect(cost.copiedUs).toBeGreaterThan(cost.pooledUs);
  });
});

describe('resolveTransformScript', () => {
  it('from a build in dist/, falls back to the source tree', () => {
    const fromDist = pathToFileURL(path.join(repo, 'dist/runtime/pipeline/transform-worker.js')).href;
    expect(resolveTransformScript(fromDist)).toBe(path.join(repo, 'runtime/pipeline/transform-thread.mjs'));
  });

  it('takes a copy beside the module first', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'aios-transform-'));
    writeFileSync(path.join(dir, 'transform-thread.mjs'), '');
    expect(resolveTransformScript(pathToFileURL(path.join(dir, 'transform-worker.js')).href)).toBe(path.join(dir, 'transform-thread.mjs'));
  });

  it('says what to copy when neither exists', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'aios-transform-'));
    expect(() => resolveTransformScript(pathToFileURL(path.join(dir, 'transform-worker.js')).href)).toThrow(expect.objectContaining({ code: 'EAI_TRANSFORM_SCRIPT_NOT_FOUND' }));
  });
});

describe('worker failures', () => {
  const scripts = mkdtempSync(path.join(tmpdir(), 'aios-transform-scripts-'));

  it('a script that cannot start fails start() with the reason', async () => {
    const broken = path.join(scripts, 'broken.mjs');
    writeFileSync(broken, "throw new Error('kernels missing');\n");
    await expect(TransformWorkers.start({ threads: 1, script: broken })).rejects.toMatchObject({ code: 'EAI_TRANSFORM_WORKER_FAILED', message: expect.stringContaining('kernels missing') });
  });

  it('a thread that dies fails its job and is replaced', async () => {
    // Dies on its first job; the replacement (same script) would too, so count starts instead.
    const dying = path.join(scripts, 'dying.mjs');
    writeFileSync(dying, "import { parentPort } from 'node:worker_threads';\nparentPort.on('message', (m) => { if (m.kind === 'job') process.exit(3); });\nparentPort.postMessage({ kind: 'ready' });\n");
    const w = await TransformWorkers.start({ threads: 1, script: dying });
    try {
      await expect(w.convert(frame(8, 8, 'rgb24'), blank(8, 8, 'gray8'))).rejects.toMatchObject({ code: 'EAI_TRANSFORM_WORKER_FAILED', message: expect.stringContaining('exit code 3') });
      await vi.waitFor(() => expect(w.threads).toBe(1));
    } finally {
      await w.close();
    }
    await expect(w.convert(frame(8, 8, 'rgb24'), blank(8, 8, 'gray8'))).rejects.toMatchObject({ code: 'EAI_TRANSFORM_CLOSED' });
  });
});
