import { describe, expect, it } from 'vitest';
import { CostModel } from '../../../../runtime/scheduler/cost-model.js';

describe('CostModel', () => {
  it('knows nothing until a run is measured', () => {
    expect(new CostModel().estimateMs(1)).toBeUndefined();
  });

  it('averages the first samples plainly, then follows new ones with weight alpha', () => {
    const cost = new CostModel(0.1);
    cost.observe(1, 10);
    cost.observe(1, 20);
    expect(cost.estimateMs(1)).toBe(15);
    for (let i = 0; i < 200; i++) cost.observe(1, 30);
    expect(cost.estimateMs(1)).toBeCloseTo(30, 3);
    expect(cost.snapshot()[1]?.samples).toBe(202);
  });

  it('limits what one stall does to the estimate', () => {
    const cost = new CostModel(0.1);
    for (let i = 0; i < 50; i++) cost.observe(1, 5);
    cost.observe(1, 500);
    // Clipped to 4 × 5 ms: the mean moves by 0.1 × 15 ms, not 0.1 × 495 ms.
    expect(cost.estimateMs(1)).toBeCloseTo(6.5, 6);
  });

  it('interpolates and extrapolates batch sizes it has not measured', () => {
    const cost = new CostModel();
    cost.observe(1, 2);
    expect(cost.estimateMs(4)).toBe(8); // one size known: proportional, errs high
    cost.observe(8, 9);
    expect(cost.estimateMs(4)).toBe(5); // 2 + 1 ms per row
    expect(cost.estimateMs(16)).toBe(17);
    cost.observe(16, 13);
    expect(cost.estimateMs(12)).toBe(11); // between 8 and 16: 9 + 0.5 per row
    expect(cost.estimateMs(32)).toBe(21); // beyond: from the two largest
  });

  it('ignores impossible samples', () => {
    const cost = new CostModel();
    cost.observe(0, 1);
    cost.observe(1, Number.NaN);
    cost.observe(1, -3);
    expect(cost.snapshot()).toEqual({});
  });
});
