import { Type } from '@sinclair/typebox';
import { defineNode } from '../../definition.js';
import { ProblemLog, SINK_INPUT, errorText, flowName } from './shared.js';

/** What the callback sink counts while it runs. */
export interface CallbackSinkState {
  readonly problems: ProblemLog;
  /** Messages handed to a callback that returned (or resolved) normally. */
  delivered: number;
  /** Messages that arrived while no callback was registered under this sink's name. */
  unclaimed: number;
}

/**
 * `callback`: hands each message, as it is (the Envelope with the raw value: Tensors, frames),
 * to the application's callback registered under this sink's name
 * (`pipeline.on('result', ...)`, which fills `ctx.services.callbacks`). The callback is looked
 * up per message, so one registered after the pipeline started still gets what follows.
 *
 * - No callback registered: the message is dropped silently and counted in `unclaimed` (an
 *   application may listen only part of the time; that is not a fault).
 * - A callback that returns a promise is awaited, so a slow consumer pushes back on the sink's
 *   queue (whose policy then drops or blocks) rather than piling up promises.
 * - A callback that throws or rejects is counted and reported through `ctx.warn`; the pipeline
 *   runs on.
 */
export const callbackSink = defineNode({
  use: 'callback',
  role: 'sink',
  description: "Hands each message to the application's callback registered under this sink's name (pipeline.on('result', ...))",
  params: Type.Object({}, { additionalProperties: false }),
  inputs: [SINK_INPUT],
  outputs: [],
  async start(ctx): Promise<CallbackSinkState> {
    return { problems: new ProblemLog((m, cause) => ctx.warn(m, cause)), delivered: 0, unclaimed: 0 };
  },
  async process(port, message, ctx, state) {
    const callback = ctx.services.callbacks.get(ctx.name);
    if (callback === undefined) {
      state.unclaimed++;
      return;
    }
    try {
      const result: unknown = callback(message);
      if (isThenable(result)) await result;
      state.delivered++;
    } catch (err) {
      state.problems.report('callback', `${ctx.name}: the result callback failed on a message from ${flowName(port, message)}: ${errorText(err)}`, err);
    }
  },
});

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof value === 'object' && value !== null && typeof (value as { then?: unknown }).then === 'function';
}
