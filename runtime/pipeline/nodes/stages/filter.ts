import { Type, type Static } from '@sinclair/typebox';
import { defineNode } from '../../definition.js';

const Scalar = Type.Union([Type.Number(), Type.String(), Type.Boolean(), Type.Null()]);
const Field = Type.String({ description: "dotted path into the message value: 'score', 'boxes.length', 'boxes.0.label'; '' is the value itself" });

/** A predicate over a JSON value: comparisons, `exists`, `in`, `some` / `every` over arrays, and `all` / `any` / `not`. */
export const Predicate = Type.Recursive(
  (Self) =>
    Type.Union([
      Type.Object({ field: Field, op: Type.Union([Type.Literal('=='), Type.Literal('!='), Type.Literal('>'), Type.Literal('>='), Type.Literal('<'), Type.Literal('<=')]), value: Scalar }, { additionalProperties: false }),
      Type.Object({ field: Field, op: Type.Literal('exists') }, { additionalProperties: false }),
      Type.Object({ field: Field, op: Type.Literal('in'), value: Type.Array(Scalar) }, { additionalProperties: false }),
      Type.Object({ field: Field, some: Self }, { additionalProperties: false }),
      Type.Object({ field: Field, every: Self }, { additionalProperties: false }),
      Type.Object({ all: Type.Array(Self) }, { additionalProperties: false }),
      Type.Object({ any: Type.Array(Self) }, { additionalProperties: false }),
      Type.Object({ not: Self }, { additionalProperties: false }),
    ]),
  { $id: 'FilterPredicate' },
);
export type Predicate = Static<typeof Predicate>;

const Params = Type.Object({ where: Predicate }, { additionalProperties: false });

/**
 * `filter`: passes the messages whose value satisfies `where` and drops the rest. `where` is data,
 * not code (no eval): a comparison of a field with a value, e.g.
 * `{ field: boxes.length, op: '>', value: 0 }` (at least one detection), or
 * `{ field: boxes, some: { field: label, op: '==', value: person } }`, combined with `all`, `any`
 * and `not`. Ordering comparisons hold only between two numbers or two strings; a missing field
 * makes every comparison false (and `exists` false). `in` → `out`, the same type and values.
 */
export const filterStage = defineNode({
  use: 'filter',
  role: 'stage',
  description: 'pass only messages whose value matches a predicate (field, op, value)',
  params: Params,
  inputs: ['in'],
  outputs: ['out'],

  types(_params, inputs) {
    return { out: inputs['in'] ?? { kind: 'any' } };
  },

  async process(_port, message, ctx) {
    if (matches(ctx.params.where, message.value)) await ctx.emit('out', message.value, message);
  },
});

/** Whether `value` satisfies `predicate` (see `filter`). Never throws on odd values. */
export function matches(predicate: Predicate, value: unknown): boolean {
  if ('all' in predicate) return predicate.all.every((p) => matches(p, value));
  if ('any' in predicate) return predicate.any.some((p) => matches(p, value));
  if ('not' in predicate) return !matches(predicate.not, value);
  const found = lookup(value, predicate.field);
  if ('some' in predicate) return Array.isArray(found.value) && found.value.some((v: unknown) => matches(predicate.some, v));
  if ('every' in predicate) return Array.isArray(found.value) && found.value.every((v: unknown) => matches(predicate.every, v));
  if (predicate.op === 'exists') return found.present && found.value !== undefined;
  if (!found.present) return false;
  if (predicate.op === 'in') return predicate.value.some((v) => v === found.value);
  return compare(found.value, predicate.op, predicate.value);
}

function compare(a: unknown, op: '==' | '!=' | '>' | '>=' | '<' | '<=', b: string | number | boolean | null): boolean {
  if (op === '==') return a === b;
  if (op === '!=') return a !== b;
  const ordered = (typeof a === 'number' && typeof b === 'number') || (typeof a === 'string' && typeof b === 'string');
  if (!ordered) return false;
  const x = a as number | string;
  if (op === '>') return x > b;
  if (op === '>=') return x >= b;
  if (op === '<') return x < b;
  return x <= b;
}

/** The value at a dotted path; `length` of arrays and strings is a field too. Own properties only. */
function lookup(value: unknown, field: string): { present: boolean; value: unknown } {
  let current: unknown = value;
  for (const key of field === '' ? [] : field.split('.')) {
    if ((Array.isArray(current) || typeof current === 'string') && key === 'length') current = current.length;
    else if (typeof current === 'object' && current !== null && Object.hasOwn(current, key)) current = (current as Record<string, unknown>)[key];
    else return { present: false, value: undefined };
  }
  return { present: true, value: current };
}
