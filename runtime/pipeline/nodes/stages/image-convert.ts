import { Type } from '@sinclair/typebox';
import type { ImageFrame } from '../../../../drivers/sensors/types.js';
import { defineNode } from '../../definition.js';
import { convertPixels } from '../../image-kernels.js';
import { expectFrame, imageInput, newFrame, offThread, onWorkers, startTransforms, stopTransforms, WorkerMinPixelsParam, WorkerParam, type Transforms } from './image.js';

/** The pixel formats as a TypeBox union, for params. */
export const PixelFormatParam = Type.Union([Type.Literal('rgb24'), Type.Literal('bgr24'), Type.Literal('rgba'), Type.Literal('gray8')]);

const Params = Type.Object(
  {
    format: PixelFormatParam,
    worker: WorkerParam,
    workerMinPixels: WorkerMinPixelsParam,
  },
  { additionalProperties: false },
);

/**
 * `image.convert`: changes the pixel format of each frame: RGB ↔ BGR (channel swap), to RGBA
 * (opaque alpha) and back (alpha dropped), to gray (BT.601 luma, rounded) and from gray (value in
 * every channel). A frame already in `format` passes through unchanged (same object, no copy).
 * `in`: image; `out`: image of the same size in `format`.
 */
export const imageConvert = defineNode({
  use: 'image.convert',
  role: 'stage',
  description: 'convert images between rgb24, bgr24, rgba and gray8',
  params: Params,
  inputs: ['in'],
  outputs: ['out'],

  types(params, inputs) {
    const t = imageInput(inputs, 'image.convert');
    return { out: { kind: 'image', width: t.width, height: t.height, format: params.format } };
  },

  async start(ctx): Promise<Transforms> {
    return startTransforms(ctx);
  },

  async process(_port, message, ctx, state) {
    const src = expectFrame(message.value, 'image.convert');
    if (src.format === ctx.params.format) {
      await ctx.emit('out', src, message);
      return;
    }
    const out = newFrame(src.width, src.height, ctx.params.format);
    if (offThread(state, src.width * src.height)) await onWorkers(state, src, (workers, shared) => workers.convert(shared, out));
    else convertInto(src, out);
    await ctx.emit('out', out, message);
  },

  async stop(_ctx, state) {
    await stopTransforms(state);
  },
});

/** Converts `src` into `dst`'s format (same size) in this thread. */
export function convertInto(src: ImageFrame, dst: ImageFrame): void {
  convertPixels(src.data, src.format, dst.data, dst.format, 0, src.width * src.height);
}
