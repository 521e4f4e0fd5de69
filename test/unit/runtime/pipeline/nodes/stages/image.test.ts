import { describe, expect, it } from 'vitest';
import { PIXEL_CHANNELS, type ImageFrame, type PixelFormat } from '../../../../../../drivers/sensors/types.js';
import { Tensor } from '../../../../../../drivers/tensor/tensor.js';
import { PortTypeMismatch } from '../../../../../../runtime/pipeline/definition.js';
import { isShared, sharedBytes } from '../../../../../../runtime/pipeline/frame-pool.js';
import { imageConvert } from '../../../../../../runtime/pipeline/nodes/stages/image-convert.js';
import { imageCrop } from '../../../../../../runtime/pipeline/nodes/stages/image-crop.js';
import { imageNormalize } from '../../../../../../runtime/pipeline/nodes/stages/image-normalize.js';
import { imageResize } from '../../../../../../runtime/pipeline/nodes/stages/image-resize.js';
import { imageToTensor } from '../../../../../../runtime/pipeline/nodes/stages/image-to-tensor.js';
import { TRANSFORM_WORKERS_SERVICE } from '../../../../../../runtime/pipeline/nodes/stages/image.js';
import { TransformWorkers } from '../../../../../../runtime/pipeline/transform-worker.js';
import type { PortType } from '../../../../../../runtime/pipeline/port-types.js';
import { defaults, startStage } from './harness.js';

const image = (width: number | null, height: number | null, format: PixelFormat | null): PortType => ({ kind: 'image', width, height, format });
const frame = (width: number, height: number, format: PixelFormat, bytes: ArrayLike<number>): ImageFrame => ({ width, height, format, data: Uint8Array.from(bytes) });

function noise(width: number, height: number, format: PixelFormat, seed = 5): ImageFrame {
  const data = new Uint8Array(width * height * PIXEL_CHANNELS[format]);
  let s = seed;
  for (let i = 0; i < data.length; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    data[i] = s >>> 24;
  }
  return { width, height, format, data };
}

