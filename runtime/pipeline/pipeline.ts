import { EventEmitter } from 'node:events';
import path from 'node:path';
import { ConfigError } from './config-error.js';
import type { Envelope } from './definition.js';
import { Executor, type NodeWarning } from './executor.js';
import { buildGraph, type PipelineGraph } from './graph.js';
import type { NodeKinds } from './node-kinds.js';
import type { NodeStatsSnapshot } from './node-stats.js';
import { parsePipelineObject, readPipelineFile } from './pipeline-file.js';

export interface PipelineOptions {
  /** Node kinds available to the file. Default: every built-in (runtime/pipeline/nodes/builtin.ts). */
  readonly kinds?: NodeKinds;
  /** How often 'stats' is emitted while running, ms. 0 turns it off. Default 1000. */
  readonly statsIntervalMs?: number;
  /** Passed to nodes as `ctx.services.extra`. */
  readonly extra?: Readonly<Record<string, unknown>>;
}

/** What `stats()` and the 'stats' event report. */
export interface PipelineStats {
  readonly name: string;
  readonly uptimeMs: number;
  readonly nodes: readonly NodeStatsSnapshot[];
}

/**
 * A sensor pipeline from a YAML file or an object: validated completely on creation (every
 * problem reported at once as a ConfigError), then `start()`ed and `stop()`ped.
 *
 * Events: `result` (sinkName, envelope) for every message reaching a `callback` sink;
 * `stats` (PipelineStats) every `statsIntervalMs`; `warning` (NodeWarning) for node problems
 * that do not stop the pipeline; `error` (Error) for ones that do; `done` when every source has
 * ended and every message has been handled (replays end; live sensors do not).
 */
export class Pipeline extends EventEmitter {
  private executor: Executor | undefined;
  private timer: NodeJS.Timeout | undefined;
  private startedAt = 0;
  private readonly callbacks = new Map<string, (message: Envelope) => void>();

  private constructor(
    readonly graph: PipelineGraph,
    private readonly options: PipelineOptions,
  ) {
    super();
    for (const node of graph.nodes) {
      if (node.definition.use === 'callback') this.callbacks.set(node.name, (message) => this.emit('result', node.name, message));
    }
  }

  get name(): string {
    return this.graph.name;
  }

  /** Reads, validates and prepares a pipeline file. Throws ConfigError listing every problem. */
  static async fromFile(file: string, options: PipelineOptions = {}): Promise<Pipeline> {
    const kinds = options.kinds ?? (await defaultKinds());
    return new Pipeline(await buildGraph(await readPipelineFile(file), kinds), options);
  }

  /** The same from an object (paths resolve against `baseDir`, default the working folder). */
  static async fromConfig(config: unknown, options: PipelineOptions & { baseDir?: string } = {}): Promise<Pipeline> {
    const kinds = options.kinds ?? (await defaultKinds());
    const name = typeof config === 'object' && config !== null && typeof (config as { name?: unknown }).name === 'string' ? `<${(config as { name: string }).name}>` : '<config>';
    return new Pipeline(await buildGraph(parsePipelineObject(config, name, path.resolve(options.baseDir ?? '.')), kinds), options);
  }

  /** Validates without building a pipeline: resolves with the graph or rejects with ConfigError. */
  static async validate(file: string, kinds?: NodeKinds): Promise<PipelineGraph> {
    return buildGraph(await readPipelineFile(file), kinds ?? (await defaultKinds()));
  }

  async start(): Promise<void> {
    if (this.executor !== undefined) throw new Error(`pipeline ${this.name} is already started`);
    const executor = new Executor(this.graph, { services: { callbacks: this.callbacks, extra: this.options.extra ?? {} } });
    executor.on('warning', (w: NodeWarning) => this.emit('warning', w));
    executor.on('done', () => this.emit('done'));
    this.executor = executor;
    this.startedAt = performance.now();
    await executor.start();
    const every = this.options.statsIntervalMs ?? 1000;
    if (every > 0) {
      this.timer = setInterval(() => this.emit('stats', this.stats()), every);
      this.timer.unref();
    }
  }

  /** Stops sources, drains queues (bounded), stops every node; sinks flush last. Idempotent. */
  async stop(): Promise<void> {
    if (this.timer !== undefined) clearInterval(this.timer);
    await this.executor?.stop();
  }

  /** Resolves when the pipeline is done by itself (replays), or when it is stopped. */
  finished(): Promise<void> {
    return new Promise((resolve) => {
      this.once('done', resolve);
    });
  }

  stats(): PipelineStats {
    return { name: this.name, uptimeMs: this.executor === undefined ? 0 : performance.now() - this.startedAt, nodes: this.executor?.stats() ?? [] };
  }
}

async function defaultKinds(): Promise<NodeKinds> {
  // Imported lazily so that embedding applications with their own kinds do not load every sensor.
  return (await import('./nodes/builtin.js')).builtinNodeKinds();
}

export { ConfigError };
