import type { Static, TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import type { Envelope, NodeContext, NodeDefinition } from '../../../../../../runtime/pipeline/definition.js';

/** What a source did through its context: every emit (value as given) and every warning. */
export interface Recorded {
  readonly emits: { port: string; envelope: Envelope }[];
  readonly warnings: { message: string; cause: unknown }[];
}

/**
 * A NodeContext as the pipeline would build it: params with the schema's defaults applied and
 * checked. `onEmit` runs inside each emit (as a downstream stage would), e.g. to abort.
 */
export function sourceContext<S extends TSchema>(
  definition: NodeDefinition<S, unknown>,
  params: Record<string, unknown>,
  options: { readonly baseDir: string; readonly signal: AbortSignal; readonly onEmit?: (port: string, envelope: Envelope, recorded: Recorded) => void },
): { ctx: NodeContext<Static<S>>; recorded: Recorded } {
  const full = Value.Default(definition.params, structuredClone(params)) as Static<S>;
  const errors = [...Value.Errors(definition.params, full)].map((e) => `${e.path}: ${e.message}`);
  if (errors.length > 0) throw new Error(`bad params in test: ${errors.join('; ')}`);
  const recorded: Recorded = { emits: [], warnings: [] };
  const ctx: NodeContext<Static<S>> = {
    name: 'cam',
    params: full,
    pipeline: 'test',
    policy: { priority: 1 },
    baseDir: options.baseDir,
    signal: options.signal,
    emit(port: string, value: unknown, from: Omit<Envelope, 'value'>) {
      const envelope = { ...from, value };
      recorded.emits.push({ port, envelope });
      options.onEmit?.(port, envelope, recorded);
    },
    warn(message: string, cause?: unknown) {
      recorded.warnings.push({ message, cause });
    },
    track() {
      throw new Error('sources finish their work inside run');
    },
    services: { callbacks: new Map(), extra: {} },
  };
  return { ctx, recorded };
}
