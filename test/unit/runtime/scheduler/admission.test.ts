import { describe, expect, it } from 'vitest';
import { admit, formatDisplaced, formatRefusal, type Refusal } from '../../../../runtime/scheduler/admission.js';
import type { FairShareTask } from '../../../../runtime/scheduler/fair-share.js';

function refused(result: ReturnType<typeof admit>): Refusal {
  if (result.ok) throw new Error('expected a refusal');
  return result;
}

describe('admit', () => {
  const running: FairShareTask[] = [
    { id: 'track', priority: 2, costMs: 10 },
    { id: 'map', priority: 1, costMs: 15 },
  ];

  it('refuses an incoming task its priority does not entitle to its declared rate, with needed vs available', () => {
    const r = refused(admit(running, [{ id: 'detect', priority: 1, costMs: 12, demandHz: 30 }], 1));
    // Σ p·r = 0.012 + 0.020 + 0.015 = 0.047 s: detect at priority 1 is entitled to 1 / 0.047 = 21.28/s.
    expect(r.shortfalls).toHaveLength(1);
    const s = r.shortfalls[0];
    expect(s?.id).toBe('detect');
    expect(s?.neededShare).toBeCloseTo(0.36, 9);
    expect(s?.entitledHz).toBeCloseTo(21.277, 3);
    expect(s?.entitledShare).toBeCloseTo(0.2553, 4);
    expect(s?.shortHz).toBeCloseTo(8.723, 3);
    expect(s?.shortFraction).toBeCloseTo(0.2908, 4);
    expect(formatRefusal(r, { owner: 'pipeline face', device: 'cpu' }).split('\n')).toEqual([
      'pipeline face needs detect at 30/s × 12.0 ms = 36 % of cpu, but at priority 1 it is entitled to 21.3/s (25.5 %): short by 8.7/s (29 %)',
      'Device time on cpu at these priorities: track 42.6 %, map 31.9 %, detect 25.5 %.',
      'Raise the priority of detect, lower its declared rate, use a cheaper model, or place it on another device.',
    ]);
    expect(formatRefusal(r).split('\n')[0]).toBe('detect needs 30/s × 12.0 ms = 36 % of the device, but at priority 1 it is entitled to 21.3/s (25.5 %): short by 8.7/s (29 %)');
  });

  it('admits the same task at a priority that entitles it, and says whom it pushes below their declared rates', () => {
    const withDemand: FairShareTask[] = [
      { id: 'track', priority: 2, costMs: 10, demandHz: 40 },
      { id: 'map', priority: 1, costMs: 15 },
    ];
    expect(admit(withDemand, [], 1).ok).toBe(true);
    const result = admit(withDemand, [{ id: 'detect', priority: 4, costMs: 12, demandHz: 30 }], 1);
    expect(result.ok).toBe(true);
    expect(result.rates.get('detect')).toMatchObject({ rateHz: 30, capped: true });
    // Before: track capped at 40/s (40 % of the device). After: 0.64 left over Σ p·r = 0.035 → track 36.6/s.
    expect(result.displaced).toHaveLength(1);
    expect(result.displaced[0]).toMatchObject({ id: 'track', demandHz: 40, beforeHz: 40 });
    expect(result.displaced[0]?.afterHz).toBeCloseTo(36.571, 3);
    expect(formatDisplaced(result.displaced)).toBe('Admitting it would push track (priority 2) below its declared 40/s, to 36.6/s.');
  });

  it('never refuses a task without a declared rate, and only incoming tasks decide', () => {
    const full: FairShareTask[] = [{ id: 'hog', priority: 1, costMs: 20, demandHz: 50 }];
    const result = admit(full, [{ id: 'greedy', priority: 10, costMs: 5 }], 1);
    expect(result.ok).toBe(true);
    expect(result.displaced.map((d) => d.id)).toEqual(['hog']);
  });

  it('lists every short incoming task and counts all lanes as capacity', () => {
    const incoming: FairShareTask[] = [
      { id: 'a', priority: 1, costMs: 10, demandHz: 100 },
      { id: 'b', priority: 1, costMs: 10, demandHz: 100 },
    ];
    expect(admit([], incoming, 2).ok).toBe(true);
    const r = refused(admit([], incoming, 1));
    expect(r.shortfalls.map((s) => [s.id, s.entitledHz])).toEqual([
      ['a', 50],
      ['b', 50],
    ]);
    expect(formatRefusal(r, { device: 'cpu' })).toContain('Raise the priority of a, b, lower their declared rate, use a cheaper model, or place them on another device.');
  });

  it('refuses an incoming id that is already on the device', () => {
    expect(() => admit([{ id: 'a', priority: 1, costMs: 1 }], [{ id: 'a', priority: 1, costMs: 1 }], 1)).toThrow(expect.objectContaining({ code: 'EAI_SCHED_DUPLICATE_TASK' }));
  });
});
