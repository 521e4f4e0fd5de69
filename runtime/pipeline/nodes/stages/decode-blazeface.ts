import { Type, type Static } from '@sinclair/typebox';
import type { Tensor } from '../../../../drivers/tensor/tensor.js';
import { BLAZEFACE_BACK_256, BLAZEFACE_FRONT_128, ssdAnchors, type Anchor, type SsdAnchorOptions } from '../../anchors.js';
import { defineNode } from '../../definition.js';
import type { Detections } from '../../payloads.js';
import { nonMaxSuppression, outputTensor, tensorsInput, toPixels, type RelativeBox } from './decode-detections.js';
import { StageError } from './stage-error.js';

const Params = Type.Object(
  {
    anchors: Type.Union([Type.Literal('front-128'), Type.Literal('back-256')], { default: 'front-128', description: "the model's anchor layout: front-128 (short range, 128 px input) or back-256 (256 px input)" }),
    scoreThreshold: Type.Number({ minimum: 0, maximum: 1, default: 0.75, description: "minimum face score (sigmoid of the logit); MediaPipe's front-camera graph uses 0.75, its short-range solution 0.5 (which also finds blurred faces in the background)" }),
    iouThreshold: Type.Number({ minimum: 0, maximum: 1, default: 0.3, description: 'boxes overlapping a better one by more than this IoU are merged into it' }),
    maxFaces: Type.Integer({ minimum: 1, default: 10 }),
    nms: Type.Union([Type.Literal('weighted'), Type.Literal('plain')], { default: 'weighted', description: "weighted (MediaPipe's: the cluster's score-weighted mean box) or plain (the best box)" }),
    scores: Type.Array(Type.String(), { minItems: 1, default: ['Identity:0', 'Identity_1:0'], description: "outputs holding the logits, concatenated in anchor order (TFLite: ['classificators'])" }),
    boxes: Type.Array(Type.String(), { minItems: 1, default: ['Identity_2:0', 'Identity_3:0'], description: "outputs holding the 16 regressors per anchor, in anchor order (TFLite: ['regressors'])" }),
    imageWidth: Type.Optional(Type.Integer({ minimum: 1, description: 'width of the frame the model input was made from; boxes are scaled to it (default: the model input size)' })),
    imageHeight: Type.Optional(Type.Integer({ minimum: 1 })),
  },
  { additionalProperties: false },
);
type BlazefaceParams = Static<typeof Params>;

/** MediaPipe's names for BlazeFace's six keypoints, in output order. */
export const BLAZEFACE_KEYPOINTS = ['right_eye', 'left_eye', 'nose_tip', 'mouth_center', 'right_ear_tragion', 'left_ear_tragion'] as const;

/**
 * `decode.blazeface`: faces from MediaPipe BlazeFace outputs (the ONNX, TFLite and TF.js builds in
 * models/zoo). For each of the 896 anchors: score `sigmoid(clamp(logit, ±100))`; box centre
 * `anchor + (r0, r1) / inputSize`, size `(r2, r3) / inputSize`; six keypoints
 * `anchor + (r[4+2k], r[5+2k]) / inputSize`. Anchors under `scoreThreshold` (default 0.75) are
 * dropped, the rest merged by NMS (MediaPipe's defaults: weighted, IoU 0.3).
 *
 * `in`: tensors (an infer stage's `out`); `out`: detections, best first, in pixels of the model
 * input or of `imageWidth × imageHeight`, each with its six named keypoints. Boxes are not
 * clipped to the image (a face half outside keeps its true extent).
 */
