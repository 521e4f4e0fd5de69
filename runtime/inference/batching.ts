import { createHash } from 'node:crypto';
import { AiosError } from '../../drivers/errors.js';
import type { Feeds, Outputs, TensorSpec } from '../../drivers/hal/types.js';
import { shapeSize, Tensor } from '../../drivers/tensor/tensor.js';

/**
 * Batching's pure tensor work: where a model's batch dimension is ({@link batchLayout}), which
 * requests may share a batch ({@link batchKey}), and stacking requests into one batch and splitting
 * the batch's outputs back ({@link stack}, {@link split}, exact inverses). No timing, no engine:
 * the {@link Batcher} in batcher.ts decides when; these functions only say how.
 */

/** A request that cannot be batched, a model without a batch dimension, a batch output that does not split. */
export class BatchError extends AiosError {}

/**
 * Where requests stack in one model's inputs and where its outputs split. Built once per model by
 * {@link batchLayout}; immutable.
 */
export interface BatchLayout {
  /** The model's name (its file), for messages. */
  readonly model: string;
  /** Per input: the axis requests stack along, or null when the input is shared (one value for the whole batch, byte-equal in every request of it). */
  readonly inputs: Readonly<Record<string, number | null>>;
  /** Per output: the axis to split along. */
  readonly outputs: Readonly<Record<string, number>>;
  /** The batch dimension's name in the model (`batch`, `N`, `unk__123`, ...). */
  readonly symbol: string;
}

/** Names models commonly give their batch dimension, best first; used when several names qualify. */
const PREFERRED = ['batch', 'batch_size', 'batchsize', 'batch_dim', 'n', 'b', 'bs', 'nbatch', 'num_batches'];

/**
 * Finds a model's batch dimension from the names its format gives dynamic dimensions
 * (`TensorSpec.dimNames`, ONNX `dim_param`): a name that appears exactly once in every output and
 * in at least one input. Inputs without it are shared (a sample rate, a threshold): requests batch
 * together only when those are equal. When several names qualify, a conventional batch name
 * (`batch`, `batch_size`, `N`...) wins, then onnxruntime's generated `unk__` names, then the name
 * most often found on axis 0; `symbol` forces one.
 *
 * Throws BatchError `EAI_BATCH_UNSUPPORTED` naming the model, its shapes and the fix when no name
 * qualifies (a model exported with a fixed batch of 1, such as BlazeFace [1, 128, 128, 3]), or when
 * `symbol` does not qualify.
 */
export function batchLayout(inputs: readonly TensorSpec[], outputs: readonly TensorSpec[], model: string, symbol?: string): BatchLayout {
  const qualifies = (name: string): boolean => outputs.length > 0 && outputs.every((o) => axisOf(o, name) !== undefined) && inputs.some((i) => axisOf(i, name) !== undefined);
  const names = [...new Set([...inputs, ...outputs].flatMap((s) => s.dimNames ?? []).filter((n): n is string => n !== null))];
  const candidates = names.filter(qualifies);
  const shapes = `inputs ${describe(inputs)}; outputs ${describe(outputs)}`;
  if (symbol !== undefined && !candidates.includes(symbol)) {
    throw new BatchError('EAI_BATCH_UNSUPPORTED', `Model ${model} has no batch dimension named '${symbol}' (a name found once in every output and in at least one input): ${shapes}. ${candidates.length > 0 ? `Names that qualify: ${candidates.join(', ')}.` : 'No name qualifies.'}`, { details: { model, symbol, candidates, inputs: specsOf(inputs), outputs: specsOf(outputs) } });
  }
  const chosen = symbol ?? pick(candidates, [...inputs, ...outputs]);
  if (chosen === undefined) {
    throw new BatchError('EAI_BATCH_UNSUPPORTED', `Model ${model} cannot be batched: it has no dynamic dimension shared by every output and an input (${shapes}). Re-export it with a named dynamic batch dimension (torch.onnx.export(..., dynamic_axes={'<input>': {0: 'batch'}, '<output>': {0: 'batch'}}); tf2onnx and onnx-modifier can rename a fixed 1 to 'batch'), or serve it without batching (maxBatch 1).`, { details: { model, inputs: specsOf(inputs), outputs: specsOf(outputs) } });
  }
  const layoutInputs: Record<string, number | null> = {};
  for (const spec of inputs) layoutInputs[spec.name] = axisOf(spec, chosen) ?? null;
  const layoutOutputs: Record<string, number> = {};
  for (const spec of outputs) layoutOutputs[spec.name] = axisOf(spec, chosen) ?? 0; // qualifies(): always found
  return Object.freeze({ model, inputs: Object.freeze(layoutInputs), outputs: Object.freeze(layoutOutputs), symbol: chosen });
}

