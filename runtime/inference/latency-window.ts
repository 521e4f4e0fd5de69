/** Percentiles of recent latencies, in milliseconds. */
export interface LatencySummary {
  readonly count: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly max: number;
}

/**
 * The last N latency samples in a fixed ring: constant memory however long a service runs, and
 * an add() cheap enough to sit on every inference. Percentiles sort a copy on demand.
 */
export class LatencyWindow {
  private readonly samples: Float64Array;
  private filled = 0;
  private next = 0;

  constructor(capacity: number) {
    this.samples = new Float64Array(capacity);
  }

  add(ms: number): void {
    this.samples[this.next] = ms;
    this.next = (this.next + 1) % this.samples.length;
    if (this.filled < this.samples.length) this.filled++;
  }

  summary(): LatencySummary {
    if (this.filled === 0) return { count: 0, p50: 0, p90: 0, p99: 0, max: 0 };
    const sorted = this.samples.slice(0, this.filled).sort();
    const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
    return { count: this.filled, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: sorted[sorted.length - 1] ?? 0 };
  }
}
