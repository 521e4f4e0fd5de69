import { promises as fs } from 'node:fs';
import path from 'node:path';
import { createBuiltinHal } from '../../drivers/builtin.js';
import { AiosError } from '../../drivers/errors.js';
import { detectModel } from '../../drivers/hal/model-format.js';
import type { DevicePreference, HalRegistry } from '../../drivers/hal/registry.js';
import type { DeviceInfo, Feeds, LoadedModel, LoadOptions, ModelSource, Outputs, TensorSpec } from '../../drivers/hal/types.js';
import { Tensor } from '../../drivers/tensor/tensor.js';
import type { Reservation } from '../resource-pool.js';
import { ResourcePool } from '../resource-pool.js';
import { LatencyWindow, type LatencySummary } from './latency-window.js';

export interface InferenceServiceOptions {
  /** Device kinds or ids, best first (`['jetson', 'cuda', 'cpu']`). Empty: any device, accelerators first. */
  readonly devices?: DevicePreference;
  /** The pool to reserve from; share one pool between services. Default: discover this machine. */
  readonly pool?: ResourcePool;
  /** The HAL to place with. Default: every built-in probe and engine. */
  readonly hal?: HalRegistry;
  /** Name in reservations and stats; defaults to the model file name. */
  readonly name?: string;
  /** Scheduling priority carried by the reservation (higher runs more). */
  readonly priority?: number;
  readonly threads?: LoadOptions['threads'];
  readonly graphOptimization?: LoadOptions['graphOptimization'];
  readonly engineOptions?: LoadOptions['engine'];
  /**
   * Where the model's runs execute (LoadOptions.executor). `auto` (default): on a thread of its
   * own, unless warm-up shows a run takes under {@link INLINE_BELOW_MS}, in which case the
   * hand-over would cost more than the event-loop time it frees and the model runs inline.
   */
  readonly executor?: 'auto' | 'inline' | 'thread';
  /**
   * Inputs for the warm-up runs, by name; inputs not given are zeros in the model's declared shape
   * (dynamic dimensions as 1). Give real-sized inputs where the model has dynamic dimensions.
   */
  readonly warmupFeeds?: Feeds;
}

/**
 * A model whose runs take less than this stays on the caller's thread under `executor: 'auto'`.
 * A thread hand-over costs ~0.1–0.2 ms on a small ARM or x86 core (measured: docs/performance.md),
 * and blocking the event loop for under a millisecond does not starve sensor sockets or MQTT.
 */
export const INLINE_BELOW_MS = 1;
/** Warm-up runs at start: the first few pay one-off allocation and kernel selection. */
const WARMUP_RUNS = 5;

/** Lifecycle failures of a service: used before start, started twice. */
export class ServiceError extends AiosError {}

/** Where a started service runs and how it has done so far. */
export interface ServiceStats {
  readonly name: string;
  readonly device: string;
  readonly engine: string;
  readonly backend: string;
  /** Where runs execute: `inline` on the caller's thread, `thread` on the model's own. */
  readonly executor: 'inline' | 'thread' | 'engine';
  /** Median of the warm-up runs at start; absent when the model could not run on generated inputs. */
  readonly warmupMs?: number;
  readonly requests: number;
  readonly errors: number;
  readonly latencyMs: LatencySummary;
}

/**
 * One model served on one device: `start()` places it (HAL + device preference), reserves its
 * memory in the pool and loads it; `infer()` runs it; `stop()` unloads it and frees the
 * reservation. This is the seam later work grows (batching, deadlines, failover), so `infer`
 * keeps the per-call path short: one input check in the engine, two clock reads, no copies.
 *
 * `infer` calls may overlap. `start` and `stop` must not overlap each other.
 */
export class InferenceService {
  private readonly modelRef: string | ModelSource;
  private readonly options: InferenceServiceOptions;
  private loaded: LoadedModel | undefined;
  private reservation: Reservation | undefined;
  private pool: ResourcePool | undefined;
  private readonly window = new LatencyWindow(1024);
  private requests = 0;
  private errors = 0;
  private warmupMs: number | undefined;

  constructor(model: string | ModelSource, options: InferenceServiceOptions = {}) {
    this.modelRef = model;
    this.options = options;
  }

  get started(): boolean {
    return this.loaded !== undefined;
  }

  /** The device the model runs on. */
  get device(): DeviceInfo {
    return this.require().device;
  }

  get engine(): string {
    return this.require().engine;
  }

  /** What executes underneath: the execution provider or tfjs backend. */
  get backend(): string {
    return this.require().backend;
  }

  /** Better backends the engine passed over for this model, with why (e.g. TensorRT library missing). */
  get skipped(): readonly { readonly backend: string; readonly reason: string }[] {
    return this.require().skipped ?? [];
  }

  /** What the user should know about how the model runs. */
  get warnings(): readonly string[] {
    return this.require().warnings ?? [];
  }