describe('image.resize', () => {
  it('types: the target size in the input format; refuses non-images', () => {
    const p = defaults(imageResize, { width: 128, height: 96 });
    expect(imageResize.types?.(p, { in: image(640, 480, 'bgr24') })).toEqual({ out: image(128, 96, 'bgr24') });
    expect(imageResize.types?.(p, {})).toEqual({ out: image(128, 96, null) });
    expect(() => imageResize.types?.(p, { in: { kind: 'tensor', dtype: 'float32', shape: [1, 3] } })).toThrow(PortTypeMismatch);
  });

  it('emits the hand-computed bilinear frame, keeping the message times and origin', async () => {
    const s = await startStage(imageResize, { width: 4, height: 4 });
    await s.send(frame(2, 2, 'gray8', [0, 100, 200, 40]), { sensorTimeNs: 123n, origin: 'cam', seq: 9, arrivalMs: 5 });
    const [out] = s.emitted;
    expect(out?.port).toBe('out');
    expect(out?.from).toEqual({ sensorTimeNs: 123n, origin: 'cam', seq: 9, arrivalMs: 5 });
    const f = out?.value as ImageFrame;
    expect([f.width, f.height, f.format]).toEqual([4, 4, 'gray8']);
    expect([...f.data]).toEqual([0, 25, 75, 100, 50, 59, 76, 85, 150, 126, 79, 55, 200, 160, 80, 40]);
    expect(isShared(f.data)).toBe(true);
    await s.stop();
  });

  it('nearest picks source pixels', async () => {
    const s = await startStage(imageResize, { width: 1, height: 1, interpolation: 'nearest' });
    await s.send(frame(2, 2, 'gray8', [10, 20, 30, 40]));
    expect([...(s.emitted[0]?.value as ImageFrame).data]).toEqual([40]);
  });

  it('worker: always, never and auto give the same bytes; a non-shared input is copied into the pool', async () => {
    const input = noise(800, 600, 'rgb24');
    const results: Uint8Array[] = [];
    for (const worker of ['never', 'always', 'auto'] as const) {
      const s = await startStage(imageResize, { width: 500, height: 400, worker });
      await s.send(input);
      results.push((s.emitted[0]?.value as ImageFrame).data);
      if (worker !== 'never') expect(s.state.pool.stats().acquired).toBe(1); // the ArrayBuffer input went through one lease
      expect(s.state.workers === undefined).toBe(worker === 'never');
      await s.stop();
    }
    expect(Buffer.compare(results[0] as Uint8Array, results[1] as Uint8Array)).toBe(0);
    expect(Buffer.compare(results[0] as Uint8Array, results[2] as Uint8Array)).toBe(0);
  });

  it('auto keeps small outputs in the pipeline thread', async () => {
    const s = await startStage(imageResize, { width: 128, height: 128 });
    await s.send(noise(1280, 720, 'rgb24'));
    expect(s.state.workers).toBeUndefined();
    await s.stop();
  });

  it("uses the application's shared TransformWorkers and leaves them running", async () => {
    const shared = await TransformWorkers.start({ threads: 1 });
    try {
      const s = await startStage(imageResize, { width: 400, height: 300, worker: 'always' }, { extra: { [TRANSFORM_WORKERS_SERVICE]: shared } });
      const input = noise(200, 150, 'gray8');
      await s.send(input);
      expect(s.state.workers).toBe(shared);
      await s.stop();
      // Still usable: the stage did not close what it did not start.
      const again = await startStage(imageResize, { width: 400, height: 300, worker: 'always' }, { extra: { [TRANSFORM_WORKERS_SERVICE]: shared } });
      await again.send(input);
      expect(Buffer.compare((again.emitted[0]?.value as ImageFrame).data, (s.emitted[0]?.value as ImageFrame).data)).toBe(0);
    } finally {
      await shared.close();
    }
  });

  it('refuses values that are not frames, or frames with the wrong byte count', async () => {
    const s = await startStage(imageResize, { width: 4, height: 4 });
    await expect(s.send({ width: 2 })).rejects.toMatchObject({ code: 'EAI_STAGE_INPUT' });
    await expect(s.send(frame(2, 2, 'rgb24', [1, 2, 3]))).rejects.toMatchObject({ code: 'EAI_STAGE_INPUT', message: expect.stringContaining('needs 12 bytes') });
  });
});

describe('image.crop', () => {
  const src = frame(4, 3, 'gray8', [0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23]);

  it('cuts at x, y or from the centre', async () => {
    const at = await startStage(imageCrop, { x: 1, y: 1, width: 2, height: 2 });
    await at.send(src);
    expect([...(at.emitted[0]?.value as ImageFrame).data]).toEqual([11, 12, 21, 22]);
    const centre = await startStage(imageCrop, { center: true, width: 2, height: 1 });
    await centre.send(src);
    expect([...(centre.emitted[0]?.value as ImageFrame).data]).toEqual([11, 12]);
  });

  it('keeps channels together', async () => {
    const s = await startStage(imageCrop, { x: 1, y: 0, width: 1, height: 1 });
    await s.send(frame(2, 1, 'rgb24', [1, 2, 3, 4, 5, 6]));
    expect([...(s.emitted[0]?.value as ImageFrame).data]).toEqual([4, 5, 6]);
  });

  it('reports a crop outside a known frame at validation, and at run time otherwise', async () => {
    const p = defaults(imageCrop, { x: 600, y: 0, width: 100, height: 100 });
    expect(() => imageCrop.types?.(p, { in: image(640, 480, 'rgb24') })).toThrow(/does not fit a 640×480 frame/);
    expect(imageCrop.types?.(p, { in: image(1280, 720, 'rgb24') })).toEqual({ out: image(100, 100, 'rgb24') });
    const s = await startStage(imageCrop, { x: 3, y: 0, width: 2, height: 1 });
    await expect(s.send(src)).rejects.toMatchObject({ code: 'EAI_STAGE_INPUT' });
  });

  it('check: needs x and y, or center, not both', async () => {
    expect(await imageCrop.check?.(defaults(imageCrop, { width: 1, height: 1 }), { baseDir: '.', inputs: {} })).toEqual([{ path: ['params', 'x'], message: expect.stringContaining('needs x and y') }]);
    expect(await imageCrop.check?.(defaults(imageCrop, { x: 1, y: 1, center: true, width: 1, height: 1 }), { baseDir: '.', inputs: {} })).toHaveLength(1);
    expect(await imageCrop.check?.(defaults(imageCrop, { center: true, width: 1, height: 1 }), { baseDir: '.', inputs: {} })).toEqual([]);
  });
});

