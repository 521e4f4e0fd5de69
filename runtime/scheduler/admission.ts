import { entitledRates, SchedulerError, type EntitledRate, type FairShareTask } from './fair-share.js';

/**
 * Admission control for one device: before new tasks start, check that the policy
 * (fair-share.ts) would grant each of them the rate it declares. Only the incoming tasks decide:
 * a new task of higher priority may take device time from running tasks of lower priority (that
 * is what priority means); the answer lists whom it would push below their declared rates so the
 * caller can warn. A task without a declared rate takes what it is given and is never refused.
 */

/** An incoming task the policy would not give its declared rate. */
export interface Shortfall {
  readonly id: string;
  readonly priority: number;
  readonly costMs: number;
  readonly demandHz: number;
  /** Device time the declared rate needs, as a fraction of capacity (all lanes). */
  readonly neededShare: number;
  readonly entitledHz: number;
  readonly entitledShare: number;
  /** demandHz − entitledHz. */
  readonly shortHz: number;
  /** shortHz / demandHz. */
  readonly shortFraction: number;
}

/** A task already on the device whose declared rate it would no longer get. */
export interface Displaced {
  readonly id: string;
  readonly priority: number;
  readonly demandHz: number;
  /** Entitled rate without the incoming tasks (≥ demandHz). */
  readonly beforeHz: number;
  readonly afterHz: number;
}

export type Admission =
  | { readonly ok: true; readonly rates: ReadonlyMap<string, EntitledRate>; readonly displaced: readonly Displaced[] }
  | Refusal;

export interface Refusal {
  readonly ok: false;
  /** Entitled rates had the incoming tasks been admitted. */
  readonly rates: ReadonlyMap<string, EntitledRate>;
  readonly capacity: number;
  /** One per incoming task short of its declared rate, in the order given. */
  readonly shortfalls: readonly Shortfall[];
  readonly displaced: readonly Displaced[];
}

/** Names for messages: whose tasks they are (`pipeline face-detection`) and the device (`cpu`). */
export interface AdmissionLabels {
  readonly owner?: string;
  readonly device?: string;
}

/**
 * Whether `incoming` can join `existing` on a device of `capacity` lanes with every incoming
 * declared rate (demandHz) met. Costs are per request, measured or estimated. Pure. Throws
 * SchedulerError EAI_SCHED_DUPLICATE_TASK when an incoming id is already on the device, and
 * EAI_SCHED_BAD_ARGUMENT for bad numbers.
 */
export function admit(existing: readonly FairShareTask[], incoming: readonly FairShareTask[], capacity: number): Admission {
  const here = new Set(existing.map((t) => t.id));
  for (const t of incoming) {
    if (here.has(t.id)) throw new SchedulerError('EAI_SCHED_DUPLICATE_TASK', `Task '${t.id}' is already on the device; remove it before admitting it again.`, { details: { task: t.id } });
  }
  const before = entitledRates(existing, capacity);
  const rates = entitledRates([...existing, ...incoming], capacity);

  const shortfalls: Shortfall[] = [];
  for (const t of incoming) {
    const got = rates.get(t.id) as EntitledRate;
    if (t.demandHz === undefined || meets(got.rateHz, t.demandHz)) continue;
    const shortHz = t.demandHz - got.rateHz;
    shortfalls.push({ id: t.id, priority: t.priority, costMs: t.costMs, demandHz: t.demandHz, neededShare: (t.demandHz * t.costMs) / 1000 / capacity, entitledHz: got.rateHz, entitledShare: got.share, shortHz, shortFraction: t.demandHz > 0 ? shortHz / t.demandHz : 0 });
  }
  const displaced: Displaced[] = [];
  for (const t of existing) {
    if (t.demandHz === undefined) continue;
    const was = (before.get(t.id) as EntitledRate).rateHz;
    const now = (rates.get(t.id) as EntitledRate).rateHz;
    if (meets(was, t.demandHz) && !meets(now, t.demandHz)) displaced.push({ id: t.id, priority: t.priority, demandHz: t.demandHz, beforeHz: was, afterHz: now });
  }
  return shortfalls.length === 0 ? { ok: true, rates, displaced } : { ok: false, rates, capacity, shortfalls, displaced };
}

/**
 * The refusal as a message that says what was asked, what the policy grants, by how much it
 * falls short, and what to do, e.g.
 * `pipeline face needs detect at 30/s × 12.0 ms = 36 % of cpu, but at priority 1 it is entitled
 * to 21.3/s (25.5 %): short by 8.7/s (29 %)`.
 */
export function formatRefusal(refusal: Refusal, labels: AdmissionLabels = {}): string {
  const device = labels.device ?? 'the device';
  const lines = refusal.shortfalls.map((s) => {
    const who = labels.owner === undefined ? `${s.id} needs` : `${labels.owner} needs ${s.id} at`;
    return `${who} ${hz(s.demandHz)}/s × ${s.costMs.toFixed(1)} ms = ${pct(s.neededShare)} % of ${device}, but at priority ${s.priority} it is entitled to ${hz(s.entitledHz)}/s (${pct(s.entitledShare)} %): short by ${hz(s.shortHz)}/s (${Math.round(s.shortFraction * 100)} %)`;
  });
  if (refusal.displaced.length > 0) lines.push(formatDisplaced(refusal.displaced));
  const split = [...refusal.rates].filter(([, r]) => r.share > 0).map(([id, r]) => `${id} ${pct(r.share)} %`);
  if (split.length > 0) lines.push(`Device time on ${device} at these priorities: ${split.join(', ')}.`);
  const ids = refusal.shortfalls.map((s) => s.id).join(', ');
  const its = refusal.shortfalls.length === 1 ? 'its' : 'their';
  lines.push(`Raise the priority of ${ids}, lower ${its} declared rate, use a cheaper model, or place ${refusal.shortfalls.length === 1 ? 'it' : 'them'} on another device.`);
  return lines.join('\n');
}

/** One sentence naming the running tasks an admission pushes below their declared rates. */
export function formatDisplaced(displaced: readonly Displaced[]): string {
  return `Admitting it would push ${displaced.map((d) => `${d.id} (priority ${d.priority}) below its declared ${hz(d.demandHz)}/s, to ${hz(d.afterHz)}/s`).join('; ')}.`;
}

/** Within rounding: water-filling hands a capped task exactly its demand. */
function meets(rateHz: number, demandHz: number): boolean {
  return rateHz >= demandHz * (1 - 1e-9);
}

/** 30 → "30", 21.43 → "21.4". */
function hz(v: number): string {
  return Number.isInteger(Math.round(v * 10) / 10) ? String(Math.round(v)) : v.toFixed(1);
}

/** 0.36 → "36", 0.2571 → "25.7". */
function pct(fraction: number): string {
  return hz(fraction * 100);
}
