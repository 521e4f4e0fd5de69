import { AiosError } from '../../drivers/errors.js';

/**
 * The scheduling policy of one device, as arithmetic: how many requests per second each task on
 * it is entitled to. Every task i has a priority p_i and a cost r_i (device-seconds per request);
 * the device has capacity R (lanes: device-seconds per second). The policy maximises Σ p_i·S_i
 * subject to Σ r_i·S_i ≤ R and S_i / p_i equal for every task, which has the closed form
 *
 *     S_i = p_i · R / Σ_j p_j·r_j          (device-time share u_i = p_i·r_i / Σ_j p_j·r_j)
 *
 * A task that declares a demand cap d_i (it never asks for more than d_i requests/s) and whose cap
 * is below its closed-form rate gets d_i; the capacity it leaves is split among the others by the
 * same formula (water-filling, i.e. weighted max-min fairness). docs/scheduling.md derives both.
 */

/** One task as the policy sees it. */
export interface FairShareTask {
  readonly id: string;
  /** Weight, > 0: twice the priority, twice the requests per second under contention. */
  readonly priority: number;
  /** Device time one request takes, in milliseconds (measured or estimated), ≥ 0. */
  readonly costMs: number;
  /** The most requests per second the task will ask for; absent: as many as it can get. */
  readonly demandHz?: number;
}

/** What the policy grants one task. */
export interface EntitledRate {
  /** Requests per second. Infinity only for an uncapped task of zero cost. */
  readonly rateHz: number;
  /** Fraction of the device's capacity (all lanes together) this rate occupies, 0..1. */
  readonly share: number;
  /** True when the task's own demand cap binds (rateHz === demandHz). */
  readonly capped: boolean;
}

/** Bad arguments to the scheduler and its bookkeeping: unknown or duplicate tasks, bad numbers. */
export class SchedulerError extends AiosError {}

/**
 * Entitled rates of `tasks` sharing a device of `capacity` lanes. Pure and O(n log n).
 * Throws SchedulerError EAI_SCHED_BAD_ARGUMENT for a capacity ≤ 0, a priority ≤ 0, a negative
 * cost or demand, and EAI_SCHED_DUPLICATE_TASK for two tasks with one id.
 */
export function entitledRates(tasks: readonly FairShareTask[], capacity: number): Map<string, EntitledRate> {
  if (!(Number.isFinite(capacity) && capacity > 0)) {
    throw new SchedulerError('EAI_SCHED_BAD_ARGUMENT', `Device capacity must be a number of lanes > 0, got ${capacity}.`, { details: { capacity } });
  }
  const seen = new Set<string>();
  for (const t of tasks) {
    checkFairShareTask(t);
    if (seen.has(t.id)) throw new SchedulerError('EAI_SCHED_DUPLICATE_TASK', `Task '${t.id}' is listed twice; give each task its own id.`, { details: { task: t.id } });
    seen.add(t.id);
  }

  // Water-filling: visit tasks by demand per unit of priority, smallest first. λ = S_i / p_i of the
  // tasks not yet capped. Capping a task whose d_i/p_i ≤ λ frees capacity, so λ never falls and
  // every task capped earlier stays capped; the first task whose d_i/p_i exceeds λ ends the loop.
  const order = [...tasks].sort((a, b) => (a.demandHz ?? Infinity) / a.priority - (b.demandHz ?? Infinity) / b.priority);
  // weightFrom[k] = Σ p·r of order[k..]: the uncapped weight once the first k are capped.
  const weightFrom = new Array<number>(order.length + 1).fill(0);
  for (let k = order.length - 1; k >= 0; k--) weightFrom[k] = (weightFrom[k + 1] ?? 0) + weightOf(order[k] as FairShareTask);
  let remaining = capacity;
  let k = 0;
  const capped = new Set<string>();
  for (; k < order.length; k++) {
    const t = order[k] as FairShareTask;
    if (t.demandHz === undefined || t.demandHz / t.priority > level(remaining, weightFrom[k] ?? 0)) break;
    capped.add(t.id);
    remaining = Math.max(0, remaining - t.demandHz * seconds(t));
  }
  const lambda = level(remaining, weightFrom[k] ?? 0);

  const out = new Map<string, EntitledRate>();
  for (const t of tasks) {
    const isCapped = capped.has(t.id);
    const rateHz = isCapped ? (t.demandHz as number) : t.priority * lambda;
    const share = t.costMs === 0 ? 0 : (rateHz * seconds(t)) / capacity;
    out.set(t.id, { rateHz, share, capped: isCapped });
  }
  return out;
}

/**
 * Jain's fairness index (Σx)² / (n·Σx²) of non-negative values: 1 when all are equal, 1/n when
 * one value holds everything. Empty or all-zero input counts as perfectly fair (1).
 */
export function jainIndex(values: readonly number[]): number {
  let sum = 0;
  let squares = 0;
  for (const v of values) {
    sum += v;
    squares += v * v;
  }
  return squares === 0 ? 1 : (sum * sum) / (values.length * squares);
}

/** Throws SchedulerError EAI_SCHED_BAD_ARGUMENT for an empty id, a priority ≤ 0, a negative cost or demand. */
export function checkFairShareTask(t: FairShareTask): void {
  const bad = (what: string): SchedulerError => new SchedulerError('EAI_SCHED_BAD_ARGUMENT', `Task '${t.id}': ${what}.`, { details: { task: t.id } });
  if (typeof t.id !== 'string' || t.id === '') throw bad('the id must be a non-empty string');
  if (!(Number.isFinite(t.priority) && t.priority > 0)) throw bad(`priority must be a number > 0, got ${t.priority}`);
  if (!(Number.isFinite(t.costMs) && t.costMs >= 0)) throw bad(`costMs must be a number of milliseconds ≥ 0, got ${t.costMs}`);
  if (t.demandHz !== undefined && !(Number.isFinite(t.demandHz) && t.demandHz >= 0)) throw bad(`demandHz must be a rate ≥ 0 per second, got ${t.demandHz}`);
}

/** r_i: device-seconds per request. */
function seconds(t: FairShareTask): number {
  return t.costMs / 1000;
}

function weightOf(t: FairShareTask): number {
  return t.priority * seconds(t);
}

/** λ = capacity left / Σ p·r of the uncapped tasks; unbounded when they cost nothing. */
function level(remaining: number, weight: number): number {
  return weight > 0 ? remaining / weight : Infinity;
}
