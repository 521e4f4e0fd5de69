import { Type, type Static } from '@sinclair/typebox';
import { Tensor } from '../../../../drivers/tensor/tensor.js';
import { defineNode, PortTypeMismatch } from '../../definition.js';
import { describe } from '../../port-types.js';
import type { Detection, Detections, Keypoint } from '../../payloads.js';
import { outputTensor } from './decode-detections.js';
import { StageError } from './stage-error.js';

const Params = Type.Object(
  {
    output: Type.Optional(Type.String({ description: "which output of an infer stage's record to read (default: its only output)" })),
    order: Type.Union([Type.Literal('yx'), Type.Literal('xy')], { default: 'yx', description: 'coordinate order in each triple: yx (MoveNet: y, x, score) or xy' }),
    normalized: Type.Boolean({ default: true, description: 'coordinates are fractions of the input (true) or pixels (false)' }),
    scoreThreshold: Type.Number({ minimum: 0, maximum: 1, default: 0.3, description: 'keypoints below this do not count towards the box and the instance score' }),
    minInstanceScore: Type.Number({ minimum: 0, maximum: 1, default: 0.2, description: 'instances whose mean keypoint score is lower are left out' }),
    names: Type.Optional(Type.Array(Type.String(), { description: 'keypoint names in output order, e.g. the 17 COCO keypoints' })),
    imageWidth: Type.Integer({ minimum: 1, description: 'width of the frame (normalized: scales the fractions; pixels: the input size)' }),
    imageHeight: Type.Integer({ minimum: 1 }),
  },
  { additionalProperties: false },
);
type KeypointsParams = Static<typeof Params>;

/**
 * `decode.keypoints`: pose-style outputs `[..., N, K, 3]` (N instances of K keypoints, each
 * (y, x, score) or (x, y, score); MoveNet single-pose is `[1, 1, 17, 3]` yx) to detections: one
 * per instance whose mean keypoint score reaches `minInstanceScore`, its box the bounds of its
 * keypoints scoring at least `scoreThreshold`, its score that mean, and every keypoint with its
 * own score (and name, from `names`).
 *
 * `in`: a tensor or tensors (read at `output`); `out`: detections in pixels of
 * `imageWidth × imageHeight`, best first.
 */
export const decodeKeypoints = defineNode({
  use: 'decode.keypoints',
  role: 'stage',
  description: 'keypoint outputs [N, K, 3] (y, x, score) to detections with keypoints',
  params: Params,
  inputs: ['in'],
  outputs: ['out'],

  types(_params, inputs) {
    const t = inputs['in'];
    if (t !== undefined && t.kind !== 'tensor' && t.kind !== 'tensors' && t.kind !== 'any') throw new PortTypeMismatch('in', `decode.keypoints takes a keypoint tensor or an infer stage's outputs, not ${describe(t)}`);
    if (t?.kind === 'tensor' && t.shape !== null && (t.shape.length < 2 || (t.shape[t.shape.length - 1] !== null && t.shape[t.shape.length - 1] !== 3))) {
      throw new PortTypeMismatch('in', `decode.keypoints takes [..., K, 3] keypoints, not ${describe(t)}`);
    }
    return { out: { kind: 'detections' } };
  },

  async process(_port, message, ctx) {
    const value = message.value;
    let tensor: Tensor;
    if (value instanceof Tensor) tensor = value;
    else if (ctx.params.output !== undefined) tensor = outputTensor(value, ctx.params.output, 'decode.keypoints');
    else {
      const all = typeof value === 'object' && value !== null ? Object.values(value as Record<string, unknown>) : [];
      if (all.length !== 1 || !(all[0] instanceof Tensor)) throw new StageError('EAI_STAGE_INPUT', 'decode.keypoints got several outputs (or none): set params.output to the one holding the keypoints.');
      tensor = all[0];
    }
    await ctx.emit('out', decodeKeypointTensor(tensor, ctx.params), message);
  },
});

/** Detections from a `[..., N, K, 3]` keypoint tensor, as `decode.keypoints` describes. */
export function decodeKeypointTensor(tensor: Tensor, params: Omit<KeypointsParams, 'output'>): Detections {
  const rank = tensor.shape.length;
  const k = tensor.shape[rank - 2];
  if (rank < 2 || tensor.shape[rank - 1] !== 3 || k === undefined || k === 0) throw new StageError('EAI_STAGE_INPUT', `decode.keypoints takes [..., K, 3] keypoints, got [${tensor.shape.join(', ')}].`);
  const values = tensor.toNumbers();
  const instances = values.length / (k * 3);
  const sx = params.normalized ? params.imageWidth : 1;
  const sy = params.normalized ? params.imageHeight : 1;
  const boxes: Detection[] = [];
  for (let n = 0; n < instances; n++) {
    const keypoints: Keypoint[] = [];
    let sum = 0;
    let counted = 0;
    let xmin = Infinity;
    let ymin = Infinity;
    let xmax = -Infinity;
    let ymax = -Infinity;
    for (let j = 0; j < k; j++) {
      const at = (n * k + j) * 3;
      const a = values[at] as number;
      const b = values[at + 1] as number;
      const score = values[at + 2] as number;
      const x = (params.order === 'yx' ? b : a) * sx;
      const y = (params.order === 'yx' ? a : b) * sy;
      const name = params.names?.[j];
      keypoints.push(name === undefined ? { x, y, score } : { x, y, score, name });
      sum += score;
      if (score >= params.scoreThreshold) {
        counted++;
        xmin = Math.min(xmin, x);
        ymin = Math.min(ymin, y);
        xmax = Math.max(xmax, x);
        ymax = Math.max(ymax, y);
      }
    }
    const score = sum / k;
    if (score < params.minInstanceScore || counted === 0) continue;
    boxes.push({ x: xmin, y: ymin, width: xmax - xmin, height: ymax - ymin, score, keypoints });
  }
  boxes.sort((a, b) => b.score - a.score);
  return { boxes, imageWidth: params.imageWidth, imageHeight: params.imageHeight };
}
