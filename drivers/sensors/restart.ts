import { sleepUntil } from './clock.js';
import { SensorError } from './errors.js';

/** Exponential backoff between restarts: `initialMs`, doubling up to `maxMs`. */
export interface Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
}

export interface RestartNotice {
  readonly error: SensorError;
  /** Failures in a row without a message in between, from 1. */
  readonly attempt: number;
  readonly delayMs: number;
}

/**
 * Iterates `open(signal)` and opens it again after a retryable `SensorError`, waiting with
 * exponential backoff (reset once a run delivers a message). Returns when an iteration ends
 * normally (the input ended) or `signal` aborts; rethrows anything else. `onFailure` is called
 * before each wait, with the error.
 */
export async function* restarting<T>(open: (signal: AbortSignal) => AsyncIterable<T>, backoff: Backoff, signal: AbortSignal, onFailure: (notice: RestartNotice) => void): AsyncGenerator<T, void, undefined> {
  let delayMs = backoff.initialMs;
  let attempt = 0;
  while (!signal.aborted) {
    let delivered = false;
    try {
      for await (const message of open(signal)) {
        delivered = true;
        yield message;
      }
      return;
    } catch (error) {
      if (signal.aborted) return;
      if (!(error instanceof SensorError) || !error.retryable) throw error;
      if (delivered) {
        delayMs = backoff.initialMs;
        attempt = 0;
      }
      attempt += 1;
      onFailure({ error, attempt, delayMs });
      if (!(await sleepUntil(performance.now() + delayMs, signal))) return;
      delayMs = Math.min(delayMs * 2, backoff.maxMs);
    }
  }
}
