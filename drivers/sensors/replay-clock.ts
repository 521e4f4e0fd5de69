import { performance } from 'node:perf_hooks';
import { setTimeout as delay } from 'node:timers/promises';

/**
 * Paces a recording's replay: the first message is due at once, each later one when as much
 * wall time has passed (divided by `speed`) as recording time has since the first. `speed` 1 is
 * the original timing, 2 twice as fast, 0 as fast as the reader takes messages.
 *
 * A reader that falls behind is not made to wait: overdue messages go out at once until the
 * replay has caught up, so the replay keeps the recording's pace on average rather than
 * stretching it. Recording time that goes backwards (a clock step in the recording) is not
 * waited for either. One clock per replay; not shared.
 */
export class ReplayClock {
  private origin: { readonly recordingMs: number; readonly wallMs: number } | undefined;

  constructor(
    readonly speed: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /**
   * Resolves when the message at `recordingMs` (any monotonic-ish time base in milliseconds) is
   * due: `true` then, `false` when `signal` aborted first.
   */
  async waitFor(recordingMs: number, signal: AbortSignal): Promise<boolean> {
    if (signal.aborted) return false;
    if (this.origin === undefined || !(this.speed > 0)) {
      this.origin ??= { recordingMs, wallMs: this.now() };
      return true;
    }
    const dueMs = this.origin.wallMs + (recordingMs - this.origin.recordingMs) / this.speed;
    const waitMs = dueMs - this.now();
    // Timers are no finer than a millisecond; shorter waits are noise.
    if (waitMs < 1) return true;
    try {
      await delay(waitMs, undefined, { signal });
      return true;
    } catch {
      return false;
    }
  }
}
