import type { Static, TSchema } from '@sinclair/typebox';
import type { TaskScheduling } from './node-stats.js';
import type { PortType } from './port-types.js';

/**
 * A message on a pipeline edge: the value, the sensor time it derives from, the monotonic time
 * its source received it (latency is measured from there), and where it started.
 */
export interface Envelope<T = unknown> {
  readonly value: T;
  readonly sensorTimeNs: bigint;
  readonly arrivalMs: number;
  /** Name of the source node the message derives from (the first one, for fused messages). */
  readonly origin: string;
  /** Sequence number at the origin, for tracing a result back to its frame. */
  readonly seq: number;
  /**
   * The upstream end (`node.port`, e.g. `detect.out`) of the flow this message arrived along; set
   * by the executor on delivery. Sinks fed by several flows file messages under it.
   */
  readonly via?: string;
}

/** Everything a node sees of the running pipeline. */
export interface NodeContext<P> {
  /** The node's name in the pipeline file. */
  readonly name: string;
  /** The pipeline's name (its file's `name`): nodes sharing devices across pipelines report under `pipeline/node`. */
  readonly pipeline: string;
  readonly params: P;
  /**
   * The node's policies from the pipeline file: its scheduling `priority` on shared devices (the
   * node's own, else the pipeline's, else 1) and its `deadlineMs` (age since the source received a
   * message after which the message is skipped), for nodes that hand work to a device.
   */
  readonly policy: { readonly priority: number; readonly deadlineMs?: number };
  /** Folder of the pipeline file: relative paths in params resolve against it. */
  readonly baseDir: string;
  /** Aborted when the pipeline stops; sources return, long operations give up. */
  readonly signal: AbortSignal;
  /**
   * Sends a value out of an output port. `from` is the input it derives from, whose sensor time,
   * arrival time and origin the output keeps; a source passes its own times instead. Returns a
   * promise when a downstream queue with the `block` policy is full: sources should await it
   * (stages need not: the executor waits before giving them the next message).
   */
  emit(port: string, value: unknown, from: Omit<Envelope, 'value'>): void | Promise<void>;
  /**
   * Declares work the node accepted in `process` that finishes later (an inference still running
   * when `process` returns, so the next one can start). The pipeline is not done, and does not
   * stop draining, until it settles; a rejection counts as the node's error and is warned about.
   */
  track(work: Promise<unknown>): void;
  /** Reports a problem that does not stop the node (rate-limited by the pipeline). */
  warn(message: string, cause?: unknown): void;
  /** Services shared by the pipeline: the resource pool, the HAL (for `infer`), callbacks. */
  readonly services: PipelineServices;
}

/**
 * Shared services, declared here as interfaces so pipeline nodes do not reach into the layers
 * that provide them.
 */
export interface PipelineServices {
  /** Library callbacks registered with `pipeline.on('result', ...)`, by sink name. */
  readonly callbacks: ReadonlyMap<string, (message: Envelope) => void>;
  /** Anything else an embedding application hands to its own stages. */
  readonly extra: Readonly<Record<string, unknown>>;
}

/** A problem found before the pipeline starts, at a key path inside the node's entry. */
export interface ConfigProblem {
  /** Path below the node, e.g. ['params', 'model']. */
  readonly path: readonly (string | number)[];
  readonly message: string;
}

/** What `check` may consult: the node's inputs' types and the file system around the pipeline. */
export interface CheckEnv {
  readonly baseDir: string;
  readonly inputs: Readonly<Record<string, PortType>>;
}

/**
 * One kind of node a pipeline file can `use`: a source (no inputs), a stage, or a sink (no
 * outputs). What it does (`run`/`process`), when it may run (queue policy, deadline — declared in
 * YAML, not here) and who runs it (the executor) are kept apart, as in Holoscan.
 *
 * Lifecycle: `start` once before any message (allocate here, not at module load), then `run`
 * (sources: produce until the signal aborts or the input ends) or `process` per message (never
 * two at once for one node; a node that overlaps its own work returns early and `track`s it), then `stop` once. `types` and `check` run at validation time, with
 * no side effects.
 */
export interface NodeDefinition<S extends TSchema = TSchema, State = unknown> {
  /** The name a pipeline file uses: `video`, `image.resize`, `infer`, `mcap`. */
  readonly use: string;
  readonly role: 'source' | 'stage' | 'sink';
  readonly description: string;
  /** Parameters, validated (with defaults applied) before anything starts. */
  readonly params: S;
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  /**
   * Output types from the parameters and the input types (sources: from parameters alone).
   * Throw a `PortTypeMismatch` to say an input type is not acceptable. Default: `any` outputs.
   */
  types?(params: Static<S>, inputs: Readonly<Record<string, PortType>>): Readonly<Record<string, PortType>> | Promise<Readonly<Record<string, PortType>>>;
  /** Checks that need the outside world (a file exists, a model can be placed). No side effects. */
  check?(params: Static<S>, env: CheckEnv): Promise<readonly ConfigProblem[]>;
  start?(ctx: NodeContext<Static<S>>): Promise<State>;
  /** Sources: produce messages with `ctx.emit` until `ctx.signal` aborts; return at end of input. */
  run?(ctx: NodeContext<Static<S>>, state: State): Promise<void>;
  /** Stages and sinks: handle one message that arrived on `port`. */
  process?(port: string, message: Envelope, ctx: NodeContext<Static<S>>, state: State): void | Promise<void>;
  stop?(ctx: NodeContext<Static<S>>, state: State): Promise<void>;
  /** Figures beyond the executor's counters, added to the node's stats (`infer`: its device share). */
  stats?(state: State): { readonly scheduling?: TaskScheduling };
}

/** Declares a node kind with its parameter schema typed through (the sketch in STYLE.md). */
export function defineNode<S extends TSchema, State = void>(definition: NodeDefinition<S, State>): NodeDefinition<S, State> {
  return definition;
}

/** Thrown from `types` when an input cannot be accepted; the validator reports it at the flow. */
export class PortTypeMismatch extends Error {
  constructor(
    readonly port: string,
    message: string,
  ) {
    super(message);
    this.name = 'PortTypeMismatch';
  }
}
