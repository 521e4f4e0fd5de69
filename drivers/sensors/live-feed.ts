import { performance } from 'node:perf_hooks';

/** How a live feed buffers and when it calls a silence stale. */
export interface LiveFeedOptions {
  /** Most messages held for a slow reader; past this the oldest is dropped (and counted). */
  readonly capacity: number;
  /** Silence (ms without a `push`) after which `onStale` is called. Unset or 0: never. */
  readonly staleAfterMs?: number;
  /** Called once per silence, with how long it has lasted; called again only after data flowed. */
  readonly onStale?: (silentMs: number) => void;
}

/**
 * The hand-over between a live device callback (a UDP socket, a TCP client, a child process's
 * stdout) and the one async reader of a sensor's `messages()`. The producer never waits: when
 * the reader is slow the oldest message is dropped, so memory stays bounded however slow the
 * pipeline is. A failure passed to `fail` is thrown to the reader after what was already
 * buffered, so nothing received is lost to an error.
 *
 * Owned by the sensor that creates it, for one `messages()` call; not shared between readers.
 */
export class LiveFeed<T> {
  private readonly items: T[] = [];
  private wake: (() => void) | undefined;
  private failure: { readonly error: unknown } | undefined;
  private ended = false;
  private lastPushMs = performance.now();
  private stale = false;
  private readonly timer: NodeJS.Timeout | undefined;
  private droppedCount = 0;

  constructor(private readonly options: LiveFeedOptions) {
    const after = options.staleAfterMs ?? 0;
    if (after > 0) {
      this.timer = setTimeout(() => this.checkStale(), after);
      // A quiet sensor must not keep the process alive on its own.
      this.timer.unref();
    }
  }

  /** Messages dropped because the reader was behind. */
  get dropped(): number {
    return this.droppedCount;
  }

  /** Whether the feed has been silent past `staleAfterMs` (and nothing arrived since). */
  get isStale(): boolean {
    return this.stale;
  }

  /**
   * Queues a message for the reader. `fresh` (default) says it is new data from the device and
   * ends a silence; pass false for what the sensor flushes on its own (a partial revolution when
   * the packets stopped), which must not make the feed look alive.
   */
  push(item: T, fresh = true): void {
    if (this.ended) return;
    if (this.items.length >= this.options.capacity) {
      this.items.shift();
      this.droppedCount += 1;
    }
    this.items.push(item);
    if (fresh) {
      this.lastPushMs = performance.now();
      this.stale = false;
      this.timer?.refresh();
    }
    this.wakeReader();
  }

  /** Ends the feed with an error, thrown to the reader once the buffered messages are read. */
  fail(error: unknown): void {
    if (this.ended) return;
    this.failure = { error };
    this.end();
  }

  /** Ends the feed normally; the reader finishes after the buffered messages. */
  end(): void {
    this.ended = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.wakeReader();
  }

  /** Yields messages until the feed ends, fails, or `signal` aborts (then returns quietly). */
  async *read(signal: AbortSignal): AsyncGenerator<T, void, void> {
    const onAbort = (): void => this.wakeReader();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      while (!signal.aborted) {
        if (this.items.length > 0) {
          yield this.items.shift() as T;
          continue;
        }
        if (this.failure !== undefined) throw this.failure.error;
        if (this.ended) return;
        await new Promise<void>((resolve) => {
          this.wake = resolve;
        });
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
      this.end();
    }
  }

  private wakeReader(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private checkStale(): void {
    if (this.ended) return;
    const after = this.options.staleAfterMs ?? 0;
    const silentMs = performance.now() - this.lastPushMs;
    if (silentMs + 1 < after) {
      // A push refreshed the timer late in its period; look again when the full period is up.
      this.timer?.refresh();
      return;
    }
    if (!this.stale) {
      this.stale = true;
      this.options.onStale?.(silentMs);
    }
  }
}
