import { Value } from '@sinclair/typebox/value';
import type { Static, TSchema } from '@sinclair/typebox';
import type { Envelope, NodeContext, NodeDefinition } from '../../../../../../runtime/pipeline/definition.js';

/** What a stage emitted: port, value and the envelope fields it kept. */
export interface Emitted {
  readonly port: string;
  readonly value: unknown;
  readonly from: Omit<Envelope, 'value'>;
}

/** A stage started outside any pipeline, with its params defaulted and checked as the graph does. */
export interface StageUnderTest<S extends TSchema, State> {
  readonly params: Static<S>;
  readonly emitted: Emitted[];
  readonly warnings: string[];
  readonly state: State;
  send(value: unknown, at?: Partial<Omit<Envelope, 'value'>>, port?: string): Promise<void>;
  stop(): Promise<void>;
}

let seq = 0;

/** An envelope at `sensorTimeNs` (default: a running sequence). */
export function envelope(value: unknown, at: Partial<Omit<Envelope, 'value'>> = {}): Envelope {
  seq++;
  return { value, sensorTimeNs: at.sensorTimeNs ?? BigInt(seq) * 1_000_000n, arrivalMs: at.arrivalMs ?? performance.now(), origin: at.origin ?? 'camera', seq: at.seq ?? seq };
}

export function defaults<S extends TSchema>(definition: NodeDefinition<S, unknown>, params: unknown): Static<S> {
  const p = Value.Default(definition.params, structuredClone(params ?? {}));
  const errors = [...Value.Errors(definition.params, p)].map((e) => `${e.path}: ${e.message}`);
  if (errors.length > 0) throw new Error(`bad params for ${definition.use}: ${errors.join('; ')}`);
  return p as Static<S>;
}

export async function startStage<S extends TSchema, State>(definition: NodeDefinition<S, State>, params: unknown, options: { baseDir?: string; extra?: Record<string, unknown> } = {}): Promise<StageUnderTest<S, State>> {
  const p = defaults(definition as NodeDefinition<S, unknown>, params);
  const emitted: Emitted[] = [];
  const warnings: string[] = [];
  const abort = new AbortController();
  const tracked: Promise<unknown>[] = [];
  const ctx: NodeContext<Static<S>> = {
    name: definition.use,
    params: p,
    pipeline: 'test',
    policy: { priority: 1 },
    baseDir: options.baseDir ?? process.cwd(),
    signal: abort.signal,
    services: { callbacks: new Map(), extra: options.extra ?? {} },
    warn: (message) => warnings.push(message),
    track: (work) => void tracked.push(work),
    emit: (port, value, from) => {
      const { value: _v, ...kept } = from as Envelope;
      emitted.push({ port, value, from: kept });
    },
  };
  const state = (await definition.start?.(ctx)) as State;
  return {
    params: p,
    emitted,
    warnings,
    state,
    async send(value, at = {}, port = definition.inputs[0] ?? 'in') {
      await definition.process?.(port, envelope(value, at), ctx, state);
      // Like the pipeline, a send is finished when the work the stage tracked has settled.
      await Promise.all(tracked.splice(0));
    },
    async stop() {
      abort.abort();
      await definition.stop?.(ctx, state);
    },
  };
}
