import { AiosError } from '../../drivers/errors.js';
import { checkFairShareTask, entitledRates, SchedulerError, type FairShareTask } from './fair-share.js';

/** A stream of work on one device: a model of a pipeline, a service's callers. */
export interface TaskOptions {
  readonly id: string;
  /** Weight, > 0: under contention a task is served in proportion to its priority (requests/s). */
  readonly priority: number;
  /**
   * The most requests per second the task means to ask for. Used for entitlement (stats) and
   * admission only; the scheduler does not throttle a task that asks for more.
   */
  readonly demandHz?: number;
}

/** One request: the work, its cost estimate and, optionally, when it is no longer worth doing. */
export interface Job<T> {
  /** Runs the request on the device. Called once, when a lane is free; may reject. */
  readonly run: () => Promise<T>;
  /** Absolute time on the scheduler's clock (ms) by which the result is needed. */
  readonly deadline?: number;
  /** Estimated device time in ms; used for entitlement until the task's runs have been measured. */
  readonly costMs: number;
}

export interface DeviceSchedulerOptions {
  /** Jobs that may run at once (CUDA streams, Edge TPUs behind one id, CPU cores set aside). Default 1. */
  readonly lanes?: number;
  /** Clock in ms; inject one for deterministic tests. Default `performance.now`. */
  readonly now?: () => number;
  /** Span of the rates, shares and queue-time percentiles in `stats()`, ms. Default 5000. */
  readonly windowMs?: number;
}

/** How one task has fared. Counters are totals since `addTask`; rates, shares and percentiles cover the stats window. */
export interface TaskStats {
  readonly id: string;
  readonly priority: number;
  readonly demandHz?: number;
  /** Jobs run to the end (resolved or thrown). */
  readonly served: number;
  /** Of those, jobs whose `run` threw or rejected. */
  readonly failed: number;
  /** Jobs not run because their deadline had come when a lane was free (rejected with DeadlineError). */
  readonly expired: number;
  /** Jobs that ran but finished after their deadline (resolved normally). */
  readonly deadlineMisses: number;
  readonly queued: number;
  readonly running: number;
  /** Jobs finished per second over the window. */
  readonly receivedRateHz: number;
  /** What the policy grants this task now (docs/scheduling.md); 0 for a task idle all window. */
  readonly entitledRateHz: number;
  /** Fraction of the device's capacity (all lanes) this task's jobs occupied over the window. */
  readonly receivedShare: number;
  readonly entitledShare: number;
  /** Wait from submit to start of jobs finished in the window, ms. */
  readonly queueMs: { readonly p50: number; readonly p99: number };
}

export interface DeviceSchedulerStats {
  readonly deviceId: string;
  readonly lanes: number;
  /** Span the window figures cover, ms: `windowMs`, or less just after construction. */
  readonly windowMs: number;
  /** Fraction of lane-time busy over the window, 0..1. */
  readonly busyFraction: number;
  /** In the order the tasks were added. */
  readonly tasks: readonly TaskStats[];
}

/** A job not run because its deadline had come before a lane was free for it. */
export class DeadlineError extends AiosError {}

/**
 * One device's run queue. Tasks are served by start-time fair queuing in request units: each
 * served request advances its task's tag by 1/priority and the backlogged task with the smallest
 * tag goes next, so under contention requests/s ∝ priority (the policy's S_i/p_i equal) and an
 * idle device never holds work back. A task that had nothing queued restarts at the system's
 * virtual time and cannot bank credit while idle. Among backlogged tasks of the priority SFQ
 * picked whose tags are within one quantum (1/priority) of it, the earliest deadline runs first;
 * within a task, jobs go by deadline, then arrival. docs/scheduling.md has the reasoning.
 *
 * Every submitted job settles exactly once: with its run's result, or with DeadlineError
 * (expired), or with the error given to `drainQueued`/`removeTask`. A job that throws fails only
 * its own promise. Methods may be called from inside a running job (re-entrant submits are queued
 * and dispatched by the loop already running). Not shared between threads.
 */
export class DeviceScheduler {
  readonly deviceId: string;
  readonly lanes: number;
  private readonly now: () => number;
  private readonly windowMs: number;
  private readonly createdAt: number;
  private readonly tasks = new Map<string, TaskState>();
  private readonly inFlight = new Set<Slot>();
  /** Every finished run, whatever its task: busy time survives removeTask. */
  private readonly runs = new RunWindow();
  private virtualTime = 0;
  private seq = 0;
  private pumping = false;