export const decodeBlazeface = defineNode({
  use: 'decode.blazeface',
  role: 'stage',
  description: 'BlazeFace outputs (logits and regressors over 896 SSD anchors) to face boxes with keypoints',
  params: Params,
  inputs: ['in'],
  outputs: ['out'],

  types(_params, inputs) {
    tensorsInput(inputs, 'decode.blazeface');
    return { out: { kind: 'detections' } };
  },

  async start(ctx): Promise<{ readonly anchors: readonly Anchor[]; readonly options: SsdAnchorOptions }> {
    const options = ctx.params.anchors === 'back-256' ? BLAZEFACE_BACK_256 : BLAZEFACE_FRONT_128;
    return { anchors: ssdAnchors(options), options };
  },

  async process(_port, message, ctx, state) {
    const logits = concat(ctx.params.scores.map((n) => outputTensor(message.value, n, 'decode.blazeface')));
    const regressors = concat(ctx.params.boxes.map((n) => outputTensor(message.value, n, 'decode.blazeface')));
    await ctx.emit('out', decodeFaces(logits, regressors, state.anchors, state.options, ctx.params), message);
  },
});

/**
 * Faces from BlazeFace's logits (one per anchor) and regressors (16 per anchor), as
 * `decode.blazeface` describes. Pure: the stage's work without the pipeline.
 */
export function decodeFaces(logits: Float32Array, regressors: Float32Array, anchors: readonly Anchor[], options: SsdAnchorOptions, params: Pick<BlazefaceParams, 'scoreThreshold' | 'iouThreshold' | 'maxFaces' | 'nms' | 'imageWidth' | 'imageHeight'>): Detections {
  if (logits.length !== anchors.length || regressors.length !== anchors.length * 16) {
    throw new StageError('EAI_STAGE_INPUT', `decode.blazeface: ${anchors.length} anchors need ${anchors.length} logits and ${anchors.length * 16} regressors, got ${logits.length} and ${regressors.length}. Check the anchors param (front-128 / back-256) and the output names.`);
  }
  const sx = options.inputWidth;
  const sy = options.inputHeight;
  const candidates: RelativeBox[] = [];
  for (let i = 0; i < anchors.length; i++) {
    const score = 1 / (1 + Math.exp(-Math.max(-100, Math.min(100, logits[i] as number))));
    if (score < params.scoreThreshold) continue;
    const a = anchors[i] as Anchor;
    const r = regressors.subarray(i * 16, i * 16 + 16);
    const cx = ((r[0] as number) / sx) * a.width + a.x;
    const cy = ((r[1] as number) / sy) * a.height + a.y;
    const w = ((r[2] as number) / sx) * a.width;
    const h = ((r[3] as number) / sy) * a.height;
    const keypoints = [];
    for (let k = 0; k < 6; k++) keypoints.push({ x: ((r[4 + 2 * k] as number) / sx) * a.width + a.x, y: ((r[5 + 2 * k] as number) / sy) * a.height + a.y });
    candidates.push({ xmin: cx - w / 2, ymin: cy - h / 2, xmax: cx + w / 2, ymax: cy + h / 2, score, keypoints });
  }
  const width = params.imageWidth ?? options.inputWidth;
  const height = params.imageHeight ?? options.inputHeight;
  const faces = nonMaxSuppression(candidates, params.iouThreshold, params.maxFaces, params.nms);
  return { boxes: faces.map((f) => toPixels(f, width, height, { keypointNames: BLAZEFACE_KEYPOINTS })), imageWidth: width, imageHeight: height };
}

/** The float32 data of several outputs end to end (ONNX splits anchors 512 + 384; TFLite does not). */
function concat(tensors: readonly Tensor[]): Float32Array {
  for (const t of tensors) {
    if (t.dtype !== 'float32') throw new StageError('EAI_STAGE_INPUT', `decode.blazeface takes float32 outputs, got ${t.dtype} [${t.shape.join(', ')}].`);
  }
  if (tensors.length === 1) return (tensors[0] as Tensor<'float32'>).data;
  const out = new Float32Array(tensors.reduce((n, t) => n + t.size, 0));
  let at = 0;
  for (const t of tensors) {
    out.set((t as Tensor<'float32'>).data, at);
    at += t.size;
  }
  return out;
}
