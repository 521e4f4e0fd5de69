/** What a queue does when it is full. */
export type FullPolicy = 'block' | 'drop_oldest' | 'drop_newest';

/**
 * A FIFO that never holds more than `capacity` items. When full, `drop_oldest` evicts the head,
 * `drop_newest` refuses the arriving item, and `block` makes `offer` return a promise that
 * resolves once there is room (the producer is expected to await it). One consumer.
 */
export class BoundedQueue<T> {
  private readonly items: T[] = [];
  private waiters: (() => void)[] = [];
  private roomWaiters: (() => void)[] = [];
  private closed = false;

  constructor(
    readonly capacity: number,
    readonly policy: FullPolicy,
  ) {}

  get length(): number {
    return this.items.length;
  }

  /**
   * Adds an item. Returns the item that was dropped (the evicted head, or `item` itself), if
   * any, and for `block` a promise to await before offering more when the queue is now full.
   */
  offer(item: T): { dropped?: T; room?: Promise<void> } {
    if (this.closed) return { dropped: item };
    let dropped: T | undefined;
    if (this.items.length >= this.capacity) {
      if (this.policy === 'drop_newest') return { dropped: item };
      if (this.policy === 'drop_oldest') dropped = this.items.shift();
    }
    this.items.push(item);
    // Wake every waiter: a consumer racing several queues leaves stale waiters behind, and waking
    // only the first could wake a dead one and leave this item unseen.
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
    if (this.policy === 'block' && this.items.length >= this.capacity) {
      return { ...(dropped === undefined ? {} : { dropped }), room: new Promise((resolve) => this.roomWaiters.push(resolve)) };
    }
    return dropped === undefined ? {} : { dropped };
  }

  /** The head item, or undefined when empty (does not wait). */
  poll(): T | undefined {
    const item = this.items.shift();
    if (item !== undefined && this.items.length < this.capacity) this.roomWaiters.shift()?.();
    return item;
  }

  /** Resolves when an item is available or the queue is closed. */
  whenReady(): Promise<void> {
    if (this.items.length > 0 || this.closed) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Stops accepting items; wakes every waiter. Items already queued stay pollable. */
  close(): void {
    this.closed = true;
    for (const w of this.waiters) w();
    for (const w of this.roomWaiters) w();
    this.waiters = [];
    this.roomWaiters = [];
  }

  /** Empties the queue, returning what it held. */
  clear(): T[] {
    const all = this.items.splice(0);
    for (const w of this.roomWaiters) w();
    this.roomWaiters = [];
    return all;
  }
}
