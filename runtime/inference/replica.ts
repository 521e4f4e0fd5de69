import { DeviceUnavailableError } from '../../drivers/errors.js';
import type { Placement } from '../../drivers/hal/registry.js';
import type { DeviceInfo, Engine, Feeds, LoadedModel, LoadOptions, ModelSource } from '../../drivers/hal/types.js';
import { Tensor } from '../../drivers/tensor/tensor.js';
import { CostModel } from '../scheduler/cost-model.js';

/**
 * Where a replica stands: `idle` (a candidate, not loaded), `up` (loaded and serving), `down`
 * (failed; retried with backoff), `stopped` (the service is gone).
 */
export type ReplicaState = 'idle' | 'up' | 'down' | 'stopped';

/** How a replica loads its model: the engine options, and the executor policy. */
export interface ReplicaLoadOptions {
  readonly load: Omit<LoadOptions, 'executor'>;
  readonly executor: 'auto' | 'inline' | 'thread';
  readonly warmupFeeds: Feeds;
  /** Batch sizes to measure at load besides 1 (the batcher's largest), when the model batches. */
  readonly warmupBatch?: (rows: number) => Feeds | undefined;
}

/**
 * A model under `executor: 'auto'` runs inline when a warm-up run takes less than this: a thread
 * hand-over costs ~0.1–0.2 ms on a small core (docs/performance.md), and blocking the event loop
 * for under a millisecond does not starve sensor sockets or MQTT keep-alives.
 */
export const INLINE_BELOW_MS = 1;
/** Warm-up runs at load; the first two pay one-off allocation and kernel selection and are not timed. */
const WARMUP_RUNS = 5;

/**
 * One model on one device: a candidate of an InferenceService, loaded when it is needed (start,
 * or failover to it), measured at load (the cost model's seed), dropped when its device fails,
 * and retried with backoff until it serves again.
 */
export class Replica {
  readonly device: DeviceInfo;
  readonly engine: Engine;
  readonly cost = new CostModel();
  state: ReplicaState = 'idle';
  loaded: LoadedModel | undefined;
  /** Why it went down, for stats and errors. */
  downReason: string | undefined;
  /** Consecutive failed runs (reset by a good one). */
  failures = 0;
  /** Next back-off delay; doubles per failed retry up to the service's maximum. */
  retryDelayMs: number;
  retryTimer: NodeJS.Timeout | undefined;
  /** Median warm-up run at batch 1, ms. */
  warmupMs: number | undefined;
  /**
   * Under `executor: 'auto'`, a model whose warm-up could not be measured starts on its own
   * thread and is judged on its first live runs instead; set until then.
   */
  executorUndecided = false;
  private loadArgs: { model: ModelSource; options: ReplicaLoadOptions } | undefined;

  constructor(placement: Placement, initialRetryMs: number) {
    this.device = placement.device;
    this.engine = placement.engine;
    this.retryDelayMs = initialRetryMs;
  }

  /** The device id: how stats and errors name this candidate. */
  get id(): string {
    return this.device.id;
  }

  /** Loads the model, measures it, and picks its executor. Leaves `loaded` set only on success. */
  async load(model: ModelSource, options: ReplicaLoadOptions): Promise<LoadedModel> {
    this.loadArgs = { model, options };
    const load = (executor: 'inline' | 'thread'): Promise<LoadedModel> => this.engine.load(model, this.device, { ...options.load, executor });
    let loaded = await load(options.executor === 'inline' ? 'inline' : 'thread');
    try {
      let warm = await warmUp(loaded, options.warmupFeeds, this.cost);
      if (options.executor === 'auto' && loaded.executor === 'thread' && warm !== undefined && warm < INLINE_BELOW_MS) {
        // Small models load fast, so loading twice costs little; big ones never load twice.
        await loaded.dispose();
        loaded = await load('inline');
        const fresh = new CostModel();
        warm = (await warmUp(loaded, options.warmupFeeds, fresh)) ?? warm;
        this.cost.observe(1, warm);
      }
      this.warmupMs = warm;
      this.executorUndecided = options.executor === 'auto' && loaded.executor === 'thread' && warm === undefined;
      const rows = options.warmupBatch === undefined ? undefined : largestBatch(options.warmupBatch);
      if (rows !== undefined) await warmUp(loaded, rows.feeds, this.cost, rows.rows);
    } catch (error) {
      await loaded.dispose().catch(() => undefined);
      throw error;
    }
    this.loaded = loaded;
    return loaded;
  }

  /**
   * After live runs: moves a model judged small (runs under {@link INLINE_BELOW_MS}) onto the
   * caller's thread. The inline copy is loaded first and swapped in; runs already sent to the
   * thread finish there before it is released. Called at most once per load.
   */
  async decideExecutor(): Promise<void> {
    if (!this.executorUndecided || this.loadArgs === undefined) return;
    this.executorUndecided = false;
    const ms = this.cost.estimateMs(1);
    if (ms === undefined || ms >= INLINE_BELOW_MS) return;
    const { model, options } = this.loadArgs;
    const inline = await this.engine.load(model, this.device, { ...options.load, executor: 'inline' });
    const old = this.loaded;
    if (old === undefined || this.state !== 'up') {
      await inline.dispose();
      return;
    }
    this.loaded = inline;
    await old.dispose();
  }

  /** Unloads, giving a hung engine `graceMs` before moving on (its thread or process is ended). */
  async unload(graceMs = 1000): Promise<void> {
    const loaded = this.loaded;
    this.loaded = undefined;
    if (loaded === undefined) return;
    await Promise.race([loaded.dispose().catch(() => undefined), new Promise((resolve) => setTimeout(resolve, graceMs).unref())]);
  }
}

function largestBatch(make: (rows: number) => Feeds | undefined): { rows: number; feeds: Feeds } | undefined {
  for (const rows of [32, 16, 8, 4, 2]) {
    const feeds = make(rows);
    if (feeds !== undefined) return { rows, feeds };
  }
  return undefined;
}

/**
 * Runs the model a few times on `given` inputs (zeros for the rest, dynamic dimensions as
 * `rows` for the first and 1 elsewhere) and returns the median of the timed runs, ms, also fed
 * to `cost`; undefined when the model refuses generated inputs (a dimension that cannot be 1),
 * which only means there is no measurement until real requests arrive.
 */
async function warmUp(model: LoadedModel, given: Feeds, cost: CostModel, rows = 1): Promise<number | undefined> {
  const feeds: Record<string, Tensor> = {};
  for (const spec of model.inputs) feeds[spec.name] = given[spec.name] ?? Tensor.zeros(spec.dtype, spec.shape.map((d) => d ?? 1));
  const times: number[] = [];
  try {
    for (let i = 0; i < WARMUP_RUNS; i++) {
      const t0 = performance.now();
      await model.run(feeds);
      times.push(performance.now() - t0);
    }
  } catch (error) {
    // A device that fails here is as failed as one that fails on a request.
    if (error instanceof DeviceUnavailableError) throw error;
    return undefined;
  }
  const timed = times.slice(2).sort((a, b) => a - b);
  for (const t of timed) cost.observe(rows, t);
  return timed[Math.floor(timed.length / 2)];
}
