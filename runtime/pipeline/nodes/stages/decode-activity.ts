import { Type } from '@sinclair/typebox';
import type { Tensor } from '../../../../drivers/tensor/tensor.js';
import { defineNode } from '../../definition.js';

/** A change of activity, as `decode.activity` emits it. */
export interface ActivityEvent {
  readonly state: 'active' | 'inactive';
  /** The model's score on the frame that decided the change. */
  readonly probability: number;
  /** How long the previous state lasted, ms of sensor time (0 for the first event). */
  readonly previousMs: number;
}

/**
 * `decode.activity`: turns a per-frame probability (voice activity, motion, presence) into
 * start/stop events with hysteresis: active once the score reaches `threshold` for `minActiveMs`,
 * inactive once it stays below `threshold - hysteresis` for `minInactiveMs`. Emits only changes,
 * so a sink sees one event per utterance, not one per 32 ms frame.
 */
export const decodeActivity = defineNode({
  use: 'decode.activity',
  role: 'stage',
  description: 'probability per frame → activity start/stop events with hysteresis',
  params: Type.Object(
    {
      output: Type.String({ default: 'output', description: 'the model output holding the probability (first element)' }),
      threshold: Type.Number({ minimum: 0, maximum: 1, default: 0.5 }),
      hysteresis: Type.Number({ minimum: 0, maximum: 1, default: 0.15 }),
      minActiveMs: Type.Number({ minimum: 0, default: 64 }),
      minInactiveMs: Type.Number({ minimum: 0, default: 300 }),
    },
    { additionalProperties: false },
  ),
  inputs: ['in'],
  outputs: ['out'],
  types: () => ({ out: { kind: 'json' } }),
  async start() {
    return { active: false, since: undefined as bigint | undefined, candidate: undefined as bigint | undefined, lastChange: undefined as bigint | undefined };
  },
  process(_port, message, ctx, state) {
    const outputs = message.value as Record<string, Tensor>;
    const tensor = outputs[ctx.params.output] ?? Object.values(outputs)[0];
    const probability = Number(tensor?.toNumbers()[0] ?? 0);
    const now = message.sensorTimeNs;
    const wantActive = state.active ? probability >= ctx.params.threshold - ctx.params.hysteresis : probability >= ctx.params.threshold;
    if (wantActive === state.active) {
      state.candidate = undefined;
      return undefined;
    }
    state.candidate ??= now;
    const heldMs = Number(now - state.candidate) / 1e6;
    if (heldMs < (wantActive ? ctx.params.minActiveMs : ctx.params.minInactiveMs)) return undefined;
    const previousMs = state.lastChange === undefined ? 0 : Number(state.candidate - state.lastChange) / 1e6;
    state.active = wantActive;
    state.lastChange = state.candidate;
    state.candidate = undefined;
    const event: ActivityEvent = { state: wantActive ? 'active' : 'inactive', probability, previousMs };
    return ctx.emit('out', event, message);
  },
});
