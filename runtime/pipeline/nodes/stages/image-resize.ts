import { Type } from '@sinclair/typebox';
import { PIXEL_CHANNELS, type ImageFrame } from '../../../../drivers/sensors/types.js';
import { defineNode } from '../../definition.js';
import { resizeBilinear, resizeNearest } from '../../image-kernels.js';
import type { Interpolation } from '../../transform-worker.js';
import { expectFrame, imageInput, newFrame, offThread, onWorkers, startTransforms, stopTransforms, WorkerMinPixelsParam, WorkerParam, type Transforms } from './image.js';

const Params = Type.Object(
  {
    width: Type.Integer({ minimum: 1, description: 'output width, pixels' }),
    height: Type.Integer({ minimum: 1, description: 'output height, pixels' }),
    interpolation: Type.Union([Type.Literal('nearest'), Type.Literal('bilinear')], { default: 'bilinear', description: 'bilinear (half-pixel centres, as OpenCV INTER_LINEAR) or nearest' }),
    worker: WorkerParam,
    workerMinPixels: WorkerMinPixelsParam,
  },
  { additionalProperties: false },
);

/**
 * `image.resize`: scales each frame to `width × height` (aspect ratio not kept: crop first to
 * keep it), same pixel format. `in`: image; `out`: image `width × height` of the input's format.
 * Large outputs are computed on worker threads in shared memory (param `worker`).
 */
export const imageResize = defineNode({
  use: 'image.resize',
  role: 'stage',
  description: 'scale images to width × height (bilinear or nearest), in a worker thread when large',
  params: Params,
  inputs: ['in'],
  outputs: ['out'],

  types(params, inputs) {
    const t = imageInput(inputs, 'image.resize');
    return { out: { kind: 'image', width: params.width, height: params.height, format: t.format } };
  },

  async start(ctx): Promise<Transforms> {
    return startTransforms(ctx);
  },

  async process(_port, message, ctx, state) {
    const src = expectFrame(message.value, 'image.resize');
    const { width, height, interpolation } = ctx.params;
    const out = newFrame(width, height, src.format);
    if (offThread(state, width * height)) await onWorkers(state, src, (workers, shared) => workers.resize(shared, out, interpolation));
    else resizeInto(src, out, interpolation);
    await ctx.emit('out', out, message);
  },

  async stop(_ctx, state) {
    await stopTransforms(state);
  },
});

/** Resizes `src` into `dst` (same format; `dst`'s size is the target) in this thread. */
export function resizeInto(src: ImageFrame, dst: ImageFrame, interpolation: Interpolation): void {
  const resize = interpolation === 'nearest' ? resizeNearest : resizeBilinear;
  resize(src.data, src.width, src.height, dst.data, dst.width, dst.height, PIXEL_CHANNELS[src.format], 0, dst.height);
}