  get inputs(): readonly TensorSpec[] {
    return this.require().inputs;
  }

  get outputs(): readonly TensorSpec[] {
    return this.require().outputs;
  }

  async start(): Promise<void> {
    if (this.loaded !== undefined) throw new ServiceError('EAI_SERVICE_STARTED', `${this.name} is already started; stop() it before starting again.`);
    const model = typeof this.modelRef === 'string' ? await detectModel(this.modelRef) : this.modelRef;
    const hal = this.options.hal ?? createBuiltinHal();
    this.pool = this.options.pool ?? (await ResourcePool.discover(hal));
    const placement = await hal.place(model, this.pool.devices, this.options.devices ?? []);
    const reservation = this.pool.reserve(placement.device.id, { owner: this.name, memoryBytes: await weightBytes(model.path), priority: this.options.priority ?? 1 });
    try {
      const load = (executor: 'inline' | 'thread'): Promise<LoadedModel> =>
        placement.engine.load(model, placement.device, {
          executor,
          ...(this.options.threads === undefined ? {} : { threads: this.options.threads }),
          ...(this.options.graphOptimization === undefined ? {} : { graphOptimization: this.options.graphOptimization }),
          ...(this.options.engineOptions === undefined ? {} : { engine: this.options.engineOptions }),
        });
      const executor = this.options.executor ?? 'auto';
      let loaded = await load(executor === 'inline' ? 'inline' : 'thread');
      this.warmupMs = await warmUp(loaded, this.options.warmupFeeds ?? {});
      if (executor === 'auto' && loaded.executor === 'thread' && this.warmupMs !== undefined && this.warmupMs < INLINE_BELOW_MS) {
        // Small models load fast, so loading twice costs little; big ones never load twice.
        await loaded.dispose();
        loaded = await load('inline');
        this.warmupMs = (await warmUp(loaded, this.options.warmupFeeds ?? {})) ?? this.warmupMs;
      }
      this.loaded = loaded;
      this.reservation = reservation;
    } catch (error) {
      this.pool.release(reservation);
      throw error;
    }
  }

  /** Runs the model once. Input names, dtypes and shapes are checked against the model first. */
  async infer(inputs: Feeds): Promise<Outputs> {
    const model = this.require();
    const t0 = performance.now();
    this.requests++;
    try {
      const outputs = await model.run(inputs);
      this.window.add(performance.now() - t0);
      return outputs;
    } catch (error) {
      this.errors++;
      throw error;
    }
  }

  async stop(): Promise<void> {
    const model = this.loaded;
    this.loaded = undefined;
    if (this.reservation !== undefined) this.pool?.release(this.reservation);
    this.reservation = undefined;
    await model?.dispose();
  }

  stats(): ServiceStats {
    const model = this.require();
    return { name: this.name, device: model.device.id, engine: model.engine, backend: model.backend, executor: model.executor ?? 'engine', ...(this.warmupMs === undefined ? {} : { warmupMs: this.warmupMs }), requests: this.requests, errors: this.errors, latencyMs: this.window.summary() };
  }

  private get name(): string {
    if (this.options.name !== undefined) return this.options.name;
    return path.basename(typeof this.modelRef === 'string' ? this.modelRef : this.modelRef.path);
  }

  private require(): LoadedModel {
    if (this.loaded === undefined) throw new ServiceError('EAI_SERVICE_NOT_STARTED', `${this.name} is not started; call start() first.`);
    return this.loaded;
  }
}

/**
 * Runs the model a few times on `given` inputs (zeros for the rest) and returns the median of the
 * last runs, ms; undefined when the model refuses generated inputs (a dynamic dimension that
 * cannot be 1), which only means there is no measurement until real requests arrive.
 */
async function warmUp(model: LoadedModel, given: Feeds): Promise<number | undefined> {
  const feeds: Record<string, Tensor> = {};
  for (const spec of model.inputs) feeds[spec.name] = given[spec.name] ?? Tensor.zeros(spec.dtype, spec.shape.map((d) => d ?? 1));
  const times: number[] = [];
  try {
    for (let i = 0; i < WARMUP_RUNS; i++) {
      const t0 = performance.now();
      await model.run(feeds);
      times.push(performance.now() - t0);
    }
  } catch {
    return undefined;
  }
  const settled = times.slice(2).sort((a, b) => a - b);
  return settled[Math.floor(settled.length / 2)];
}

/** Bytes of weights on disk: the file, or every file of a model folder (TF.js shards). */
async function weightBytes(modelPath: string): Promise<number> {
  const stat = await fs.stat(modelPath);
  if (!stat.isDirectory()) return stat.size;
  let total = 0;
  for (const entry of await fs.readdir(modelPath, { withFileTypes: true })) {
    if (entry.isFile()) total += (await fs.stat(path.join(modelPath, entry.name))).size;
  }
  return total;
}