describe('image.convert', () => {
  it('types: same size, new format', () => {
    expect(imageConvert.types?.(defaults(imageConvert, { format: 'gray8' }), { in: image(640, 480, 'bgr24') })).toEqual({ out: image(640, 480, 'gray8') });
  });

  it('round-trips bgr24 → rgb24 → rgba → bgr24 exactly and passes frames already in the format through', async () => {
    const bgr = noise(33, 17, 'bgr24');
    let current: ImageFrame = bgr;
    for (const format of ['rgb24', 'rgba', 'bgr24'] as const) {
      const s = await startStage(imageConvert, { format });
      await s.send(current);
      current = s.emitted[0]?.value as ImageFrame;
      expect(current.format).toBe(format);
    }
    expect(Buffer.compare(current.data, bgr.data)).toBe(0);
    const same = await startStage(imageConvert, { format: 'bgr24' });
    await same.send(bgr);
    expect(same.emitted[0]?.value).toBe(bgr);
  });

  it('bgr24 → gray8 weighs red 0.299 (from the last byte)', async () => {
    const s = await startStage(imageConvert, { format: 'gray8' });
    await s.send(frame(2, 1, 'bgr24', [0, 0, 255, 255, 0, 0]));
    expect([...(s.emitted[0]?.value as ImageFrame).data]).toEqual([76, 29]);
  });

  it('the worker path gives the same bytes', async () => {
    const input = noise(500, 300, 'rgba');
    const [a, b] = await Promise.all(
      (['never', 'always'] as const).map(async (worker) => {
        const s = await startStage(imageConvert, { format: 'gray8', worker });
        await s.send(input);
        await s.stop();
        return (s.emitted[0]?.value as ImageFrame).data;
      }),
    );
    expect(Buffer.compare(a as Uint8Array, b as Uint8Array)).toBe(0);
  });
});

