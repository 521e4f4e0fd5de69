import { describe, expect, it } from 'vitest';
import { SerialQueue } from '../../../../drivers/hal/serial-queue.js';

describe('SerialQueue', () => {
  it('runs tasks one at a time in call order, and a failure does not stop the next', async () => {
    const q = new SerialQueue();
    const log: string[] = [];
    let running = 0;
    const task = (name: string, ms: number, fail = false) => async (): Promise<string> => {
      running++;
      expect(running).toBe(1);
      log.push(`start ${name}`);
      await new Promise((r) => setTimeout(r, ms));
      log.push(`end ${name}`);
      running--;
      if (fail) throw new Error(name);
      return name;
    };
    const results = await Promise.allSettled([q.push(task('a', 20)), q.push(task('b', 1, true)), q.push(task('c', 5))]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(log).toEqual(['start a', 'end a', 'start b', 'end b', 'start c', 'end c']);
    await q.drain();
  });
});
