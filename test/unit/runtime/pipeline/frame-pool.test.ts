import { describe, expect, it } from 'vitest';
import { FrameError, FramePool, isShared, sharedBytes, sharedFloat32 } from '../../../../runtime/pipeline/frame-pool.js';

describe('FramePool', () => {
  it('leases shared bytes of the exact size and reuses a released slot', () => {
    const pool = new FramePool();
    const a = pool.acquire(1000);
    expect(a.data.length).toBe(1000);
    expect(isShared(a.data)).toBe(true);
    expect(a.pooled).toBe(true);
    a.data[0] = 42;
    const slot = pool.locate(a.data.buffer);
    expect(slot).toBe(0);
    a.release();
    a.release(); // idempotent: the slot is not freed twice
    const b = pool.acquire(900);
    expect(pool.locate(b.data.buffer)).toBe(0);
    expect(b.data[0]).toBe(42); // not cleared between leases, as documented
    const c = pool.acquire(900);
    expect(pool.locate(c.data.buffer)).toBe(1);
    expect(pool.stats()).toEqual({ slots: 2, bytes: 2 * 65536, inUse: 2, acquired: 3, misses: 0 });
  });

  it('takes the smallest free slot that fits', () => {
    const pool = new FramePool();
    const big = pool.acquire(300_000);
    const small = pool.acquire(10);
    big.release();
    small.release();
    expect(pool.locate(pool.acquire(5).data.buffer)).toBe(1);
    expect(pool.locate(pool.acquire(200_000).data.buffer)).toBe(0);
  });

  it('serves past maxBytes from one-off buffers instead of failing, and counts them', () => {
    const pool = new FramePool({ maxBytes: 65536 });
    const a = pool.acquire(60_000);
    const b = pool.acquire(60_000);
    expect(b.pooled).toBe(false);
    expect(isShared(b.data)).toBe(true);
    expect(pool.locate(b.data.buffer)).toBeUndefined();
    expect(pool.stats().misses).toBe(1);
    a.release();
    expect(pool.acquire(60_000).pooled).toBe(true);
  });

  it('tells listeners of every slot, existing and new', () => {
    const pool = new FramePool();
    pool.acquire(10);
    const seen: number[] = [];
    const stop = pool.onSlot((slot, buffer) => {
      expect(buffer).toBeInstanceOf(SharedArrayBuffer);
      seen.push(slot);
    });
    pool.acquire(10);
    stop();
    pool.acquire(10);
    expect(seen).toEqual([0, 1]);
  });

  it('refuses bad sizes and leases after close', () => {
    const pool = new FramePool();
    expect(() => pool.acquire(-1)).toThrow(FrameError);
    expect(() => pool.acquire(1.5)).toThrow(expect.objectContaining({ code: 'EAI_FRAME_POOL_SIZE' }));
    const held = pool.acquire(10);
    pool.close();
    expect(() => pool.acquire(10)).toThrow(expect.objectContaining({ code: 'EAI_FRAME_POOL_CLOSED' }));
    held.data[0] = 1; // a lease held across close stays usable until released
    held.release();
    expect(pool.stats().inUse).toBe(0);
  });
});

describe('shared allocations', () => {
  it('are zero-filled and shared', () => {
    const b = sharedBytes(8);
    const f = sharedFloat32(4);
    expect([...b]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    expect(f.byteLength).toBe(16);
    expect(isShared(b) && isShared(f)).toBe(true);
    expect(isShared(new Uint8Array(4))).toBe(false);
  });
});