describe('image.normalize', () => {
  it('types: float32 NHWC or NCHW, with or without the batch', () => {
    const t = (params: object): unknown => imageNormalize.types?.(defaults(imageNormalize, params), { in: image(128, 96, 'rgb24') });
    expect(t({})).toEqual({ out: { kind: 'tensor', dtype: 'float32', shape: [1, 96, 128, 3] } });
    expect(t({ layout: 'NCHW' })).toEqual({ out: { kind: 'tensor', dtype: 'float32', shape: [1, 3, 96, 128] } });
    expect(t({ batch: false })).toEqual({ out: { kind: 'tensor', dtype: 'float32', shape: [96, 128, 3] } });
    expect(imageNormalize.types?.(defaults(imageNormalize, {}), { in: image(null, null, null) })).toEqual({ out: { kind: 'tensor', dtype: 'float32', shape: [1, null, null, null] } });
  });

  it('BlazeFace scaling: x / 127.5 - 1', async () => {
    const s = await startStage(imageNormalize, { scale: 1 / 127.5, offset: -1 });
    await s.send(frame(2, 1, 'rgb24', [0, 255, 128, 64, 191, 1]));
    const t = s.emitted[0]?.value as Tensor<'float32'>;
    expect(t).toBeInstanceOf(Tensor);
    expect(t.shape).toEqual([1, 1, 2, 3]);
    expect([...t.data]).toEqual([0, 255, 128, 64, 191, 1].map((v) => Math.fround(v / 127.5 - 1)));
  });

  it('ImageNet mean and std per channel, NCHW', async () => {
    const s = await startStage(imageNormalize, { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], layout: 'NCHW' });
    await s.send(frame(2, 1, 'rgb24', [255, 0, 51, 0, 255, 102]));
    const t = s.emitted[0]?.value as Tensor<'float32'>;
    expect(t.shape).toEqual([1, 3, 1, 2]);
    const f = (v: number, c: number): number => Math.fround((v / 255 - [0.485, 0.456, 0.406][c]!) / [0.229, 0.224, 0.225][c]!);
    expect([...t.data]).toEqual([f(255, 0), f(0, 0), f(0, 1), f(255, 1), f(51, 2), f(102, 2)]);
  });

  it('mean/std must have one value or one per channel', async () => {
    const p = defaults(imageNormalize, { mean: [1, 2] });
    expect(await imageNormalize.check?.(p, { baseDir: '.', inputs: { in: image(8, 8, 'rgb24') } })).toEqual([{ path: ['params', 'mean'], message: expect.stringContaining('give one value or 3') }]);
    const s = await startStage(imageNormalize, { mean: [1, 2] });
    await expect(s.send(frame(1, 1, 'gray8', [1]))).rejects.toMatchObject({ code: 'EAI_STAGE_INPUT' });
  });

  it('the worker path writes the same floats (through a pooled shared slot, handed out in ordinary memory)', async () => {
    const input = noise(400, 300, 'rgb24');
    const out: Tensor<'float32'>[] = [];
    for (const worker of ['never', 'always'] as const) {
      const s = await startStage(imageNormalize, { scale: 1 / 127.5, offset: -1, layout: 'NCHW', worker });
      await s.send(input);
      await s.stop();
      out.push(s.emitted[0]?.value as Tensor<'float32'>);
    }
    expect(isShared(out[0]!.data) || isShared(out[1]!.data)).toBe(false);
    expect(Buffer.compare(out[0]!.bytes(), out[1]!.bytes())).toBe(0);
  });
});

describe('image.to_tensor', () => {
  it('uint8 NHWC shares the bytes of a frame in ordinary memory, copies a shared one out of shared memory', async () => {
    const s = await startStage(imageToTensor, {});
    const f = noise(300, 300, 'rgb24');
    await s.send(f);
    const t = s.emitted[0]?.value as Tensor<'uint8'>;
    expect(t.dtype).toBe('uint8');
    expect(t.shape).toEqual([1, 300, 300, 3]);
    expect(t.data).toBe(f.data);
    const shared = { ...f, data: sharedBytes(f.data.length) };
    shared.data.set(f.data);
    await s.send(shared);
    const copied = s.emitted[1]?.value as Tensor<'uint8'>;
    expect(isShared(copied.data)).toBe(false);
    expect(Buffer.compare(copied.data, f.data)).toBe(0);
  });

  it('int8 subtracts 128; NCHW moves channels to planes', async () => {
    const s = await startStage(imageToTensor, { dtype: 'int8', layout: 'NCHW', batch: false });
    await s.send(frame(2, 1, 'rgb24', [0, 128, 255, 1, 2, 3]));
    const t = s.emitted[0]?.value as Tensor<'int8'>;
    expect(t.shape).toEqual([3, 1, 2]);
    expect([...t.data]).toEqual([-128, -127, 0, -126, 127, -125]);
    expect(imageToTensor.types?.(defaults(imageToTensor, {}), { in: image(300, 300, 'rgb24') })).toEqual({ out: { kind: 'tensor', dtype: 'uint8', shape: [1, 300, 300, 3] } });
  });
});