/**
 * The number of rows a request carries (its size along the batch axis), after checking it fits the
 * layout: every input of the layout present and no other, stacked inputs of rank enough to have the
 * batch axis, the same row count (at least 1) in each. Throws BatchError `EAI_BATCH_INPUT`.
 */
export function rowsOf(feeds: Feeds, layout: BatchLayout): number {
  let rows: number | undefined;
  let first = '';
  for (const name of Object.keys(feeds)) {
    if (!(name in layout.inputs)) throw inputError(layout, `has no input named '${name}' (its inputs: ${Object.keys(layout.inputs).join(', ')})`, name);
  }
  for (const [name, axis] of Object.entries(layout.inputs)) {
    const t = feeds[name];
    if (t === undefined) throw inputError(layout, `needs input '${name}' in every request, and this request has none`, name);
    if (axis === null) continue;
    const n = t.shape[axis];
    if (n === undefined) throw inputError(layout, `stacks input '${name}' along axis ${axis} ('${layout.symbol}'), but this request's '${name}' has shape [${t.shape.join(', ')}]`, name);
    if (rows === undefined) {
      rows = n;
      first = name;
    } else if (n !== rows) {
      throw inputError(layout, `needs the same '${layout.symbol}' size in every batched input of a request, but this request has ${rows} in '${first}' and ${n} in '${name}'`, name);
    }
  }
  if (rows === undefined) throw inputError(layout, `has no input along '${layout.symbol}'`, '');
  if (rows < 1) throw inputError(layout, `cannot batch a request of 0 rows along '${layout.symbol}' (input '${first}'); send at least one row`, first);
  return rows;
}

/**
 * A string equal for two requests exactly when they can share a batch: same dtype and same shape
 * off the batch axis for every stacked input, byte-equal shared inputs. Shared inputs up to 256
 * bytes are keyed by their bytes; larger ones by SHA-256 (a collision is not a practical concern).
 * Does not check the request (see {@link rowsOf}).
 */
