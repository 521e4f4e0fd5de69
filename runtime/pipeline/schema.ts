import { Type, type Static, type TSchema } from '@sinclair/typebox';
import type { NodeDefinition } from './definition.js';

/** How a full queue behaves: wait for room, or drop the oldest / the newest message. */
export const QueuePolicy = Type.Object(
  {
    size: Type.Integer({ minimum: 1, maximum: 100_000, default: 4, description: 'messages the queue holds before the policy applies' }),
    full: Type.Union([Type.Literal('block'), Type.Literal('drop_oldest'), Type.Literal('drop_newest')], { default: 'drop_oldest', description: 'block: the producer waits; drop_oldest: the oldest queued message is dropped; drop_newest: the arriving message is dropped' }),
  },
  { additionalProperties: false },
);

/** `50ms`, `1.5s`, `2m`, or a number of milliseconds. */
export const Duration = Type.Union([Type.Number({ minimum: 0 }), Type.String({ pattern: '^[0-9]+(\\.[0-9]+)?(us|ms|s|m)$' })], { description: "a duration: milliseconds, or '50ms', '1.5s', '2m'" });

/** One source, stage or sink in a pipeline file. */
export const NodeEntry = Type.Object(
  {
    use: Type.String({ description: 'the kind of node: a built-in name (video, image.resize, infer, mcap, ...) or a path to a module exporting a node definition' }),
    description: Type.Optional(Type.String()),
    params: Type.Optional(Type.Record(Type.String(), Type.Unknown(), { description: "the node kind's parameters" })),
    queue: Type.Optional(QueuePolicy),
    deadline: Type.Optional(Duration),
    priority: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, description: "this node's weight on shared devices (infer): under contention a device grants runs in proportion to priority (docs/scheduling.md); default: the pipeline's priority" })),
  },
  { additionalProperties: false },
);

/** `camera.frames -> resize.in`, or `camera -> resize` for the default ports. */
export const FlowEntry = Type.Union([
  Type.String({ pattern: '^\\s*[A-Za-z0-9_-]+(\\.[A-Za-z0-9_:-]+)?\\s*->\\s*[A-Za-z0-9_-]+(\\.[A-Za-z0-9_:-]+)?\\s*$', description: "'from.port -> to.port'; the ports may be left out when the node has one" }),
  Type.Object({ from: Type.String(), to: Type.String(), queue: Type.Optional(QueuePolicy) }, { additionalProperties: false }),
]);

export const PipelineFile = Type.Object(
  {
    $schema: Type.Optional(Type.String()),
    name: Type.String({ minLength: 1 }),
    description: Type.Optional(Type.String()),
    priority: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 1, description: "the pipeline's weight on devices it shares with other pipelines: under contention runs are granted in proportion to priority, and admission control checks its declared rates at this priority (docs/scheduling.md)" })),
    sources: Type.Record(Type.String({ pattern: '^[A-Za-z0-9_-]+$' }), NodeEntry, { minProperties: 1 }),
    stages: Type.Optional(Type.Record(Type.String({ pattern: '^[A-Za-z0-9_-]+$' }), NodeEntry)),
    sinks: Type.Record(Type.String({ pattern: '^[A-Za-z0-9_-]+$' }), NodeEntry, { minProperties: 1 }),
    flows: Type.Array(FlowEntry, { minItems: 1 }),
  },
  { additionalProperties: false },
);

export type PipelineConfig = Static<typeof PipelineFile>;
export type NodeConfig = Static<typeof NodeEntry>;
export type FlowConfig = Static<typeof FlowEntry>;
export type QueueConfig = Static<typeof QueuePolicy>;

/**
 * The JSON Schema editors use for pipeline files (`aios schema pipeline`): the file structure,
 * plus, for every node kind known, its parameters, selected by `use` (if/then), so an editor
 * completes `params` of `image.resize` differently from those of `video`.
 */
export function pipelineJsonSchema(kinds: readonly NodeDefinition[]): Record<string, unknown> {
  const byRole = (role: NodeDefinition['role']): TSchema => nodeSchemaFor(kinds.filter((k) => k.role === role));
  const base = JSON.parse(JSON.stringify(PipelineFile)) as Record<string, unknown> & { properties: Record<string, Record<string, unknown>> };
  base.properties['sources'] = { ...base.properties['sources'], additionalProperties: byRole('source'), patternProperties: undefined };
  base.properties['stages'] = { ...base.properties['stages'], additionalProperties: byRole('stage'), patternProperties: undefined };
  base.properties['sinks'] = { ...base.properties['sinks'], additionalProperties: byRole('sink'), patternProperties: undefined };
  return { $schema: 'http://json-schema.org/draft-07/schema#', $id: 'https://aios.dev/schemas/pipeline.schema.json', title: 'aios pipeline', ...base };
}

function nodeSchemaFor(kinds: readonly NodeDefinition[]): TSchema {
  const entry = JSON.parse(JSON.stringify(NodeEntry)) as Record<string, unknown> & { properties: Record<string, Record<string, unknown>> };
  entry.properties['use'] = { type: 'string', description: entry.properties['use']?.['description'], examples: kinds.map((k) => k.use) };
  return {
    ...entry,
    allOf: kinds.map((k) => ({
      if: { properties: { use: { const: k.use } }, required: ['use'] },
      then: { properties: { params: { ...JSON.parse(JSON.stringify(k.params)), description: k.description } } },
    })),
  } as unknown as TSchema;
}
