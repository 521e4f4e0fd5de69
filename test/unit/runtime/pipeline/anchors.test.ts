import { describe, expect, it } from 'vitest';
import { BLAZEFACE_BACK_256, BLAZEFACE_FRONT_128, ssdAnchors } from '../../../../runtime/pipeline/anchors.js';

describe('ssdAnchors (MediaPipe SsdAnchorsCalculator)', () => {
  const front = ssdAnchors(BLAZEFACE_FRONT_128);

  it('front 128: 16×16×2 then 8×8×6 = 896 unit anchors', () => {
    expect(front).toHaveLength(896);
    expect(front.every((a) => a.width === 1 && a.height === 1)).toBe(true);
    // Two anchors per cell of the 16×16 grid, row-major.
    expect(front[0]).toEqual({ x: 0.5 / 16, y: 0.5 / 16, width: 1, height: 1 });
    expect(front[1]).toEqual(front[0]);
    expect(front[2]).toEqual({ x: 1.5 / 16, y: 0.5 / 16, width: 1, height: 1 });
    expect(front[511]).toEqual({ x: 15.5 / 16, y: 15.5 / 16, width: 1, height: 1 });
    // Six per cell of the 8×8 grid (three layers of stride 16 merged).
    for (let i = 512; i < 518; i++) expect(front[i]).toEqual({ x: 0.5 / 8, y: 0.5 / 8, width: 1, height: 1 });
    expect(front[518]).toEqual({ x: 1.5 / 8, y: 0.5 / 8, width: 1, height: 1 });
    expect(front[895]).toEqual({ x: 7.5 / 8, y: 7.5 / 8, width: 1, height: 1 });
  });

  it('anchor 305 (the fixture face) is cell (8, 9) of the 16×16 grid', () => {
    expect(front[305]).toEqual({ x: 8.5 / 16, y: 9.5 / 16, width: 1, height: 1 });
  });

  it('back 256 has the same layout over a 256 px input', () => {
    expect(ssdAnchors(BLAZEFACE_BACK_256)).toEqual(front);
  });

  it('without fixed sizes: scales spread from min to max, the interpolated one between', () => {
    const sized = ssdAnchors({ ...BLAZEFACE_FRONT_128, fixedAnchorSize: false });
    // Layer 0: scale 0.1484375, then sqrt(0.1484375 * scale of layer 1).
    const s0 = 0.1484375;
    const s1 = 0.1484375 + (0.75 - 0.1484375) / 3;
    expect(sized[0]?.width).toBeCloseTo(s0, 12);
    expect(sized[1]?.width).toBeCloseTo(Math.sqrt(s0 * s1), 12);
    // The last layer interpolates towards 1.0.
    expect(sized[517]?.width).toBeCloseTo(Math.sqrt(0.75 * 1.0), 12);
  });

  it('reduceBoxesInLowestLayer gives three boxes (1:1 at 0.1, 2:1, 1:2) in the first layer', () => {
    const a = ssdAnchors({ ...BLAZEFACE_FRONT_128, fixedAnchorSize: false, reduceBoxesInLowestLayer: true, interpolatedScaleAspectRatio: 0, strides: [8] });
    expect(a).toHaveLength(16 * 16 * 3);
    expect(a[0]?.width).toBeCloseTo(0.1, 12);
    expect(a[1]?.width).toBeCloseTo(((0.1484375 + 0.75) / 2) * Math.SQRT2, 12);
    expect(a[2]?.height).toBeCloseTo(((0.1484375 + 0.75) / 2) * Math.SQRT2, 12);
  });
});