  constructor(deviceId: string, options: DeviceSchedulerOptions = {}) {
    const lanes = options.lanes ?? 1;
    const windowMs = options.windowMs ?? 5000;
    if (!(Number.isInteger(lanes) && lanes >= 1)) throw new SchedulerError('EAI_SCHED_BAD_ARGUMENT', `lanes of ${deviceId} must be a whole number ≥ 1, got ${lanes}.`, { details: { device: deviceId } });
    if (!(Number.isFinite(windowMs) && windowMs > 0)) throw new SchedulerError('EAI_SCHED_BAD_ARGUMENT', `windowMs of ${deviceId} must be > 0, got ${windowMs}.`, { details: { device: deviceId } });
    this.deviceId = deviceId;
    this.lanes = lanes;
    this.windowMs = windowMs;
    this.now = options.now ?? (() => performance.now());
    this.createdAt = this.now();
  }

  /** Registers a task. Throws EAI_SCHED_DUPLICATE_TASK for an id already here, EAI_SCHED_BAD_ARGUMENT for bad numbers. */
  addTask(task: TaskOptions): void {
    checkFairShareTask({ ...task, costMs: 0 });
    if (this.tasks.has(task.id)) {
      throw new SchedulerError('EAI_SCHED_DUPLICATE_TASK', `Task '${task.id}' is already scheduled on ${this.deviceId}; remove it first or pick another id.`, { details: { device: this.deviceId, task: task.id } });
    }
    this.tasks.set(task.id, new TaskState(task, this.now()));
  }

  /** Changes priority and/or declared demand; `{ demandHz: undefined }` clears the demand. Queued jobs keep their place. */
  updateTask(id: string, patch: { readonly priority?: number; readonly demandHz?: number }): void {
    const t = this.task(id);
    const priority = patch.priority ?? t.priority;
    const demandHz = 'demandHz' in patch ? patch.demandHz : t.demandHz;
    checkFairShareTask({ id, priority, costMs: 0, ...(demandHz === undefined ? {} : { demandHz }) });
    t.priority = priority;
    t.demandHz = demandHz;
  }

  /**
   * Unregisters a task and rejects its queued jobs with `error` (default: SchedulerError
   * EAI_SCHED_TASK_REMOVED). Jobs already running finish and settle normally. Removing a task
   * that is not here is harmless.
   */
  removeTask(id: string, error?: Error): void {
    const t = this.tasks.get(id);
    if (t === undefined) return;
    this.tasks.delete(id);
    this.rejectQueued(t, error ?? new SchedulerError('EAI_SCHED_TASK_REMOVED', `Task '${id}' was removed from ${this.deviceId} before this job started; submit it again where the task now runs.`, { details: { device: this.deviceId, task: id } }));
  }

  /**
   * Queues a job of a task; settles with its result once it has run. Rejects with
   * EAI_SCHED_UNKNOWN_TASK for a task not added, EAI_SCHED_BAD_ARGUMENT for a bad cost or
   * deadline, DeadlineError EAI_DEADLINE_EXPIRED when the deadline comes before a lane is free.
   */
  submit<T>(taskId: string, job: Job<T>): Promise<T> {
    const t = this.tasks.get(taskId);
    if (t === undefined) return Promise.reject(this.unknown(taskId));
    if (!(Number.isFinite(job.costMs) && job.costMs >= 0) || (job.deadline !== undefined && Number.isNaN(job.deadline))) {
      return Promise.reject(new SchedulerError('EAI_SCHED_BAD_ARGUMENT', `A job of '${taskId}' needs costMs ≥ 0 and a numeric deadline, got costMs ${job.costMs}, deadline ${job.deadline}.`, { details: { device: this.deviceId, task: taskId } }));
    }
    return new Promise<T>((resolve, reject) => {
      const now = this.now();
      // A task with nothing queued restarts at the virtual time: idling earns no credit.
      if (t.queue.length === 0) t.tag = Math.max(t.tag, this.virtualTime);
      t.enqueue({ job, deadline: job.deadline ?? Infinity, seq: this.seq++, submittedAt: now, resolve: resolve as (v: unknown) => void, reject });
      t.lastSubmitAt = now;
      t.lastCostMs = job.costMs;
      this.pump();
    });
  }

  /**
   * Takes back every queued (not started) job of a task, for failover to resubmit them on
   * another device: their promises reject with `error`. Running jobs are left alone. Returns how
   * many were taken. Throws EAI_SCHED_UNKNOWN_TASK for a task not here.
   */
  drainQueued(taskId: string, error: Error): number {
    const t = this.task(taskId);
    return this.rejectQueued(t, error);
  }

  hasTask(id: string): boolean {
    return this.tasks.has(id);
  }

