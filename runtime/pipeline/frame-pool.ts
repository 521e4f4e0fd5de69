import { AiosError } from '../../drivers/errors.js';

/**
 * A frame in shared memory, or a transform of one in a worker thread, that failed: a bad lease
 * size, a closed pool, a buffer a worker cannot share, a worker that died.
 */
export class FrameError extends AiosError {}

/**
 * Shared memory for frames. A `FramePool` hands out byte ranges on `SharedArrayBuffer`s that the
 * transform worker threads see without a copy: the pool's buffers are posted to each worker once
 * (`TransformWorkers.attach`), after which a job names a frame by pool, slot and offset only.
 *
 * Ownership is explicit: `acquire` gives the caller a lease; the caller may read and write
 * `lease.data` (and lend it to a worker) until it calls `release()`, after which the slot goes to
 * the next `acquire` and the old view must not be touched. Frames that leave a stage for
 * downstream nodes are *not* leased (the executor may hand one value to several consumers and
 * cannot say when the last is done): stages allocate those with {@link sharedBytes}, and the
 * garbage collector reclaims them.
 *
 * The pool never blocks and never fails for lack of room: past `maxBytes` it allocates a buffer
 * outside the pool (counted in `stats().misses`, released to the collector). One pool belongs to
 * one owner (a stage); calls do not overlap because JavaScript runs them on one thread.
 */
export class FramePool {
  /** Distinguishes this pool's slots from other pools' in the workers' tables. */
  readonly id: number = nextPoolId++;
  private readonly maxBytes: number;
  private readonly buffers: SharedArrayBuffer[] = [];
  private readonly free: number[] = [];
  private readonly slotOf = new WeakMap<ArrayBufferLike, number>();
  private readonly listeners = new Set<(slot: number, buffer: SharedArrayBuffer) => void>();
  private bytes = 0;
  private inUse = 0;
  private acquired = 0;
  private misses = 0;
  private closed = false;

  constructor(options: FramePoolOptions = {}) {
    this.maxBytes = options.maxBytes ?? 64 * 1024 * 1024;
  }

  /**
   * A byte range of exactly `byteLength` bytes in shared memory, zero-filled only the first time
   * its slot is used (later leases see what the last holder wrote: write every byte you read).
   */
  acquire(byteLength: number): FrameLease {
    if (!Number.isInteger(byteLength) || byteLength < 0) throw new FrameError('EAI_FRAME_POOL_SIZE', `A frame lease needs a whole, non-negative number of bytes, got ${byteLength}.`);
    if (this.closed) throw new FrameError('EAI_FRAME_POOL_CLOSED', 'This frame pool is closed: its owner stopped. Acquire frames before stop(), or from a new pool.');
    this.acquired++;
    const slot = this.bestFree(byteLength) ?? this.grow(byteLength);
    if (slot === undefined) {
      this.misses++;
      return { data: sharedBytes(byteLength), pooled: false, release: () => undefined };
    }
    this.inUse++;
    let released = false;
    const buffer = this.buffers[slot] as SharedArrayBuffer;
    return {
      data: new Uint8Array(buffer, 0, byteLength),
      pooled: true,
      release: () => {
        if (released) return;
        released = true;
        this.inUse--;
        if (!this.closed) this.free.push(slot);
      },
    };
  }

  /** The slot a buffer of this pool is, or undefined for any other buffer. */
  locate(buffer: ArrayBufferLike): number | undefined {
    return this.slotOf.get(buffer);
  }

  /**
   * Calls `listener` for every slot now in the pool and every slot added later (so workers learn
   * each buffer once). Returns a function that stops the calls.
   */
  onSlot(listener: (slot: number, buffer: SharedArrayBuffer) => void): () => void {
    this.buffers.forEach((b, i) => listener(i, b));
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  stats(): FramePoolStats {
    return { slots: this.buffers.length, bytes: this.bytes, inUse: this.inUse, acquired: this.acquired, misses: this.misses };
  }

  /** Stops handing out slots; leases still held stay valid until released. Idempotent. */
  close(): void {
    this.closed = true;
    this.free.length = 0;
    this.listeners.clear();
  }

  /** The smallest free slot that holds `byteLength` bytes, taken off the free list. */
  private bestFree(byteLength: number): number | undefined {
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      const size = (this.buffers[this.free[i] as number] as SharedArrayBuffer).byteLength;
      if (size >= byteLength && (best < 0 || size < (this.buffers[this.free[best] as number] as SharedArrayBuffer).byteLength)) best = i;
    }
    return best < 0 ? undefined : this.free.splice(best, 1)[0];
  }

  private grow(byteLength: number): number | undefined {
    // Round up so a slot serves frames of slightly different sizes (a crop that moves).
    const size = Math.max(SLOT_GRAIN, Math.ceil(byteLength / SLOT_GRAIN) * SLOT_GRAIN);
    if (this.bytes + size > this.maxBytes) return undefined;
    const buffer = new SharedArrayBuffer(size);
    const slot = this.buffers.push(buffer) - 1;
    this.slotOf.set(buffer, slot);
    this.bytes += size;
    for (const listener of this.listeners) listener(slot, buffer);
    return slot;
  }
}

export interface FramePoolOptions {
  /** Bytes the pool may hold in its slots; default 64 MiB. */
  readonly maxBytes?: number;
}

/** A byte range lent by a {@link FramePool}; see the ownership rules there. */
export interface FrameLease {
  /** Exactly the requested bytes, on a SharedArrayBuffer. */
  readonly data: Uint8Array;
  /** False when the pool was full and these bytes are a one-off buffer outside it. */
  readonly pooled: boolean;
  /** Gives the bytes back; idempotent. */
  release(): void;
}

export interface FramePoolStats {
  readonly slots: number;
  readonly bytes: number;
  readonly inUse: number;
  /** Leases handed out since the pool was made. */
  readonly acquired: number;
  /** Leases served outside the pool because it was full. */
  readonly misses: number;
}

/** Zero-filled bytes on a fresh SharedArrayBuffer, owned by whoever holds the view (GC-freed). */
export function sharedBytes(byteLength: number): Uint8Array {
  return new Uint8Array(new SharedArrayBuffer(byteLength));
}

/** Zero-filled float32s on a fresh SharedArrayBuffer (GC-freed). */
export function sharedFloat32(length: number): Float32Array {
  return new Float32Array(new SharedArrayBuffer(length * Float32Array.BYTES_PER_ELEMENT));
}

/** Whether a typed array lives in shared memory, so a worker can use it without a copy. */
export function isShared(view: ArrayBufferView): boolean {
  return view.buffer instanceof SharedArrayBuffer;
}

const SLOT_GRAIN = 64 * 1024;
let nextPoolId = 1;
