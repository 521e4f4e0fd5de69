import type { Static, TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import type { Envelope, NodeContext, NodeDefinition } from '../../../../../../runtime/pipeline/definition.js';

/**
 * Runs a sink the way the executor does, without one: parameters validated with their defaults
 * applied, `start`, `process` per message (awaited, never overlapping), `stop`. Warnings are kept.
 */
export async function startSink<S extends TSchema, State>(
  definition: NodeDefinition<S, State>,
  params: Record<string, unknown>,
  options: { name?: string; baseDir?: string; callbacks?: Map<string, (m: Envelope) => void> } = {},
) {
  const resolved = Value.Default(definition.params, structuredClone(params));
  if (!Value.Check(definition.params, resolved)) {
    throw new Error(`bad params for ${definition.use}: ${[...Value.Errors(definition.params, resolved)].map((e) => `${e.path} ${e.message}`).join('; ')}`);
  }
  const warnings: string[] = [];
  const abort = new AbortController();
  const ctx: NodeContext<Static<S>> = {
    name: options.name ?? 'sink',
    params: resolved as Static<S>,
    pipeline: 'test',
    policy: { priority: 1 },
    baseDir: options.baseDir ?? process.cwd(),
    signal: abort.signal,
    emit: () => {
      throw new Error('a sink has no outputs');
    },
    warn: (message) => warnings.push(message),
    track: () => {
      throw new Error('sinks finish their work inside process');
    },
    services: { callbacks: options.callbacks ?? new Map(), extra: {} },
  };
  const state = (await definition.start?.(ctx)) as State;
  return {
    ctx,
    state,
    warnings,
    send: async (port: string, message: Envelope): Promise<void> => {
      await definition.process?.(port, message, ctx, state);
    },
    stop: async (): Promise<void> => {
      abort.abort();
      await definition.stop?.(ctx, state);
    },
  };
}

/** 2023-11-14T22:13:20Z, a sensor time with nanoseconds that a double would lose. */
export const T0 = 1_700_000_000_000_000_123n;

export function envelope<T>(value: T, over: Partial<Omit<Envelope<T>, 'value'>> = {}): Envelope<T> {
  return { value, sensorTimeNs: T0, arrivalMs: performance.now(), origin: 'camera', seq: 0, ...over };
}