  stats(): DeviceSchedulerStats {
    const now = this.now();
    const from = now - this.windowMs;
    const span = Math.min(this.windowMs, now - this.createdAt);
    const measured = new Map<string, { count: number; busyMs: number; costMs: number; waits: number[] }>();
    let busyAll = 0;
    for (const t of this.tasks.values()) {
      t.runs.prune(from);
      const done = t.runs.window();
      let busyMs = 0;
      let runMs = 0;
      for (const d of done) {
        busyMs += d.end - Math.max(d.start, from);
        runMs += d.end - d.start;
      }
      for (const s of this.inFlight) if (s.task === t) busyMs += now - Math.max(s.start, from);
      measured.set(t.id, { count: done.length, busyMs, costMs: done.length > 0 ? runMs / done.length : (t.lastCostMs ?? 0), waits: done.map((d) => d.waitMs) });
    }
    this.runs.prune(from);
    for (const d of this.runs.window()) busyAll += d.end - Math.max(d.start, from);
    for (const s of this.inFlight) busyAll += now - Math.max(s.start, from);

    // Entitlement among the tasks competing now: a task idle all window asks for nothing.
    const competing: FairShareTask[] = [];
    for (const t of this.tasks.values()) {
      const m = measured.get(t.id);
      const active = t.queue.length > 0 || t.running > 0 || (m?.count ?? 0) > 0 || t.lastSubmitAt >= from;
      if (!active) continue;
      // A floor keeps rates finite for jobs a test clock says take no time.
      competing.push({ id: t.id, priority: t.priority, costMs: Math.max(m?.costMs ?? 0, 1e-3), ...(t.demandHz === undefined ? {} : { demandHz: t.demandHz }) });
    }
    const entitled = entitledRates(competing, this.lanes);

    const tasks: TaskStats[] = [];
    for (const t of this.tasks.values()) {
      const m = measured.get(t.id) ?? { count: 0, busyMs: 0, costMs: 0, waits: [] };
      const taskSpan = Math.min(this.windowMs, now - t.addedAt);
      const e = entitled.get(t.id);
      tasks.push({
        id: t.id,
        priority: t.priority,
        ...(t.demandHz === undefined ? {} : { demandHz: t.demandHz }),
        served: t.served,
        failed: t.failed,
        expired: t.expired,
        deadlineMisses: t.misses,
        queued: t.queue.length,
        running: t.running,
        receivedRateHz: taskSpan > 0 ? (m.count * 1000) / taskSpan : 0,
        entitledRateHz: e?.rateHz ?? 0,
        receivedShare: taskSpan > 0 ? m.busyMs / (taskSpan * this.lanes) : 0,
        entitledShare: e?.share ?? 0,
        queueMs: percentiles(m.waits),
      });
    }
    return { deviceId: this.deviceId, lanes: this.lanes, windowMs: span, busyFraction: span > 0 ? busyAll / (span * this.lanes) : 0, tasks };
  }

