import { Type } from '@sinclair/typebox';
import { defineNode, PortTypeMismatch } from '../../runtime/pipeline/definition.js';
import { NodeKinds } from '../../runtime/pipeline/node-kinds.js';

/**
 * Small node kinds for exercising the pipeline machinery itself, registered as normal kinds (a
 * test driver ships as a normal driver). They exchange plain numbers.
 */
export const countSource = defineNode({
  use: 'test.count',
  role: 'source',
  description: 'emits 0..count-1, one every intervalMs (0: as fast as possible)',
  params: Type.Object({ count: Type.Integer({ minimum: 0, default: 10 }), intervalMs: Type.Number({ minimum: 0, default: 0 }), failAt: Type.Optional(Type.Integer()) }, { additionalProperties: false }),
  inputs: [],
  outputs: ['out'],
  types: () => ({ out: { kind: 'json' } }),
  async run(ctx) {
    for (let i = 0; i < ctx.params.count && !ctx.signal.aborted; i++) {
      if (ctx.params.failAt === i) {
        ctx.params.failAt = undefined; // fail once, then the restart goes on
        throw new Error('sensor unplugged');
      }
      const now = performance.now();
      await ctx.emit('out', i, { sensorTimeNs: BigInt(i) * 1_000_000n, arrivalMs: now, origin: ctx.name, seq: i });
      if (ctx.params.intervalMs > 0) await new Promise((r) => setTimeout(r, ctx.params.intervalMs));
      else await new Promise((r) => setImmediate(r));
    }
  },
});

export const doubleStage = defineNode({
  use: 'test.double',
  role: 'stage',
  description: 'doubles numbers; throws on throwOn',
  params: Type.Object({ throwOn: Type.Optional(Type.Integer()), delayMs: Type.Number({ minimum: 0, default: 0 }) }, { additionalProperties: false }),
  inputs: ['in'],
  outputs: ['out'],
  types(_params, inputs) {
    const t = inputs['in'];
    if (t !== undefined && t.kind !== 'json' && t.kind !== 'any') throw new PortTypeMismatch('in', `test.double takes numbers (json), not ${t.kind}`);
    return { out: { kind: 'json' } };
  },
  async process(_port, message, ctx) {
    if (message.value === ctx.params.throwOn) throw new Error(`cannot double ${String(message.value)}`);
    if (ctx.params.delayMs > 0) await new Promise((r) => setTimeout(r, ctx.params.delayMs));
    await ctx.emit('out', (message.value as number) * 2, message);
  },
});

export const imageSource = defineNode({
  use: 'test.image',
  role: 'source',
  description: 'declares 640x480 rgb images (emits nothing)',
  params: Type.Object({}, { additionalProperties: false }),
  inputs: [],
  outputs: ['frames'],
  types: () => ({ frames: { kind: 'image', width: 640, height: 480, format: 'rgb24' } }),
  async run() {},
});

export const collectSink = defineNode({
  use: 'test.collect',
  role: 'sink',
  description: 'collects values into services.extra.collected[name]',
  params: Type.Object({}, { additionalProperties: false }),
  inputs: ['in'],
  outputs: [],
  process(port, message, ctx) {
    const store = ctx.services.extra['collected'] as Record<string, unknown[]>;
    (store[ctx.name] ??= []).push(message.value);
  },
});

export function testKinds(): NodeKinds {
  return new NodeKinds().register(countSource, doubleStage, imageSource, collectSink);
}
