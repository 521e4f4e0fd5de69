import { AiosError } from '../../drivers/errors.js';
import type { Feeds, Outputs } from '../../drivers/hal/types.js';
import { Tensor } from '../../drivers/tensor/tensor.js';
import type { BatchLayout } from './batching.js';
import { rowsOf, split, stack } from './batching.js';

/** Anything that answers inference requests: an InferenceService (local, peer-backed or both). */
export interface Runner {
  infer(feeds: Feeds): Promise<Outputs>;
}

/** An ensemble or split that could not produce a whole answer. */
export class AggregateError extends AiosError {}

/**
 * How ensemble members' outputs are combined: `mean` and `max` elementwise over float outputs
 * (every member must give the same names, dtypes and shapes); a function for anything else
 * (majority vote over classes, weighted means, box fusion).
 */
export type Combine = 'mean' | 'max' | ((outputs: readonly Outputs[]) => Outputs);

/**
 * Runs the same inputs on every member at once (models of an ensemble, or one model on several
 * peers for redundancy) and combines what they answer. Members that fail are left out as long as
 * at least `quorum` answer (default: all of them); the result says who answered.
 */
export async function ensemble(members: readonly Runner[], feeds: Feeds, combine: Combine, options: { readonly quorum?: number } = {}): Promise<{ outputs: Outputs; answered: number; failures: readonly Error[] }> {
  if (members.length === 0) throw new AggregateError('EAI_AGGREGATE_EMPTY', 'an ensemble needs at least one member.');
  const quorum = options.quorum ?? members.length;
  const settled = await Promise.allSettled(members.map((m) => m.infer(feeds)));
  const answers = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  const failures = settled.flatMap((s) => (s.status === 'rejected' ? [s.reason instanceof Error ? s.reason : new Error(String(s.reason))] : []));
  if (answers.length < quorum) {
    throw new AggregateError('EAI_AGGREGATE_QUORUM', `only ${answers.length} of ${members.length} ensemble members answered, ${quorum} needed: ${failures.map((f) => f.message).join('; ')}`, { details: { answered: answers.length, quorum } });
  }
  const outputs = typeof combine === 'function' ? combine(answers) : elementwise(answers, combine);
  return { outputs, answered: answers.length, failures };
}

/**
 * Splits a batch of inputs across runners (peers, devices) in contiguous row ranges, runs the
 * parts at once and puts the outputs back together in the original order. A part whose runner
 * fails is sent to the next runner, so one slow or lost peer costs time, not the answer. Rows
 * are shared out evenly, or by `weights` (e.g. each runner's measured speed).
 */
export async function splitAcross(runners: readonly Runner[], feeds: Feeds, layout: BatchLayout, options: { readonly weights?: readonly number[] } = {}): Promise<Outputs> {
  if (runners.length === 0) throw new AggregateError('EAI_AGGREGATE_EMPTY', 'splitting a batch needs at least one runner.');
  const rows = rowsOf(feeds, layout);
  const counts = shareRows(rows, runners.length, options.weights);
  const parts: { feeds: Feeds; rows: number; runner: number }[] = [];
  let start = 0;
  counts.forEach((count, runner) => {
    if (count === 0) return;
    parts.push({ feeds: sliceRows(feeds, layout, start, count), rows: count, runner });
    start += count;
  });
  const outputs = await Promise.all(
    parts.map(async (part) => {
      const errors: string[] = [];
      for (let k = 0; k < runners.length; k++) {
        const runner = runners[(part.runner + k) % runners.length] as Runner;
        try {
          return await runner.infer(part.feeds);
        } catch (error) {
          errors.push(error instanceof Error ? error.message : String(error));
        }
      }
      throw new AggregateError('EAI_AGGREGATE_PART_FAILED', `rows ${part.runner} of the split failed on every runner: ${errors.join('; ')}`);
    }),
  );
  // Stacking the parts' outputs is the batching layout's input side turned round: outputs split
  // along their own axes, so stack them by a layout whose inputs are the outputs.
  const outLayout: BatchLayout = { ...layout, inputs: { ...layout.outputs } };
  return stack(outputs, outLayout).feeds;
}

/** `rows` shared out over `n` runners, by weight (default equal), every row placed. */
function shareRows(rows: number, n: number, weights?: readonly number[]): number[] {
  const w = weights !== undefined && weights.length === n && weights.every((x) => x >= 0) && weights.some((x) => x > 0) ? weights : Array.from({ length: n }, () => 1);
  const total = w.reduce((a, b) => a + b, 0);
  const counts = w.map((x) => Math.floor((rows * x) / total));
  let left = rows - counts.reduce((a, b) => a + b, 0);
  for (let i = 0; left > 0; i = (i + 1) % n) {
    if ((w[i] ?? 0) > 0) {
      counts[i] = (counts[i] ?? 0) + 1;
      left--;
    }
  }
  return counts;
}

/** Rows [start, start + count) of every batched input; shared inputs as they are. */
function sliceRows(feeds: Feeds, layout: BatchLayout, start: number, count: number): Feeds {
  const total = rowsOf(feeds, layout);
  const sizes = [start, count, total - start - count].filter((n) => n > 0);
  const index = start > 0 ? 1 : 0;
  // split() cuts outputs along the layout's output axes; here the "outputs" are the inputs.
  const inLayout: BatchLayout = { ...layout, outputs: Object.fromEntries(Object.entries(layout.inputs).filter((e): e is [string, number] => e[1] !== null)) };
  const batched = Object.fromEntries(Object.entries(feeds).filter(([name]) => layout.inputs[name] !== null && layout.inputs[name] !== undefined));
  const pieces = split(batched, sizes, inLayout);
  const shared = Object.fromEntries(Object.entries(feeds).filter(([name]) => layout.inputs[name] === null));
  return { ...shared, ...(pieces[index] as Outputs) };
}

function elementwise(answers: readonly Outputs[], how: 'mean' | 'max'): Outputs {
  const first = answers[0] as Outputs;
  const out: Outputs = {};
  for (const [name, t] of Object.entries(first)) {
    if (t.dtype !== 'float32' && t.dtype !== 'float64') throw new AggregateError('EAI_AGGREGATE_DTYPE', `output '${name}' is ${t.dtype}; '${how}' combines float outputs only: pass a combine function for it.`, { details: { output: name } });
    const acc = new (t.dtype === 'float32' ? Float32Array : Float64Array)(t.data.length);
    for (const a of answers) {
      const u = a[name];
      if (u === undefined || u.dtype !== t.dtype || u.shape.join() !== t.shape.join()) throw new AggregateError('EAI_AGGREGATE_SHAPE', `ensemble members disagree on output '${name}' (${t.dtype} [${t.shape.join(', ')}] vs ${u === undefined ? 'missing' : `${u.dtype} [${u.shape.join(', ')}]`}).`, { details: { output: name } });
    }
    for (let i = 0; i < acc.length; i++) {
      let v = how === 'mean' ? 0 : Number.NEGATIVE_INFINITY;
      for (const a of answers) {
        const x = (a[name] as Tensor<'float32'>).data[i] as number;
        v = how === 'mean' ? v + x : Math.max(v, x);
      }
      acc[i] = how === 'mean' ? v / answers.length : v;
    }
    out[name] = new Tensor(t.dtype, t.shape, acc);
  }
  return out;
}
