import { ModelError } from '../errors.js';
import type { Feeds, TensorSpec } from './types.js';

/**
 * Checks a set of input tensors against a model's declared inputs before anything reaches the
 * native engine, so that a wrong name, dtype or shape is reported as "expected X, got Y" instead
 * of a native crash or an engine's opaque message. Dynamic dimensions (`null`) accept any size.
 *
 * Throws ModelError: EAI_MODEL_INPUT_MISSING, EAI_MODEL_INPUT_UNKNOWN, EAI_MODEL_INPUT_DTYPE,
 * EAI_MODEL_INPUT_SHAPE. `model` names the model in messages.
 */
export function checkFeeds(specs: readonly TensorSpec[], feeds: Feeds, model: string): void {
  const expected = new Map(specs.map((s) => [s.name, s]));
  for (const name of Object.keys(feeds)) {
    if (!expected.has(name)) {
      throw new ModelError('EAI_MODEL_INPUT_UNKNOWN', `Model ${model} has no input named '${name}'. Its inputs are: ${describeSpecs(specs)}.`, { details: { model, input: name, expected: specs.map((s) => s.name) } });
    }
  }
  for (const spec of specs) {
    const tensor = feeds[spec.name];
    if (tensor === undefined) {
      throw new ModelError('EAI_MODEL_INPUT_MISSING', `Model ${model} needs input '${spec.name}' (${describeSpec(spec)}) but it was not given. Its inputs are: ${describeSpecs(specs)}.`, { details: { model, input: spec.name } });
    }
    if (tensor.dtype !== spec.dtype) {
      throw new ModelError('EAI_MODEL_INPUT_DTYPE', `Input '${spec.name}' of ${model} must be ${spec.dtype}, got ${tensor.dtype}. Convert it (numpy: a.astype('${spec.dtype}')).`, { details: { model, input: spec.name, expected: spec.dtype, got: tensor.dtype } });
    }
    if (!shapeMatches(spec.shape, tensor.shape)) {
      throw new ModelError('EAI_MODEL_INPUT_SHAPE', `Input '${spec.name}' of ${model} must have shape ${formatShape(spec.shape)}, got [${tensor.shape.join(', ')}].`, { details: { model, input: spec.name, expected: spec.shape, got: tensor.shape } });
    }
  }
}

/** Whether a concrete shape fits a declared one (same rank; fixed dimensions equal). */
export function shapeMatches(declared: readonly (number | null)[], actual: readonly number[]): boolean {
  if (declared.length !== actual.length) return false;
  return declared.every((d, i) => d === null || d === actual[i]);
}

/** `[1, 128, 128, 3]`, with `?` for dynamic dimensions. */
export function formatShape(shape: readonly (number | null)[]): string {
  return `[${shape.map((d) => (d === null ? '?' : String(d))).join(', ')}]`;
}

function describeSpec(spec: TensorSpec): string {
  return `${spec.dtype}${formatShape(spec.shape)}`;
}

function describeSpecs(specs: readonly TensorSpec[]): string {
  return specs.map((s) => `'${s.name}' ${describeSpec(s)}`).join(', ');
}
