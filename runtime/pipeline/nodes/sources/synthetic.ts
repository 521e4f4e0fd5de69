import { Type, type Static } from '@sinclair/typebox';
import { isImage, SYNTHETIC_DEFAULTS, SyntheticSensor } from '../../../../drivers/sensors/synthetic.js';
import { defineNode, type ConfigProblem } from '../../definition.js';
import type { PortType } from '../../port-types.js';

const SyntheticParams = Type.Object(
  {
    pattern: Type.Union([Type.Literal('color-bars'), Type.Literal('counter'), Type.Literal('noise'), Type.Literal('sine'), Type.Literal('json')], {
      description: 'color-bars, counter or noise images; a sine tone; or json {n} counters',
    }),
    rate: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 100_000, description: `messages per second (default ${SYNTHETIC_DEFAULTS.rate}); sine frames come at sampleRate / frameSize` })),
    count: Type.Optional(Type.Integer({ minimum: 0, description: 'stop after this many messages; default never' })),
    width: Type.Integer({ minimum: 1, maximum: 16384, default: SYNTHETIC_DEFAULTS.width, description: 'image width' }),
    height: Type.Integer({ minimum: 1, maximum: 16384, default: SYNTHETIC_DEFAULTS.height, description: 'image height' }),
    format: Type.Union([Type.Literal('rgb24'), Type.Literal('bgr24'), Type.Literal('rgba'), Type.Literal('gray8')], { default: SYNTHETIC_DEFAULTS.format, description: 'image pixel layout' }),
    seed: Type.Integer({ default: SYNTHETIC_DEFAULTS.seed, description: 'noise: seed of the pseudo-random sequence' }),
    frequency: Type.Number({ exclusiveMinimum: 0, default: SYNTHETIC_DEFAULTS.frequency, description: 'sine: tone, Hz' }),
    amplitude: Type.Number({ minimum: 0, maximum: 1, default: SYNTHETIC_DEFAULTS.amplitude, description: 'sine: peak amplitude' }),
    sampleRate: Type.Integer({ minimum: 1, maximum: 384_000, default: SYNTHETIC_DEFAULTS.sampleRate, description: 'sine: samples per second' }),
    frameSize: Type.Integer({ minimum: 1, maximum: 1_048_576, default: SYNTHETIC_DEFAULTS.frameSize, description: 'sine: samples per frame' }),
    poolSize: Type.Integer({ minimum: 1, maximum: 256, default: SYNTHETIC_DEFAULTS.poolSize, description: 'a frame stays intact while it is one of this many newest frames' }),
  },
  { additionalProperties: false },
);

/**
 * `use: synthetic` — test patterns at an exact rate with drift-free sensor times (see
 * `SyntheticSensor`): output `out` carries images, audio frames or `{ n }` JSON by `pattern`.
 * Ends after `count` messages, or runs until the pipeline stops.
 */
export const syntheticSource = defineNode({
  use: 'synthetic',
  role: 'source',
  description: 'test patterns (color bars, counter, noise images; sine audio; json counters) at an exact rate',
  params: SyntheticParams,
  inputs: [],
  outputs: ['out'],
  types(params) {
    return { out: outputType(params) };
  },
  async check(params) {
    const problems: ConfigProblem[] = [];
    if (params.pattern === 'sine' && params.rate !== undefined && params.rate * params.frameSize !== params.sampleRate) {
      problems.push({ path: ['params', 'rate'], message: `sine frames come at sampleRate / frameSize = ${params.sampleRate / params.frameSize} Hz, not ${params.rate}: drop rate or change frameSize` });
    }
    return problems;
  },
  async run(ctx) {
    const p = ctx.params;
    const sensor = new SyntheticSensor({ ...p, ...(p.pattern === 'sine' ? { rate: undefined } : {}) });
    let seq = 0;
    // Awaited like the other sources, so a `block` queue can hold the pattern back.
    for await (const m of sensor.messages(ctx.signal)) await ctx.emit('out', m.value, { sensorTimeNs: m.sensorTimeNs, arrivalMs: m.arrivalMs, origin: ctx.name, seq: seq++ });
  },
});

export type SyntheticSourceParams = Static<typeof SyntheticParams>;

function outputType(p: SyntheticSourceParams): PortType {
  if (isImage(p.pattern)) return { kind: 'image', width: p.width, height: p.height, format: p.format };
  if (p.pattern === 'sine') return { kind: 'audio', sampleRate: p.sampleRate, channels: 1, frameSize: p.frameSize };
  return { kind: 'json' };
}