  /** Starts jobs while a lane is free and work is queued. Re-entrant calls return at once. */
  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.inFlight.size < this.lanes) {
        const now = this.now();
        const next = this.pick(now);
        if (next === undefined) break;
        this.start(next.task, next.entry, now);
      }
    } finally {
      this.pumping = false;
    }
  }

  /** SFQ picks the task, EDF picks within its priority class; expired heads are rejected on the way. */
  private pick(now: number): { task: TaskState; entry: Entry } | undefined {
    let first: TaskState | undefined;
    for (const t of this.tasks.values()) {
      this.expireHeads(t, now);
      const head = t.queue[0];
      if (head === undefined) continue;
      if (first === undefined || t.tag < first.tag || (t.tag === first.tag && (t.priority > first.priority || (t.priority === first.priority && head.seq < (first.queue[0] as Entry).seq)))) first = t;
    }
    if (first === undefined) return undefined;
    // Tags within one quantum of the minimum count as "now" for deadline order; the slack stops
    // rounding in repeated 1/p sums from splitting a class.
    const limit = first.tag + (1 + 1e-9) / first.priority;
    let chosen = first;
    for (const t of this.tasks.values()) {
      const head = t.queue[0];
      if (t === first || head === undefined || t.priority !== first.priority || t.tag > limit) continue;
      if (earlier(head, chosen.queue[0] as Entry)) chosen = t;
    }
    this.virtualTime = Math.max(this.virtualTime, first.tag);
    const entry = chosen.queue.shift() as Entry;
    chosen.tag += 1 / chosen.priority;
    return { task: chosen, entry };
  }

  private start(task: TaskState, entry: Entry, now: number): void {
    const slot: Slot = { task, start: now };
    this.inFlight.add(slot);
    task.running++;
    let result: Promise<unknown>;
    try {
      result = Promise.resolve(entry.job.run());
    } catch (error) {
      result = Promise.reject(error);
    }
    result.then(
      (value) => this.finish(slot, entry, now, { ok: true, value }),
      (error: unknown) => this.finish(slot, entry, now, { ok: false, error }),
    );
  }

  private finish(slot: Slot, entry: Entry, start: number, outcome: { ok: true; value: unknown } | { ok: false; error: unknown }): void {
    const end = this.now();
    const t = slot.task;
    this.inFlight.delete(slot);
    t.running--;
    t.served++;
    const run = { start, end, waitMs: start - entry.submittedAt };
    t.runs.record(run, end - this.windowMs);
    this.runs.record(run, end - this.windowMs);
    if (end > entry.deadline) t.misses++;
    if (outcome.ok) entry.resolve(outcome.value);
    else {
      t.failed++;
      entry.reject(outcome.error);
    }
    this.pump();
  }

  private expireHeads(t: TaskState, now: number): void {
    for (let head = t.queue[0]; head !== undefined && head.deadline <= now; head = t.queue[0]) {
      t.queue.shift();
      t.expired++;
      const queuedMs = now - head.submittedAt;
      head.reject(
        new DeadlineError('EAI_DEADLINE_EXPIRED', `A job of '${t.id}' on ${this.deviceId} was not run: its deadline passed ${(now - head.deadline).toFixed(1)} ms before a lane was free (queued ${queuedMs.toFixed(1)} ms). Give it a later deadline, raise the task's priority, or move other work off the device.`, {
          details: { device: this.deviceId, task: t.id, deadline: head.deadline, now, queuedMs },
        }),
      );
    }
  }

  private rejectQueued(t: TaskState, error: Error): number {
    const taken = t.queue.splice(0);
    for (const entry of taken) entry.reject(error);
    return taken.length;
  }

  private task(id: string): TaskState {
    const t = this.tasks.get(id);
    if (t === undefined) throw this.unknown(id);
    return t;
  }

  private unknown(id: string): SchedulerError {
    return new SchedulerError('EAI_SCHED_UNKNOWN_TASK', `No task '${id}' on ${this.deviceId}; known: ${[...this.tasks.keys()].join(', ') || 'none'}. Call addTask first.`, { details: { device: this.deviceId, task: id } });
  }
}

interface Entry {
  readonly job: Job<unknown>;
  /** Infinity when the job has none. */
  readonly deadline: number;
  readonly seq: number;
  readonly submittedAt: number;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: unknown) => void;
}

interface Slot {
  readonly task: TaskState;
  readonly start: number;
}

interface Done {
  readonly start: number;
  readonly end: number;
  readonly waitMs: number;
}

/** One task's queue, SFQ tag and counters. */
class TaskState {
  readonly id: string;
  priority: number;
  demandHz: number | undefined;
  readonly addedAt: number;
  /** Jobs by deadline, then arrival. */
  readonly queue: Entry[] = [];
  /** Start tag of the next request (SFQ), in requests / priority. */
  tag = 0;
  running = 0;
  served = 0;
  failed = 0;
  expired = 0;
  misses = 0;
  lastSubmitAt = -Infinity;
  lastCostMs: number | undefined;
  readonly runs = new RunWindow();

  constructor(options: TaskOptions, now: number) {
    this.id = options.id;
    this.priority = options.priority;
    this.demandHz = options.demandHz;
    this.addedAt = now;
  }

  enqueue(entry: Entry): void {
    // Binary search for the first job with a later deadline: equal deadlines stay in arrival order.
    let lo = 0;
    let hi = this.queue.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.queue[mid] as Entry).deadline <= entry.deadline) lo = mid + 1;
      else hi = mid;
    }
    this.queue.splice(lo, 0, entry);
  }

}

/** Finished runs in end order; entries before `head` have left the window. */
class RunWindow {
  private done: Done[] = [];
  private head = 0;

  record(d: Done, from: number): void {
    this.done.push(d);
    this.prune(from);
  }

  prune(from: number): void {
    while (this.head < this.done.length && (this.done[this.head] as Done).end < from) this.head++;
    // Compact now and then so the array does not grow with the task's lifetime.
    if (this.head > 1024 && this.head * 2 > this.done.length) {
      this.done = this.done.slice(this.head);
      this.head = 0;
    }
  }

  window(): readonly Done[] {
    return this.done.slice(this.head);
  }
}

function earlier(a: Entry, b: Entry): boolean {
  return a.deadline < b.deadline || (a.deadline === b.deadline && a.seq < b.seq);
}

function percentiles(values: number[]): { p50: number; p99: number } {
  if (values.length === 0) return { p50: 0, p99: 0 };
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
  return { p50: at(0.5), p99: at(0.99) };
}
