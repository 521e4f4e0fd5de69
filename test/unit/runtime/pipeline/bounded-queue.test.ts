import { describe, expect, it } from 'vitest';
import { BoundedQueue } from '../../../../runtime/pipeline/bounded-queue.js';

describe('BoundedQueue', () => {
  it('a consumer racing two queues is woken by either, again and again', async () => {
    const a = new BoundedQueue<number>(4, 'drop_oldest');
    const b = new BoundedQueue<number>(4, 'drop_oldest');
    const race = (): Promise<void> => Promise.race([a.whenReady(), b.whenReady()]);
    const first = race();
    b.offer(1);
    await first;
    expect(b.poll()).toBe(1);
    // The first race left a waiter on `a` that nobody listens to any more.
    const second = race();
    a.offer(2);
    const woke = await Promise.race([second.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 100))]);
    expect(woke).toBe(true);
    expect(a.poll()).toBe(2);
  });

  it('applies each full policy', () => {
    const oldest = new BoundedQueue<number>(2, 'drop_oldest');
    oldest.offer(1);
    oldest.offer(2);
    expect(oldest.offer(3).dropped).toBe(1);
    const newest = new BoundedQueue<number>(2, 'drop_newest');
    newest.offer(1);
    newest.offer(2);
    expect(newest.offer(3).dropped).toBe(3);
    const block = new BoundedQueue<number>(2, 'block');
    block.offer(1);
    const full = block.offer(2);
    expect(full.dropped).toBeUndefined();
    expect(full.room).toBeInstanceOf(Promise);
    expect(block.length).toBe(2);
  });
});
