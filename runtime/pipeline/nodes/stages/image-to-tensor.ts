import { Type } from '@sinclair/typebox';
import { PIXEL_CHANNELS, type ImageFrame } from '../../../../drivers/sensors/types.js';
import { Tensor } from '../../../../drivers/tensor/tensor.js';
import { defineNode } from '../../definition.js';
import { isShared } from '../../frame-pool.js';
import { expectFrame, imageInput } from './image.js';
import { tensorShape } from './image-normalize.js';

const Params = Type.Object(
  {
    dtype: Type.Union([Type.Literal('uint8'), Type.Literal('int8')], { default: 'uint8', description: "uint8: the bytes as they are (quantised models such as SSD MobileNet on TFLite / Edge TPU); int8: byte - 128 (full-integer models with zero point -128)" }),
    layout: Type.Union([Type.Literal('NHWC'), Type.Literal('NCHW')], { default: 'NHWC' }),
    batch: Type.Boolean({ default: true, description: 'add a leading batch dimension of 1' }),
  },
  { additionalProperties: false },
);

/**
 * `image.to_tensor`: a frame as an 8-bit tensor for quantised models, which take pixel bytes
 * directly (SSD MobileNet v2 TFLite: uint8 `[1, 300, 300, 3]`). `in`: image; `out`: tensor
 * uint8 / int8 `[1, H, W, C]` or `[1, C, H, W]`.
 *
 * uint8 NHWC of a frame in ordinary memory is zero-copy: the tensor's data is the frame's own bytes
 * (frames are never written after they are emitted, so sharing is safe). Frames in shared memory
 * (what the image stages emit) are copied once into ordinary memory, because onnxruntime-node
 * refuses typed arrays on a SharedArrayBuffer; a 300 × 300 RGB copy costs tens of microseconds.
 * Other combinations copy while converting, in the pipeline's thread (one pass over the bytes, no
 * arithmetic worth a worker).
 */
export const imageToTensor = defineNode({
  use: 'image.to_tensor',
  role: 'stage',
  description: 'image to a uint8 or int8 tensor (NHWC zero-copy, or NCHW) for quantised models',
  params: Params,
  inputs: ['in'],
  outputs: ['out'],

  types(params, inputs) {
    const t = imageInput(inputs, 'image.to_tensor');
    const channels = t.format === null ? null : PIXEL_CHANNELS[t.format];
    return { out: { kind: 'tensor', dtype: params.dtype, shape: tensorShape(params, t.width, t.height, channels) } };
  },

  async process(_port, message, ctx) {
    const frame = expectFrame(message.value, 'image.to_tensor');
    await ctx.emit('out', frameToTensor(frame, ctx.params), message);
  },
});

/** The frame as a tensor (see `image.to_tensor`); uint8 NHWC shares the bytes of an unshared frame. */
export function frameToTensor(frame: ImageFrame, params: { readonly dtype: 'uint8' | 'int8'; readonly layout: 'NHWC' | 'NCHW'; readonly batch: boolean }): Tensor<'uint8' | 'int8'> {
  const channels = PIXEL_CHANNELS[frame.format];
  const shape = tensorShape(params, frame.width, frame.height, channels) as number[];
  if (params.dtype === 'uint8' && params.layout === 'NHWC') return new Tensor('uint8', shape, isShared(frame.data) ? frame.data.slice() : frame.data);
  const n = frame.data.length;
  const out = params.dtype === 'uint8' ? new Uint8Array(n) : new Int8Array(n);
  // int8 = byte - 128 maps 0..255 onto -128..127 exactly, as a zero point of -128 expects.
  const shift = params.dtype === 'int8' ? 128 : 0;
  if (params.layout === 'NHWC') {
    for (let i = 0; i < n; i++) out[i] = (frame.data[i] as number) - shift;
  } else {
    const plane = frame.width * frame.height;
    for (let p = 0; p < plane; p++) for (let c = 0; c < channels; c++) out[c * plane + p] = (frame.data[p * channels + c] as number) - shift;
  }
  return out instanceof Uint8Array ? new Tensor('uint8', shape, out) : new Tensor('int8', shape, out);
}
