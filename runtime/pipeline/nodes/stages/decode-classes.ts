import { Type, type Static } from '@sinclair/typebox';
import { Tensor } from '../../../../drivers/tensor/tensor.js';
import { defineNode, PortTypeMismatch, type ConfigProblem } from '../../definition.js';
import { describe } from '../../port-types.js';
import { labelsProblems, LabelsParam, loadLabels, outputTensor } from './decode-detections.js';
import { StageError } from './stage-error.js';

const Params = Type.Object(
  {
    topK: Type.Integer({ minimum: 1, default: 5 }),
    labels: Type.Optional(LabelsParam),
    activation: Type.Union([Type.Literal('none'), Type.Literal('softmax'), Type.Literal('sigmoid')], { default: 'none', description: 'none: the outputs are already probabilities; softmax: logits of one choice; sigmoid: independent logits' }),
    scoreThreshold: Type.Number({ default: 0, description: 'leave out classes scoring below this (after activation)' }),
    output: Type.Optional(Type.String({ description: "which output of an infer stage's record to read (default: its only output)" })),
    scale: Type.Optional(Type.Number({ description: 'quantised outputs: score = (value - zeroPoint) * scale' })),
    zeroPoint: Type.Number({ default: 0 }),
  },
  { additionalProperties: false },
);
type ClassesParams = Static<typeof Params>;

/** One class of a `classes` value. */
export interface ClassScore {
  readonly id: number;
  readonly score: number;
  readonly label?: string;
}

/** The value on a `classes` port: the best classes, best first. Plain JSON. */
export interface Classes {
  readonly classes: readonly ClassScore[];
}

/**
 * `decode.classes`: the `topK` best classes of a classifier's scores, named from `labels`.
 * `in`: a tensor `[N]` or `[1, N]` (one item; a batch is refused), or tensors (an infer stage's
 * record, read at `output`); `out`: classes.
 */
export const decodeClasses = defineNode({
  use: 'decode.classes',
  role: 'stage',
  description: 'classifier scores to the top-k labelled classes',
  params: Params,
  inputs: ['in'],
  outputs: ['out'],

  types(_params, inputs) {
    const t = inputs['in'];
    if (t !== undefined && t.kind !== 'tensor' && t.kind !== 'tensors' && t.kind !== 'any') throw new PortTypeMismatch('in', `decode.classes takes a tensor of scores or an infer stage's outputs, not ${describe(t)}`);
    return { out: { kind: 'classes' } };
  },

  async check(params, env): Promise<readonly ConfigProblem[]> {
    return labelsProblems(params.labels, env.baseDir);
  },

  async start(ctx): Promise<{ readonly labels: ReadonlyMap<number, string> }> {
    return { labels: await loadLabels(ctx.params.labels, ctx.baseDir) };
  },

  async process(_port, message, ctx, state) {
    await ctx.emit('out', topClasses(scoresOf(message.value, ctx.params.output), state.labels, ctx.params), message);
  },
});

/** The best classes of one item's scores, as `decode.classes` describes. */
export function topClasses(scores: Tensor, labels: ReadonlyMap<number, string>, params: Pick<ClassesParams, 'topK' | 'activation' | 'scoreThreshold' | 'scale' | 'zeroPoint'>): Classes {
  const classes = scores.shape[scores.shape.length - 1] ?? 1;
  if (scores.size !== classes) throw new StageError('EAI_STAGE_INPUT', `decode.classes decodes one item; got scores of shape [${scores.shape.join(', ')}] (a batch of ${scores.size / Math.max(1, classes)}).`);
  let values = scores.toNumbers();
  if (params.scale !== undefined) values = values.map((v) => (v - params.zeroPoint) * (params.scale as number));
  if (params.activation === 'softmax') values = softmax(values);
  else if (params.activation === 'sigmoid') values = values.map((v) => 1 / (1 + Math.exp(-v)));
  const order = values.map((score, id) => ({ id, score })).filter((c) => c.score >= params.scoreThreshold);
  // Ties keep the lower id first (sort is stable), so results are the same on every run.
  order.sort((a, b) => b.score - a.score);
  return {
    classes: order.slice(0, params.topK).map((c) => {
      const label = labels.get(c.id);
      return label === undefined ? c : { ...c, label };
    }),
  };
}

function scoresOf(value: unknown, output: string | undefined): Tensor {
  if (value instanceof Tensor) return value;
  if (output !== undefined) return outputTensor(value, output, 'decode.classes');
  const record = typeof value === 'object' && value !== null ? Object.values(value as Record<string, unknown>) : [];
  const only = record[0];
  if (record.length === 1 && only instanceof Tensor) return only;
  throw new StageError('EAI_STAGE_INPUT', `decode.classes got ${record.length === 0 ? 'no tensor' : `${record.length} outputs`}: set params.output to the one holding the scores.`);
}

function softmax(values: readonly number[]): number[] {
  const max = values.reduce((m, v) => (v > m ? v : m), -Infinity);
  const exps = values.map((v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / sum);
}
