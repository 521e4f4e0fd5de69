import { Type } from '@sinclair/typebox';
import { defineNode } from '../../definition.js';

const Params = Type.Object(
  {
    rate: Type.Number({ exclusiveMinimum: 0, description: 'most messages per second of sensor time' }),
  },
  { additionalProperties: false },
);

/**
 * Decides which messages pass a rate limit by sensor time (not by arrival, so a recording played
 * fast is thinned exactly like the live sensor). Passes at most one message per `1 / rate` slot:
 * slots sit on a grid started by the first message, so the average rate never exceeds `rate`
 * and does not drift; a message up to a quarter slot early still takes its slot, so input jitter
 * does not skip a whole input period (30 Hz with ±3 ms jitter throttled to 10 Hz passes every
 * third frame). A gap longer than a slot, or time going backwards (a sensor restart), starts a
 * new grid at that message.
 */
export class RateLimiter {
  private readonly periodNs: bigint;
  private readonly slackNs: bigint;
  private next: bigint | undefined;
  private last: bigint | undefined;
  private passedCount = 0;
  private droppedCount = 0;

  constructor(rate: number) {
    this.periodNs = BigInt(Math.max(1, Math.round(1e9 / rate)));
    this.slackNs = this.periodNs / 4n;
  }

  /** Whether the message at `sensorTimeNs` passes; call once per message, in arrival order. */
  admit(sensorTimeNs: bigint): boolean {
    const t = sensorTimeNs;
    let pass = false;
    if (this.next === undefined || this.last === undefined || t < this.last || t >= this.next + this.periodNs) {
      this.next = t + this.periodNs;
      pass = true;
    } else if (t >= this.next - this.slackNs) {
      this.next += this.periodNs;
      pass = true;
    }
    if (pass) {
      this.last = t;
      this.passedCount++;
    } else {
      this.droppedCount++;
    }
    return pass;
  }

  get passed(): number {
    return this.passedCount;
  }

  get dropped(): number {
    return this.droppedCount;
  }
}

/**
 * `throttle`: passes at most `rate` messages per second of sensor time, as {@link RateLimiter}
 * says, and drops the rest (a camera at 30 Hz into a detector that needs 5). `in` → `out`, the
 * same type; passed messages are the same values, not copies.
 */
export const throttleStage = defineNode({
  use: 'throttle',
  role: 'stage',
  description: 'keep at most rate messages per second (by sensor time)',
  params: Params,
  inputs: ['in'],
  outputs: ['out'],

  types(_params, inputs) {
    return { out: inputs['in'] ?? { kind: 'any' } };
  },

  async start(ctx): Promise<RateLimiter> {
    return new RateLimiter(ctx.params.rate);
  },

  async process(_port, message, ctx, state) {
    if (state.admit(message.sensorTimeNs)) await ctx.emit('out', message.value, message);
  },
});
