import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { entitledRates, jainIndex, SchedulerError, type FairShareTask } from '../../../../runtime/scheduler/fair-share.js';

const get = (m: Map<string, { rateHz: number; share: number; capped: boolean }>, id: string): { rateHz: number; share: number; capped: boolean } => {
  const r = m.get(id);
  if (r === undefined) throw new Error(`no rate for ${id}`);
  return r;
};

describe('entitledRates', () => {
  it('is the closed form S_i = p_i·R / Σ p_j·r_j without demand caps (docs/scheduling.md worked example)', () => {
    const tasks: FairShareTask[] = [
      { id: 'detect', priority: 4, costMs: 12 },
      { id: 'track', priority: 2, costMs: 5 },
      { id: 'log', priority: 1, costMs: 2 },
    ];
    const rates = entitledRates(tasks, 1);
    // Σ p·r = 4·0.012 + 2·0.005 + 1·0.002 = 0.060 s; λ = 1 / 0.060 = 16.67 per unit of priority.
    expect(get(rates, 'detect').rateHz).toBeCloseTo(66.667, 2);
    expect(get(rates, 'track').rateHz).toBeCloseTo(33.333, 2);
    expect(get(rates, 'log').rateHz).toBeCloseTo(16.667, 2);
    expect(get(rates, 'detect').share).toBeCloseTo(0.8, 9);
    expect(get(rates, 'track').share).toBeCloseTo(0.1667, 3);
    expect(get(rates, 'log').share).toBeCloseTo(0.0333, 3);
    expect([...rates.values()].every((r) => !r.capped)).toBe(true);
  });

  it('water-fills: a binding cap gets its demand, the rest split what is left by the same formula', () => {
    const rates = entitledRates(
      [
        { id: 'detect', priority: 4, costMs: 12, demandHz: 30 },
        { id: 'track', priority: 2, costMs: 5 },
        { id: 'log', priority: 1, costMs: 2 },
      ],
      1,
    );
    expect(get(rates, 'detect')).toMatchObject({ rateHz: 30, capped: true });
    expect(get(rates, 'detect').share).toBeCloseTo(0.36, 9);
    // 0.64 of the device left, Σ p·r of the others = 0.012 s: λ = 53.33.
    expect(get(rates, 'track').rateHz).toBeCloseTo(106.667, 2);
    expect(get(rates, 'log').rateHz).toBeCloseTo(53.333, 2);
    expect(get(rates, 'track').share + get(rates, 'log').share).toBeCloseTo(0.64, 9);
  });

  it('leaves a cap above the fair rate unbound, and cascades caps freed by smaller ones', () => {
    // a's cap (100/s) is above its closed-form rate: not capped. b's cap binds; what it frees lifts c past its own cap.
    const rates = entitledRates(
      [
        { id: 'a', priority: 1, costMs: 10, demandHz: 100 },
        { id: 'b', priority: 1, costMs: 10, demandHz: 5 },
        { id: 'c', priority: 1, costMs: 10, demandHz: 40 },
      ],
      1,
    );
    expect(get(rates, 'b')).toMatchObject({ rateHz: 5, capped: true });
    expect(get(rates, 'c')).toMatchObject({ rateHz: 40, capped: true });
    expect(get(rates, 'a').capped).toBe(false);
    expect(get(rates, 'a').rateHz).toBeCloseTo(55, 9);
  });

  it('leaves capacity unused when every task is capped below it', () => {
    const rates = entitledRates([{ id: 'a', priority: 1, costMs: 10, demandHz: 10 }], 2);
    expect(get(rates, 'a')).toEqual({ rateHz: 10, share: 0.05, capped: true });
  });

  it('scales with lanes and handles zero cost and zero demand', () => {
    const two = entitledRates([{ id: 'a', priority: 1, costMs: 10 }], 2);
    expect(get(two, 'a').rateHz).toBeCloseTo(200, 9);
    expect(get(two, 'a').share).toBeCloseTo(1, 9);
    const free = entitledRates(
      [
        { id: 'free', priority: 1, costMs: 0 },
        { id: 'idle', priority: 1, costMs: 10, demandHz: 0 },
      ],
      1,
    );
    expect(get(free, 'free')).toEqual({ rateHz: Infinity, share: 0, capped: false });
    expect(get(free, 'idle')).toEqual({ rateHz: 0, share: 0, capped: true });
  });

  it('refuses bad numbers and duplicate ids with stable codes', () => {
    const code = (f: () => unknown): string | undefined => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(SchedulerError);
        return (e as SchedulerError).code;
      }
      return undefined;
    };
    expect(code(() => entitledRates([], 0))).toBe('EAI_SCHED_BAD_ARGUMENT');
    expect(code(() => entitledRates([{ id: 'a', priority: 0, costMs: 1 }], 1))).toBe('EAI_SCHED_BAD_ARGUMENT');
    expect(code(() => entitledRates([{ id: 'a', priority: 1, costMs: -1 }], 1))).toBe('EAI_SCHED_BAD_ARGUMENT');
    expect(code(() => entitledRates([{ id: 'a', priority: 1, costMs: 1, demandHz: Number.NaN }], 1))).toBe('EAI_SCHED_BAD_ARGUMENT');
    expect(code(() => entitledRates([{ id: 'a', priority: 1, costMs: 1 }, { id: 'a', priority: 2, costMs: 1 }], 1))).toBe('EAI_SCHED_DUPLICATE_TASK');
  });

  it('never exceeds capacity, never exceeds a cap, and keeps S/p equal among uncapped tasks', () => {
    const task = fc.record({ priority: fc.double({ min: 0.1, max: 10, noNaN: true }), costMs: fc.double({ min: 0.1, max: 50, noNaN: true }), demandHz: fc.option(fc.double({ min: 0, max: 500, noNaN: true }), { nil: undefined }) });
    fc.assert(
      fc.property(fc.array(task, { minLength: 1, maxLength: 8 }), fc.integer({ min: 1, max: 4 }), (specs, lanes) => {
        const tasks = specs.map((s, i) => ({ id: `t${i}`, priority: s.priority, costMs: s.costMs, ...(s.demandHz === undefined ? {} : { demandHz: s.demandHz }) }));
        const rates = entitledRates(tasks, lanes);
        const used = tasks.reduce((sum, t) => sum + get(rates, t.id).share, 0);
        expect(used).toBeLessThanOrEqual(1 + 1e-9);
        const levels = tasks.filter((t) => !get(rates, t.id).capped).map((t) => get(rates, t.id).rateHz / t.priority);
        for (const l of levels) expect(l).toBeCloseTo(levels[0] as number, 6);
        for (const t of tasks) {
          const r = get(rates, t.id);
          if (t.demandHz !== undefined) expect(r.rateHz).toBeLessThanOrEqual(t.demandHz * (1 + 1e-9));
          // A capped task is capped because its demand per priority is at most the common level.
          if (r.capped && levels.length > 0) expect(r.rateHz / t.priority).toBeLessThanOrEqual((levels[0] as number) * (1 + 1e-9));
        }
        // Work-conserving: with any uncapped task, the whole device is handed out.
        if (levels.length > 0) expect(used).toBeCloseTo(1, 6);
      }),
    );
  });
});

describe('jainIndex', () => {
  it('is 1 for equal values, 1/n when one value holds everything, and 1 for nothing', () => {
    expect(jainIndex([3, 3, 3])).toBe(1);
    expect(jainIndex([1, 0, 0, 0])).toBe(0.25);
    expect(jainIndex([])).toBe(1);
    expect(jainIndex([0, 0])).toBe(1);
    expect(jainIndex([1, 2])).toBeCloseTo(0.9, 9);
  });
});
