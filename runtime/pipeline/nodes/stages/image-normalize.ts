import { Type, type Static } from '@sinclair/typebox';
import { PIXEL_CHANNELS, type ImageFrame } from '../../../../drivers/sensors/types.js';
import { Tensor } from '../../../../drivers/tensor/tensor.js';
import { defineNode, type ConfigProblem } from '../../definition.js';
import { normalizePixels, normalizeTable } from '../../image-kernels.js';
import type { NormalizeOptions } from '../../transform-worker.js';
import { expectFrame, imageInput, offThread, onWorkers, startTransforms, stopTransforms, WorkerMinPixelsParam, WorkerParam, type Transforms } from './image.js';
import { StageError } from './stage-error.js';

const Params = Type.Object(
  {
    scale: Type.Number({ default: 1 / 255, description: 'multiplies each byte first: 1/255 for [0, 1], 1/127.5 with offset -1 for [-1, 1]' }),
    offset: Type.Number({ default: 0, description: 'added after scale' }),
    mean: Type.Array(Type.Number(), { minItems: 1, default: [0], description: 'subtracted after scale and offset: one value, or one per channel (ImageNet: [0.485, 0.456, 0.406])' }),
    std: Type.Array(Type.Number({ exclusiveMinimum: 0 }), { minItems: 1, default: [1], description: 'divides last: one value, or one per channel (ImageNet: [0.229, 0.224, 0.225])' }),
    dtype: Type.Literal('float32', { default: 'float32' }),
    layout: Type.Union([Type.Literal('NHWC'), Type.Literal('NCHW')], { default: 'NHWC', description: 'NHWC (TensorFlow, TFLite) or NCHW (PyTorch exports)' }),
    batch: Type.Boolean({ default: true, description: 'add a leading batch dimension of 1' }),
    worker: WorkerParam,
    workerMinPixels: WorkerMinPixelsParam,
  },
  { additionalProperties: false },
);
type NormalizeParams = Static<typeof Params>;

/**
 * `image.normalize`: turns each frame into the float tensor a model takes,
 * `y = (v * scale + offset - mean[c]) / std[c]` for every byte `v` of channel `c` (channels in the
 * frame's order: convert BGR camera frames to rgb24 first when the model wants RGB).
 * BlazeFace and MobileNet v2 (`x / 127.5 - 1`): `scale: 0.0078431373, offset: -1`; ImageNet
 * models: the default scale 1/255 with ImageNet's mean and std.
 *
 * `in`: image; `out`: tensor float32 `[1, H, W, C]` (NHWC) or `[1, C, H, W]` (NCHW), without the
 * 1 when `batch: false`. The tensor's data is a fresh Float32Array owned by the receivers, in
 * ordinary memory (engines such as onnxruntime-node refuse shared memory). Large frames are
 * normalised on worker threads (param `worker`) into a pooled shared slot and copied out once.
 */
export const imageNormalize = defineNode({
  use: 'image.normalize',
  role: 'stage',
  description: 'image to a float32 tensor: (x * scale + offset - mean) / std, NHWC or NCHW',
  params: Params,
  inputs: ['in'],
  outputs: ['out'],

  types(params, inputs) {
    const t = imageInput(inputs, 'image.normalize');
    const channels = t.format === null ? null : PIXEL_CHANNELS[t.format];
    return { out: { kind: 'tensor', dtype: 'float32', shape: tensorShape(params, t.width, t.height, channels) } };
  },

  async check(params, env) {
    const t = env.inputs['in'];
    if (t?.kind !== 'image' || t.format === null) return [];
    const problems: ConfigProblem[] = [];
    const why = (values: readonly number[]): string | undefined => perChannel(values, PIXEL_CHANNELS[t.format ?? 'rgb24'], t.format ?? 'rgb24');
    const mean = why(params.mean);
    const std = why(params.std);
    if (mean !== undefined) problems.push({ path: ['params', 'mean'], message: mean });
    if (std !== undefined) problems.push({ path: ['params', 'std'], message: std });
    return problems;
  },

  async start(ctx): Promise<Transforms> {
    return startTransforms(ctx);
  },

  async process(_port, message, ctx, state) {
    const src = expectFrame(message.value, 'image.normalize');
    const channels = PIXEL_CHANNELS[src.format];
    for (const values of [ctx.params.mean, ctx.params.std]) {
      const why = perChannel(values, channels, src.format);
      if (why !== undefined) throw new StageError('EAI_STAGE_INPUT', `image.normalize: ${why}`);
    }
    const count = src.width * src.height * channels;
    const options = normalizeOptions(ctx.params);
    let data: Float32Array;
    if (offThread(state, src.width * src.height)) {
      // The threads write into a pooled shared slot (posted to them once); the result is then
      // copied out once, because the tensor goes to an engine and onnxruntime-node refuses
      // typed arrays on a SharedArrayBuffer ("Invalid argument").
      const lease = state.pool.acquire(count * Float32Array.BYTES_PER_ELEMENT);
      try {
        const shared = new Float32Array(lease.data.buffer, lease.data.byteOffset, count);
        await onWorkers(state, src, (workers, frame) => workers.normalize(frame, shared, options));
        data = shared.slice();
      } finally {
        lease.release();
      }
    } else {
      data = new Float32Array(count);
      normalizeInto(src, data, options);
    }
    const shape = tensorShape(ctx.params, src.width, src.height, channels) as number[];
    await ctx.emit('out', new Tensor('float32', shape, data), message);
  },

  async stop(_ctx, state) {
    await stopTransforms(state);
  },
});

/** Normalises `src` into `dst` (`width * height * channels` floats) in this thread. */
export function normalizeInto(src: ImageFrame, dst: Float32Array, options: NormalizeOptions): void {
  const channels = PIXEL_CHANNELS[src.format];
  const table = normalizeTable(channels, options.scale, options.offset, options.mean, options.std);
  normalizePixels(src.data, src.width, src.height, channels, dst, options.layout, table, 0, src.height);
}

/** The kernel's options from the stage's params. */
export function normalizeOptions(params: Pick<NormalizeParams, 'scale' | 'offset' | 'mean' | 'std' | 'layout'>): NormalizeOptions {
  return { scale: params.scale, offset: params.offset, mean: params.mean, std: params.std, layout: params.layout };
}

/** The output shape for a `width × height × channels` image under `layout` and `batch`. */
export function tensorShape(params: { readonly layout: 'NHWC' | 'NCHW'; readonly batch: boolean }, width: number | null, height: number | null, channels: number | null): (number | null)[] {
  const shape = params.layout === 'NHWC' ? [height, width, channels] : [channels, height, width];
  return params.batch ? [1, ...shape] : shape;
}

function perChannel(values: readonly number[], channels: number, format: string): string | undefined {
  if (values.length === 1 || values.length === channels) return undefined;
  return `${values.length} values for a ${format} image of ${channels} channel${channels === 1 ? '' : 's'}: give one value or ${channels}`;
}