export function batchKey(feeds: Feeds, layout: BatchLayout): string {
  // On every request's path: plain loops, no intermediate arrays (about 0.5 µs for Silero's four inputs).
  let key = '';
  for (const name in layout.inputs) {
    const t = feeds[name];
    if (t === undefined) continue;
    const axis = layout.inputs[name];
    key += `${name}:${t.dtype}[`;
    for (let i = 0; i < t.shape.length; i++) key += i === axis ? '*,' : `${t.shape[i] as number},`;
    key += ']';
    if (axis === null) {
      const b = t.bytes();
      if (b.byteLength <= 32) {
        key += '=';
        for (let i = 0; i < b.length; i++) key += HEX[b[i] as number] as string;
      } else {
        const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
        key += `=${b.byteLength <= 256 ? buf.toString('hex') : `sha256:${createHash('sha256').update(buf).digest('hex')}`}`;
      }
    }
    key += ';';
  }
  return key;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

/**
 * One batch from several requests: each stacked input concatenated along its axis in request
 * order, each shared input taken from the first request (after checking the others are
 * byte-equal). `sizes[i]` is request i's row count, what {@link split} needs back. A single
 * request is returned as is (no copy); otherwise the batch owns new buffers and the requests are
 * not referenced by it. Throws BatchError `EAI_BATCH_INPUT` when the requests do not fit the layout
 * or each other (use {@link batchKey} to group them first).
 */
export function stack(requests: readonly Feeds[], layout: BatchLayout): { feeds: Feeds; sizes: number[] } {
  const sizes = requests.map((r) => rowsOf(r, layout));
  const [head] = requests;
  if (head === undefined) throw inputError(layout, 'cannot stack an empty list of requests', '');
  if (requests.length === 1) return { feeds: head, sizes };
  const total = sizes.reduce((a, b) => a + b, 0);
  const feeds: Record<string, Tensor> = {};
  for (const [name, axis] of Object.entries(layout.inputs)) {
    const parts = requests.map((r) => r[name] as Tensor);
    const first = parts[0] as Tensor;
    if (axis === null) {
      const bytes = first.bytes();
      parts.forEach((t, i) => {
        if (t.dtype !== first.dtype || !sameShape(t.shape, first.shape) || Buffer.compare(t.bytes(), bytes) !== 0) {
          throw inputError(layout, `shares input '${name}' across a batch, so it must be equal in every request, but request ${i} has a different '${name}' than request 0 (batch requests by batchKey())`, name);
        }
      });
      feeds[name] = first;
      continue;
    }
    parts.forEach((t, i) => {
      if (t.dtype !== first.dtype || t.rank !== first.rank || t.shape.some((d, k) => k !== axis && d !== first.shape[k])) {
        throw inputError(layout, `stacks '${name}' along axis ${axis}, so every request's '${name}' must match off that axis, but request 0 has ${first.dtype}[${first.shape.join(', ')}] and request ${i} has ${t.dtype}[${t.shape.join(', ')}]`, name);
      }
    });
    const shape = first.shape.map((d, k) => (k === axis ? total : d));
    const out = Tensor.zeros(first.dtype, shape);
    const outer = shapeSize(first.shape.slice(0, axis));
    const inner = shapeSize(first.shape.slice(axis + 1));
    const dst = out.data as Float32Array; // any typed array: set/subarray are the same for every dtype
    let at = 0;
    for (let o = 0; o < outer; o++) {
      parts.forEach((t, i) => {
        const span = (sizes[i] as number) * inner;
        dst.set((t.data as Float32Array).subarray(o * span, (o + 1) * span), at);
        at += span;
      });
    }
    feeds[name] = out;
  }
  return { feeds, sizes };
}

/**
 * The exact inverse of {@link stack}: each output cut along its batch axis into `sizes` rows, in
 * request order. Every piece is a copy owning its own buffer (as an unbatched run's output would),
 * so one request's outputs never keep the others' alive. With one request the outputs are returned
 * as they are. Throws BatchError `EAI_BATCH_OUTPUT` when an output is not in the layout or its
 * batch axis does not hold sum(sizes) rows.
 */
export function split(outputs: Outputs, sizes: readonly number[], layout: BatchLayout): Outputs[] {
  const total = sizes.reduce((a, b) => a + b, 0);
  for (const [name, t] of Object.entries(outputs)) {
    const axis = layout.outputs[name];
    if (axis === undefined) throw new BatchError('EAI_BATCH_OUTPUT', `Model ${layout.model} returned output '${name}', which its batch layout does not have (outputs: ${Object.keys(layout.outputs).join(', ')}).`, { details: { model: layout.model, output: name } });
    if (t.shape[axis] !== total) {
      throw new BatchError('EAI_BATCH_OUTPUT', `Model ${layout.model} was run on a batch of ${total} rows but output '${name}' has shape [${t.shape.join(', ')}], ${t.shape[axis] === undefined ? `with no axis ${axis}` : `${t.shape[axis]} along axis ${axis}`} ('${layout.symbol}'); the batch cannot be split. The model's batch dimension is not what its declared shapes say: serve it without batching.`, { details: { model: layout.model, output: name, shape: t.shape, axis, rows: total } });
    }
  }
  if (sizes.length === 1) return [outputs];
  const pieces: Outputs[] = sizes.map(() => ({}));
  for (const [name, t] of Object.entries(outputs)) {
    const axis = layout.outputs[name] as number;
    const outer = shapeSize(t.shape.slice(0, axis));
    const inner = shapeSize(t.shape.slice(axis + 1));
    const src = t.data as Float32Array;
    let offset = 0; // rows before request i
    sizes.forEach((n, i) => {
      const piece = Tensor.zeros(t.dtype, t.shape.map((d, k) => (k === axis ? n : d)));
      const dst = piece.data as Float32Array;
      for (let o = 0; o < outer; o++) dst.set(src.subarray((o * total + offset) * inner, (o * total + offset + n) * inner), o * n * inner);
      offset += n;
      (pieces[i] as Outputs)[name] = piece;
    });
  }
  return pieces;
}

/** The axis of `spec` named `name`, when exactly one axis has that name. */
function axisOf(spec: TensorSpec, name: string): number | undefined {
  const names = spec.dimNames ?? [];
  const first = names.indexOf(name);
  return first >= 0 && names.indexOf(name, first + 1) < 0 ? first : undefined;
}

function pick(candidates: readonly string[], specs: readonly TensorSpec[]): string | undefined {
  if (candidates.length <= 1) return candidates[0];
  const rank = (name: string): number => {
    const p = PREFERRED.indexOf(name.toLowerCase());
    return p >= 0 ? p : name.startsWith('unk__') ? PREFERRED.length : PREFERRED.length + 1;
  };
  const leading = (name: string): number => specs.filter((s) => s.dimNames?.[0] === name).length;
  return [...candidates].sort((a, b) => rank(a) - rank(b) || leading(b) - leading(a))[0];
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

function describe(specs: readonly TensorSpec[]): string {
  // Dynamic dimensions show their names where the model gives them: float32[batch, 512].
  return specs.map((s) => `'${s.name}' ${s.dtype}[${s.shape.map((d, i) => d ?? s.dimNames?.[i] ?? '?').join(', ')}]`).join(', ') || '(none)';
}

function specsOf(specs: readonly TensorSpec[]): { name: string; shape: (number | string | null)[] }[] {
  return specs.map((s) => ({ name: s.name, shape: s.shape.map((d, i) => d ?? s.dimNames?.[i] ?? null) }));
}

function inputError(layout: BatchLayout, what: string, input: string): BatchError {
  return new BatchError('EAI_BATCH_INPUT', `Model ${layout.model} ${what}.`, { details: { model: layout.model, input } });
}
