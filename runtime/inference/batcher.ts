import type { Feeds, Outputs } from '../../drivers/hal/types.js';
import type { BatchLayout } from './batching.js';
import { BatchError, batchKey, rowsOf, split, stack } from './batching.js';

/** Timers the Batcher arms; injected so tests can drive time by hand. */
export interface BatchTimers {
  set(callback: () => void, ms: number): unknown;
  clear(handle: unknown): void;
}

export interface BatcherOptions {
  /** Rows in a batch at most; a batch is sent as soon as it holds this many. 1 turns batching off. */
  readonly maxBatch: number;
  /** How long the first request of a batch waits at most for others to join it, ms. 0: never waits. */
  readonly maxDelayMs: number;
  readonly layout: BatchLayout;
  /**
   * Runs one batch (`rows` rows along the layout's batch axis); `deadline` is the earliest deadline
   * of its requests (undefined when none has one), for the scheduler. Calls may overlap: the
   * Batcher goes on collecting the next batch while earlier ones run. A rejection fails every
   * request of that batch with the same error, unchanged.
   */
  run(feeds: Feeds, rows: number, deadline: number | undefined): Promise<Outputs>;
  /**
   * How long a batch of `rows` rows takes from send to result, ms; decides when a deadline forces
   * a batch out early. Default: learned from this Batcher's own runs (a moving mean per batch size,
   * interpolated between sizes, 0 before the first run).
   */
  estimateMs?(rows: number): number;
  /** Monotonic clock, ms; deadlines are on this clock. Default `performance.now()`. */
  now?(): number;
  readonly timers?: BatchTimers;
}

export interface SubmitOptions {
  /**
   * When the result is due, absolute ms on the Batcher's clock (`performance.now()` by default).
   * The request's batch is sent no later than `deadline − estimateMs(rows)`; a deadline already
   * unmeetable sends it at once. The Batcher never drops a late request: that is the caller's call.
   */
  readonly deadline?: number;
}

export interface BatcherStats {
  /** Batches sent to `run`. */
  readonly batches: number;
  /** Requests in those batches. */
  readonly requests: number;
  /** Rows in those batches (requests can carry several). */
  readonly rows: number;
  /** Mean rows per batch. */
  readonly meanBatch: number;
  /** Histogram: batch size in rows -> batches of that size. */
  readonly sizes: Readonly<Record<number, number>>;
  /** Requests waiting for their batch to be sent. */
  readonly waiting: number;
  /** Batches sent whose run has not settled. */
  readonly inFlight: number;
}

interface Waiting {
  readonly feeds: Feeds;
  readonly resolve: (outputs: Outputs) => void;
  readonly reject: (error: unknown) => void;
}

/** Requests that can share a batch (equal batchKey), collected until one of the send rules fires. */
interface Group {
  readonly key: string;
  readonly requests: Waiting[];
  readonly firstAt: number;
  rows: number;
  deadline: number;
  timer: unknown;
  dueAt: number;
}

const realTimers: BatchTimers = { set: (callback, ms) => setTimeout(callback, ms), clear: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>) };

/**
 * Dynamic batching in front of one model: `submit` takes one request (one or more rows along the
 * model's batch axis), waits for others it can share a batch with, and resolves with its own slice
 * of the batch's outputs. A batch is sent when it holds `maxBatch` rows, `maxDelayMs` after its
 * first request arrived, or earlier when waiting longer would miss the earliest deadline in it
 * (`deadline − estimateMs(rows) ≤ now`); `flush()` sends everything now. Requests whose shared
 * inputs (or shapes off the batch axis) differ never share a batch. Batches run concurrently: the
 * next batch is collected while earlier ones run, and `run` decides how they overlap.
 *
 * Every request's promise settles exactly once: with its outputs, with its batch's run error
 * (unchanged, so the caller can retry or fail over), with a BatchError for a request that does not
 * fit the layout (`EAI_BATCH_INPUT`, at submit, alone) or a batch whose outputs do not split
 * (`EAI_BATCH_OUTPUT`), or with the error given to `close`. A request with more rows than
 * `maxBatch` runs as a batch of its own.
 *
 * `submit`, `flush` and `stats` may be called at any time, from any callback; `close` may be
 * called more than once (the first call decides) and `submit` after it fails `EAI_BATCH_CLOSED`.
 */
