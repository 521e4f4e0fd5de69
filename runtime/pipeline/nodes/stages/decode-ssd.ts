import { Type, type Static } from '@sinclair/typebox';
import { defineNode, type ConfigProblem } from '../../definition.js';
import type { Detection, Detections } from '../../payloads.js';
import { labelsProblems, LabelsParam, loadLabels, outputTensor, tensorsInput } from './decode-detections.js';

const Params = Type.Object(
  {
    scoreThreshold: Type.Number({ minimum: 0, maximum: 1, default: 0.5 }),
    labels: Type.Optional(LabelsParam),
    maxDetections: Type.Optional(Type.Integer({ minimum: 1 })),
    boxes: Type.String({ default: 'TFLite_Detection_PostProcess', description: 'output with [1, N, 4] boxes (ymin, xmin, ymax, xmax) as fractions' }),
    classes: Type.String({ default: 'TFLite_Detection_PostProcess:1', description: 'output with [1, N] class ids' }),
    scores: Type.String({ default: 'TFLite_Detection_PostProcess:2', description: 'output with [1, N] scores' }),
    count: Type.String({ default: 'TFLite_Detection_PostProcess:3', description: 'output with the number of valid detections' }),
    imageWidth: Type.Integer({ minimum: 1, default: 300, description: 'boxes are scaled to this width (the frame the model input was made from; 300 is the SSD MobileNet v2 input)' }),
    imageHeight: Type.Integer({ minimum: 1, default: 300 }),
  },
  { additionalProperties: false },
);
type SsdParams = Static<typeof Params>;

/**
 * `decode.ssd`: detections from a model that ends in TFLite's `TFLite_Detection_PostProcess`
 * (SSD MobileNet on TFLite and the Edge TPU): boxes, class ids, scores and a count, already
 * suppressed by the model. Keeps the first `count` detections scoring at least `scoreThreshold`
 * and names their class from `labels`.
 *
 * `in`: tensors (an infer stage's `out`); `out`: detections, best first, in pixels of
 * `imageWidth × imageHeight`, each with `classId` and `label` (when the labels have the id).
 */
export const decodeSsd = defineNode({
  use: 'decode.ssd',
  role: 'stage',
  description: 'TFLite_Detection_PostProcess outputs (boxes, classes, scores, count) to labelled detections',
  params: Params,
  inputs: ['in'],
  outputs: ['out'],

  types(_params, inputs) {
    tensorsInput(inputs, 'decode.ssd');
    return { out: { kind: 'detections' } };
  },

  async check(params, env): Promise<readonly ConfigProblem[]> {
    return labelsProblems(params.labels, env.baseDir);
  },

  async start(ctx): Promise<{ readonly labels: ReadonlyMap<number, string> }> {
    return { labels: await loadLabels(ctx.params.labels, ctx.baseDir) };
  },

  async process(_port, message, ctx, state) {
    const get = (name: string): number[] => outputTensor(message.value, name, 'decode.ssd').toNumbers();
    await ctx.emit('out', decodeSsdOutputs({ boxes: get(ctx.params.boxes), classes: get(ctx.params.classes), scores: get(ctx.params.scores), count: get(ctx.params.count)[0] ?? 0 }, state.labels, ctx.params), message);
  },
});

/** The outputs of `TFLite_Detection_PostProcess` as plain numbers. */
export interface SsdOutputs {
  /** 4 per detection: ymin, xmin, ymax, xmax as fractions. */
  readonly boxes: readonly number[];
  readonly classes: readonly number[];
  readonly scores: readonly number[];
  readonly count: number;
}

/** Labelled detections from SSD post-processed outputs, as `decode.ssd` describes. */
export function decodeSsdOutputs(out: SsdOutputs, labels: ReadonlyMap<number, string>, params: Pick<SsdParams, 'scoreThreshold' | 'maxDetections' | 'imageWidth' | 'imageHeight'>): Detections {
  const n = Math.min(Math.round(out.count), out.scores.length, out.classes.length, Math.floor(out.boxes.length / 4));
  const boxes: Detection[] = [];
  for (let i = 0; i < n; i++) {
    const score = out.scores[i] as number;
    if (score < params.scoreThreshold) continue;
    const [ymin, xmin, ymax, xmax] = out.boxes.slice(i * 4, i * 4 + 4) as [number, number, number, number];
    const classId = Math.round(out.classes[i] as number);
    const label = labels.get(classId);
    boxes.push({ x: xmin * params.imageWidth, y: ymin * params.imageHeight, width: (xmax - xmin) * params.imageWidth, height: (ymax - ymin) * params.imageHeight, score, classId, ...(label === undefined ? {} : { label }) });
  }
  // The model lists detections best first already; sort anyway so the contract holds for any model.
  boxes.sort((a, b) => b.score - a.score);
  return { boxes: params.maxDetections === undefined ? boxes : boxes.slice(0, params.maxDetections), imageWidth: params.imageWidth, imageHeight: params.imageHeight };
}
