/**
 * What one run of one model on one device costs, by batch size, in milliseconds: seeded by the
 * warm-up runs at load and kept current from every live run, so the scheduler's shares and
 * admission decisions follow the device as it heats up, throttles or shares its memory bus.
 *
 * Each batch size keeps an exponentially weighted mean. A single sample far off the mean (a
 * collector pause, a page fault) moves it by at most a bounded step, so one stall does not make
 * a model look four times dearer for the next hundred runs.
 */
export class CostModel {
  private readonly sizes = new Map<number, { ms: number; samples: number }>();

  /** `alpha`: weight of a new sample (0.1 ≈ the last 10–20 runs dominate). */
  constructor(private readonly alpha = 0.1) {}

  observe(batch: number, ms: number): void {
    if (!Number.isFinite(ms) || ms < 0 || !Number.isInteger(batch) || batch < 1) return;
    const seen = this.sizes.get(batch);
    if (seen === undefined) {
      this.sizes.set(batch, { ms, samples: 1 });
      return;
    }
    // Early samples count fully (a plain mean) until alpha takes over; outliers are clipped to 4×.
    const weight = Math.max(this.alpha, 1 / (seen.samples + 1));
    const clipped = Math.min(ms, seen.ms * 4);
    seen.ms += weight * (clipped - seen.ms);
    seen.samples++;
  }

  /**
   * Estimated ms for a batch of `batch` rows; undefined until anything was measured. Sizes never
   * measured are interpolated between the nearest measured ones (cost = fixed + per-row), or,
   * beyond them, extrapolated from the two largest; with one size known, cost is taken as
   * proportional to rows, which overestimates (batching is cheaper per row) and so errs safe.
   */
  estimateMs(batch = 1): number | undefined {
    const exact = this.sizes.get(batch);
    if (exact !== undefined) return exact.ms;
    const known = [...this.sizes.entries()].sort((a, b) => a[0] - b[0]);
    if (known.length === 0) return undefined;
    if (known.length === 1) {
      const [size, { ms }] = known[0] as [number, { ms: number }];
      return (ms * batch) / size;
    }
    const below = known.filter(([size]) => size < batch);
    const above = known.filter(([size]) => size > batch);
    // The measured sizes either side, or the two nearest on the one side there is.
    const [lo, hi] = (below.length > 0 && above.length > 0 ? [below[below.length - 1], above[0]] : below.length > 0 ? below.slice(-2) : above.slice(0, 2)) as [[number, { ms: number }], [number, { ms: number }]];
    const perRow = (hi[1].ms - lo[1].ms) / (hi[0] - lo[0]);
    return Math.max(0, lo[1].ms + perRow * (batch - lo[0]));
  }

  /** Every measured size: mean ms and how many samples made it. */
  snapshot(): Record<number, { readonly ms: number; readonly samples: number }> {
    const out: Record<number, { ms: number; samples: number }> = {};
    for (const [size, s] of [...this.sizes.entries()].sort((a, b) => a[0] - b[0])) out[size] = { ms: s.ms, samples: s.samples };
    return out;
  }
}
