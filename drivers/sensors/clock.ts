/** Monotonic waits and wall-clock stamps shared by the sensors. */

/** Resolves true at `targetMs` (`performance.now()` time), or false as soon as `signal` aborts. */
export function sleepUntil(targetMs: number, signal: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(false);
    let timer: NodeJS.Timeout | undefined;
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve(false);
    };
    const tick = (): void => {
      // Timers can fire a little early against performance.now(); sleep again for the rest.
      const left = targetMs - performance.now();
      if (left > 0) {
        timer = setTimeout(tick, left);
        return;
      }
      signal.removeEventListener('abort', onAbort);
      resolve(true);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    tick();
  });
}

/**
 * A wall clock for one run: the Unix time in nanoseconds at a `performance.now()` instant, from
 * one `Date.now()` reading plus monotonic time since, so times within a run never go backwards.
 */
export function wallClock(): (monoMs: number) => bigint {
  const wallMs = Date.now();
  const monoMs = performance.now();
  return (at) => BigInt(Math.round((wallMs + (at - monoMs)) * 1e6));
}
