import { Type, type Static } from '@sinclair/typebox';
import { PIXEL_CHANNELS, type ImageFrame } from '../../../../drivers/sensors/types.js';
import { defineNode, PortTypeMismatch, type ConfigProblem } from '../../definition.js';
import { expectFrame, imageInput, newFrame } from './image.js';
import { StageError } from './stage-error.js';

const Params = Type.Object(
  {
    x: Type.Optional(Type.Integer({ minimum: 0, description: 'left edge, pixels (with y; or use center)' })),
    y: Type.Optional(Type.Integer({ minimum: 0, description: 'top edge, pixels' })),
    center: Type.Optional(Type.Boolean({ description: 'true: take the rectangle from the middle of the frame instead of x, y' })),
    width: Type.Integer({ minimum: 1 }),
    height: Type.Integer({ minimum: 1 }),
  },
  { additionalProperties: false },
);
type CropParams = Static<typeof Params>;

/**
 * `image.crop`: cuts a `width × height` rectangle out of each frame, at (`x`, `y`) or, with
 * `center: true`, from the middle (rounding the offset down). `in`: image; `out`: image
 * `width × height` of the input's format. A rectangle that does not fit the frame is a
 * PortTypeMismatch when the input size is known before the run, a StageError on each frame
 * otherwise. Always in the pipeline's thread: a crop is one row copy per output row, cheaper
 * than telling a worker about it.
 */
export const imageCrop = defineNode({
  use: 'image.crop',
  role: 'stage',
  description: 'cut a width × height rectangle out of images, at x, y or from the centre',
  params: Params,
  inputs: ['in'],
  outputs: ['out'],

  types(params, inputs) {
    const t = imageInput(inputs, 'image.crop');
    if (t.width !== null && t.height !== null) {
      const why = misfit(params, t.width, t.height);
      if (why !== undefined) throw new PortTypeMismatch('in', why);
    }
    return { out: { kind: 'image', width: params.width, height: params.height, format: t.format } };
  },

  async check(params) {
    const problems: ConfigProblem[] = [];
    const placed = params.x !== undefined || params.y !== undefined;
    if (params.center === true && placed) problems.push({ path: ['params', 'center'], message: 'give either x and y or center: true, not both' });
    else if (params.center !== true && (params.x === undefined || params.y === undefined)) problems.push({ path: ['params', params.x === undefined ? 'x' : 'y'], message: 'image.crop needs x and y (the top-left corner), or center: true' });
    return problems;
  },

  async process(_port, message, ctx) {
    const src = expectFrame(message.value, 'image.crop');
    const why = misfit(ctx.params, src.width, src.height);
    if (why !== undefined) throw new StageError('EAI_STAGE_INPUT', why);
    await ctx.emit('out', cropFrame(src, origin(ctx.params, src.width, src.height)), message);
  },
});

/** The rectangle at `at` of `src`, `width × height`, copied into a new shared frame. */
export function cropFrame(src: ImageFrame, at: { readonly x: number; readonly y: number; readonly width: number; readonly height: number }): ImageFrame {
  const out = newFrame(at.width, at.height, src.format);
  const ch = PIXEL_CHANNELS[src.format];
  const row = at.width * ch;
  for (let r = 0; r < at.height; r++) {
    const from = ((at.y + r) * src.width + at.x) * ch;
    out.data.set(src.data.subarray(from, from + row), r * row);
  }
  return out;
}

function origin(params: CropParams, width: number, height: number): { x: number; y: number; width: number; height: number } {
  const x = params.center === true ? Math.floor((width - params.width) / 2) : (params.x ?? 0);
  const y = params.center === true ? Math.floor((height - params.height) / 2) : (params.y ?? 0);
  return { x, y, width: params.width, height: params.height };
}

/** Why the crop does not fit a `width × height` frame, or undefined when it does. */
function misfit(params: CropParams, width: number, height: number): string | undefined {
  const r = origin(params, width, height);
  if (r.x >= 0 && r.y >= 0 && r.x + r.width <= width && r.y + r.height <= height) return undefined;
  return `the crop ${r.width}×${r.height} at (${r.x}, ${r.y}) does not fit a ${width}×${height} frame: make it smaller or move it inside`;
}