export class Batcher {
  private readonly options: BatcherOptions;
  private readonly now: () => number;
  private readonly timers: BatchTimers;
  private readonly estimate: (rows: number) => number;
  private readonly learned = new RunTimes();
  private readonly groups = new Map<string, Group>();
  private readonly inFlight = new Set<Promise<void>>();
  private readonly histogram: Record<number, number> = {};
  private batches = 0;
  private requests = 0;
  private rows = 0;
  private closing: Promise<void> | undefined;

  constructor(options: BatcherOptions) {
    if (!Number.isInteger(options.maxBatch) || options.maxBatch < 1) {
      throw new BatchError('EAI_BATCH_OPTIONS', `Batcher for ${options.layout.model}: maxBatch must be a whole number of rows ≥ 1 (1 turns batching off), got ${String(options.maxBatch)}.`, { details: { model: options.layout.model, maxBatch: options.maxBatch } });
    }
    if (!Number.isFinite(options.maxDelayMs) || options.maxDelayMs < 0) {
      throw new BatchError('EAI_BATCH_OPTIONS', `Batcher for ${options.layout.model}: maxDelayMs must be a finite number of ms ≥ 0, got ${String(options.maxDelayMs)}.`, { details: { model: options.layout.model, maxDelayMs: options.maxDelayMs } });
    }
    this.options = options;
    this.now = options.now ?? (() => performance.now());
    this.timers = options.timers ?? realTimers;
    this.estimate = options.estimateMs ?? ((rows) => this.learned.estimate(rows));
  }

  get layout(): BatchLayout {
    return this.options.layout;
  }

  /** Queues one request; resolves with its own outputs (rows in the order it gave them). */
  submit(feeds: Feeds, options: SubmitOptions = {}): Promise<Outputs> {
    const { layout } = this.options;
    if (this.closing !== undefined) {
      return Promise.reject(new BatchError('EAI_BATCH_CLOSED', `The batcher for ${layout.model} is closed (its service stopped); submit to a started service.`, { details: { model: layout.model } }));
    }
    let rows: number;
    let key: string;
    try {
      rows = rowsOf(feeds, layout);
      // A full batch on its own with nothing waiting (always so with maxBatch 1) goes straight out:
      // no key to compute, no group to build.
      if (rows >= this.options.maxBatch && this.groups.size === 0) {
        return new Promise<Outputs>((resolve, reject) => this.dispatch([{ feeds, resolve, reject }], rows, options.deadline ?? Number.POSITIVE_INFINITY));
      }
      key = batchKey(feeds, layout);
    } catch (error) {
      return Promise.reject(error);
    }
    return new Promise<Outputs>((resolve, reject) => {
      let group = this.groups.get(key);
      // Never grow a batch past maxBatch: send what waits, start anew.
      if (group !== undefined && group.rows + rows > this.options.maxBatch) {
        this.send(group);
        group = undefined;
      }
      if (group === undefined) {
        group = { key, requests: [], firstAt: this.now(), rows: 0, deadline: Number.POSITIVE_INFINITY, timer: undefined, dueAt: Number.POSITIVE_INFINITY };
        this.groups.set(key, group);
      }
      group.requests.push({ feeds, resolve, reject });
      group.rows += rows;
      if (options.deadline !== undefined) group.deadline = Math.min(group.deadline, options.deadline);
      this.schedule(group);
    });
  }

  /** Sends every waiting request now, in batches as they were collected. */
  flush(): void {
    for (const group of [...this.groups.values()]) this.send(group);
  }

  /**
   * Stops taking requests. Without `error`, sends what waits (as `flush`); with it, rejects every
   * waiting request with `error` instead. Resolves once every batch already sent has settled.
   */
  close(error?: unknown): Promise<void> {
    if (this.closing === undefined) {
      if (error === undefined) {
        this.flush();
      } else {
        for (const group of this.groups.values()) {
          this.disarm(group);
          for (const request of group.requests) request.reject(error);
        }
        this.groups.clear();
      }
      this.closing = Promise.allSettled([...this.inFlight]).then(() => undefined);
    }
    return this.closing;
  }

