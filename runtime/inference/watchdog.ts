/**
 * Timeouts for runs in flight without a timer per run: one interval timer, started while
 * anything is watched, checks every run's age. A run is on the hot path of every inference, and
 * creating and clearing a timer for each costs more than the rest of the bookkeeping together;
 * the price is that a timeout fires up to one check interval late (a tenth of the shortest
 * timeout watched, at least 5 ms).
 */
export class Watchdog {
  private readonly runs = new Set<Watched>();
  private timer: NodeJS.Timeout | undefined;
  private tickMs = Number.POSITIVE_INFINITY;

  /** `work`, or `expired()` thrown once it has run `timeoutMs` without settling. */
  watch<T>(work: Promise<T>, timeoutMs: number, expired: () => Error): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const entry: Watched = { deadline: performance.now() + timeoutMs, fail: () => reject(expired()) };
      this.runs.add(entry);
      this.arm(timeoutMs);
      work.then(
        (value) => {
          if (this.runs.delete(entry)) resolve(value);
        },
        (error: unknown) => {
          if (this.runs.delete(entry)) reject(error);
        },
      );
    });
  }

  /** Stops checking; runs still watched keep waiting for their work. */
  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.tickMs = Number.POSITIVE_INFINITY;
  }

  private arm(timeoutMs: number): void {
    const tick = Math.max(5, timeoutMs / 10);
    if (this.timer !== undefined && tick >= this.tickMs) return;
    clearInterval(this.timer);
    this.tickMs = tick;
    this.timer = setInterval(() => this.check(), tick);
    this.timer.unref();
  }

  private check(): void {
    const now = performance.now();
    for (const entry of this.runs) {
      if (entry.deadline > now) continue;
      this.runs.delete(entry);
      entry.fail();
    }
    if (this.runs.size === 0) this.stop();
  }
}

interface Watched {
  readonly deadline: number;
  readonly fail: () => void;
}