  stats(): BatcherStats {
    let waiting = 0;
    for (const group of this.groups.values()) waiting += group.requests.length;
    return { batches: this.batches, requests: this.requests, rows: this.rows, meanBatch: this.batches === 0 ? 0 : this.rows / this.batches, sizes: { ...this.histogram }, waiting, inFlight: this.inFlight.size };
  }

  /** Sends the group now if a rule says so, else arms its timer for the first moment one will. */
  private schedule(group: Group): void {
    if (group.rows >= this.options.maxBatch) return this.send(group);
    const now = this.now();
    const due = Math.min(group.firstAt + this.options.maxDelayMs, group.deadline - this.estimateOf(group.rows));
    if (due <= now) return this.send(group);
    if (group.timer !== undefined && due === group.dueAt) return;
    this.disarm(group);
    group.dueAt = due;
    group.timer = this.timers.set(() => {
      group.timer = undefined;
      this.send(group);
    }, due - now);
  }

  /** The run-time estimate; one that throws or is not a number ≥ 0 counts as 0 (the deadline alone then decides). */
  private estimateOf(rows: number): number {
    let ms = 0;
    try {
      ms = this.estimate(rows);
    } catch {
      // A broken estimator must not fail requests: batching then simply ignores it.
    }
    return Number.isFinite(ms) && ms > 0 ? ms : 0;
  }

  private disarm(group: Group): void {
    if (group.timer !== undefined) this.timers.clear(group.timer);
    group.timer = undefined;
  }

  private send(group: Group): void {
    // A group is sent once: it leaves the map here, and its timer (if any) goes with it.
    if (this.groups.get(group.key) !== group) return;
    this.groups.delete(group.key);
    this.disarm(group);
    this.dispatch(group.requests, group.rows, group.deadline);
  }

  /** Runs one batch and settles each of its requests once, with its piece or the batch's error. */
  private dispatch(requests: readonly Waiting[], rows: number, deadline: number): void {
    this.batches++;
    this.requests += requests.length;
    this.rows += rows;
    this.histogram[rows] = (this.histogram[rows] ?? 0) + 1;
    const { layout } = this.options;
    const started = this.now();
    let result: Promise<Outputs[]>;
    try {
      const { feeds, sizes } = stack(requests.map((r) => r.feeds), layout);
      result = this.options.run(feeds, rows, Number.isFinite(deadline) ? deadline : undefined).then((outputs) => {
        this.learned.add(rows, this.now() - started);
        return split(outputs, sizes, layout);
      });
    } catch (error) {
      result = Promise.reject(error);
    }
    const settled = result.then(
      (pieces) => requests.forEach((r, i) => r.resolve(pieces[i] as Outputs)),
      (error: unknown) => requests.forEach((r) => r.reject(error)),
    );
    this.inFlight.add(settled);
    void settled.then(() => this.inFlight.delete(settled));
  }
}

/**
 * Run time per batch size, learned: a moving mean for each size seen, linear between sizes seen,
 * proportional to rows above the largest (batching is sub-linear, so this errs towards sending
 * early), and the smallest size's time below it.
 */
class RunTimes {
  private readonly mean = new Map<number, number>();

  add(rows: number, ms: number): void {
    const m = this.mean.get(rows);
    this.mean.set(rows, m === undefined ? ms : m + (ms - m) * 0.2);
  }

  estimate(rows: number): number {
    const exact = this.mean.get(rows);
    if (exact !== undefined) return exact;
    let below: [number, number] | undefined;
    let above: [number, number] | undefined;
    for (const [r, ms] of this.mean) {
      if (r < rows && (below === undefined || r > below[0])) below = [r, ms];
      if (r > rows && (above === undefined || r < above[0])) above = [r, ms];
    }
    if (below !== undefined && above !== undefined) return below[1] + ((above[1] - below[1]) * (rows - below[0])) / (above[0] - below[0]);
    if (below !== undefined) return (below[1] * rows) / below[0];
    return above?.[1] ?? 0;
  }
}
