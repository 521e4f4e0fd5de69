import { describe, expect, it } from 'vitest';
import { DeadlineError, DeviceScheduler, type TaskStats } from '../../../../runtime/scheduler/device-scheduler.js';
import { entitledRates, jainIndex, SchedulerError } from '../../../../runtime/scheduler/fair-share.js';

/**
 * A discrete-event clock: jobs "take" their cost in simulated milliseconds. `runUntil` fires
 * events in time order and lets the scheduler's promise callbacks run between them, so a test
 * of seconds of device time finishes in milliseconds and gives the same answer on any machine.
 */
class Sim {
  now = 0;
  private readonly events: { at: number; seq: number; fire: () => void }[] = [];
  private seq = 0;

  readonly clock = (): number => this.now;

  at(time: number, fire: () => void): void {
    const e = { at: time, seq: this.seq++, fire };
    let i = this.events.length;
    while (i > 0 && (this.events[i - 1] as { at: number }).at > time) i--;
    this.events.splice(i, 0, e);
  }

  /** A job body that occupies its lane for `ms`, telling `onStart` when it began. */
  work<T>(ms: number, value: T, onStart?: (now: number) => void): () => Promise<T> {
    return () => {
      onStart?.(this.now);
      return new Promise<T>((resolve) => this.at(this.now + ms, () => resolve(value)));
    };
  }

  async runUntil(end: number): Promise<void> {
    for (;;) {
      await settle();
      const next = this.events[0];
      if (next === undefined || next.at > end) break;
      this.events.shift();
      this.now = next.at;
      next.fire();
    }
    this.now = end;
    await settle();
  }
}

const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Keeps `depth` jobs of a task queued or running at all times: a task that saturates the device. */
function saturate(s: DeviceScheduler, sim: Sim, task: string, costMs: number, depth = 3, onStart?: () => void): { stop: () => void } {
  let stopped = false;
  const one = (): void => {
    if (stopped) return;
    s.submit(task, { costMs, run: sim.work(costMs, task, onStart) }).then(one, one);
  };
  for (let i = 0; i < depth; i++) one();
  return { stop: () => (stopped = true) };
}

function statsOf(s: DeviceScheduler, id: string): TaskStats {
  const t = s.stats().tasks.find((x) => x.id === id);
  if (t === undefined) throw new Error(`no stats for ${id}`);
  return t;
}

/** Seeded uniform [0, 1): the same arrivals on every run. */
function lcg(seed: number): () => number {
  let x = seed >>> 0;
  return () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x / 2 ** 32;
  };
}

describe('DeviceScheduler: shares', () => {
  it('converges to the closed form under contention (Jain ≥ 0.99, received within 2 % of entitled)', async () => {
    const sim = new Sim();
    const s = new DeviceScheduler('cpu:0', { now: sim.clock, windowMs: 5000 });
    const specs = [
      { id: 'a', priority: 4, costMs: 2 },
      { id: 'b', priority: 2, costMs: 5 },
      { id: 'c', priority: 1, costMs: 1 },
      { id: 'd', priority: 3, costMs: 10 },
    ];
    for (const t of specs) s.addTask({ id: t.id, priority: t.priority });
    for (const t of specs) saturate(s, sim, t.id, t.costMs);
    await sim.runUntil(10_000);

    const expected = entitledRates(specs, 1);
    const stats = s.stats();
    expect(stats.busyFraction).toBeGreaterThan(0.999);
    for (const t of specs) {
      const got = statsOf(s, t.id);
      const want = expected.get(t.id);
      expect(got.entitledRateHz).toBeCloseTo(want?.rateHz ?? NaN, 6);
      expect(Math.abs(got.receivedRateHz / got.entitledRateHz - 1)).toBeLessThan(0.02);
      expect(Math.abs(got.receivedShare - got.entitledShare)).toBeLessThan(0.01);
    }
    expect(jainIndex(stats.tasks.map((t) => t.receivedRateHz / t.priority))).toBeGreaterThan(0.999);
  });

  it('gives an idle task no credit: it restarts at the virtual time and gets its share, not a burst', async () => {
    const sim = new Sim();
    const s = new DeviceScheduler('cpu:0', { now: sim.clock });
    s.addTask({ id: 'busy', priority: 1 });
    s.addTask({ id: 'late', priority: 1 });
    const order: string[] = [];
    const mark = (id: string) => (): void => void order.push(id);
    saturate(s, sim, 'busy', 10, 3, mark('busy'));
    await sim.runUntil(5000);
    order.length = 0;
    // 'late' now keeps 3 jobs queued too; had it banked 5 s of credit it would run all of its first.
    saturate(s, sim, 'late', 10, 3, mark('late'));
    await sim.runUntil(5200);
    const firstTen = order.slice(0, 10);
    expect(firstTen.filter((x) => x === 'late').length).toBeGreaterThanOrEqual(4);
    expect(firstTen.filter((x) => x === 'late').length).toBeLessThanOrEqual(6);
    expect(order.filter((x) => x === 'late').length).toBe(10);
  });

  it('reports a task idle all window as entitled to nothing, and declared demand as a cap', async () => {
    const sim = new Sim();
    const s = new DeviceScheduler('cpu:0', { now: sim.clock, windowMs: 1000 });
    s.addTask({ id: 'idle', priority: 8 });
    s.addTask({ id: 'capped', priority: 1, demandHz: 10 });
    s.addTask({ id: 'greedy', priority: 1 });
    saturate(s, sim, 'greedy', 5);
    // 'capped' asks for exactly its declared 10/s.
    for (let t = 0; t < 3000; t += 100) sim.at(t, () => void s.submit('capped', { costMs: 5, run: sim.work(5, 0) }));
    await sim.runUntil(3000);
    expect(statsOf(s, 'idle')).toMatchObject({ entitledRateHz: 0, entitledShare: 0, receivedRateHz: 0 });
    expect(statsOf(s, 'capped').entitledRateHz).toBeCloseTo(10, 6);
    expect(statsOf(s, 'capped').receivedRateHz).toBeCloseTo(10, 6);
    // The greedy task gets all the rest: (1 − 10·0.005) / 0.005 = 190/s.
    expect(statsOf(s, 'greedy').entitledRateHz).toBeCloseTo(190, 6);
    expect(Math.abs(statsOf(s, 'greedy').receivedRateHz - 190)).toBeLessThan(2);
  });
});

describe('DeviceScheduler: deadlines', () => {
  /** A 30 Hz task of 10 ms whose deadline is its period, beside a low-priority task of 5 ms jobs. */
  async function periodicBeside(lowLoad: 'poisson-50%' | 'saturating'): Promise<{ hp: TaskStats; low: TaskStats; maxWaitMs: number; busy: number }> {
    const sim = new Sim();
    const s = new DeviceScheduler('jetson:gpu0', { now: sim.clock, windowMs: 5000 });
    s.addTask({ id: 'hp', priority: 4, demandHz: 30 });
    s.addTask({ id: 'low', priority: 1 });
    const period = 1000 / 30;
    let maxWaitMs = 0;
    for (let k = 0; k < 300; k++) {
      const release = k * period;
      sim.at(release, () => {
        void s.submit('hp', { costMs: 10, deadline: release + period, run: sim.work(10, k, (now) => (maxWaitMs = Math.max(maxWaitMs, now - release))) });
      });
    }
    if (lowLoad === 'saturating') saturate(s, sim, 'low', 5);
    else {
      // Poisson arrivals at 100/s × 5 ms = 50 % of the device; with hp's 30 %, 80 % load.
      const rand = lcg(7);
      for (let t = -Math.log(1 - rand()) * 10; t < 10_000; t += -Math.log(1 - rand()) * 10) sim.at(t, () => void s.submit('low', { costMs: 5, run: sim.work(5, 0) }));
    }
    await sim.runUntil(10_000);
    return { hp: statsOf(s, 'hp'), low: statsOf(s, 'low'), maxWaitMs, busy: s.stats().busyFraction };
  }

  it('keeps every deadline of a high-priority periodic task at 80 % load while the low task absorbs the slack', async () => {
    const { hp, low, maxWaitMs, busy } = await periodicBeside('poisson-50%');
    expect(hp.served).toBe(300);
    expect(hp.deadlineMisses).toBe(0);
    expect(hp.expired).toBe(0);
    // Non-preemptive: at worst it waits for the one low job already running.
    expect(maxWaitMs).toBeLessThanOrEqual(5 + 1e-9);
    expect(low.receivedRateHz).toBeGreaterThan(90);
    expect(busy).toBeGreaterThan(0.7);
    expect(busy).toBeLessThan(0.9);
  });

  it('keeps them at saturation too: the wait is bounded by one low job, and the low task gets everything else', async () => {
    const { hp, low, maxWaitMs, busy } = await periodicBeside('saturating');
    expect(hp.served).toBe(300);
    expect(hp.deadlineMisses).toBe(0);
    expect(hp.expired).toBe(0);
    expect(maxWaitMs).toBeLessThanOrEqual(5 + 1e-9);
    expect(busy).toBeGreaterThan(0.999);
    expect(low.receivedShare).toBeCloseTo(0.7, 2);
    expect(hp.entitledRateHz).toBeCloseTo(30, 6);
    expect(low.entitledShare).toBeCloseTo(0.7, 2);
  });

  it('runs the earliest deadline first within a priority class, bounded by one quantum of fairness', async () => {
    const sim = new Sim();
    const s = new DeviceScheduler('cpu:0', { now: sim.clock });
    for (const id of ['block', 'a', 'b']) s.addTask({ id, priority: 1 });
    const order: string[] = [];
    const job = (label: string, deadline?: number) => ({ costMs: 1, ...(deadline === undefined ? {} : { deadline }), run: sim.work(1, label, () => void order.push(label)) });
    void s.submit('block', { costMs: 10, run: sim.work(10, 'block') });
    for (const d of [30, 10, 50]) void s.submit('a', job(`a${d}`, d + 100));
    for (const d of [40, 20, 60]) void s.submit('b', job(`b${d}`, d + 100));
    await sim.runUntil(100);
    // Interleaved across tasks and sorted within each: pure EDF, since it never strays a quantum.
    expect(order).toEqual(['a10', 'b20', 'a30', 'b40', 'a50', 'b60']);

    // One task holding every early deadline gets one job ahead, not all of them.
    order.length = 0;
    void s.submit('block', { costMs: 10, run: sim.work(10, 'block') });
    for (const d of [1, 2, 3]) void s.submit('a', job(`a${d}`, 200 + d));
    for (const d of [7, 8, 9]) void s.submit('b', job(`b${d}`, 200 + d));
    await sim.runUntil(200);
    expect(order).toEqual(['a1', 'a2', 'b7', 'a3', 'b8', 'b9']);
  });

  it('orders ties and jobs without deadlines first come, first served', async () => {
    const sim = new Sim();
    const s = new DeviceScheduler('cpu:0', { now: sim.clock });
    s.addTask({ id: 'block', priority: 1 });
    s.addTask({ id: 'a', priority: 1 });
    const order: string[] = [];
    void s.submit('block', { costMs: 10, run: sim.work(10, 0) });
    const job = (label: string, deadline?: number) => ({ costMs: 1, ...(deadline === undefined ? {} : { deadline }), run: sim.work(1, label, () => void order.push(label)) });
    void s.submit('a', job('none1'));
    void s.submit('a', job('d50-1', 50));
    void s.submit('a', job('none2'));
    void s.submit('a', job('d50-2', 50));
    void s.submit('a', job('d40', 40));
    await sim.runUntil(100);
    expect(order).toEqual(['d40', 'd50-1', 'd50-2', 'none1', 'none2']);
  });

  it('does not reorder across priority classes: the SFQ turn decides, ties to the higher priority', async () => {
    const sim = new Sim();
    const s = new DeviceScheduler('cpu:0', { now: sim.clock });
    s.addTask({ id: 'block', priority: 1 });
    s.addTask({ id: 'high', priority: 2 });
    s.addTask({ id: 'urgent-low', priority: 1 });
    const order: string[] = [];
    void s.submit('block', { costMs: 10, run: sim.work(10, 0) });
    for (let i = 0; i < 3; i++) void s.submit('high', { costMs: 1, run: sim.work(1, 0, () => void order.push('high')) });
    void s.submit('urgent-low', { costMs: 1, deadline: 12, run: sim.work(1, 0, () => void order.push('urgent-low')) });
    await sim.runUntil(100);
    expect(order).toEqual(['high', 'urgent-low', 'high', 'high']);
  });

  it('rejects a job whose deadline came before a lane was free (expired), and counts a late finish as a miss', async () => {
    const sim = new Sim();
    const s = new DeviceScheduler('cpu:0', { now: sim.clock });
    s.addTask({ id: 'block', priority: 1 });
    s.addTask({ id: 'a', priority: 1 });
    void s.submit('block', { costMs: 50, run: sim.work(50, 0) });
    let ran = false;
    const expired = s.submit('a', { costMs: 5, deadline: 20, run: sim.work(5, 'never', () => (ran = true)) }).catch((e: unknown) => e);
    const late = s.submit('a', { costMs: 20, deadline: 60, run: sim.work(20, 'late') });
    await sim.runUntil(100);
    const e = await expired;
    expect(ran).toBe(false);
    expect(e).toBeInstanceOf(DeadlineError);
    expect((e as DeadlineError).code).toBe('EAI_DEADLINE_EXPIRED');
    expect((e as DeadlineError).details).toMatchObject({ device: 'cpu:0', task: 'a', deadline: 20, now: 50, queuedMs: 50 });
    expect((e as DeadlineError).message).toMatch(/deadline passed 30\.0 ms before a lane was free/u);
    await expect(late).resolves.toBe('late');
    expect(statsOf(s, 'a')).toMatchObject({ served: 1, expired: 1, deadlineMisses: 1, queued: 0 });

    // A deadline already past at submit expires at once when a lane is free.
    await expect(s.submit('a', { costMs: 1, deadline: 50, run: sim.work(1, 0) })).rejects.toMatchObject({ code: 'EAI_DEADLINE_EXPIRED' });
    expect(statsOf(s, 'a').expired).toBe(2);
  });
});

describe('DeviceScheduler: tasks and failures', () => {
  it('drainQueued takes back queued jobs with the given error and leaves the running one alone', async () => {
    const sim = new Sim();
    const s = new DeviceScheduler('cpu:0', { now: sim.clock });
    s.addTask({ id: 'a', priority: 1 });
    const running = s.submit('a', { costMs: 10, run: sim.work(10, 'first') });
    const queued = [1, 2, 3].map((i) => s.submit('a', { costMs: 10, run: sim.work(10, i) }).catch((e: unknown) => e));
    await settle();
    const moved = new Error('device lost: resubmit elsewhere');
    expect(s.drainQueued('a', moved)).toBe(3);
    expect(statsOf(s, 'a')).toMatchObject({ queued: 0, running: 1 });
    await sim.runUntil(50);
    await expect(running).resolves.toBe('first');
    for (const q of queued) expect(await q).toBe(moved);
    // The task stays and takes new work.
    const again = s.submit('a', { costMs: 1, run: sim.work(1, 'again') });
    await sim.runUntil(60);
    await expect(again).resolves.toBe('again');
    expect(s.drainQueued('a', moved)).toBe(0);
    expect(() => s.drainQueued('nope', moved)).toThrow(expect.objectContaining({ code: 'EAI_SCHED_UNKNOWN_TASK' }));
  });

  it('removeTask rejects queued jobs, lets the running one finish, and forgets the task', async () => {
    const sim = new Sim();
    const s = new DeviceScheduler('cpu:0', { now: sim.clock });
    s.addTask({ id: 'a', priority: 1 });
    s.addTask({ id: 'b', priority: 1 });
    const running = s.submit('a', { costMs: 10, run: sim.work(10, 'done') });
    const queued = s.submit('a', { costMs: 10, run: sim.work(10, 'never') }).catch((e: unknown) => e);
    const other = s.submit('b', { costMs: 10, run: sim.work(10, 'b') });
    await settle();
    s.removeTask('a');
    s.removeTask('a');
    expect(s.hasTask('a')).toBe(false);
    await sim.runUntil(100);
    await expect(running).resolves.toBe('done');
    await expect(other).resolves.toBe('b');
    const e = await queued;
    expect(e).toBeInstanceOf(SchedulerError);
    expect((e as SchedulerError).code).toBe('EAI_SCHED_TASK_REMOVED');
    await expect(s.submit('a', { costMs: 1, run: sim.work(1, 0) })).rejects.toMatchObject({ code: 'EAI_SCHED_UNKNOWN_TASK' });
    expect(s.stats().tasks.map((t) => t.id)).toEqual(['b']);
    // The removed task's run still counts as busy time of the device.
    expect(s.stats().busyFraction).toBeCloseTo(0.2, 9);

    const custom = new Error('moved');
    s.addTask({ id: 'c', priority: 1 });
    void s.submit('c', { costMs: 10, run: sim.work(10, 0) });
    const cq = s.submit('c', { costMs: 10, run: sim.work(10, 0) }).catch((x: unknown) => x);
    await settle();
    s.removeTask('c', custom);
    expect(await cq).toBe(custom);
    await sim.runUntil(200);
  });

  it('refuses duplicate tasks, unknown tasks and bad numbers with stable codes', async () => {
    const s = new DeviceScheduler('cpu:0', { now: () => 0 });
    s.addTask({ id: 'a', priority: 1 });
    expect(() => s.addTask({ id: 'a', priority: 2 })).toThrow(expect.objectContaining({ code: 'EAI_SCHED_DUPLICATE_TASK' }));
    expect(() => s.addTask({ id: 'b', priority: 0 })).toThrow(expect.objectContaining({ code: 'EAI_SCHED_BAD_ARGUMENT' }));
    expect(() => s.updateTask('nope', { priority: 2 })).toThrow(expect.objectContaining({ code: 'EAI_SCHED_UNKNOWN_TASK' }));
    expect(() => s.updateTask('a', { demandHz: -1 })).toThrow(expect.objectContaining({ code: 'EAI_SCHED_BAD_ARGUMENT' }));
    await expect(s.submit('a', { costMs: -1, run: async () => 0 })).rejects.toMatchObject({ code: 'EAI_SCHED_BAD_ARGUMENT' });
    expect(() => new DeviceScheduler('x', { lanes: 0 })).toThrow(expect.objectContaining({ code: 'EAI_SCHED_BAD_ARGUMENT' }));
    expect(() => new DeviceScheduler('x', { lanes: 1.5 })).toThrow(SchedulerError);
  });

  it('updateTask changes the share from the next request on', async () => {
    const sim = new Sim();
    const s = new DeviceScheduler('cpu:0', { now: sim.clock, windowMs: 2000 });
    s.addTask({ id: 'a', priority: 1, demandHz: 5 });
    s.addTask({ id: 'b', priority: 1 });
    saturate(s, sim, 'a', 5);
    saturate(s, sim, 'b', 5);
    await sim.runUntil(2000);
    expect(statsOf(s, 'a').receivedRateHz).toBeCloseTo(100, -1);
    s.updateTask('a', { priority: 3, demandHz: undefined });
    expect(statsOf(s, 'a').demandHz).toBeUndefined();
    await sim.runUntil(6000);
    // Over the last 2 s (all after the change): λ = 1 / (3·0.005 + 1·0.005) = 50.
    expect(Math.abs(statsOf(s, 'a').receivedRateHz - 150)).toBeLessThan(1.5);
    expect(Math.abs(statsOf(s, 'b').receivedRateHz - 50)).toBeLessThan(1.5);
  });

  it('a job that throws fails only its own promise; re-entrant submits from a job are queued', async () => {
    const sim = new Sim();
    const s = new DeviceScheduler('cpu:0', { now: sim.clock });
    s.addTask({ id: 'a', priority: 1 });
    const syncThrow = s
      .submit('a', {
        costMs: 1,
        run: () => {
          throw new Error('sync');
        },
      })
      .catch((e: unknown) => e);
    const asyncThrow = s.submit('a', { costMs: 1, run: () => Promise.reject(new Error('async')) }).catch((e: unknown) => e);
    let inner: Promise<string> | undefined;
    const outer = s.submit('a', {
      costMs: 1,
      run: () => {
        inner = s.submit('a', { costMs: 1, run: sim.work(1, 'inner') });
        return sim.work(1, 'outer')();
      },
    });
    await sim.runUntil(10);
    expect(await syncThrow).toMatchObject({ message: 'sync' });
    expect(await asyncThrow).toMatchObject({ message: 'async' });
    await expect(outer).resolves.toBe('outer');
    await expect(inner).resolves.toBe('inner');
    expect(statsOf(s, 'a')).toMatchObject({ served: 4, failed: 2, queued: 0, running: 0 });
  });
});

describe('DeviceScheduler: lanes', () => {
  it('runs up to `lanes` jobs at once and shares all of them by priority', async () => {
    const sim = new Sim();
    const s = new DeviceScheduler('cuda:0', { now: sim.clock, lanes: 2, windowMs: 5000 });
    s.addTask({ id: 'a', priority: 1 });
    const ends: number[] = [];
    const four = [0, 1, 2, 3].map(() => s.submit('a', { costMs: 10, run: sim.work(10, 0) }).then(() => ends.push(sim.now)));
    await sim.runUntil(100);
    await Promise.all(four);
    expect(ends).toEqual([10, 10, 20, 20]);

    s.addTask({ id: 'b', priority: 2 });
    s.addTask({ id: 'c', priority: 1 });
    let running = 0;
    let peak = 0;
    const counted = (id: string, ms: number): void => {
      const one = (): void => {
        void s
          .submit(id, {
            costMs: ms,
            run: () => {
              peak = Math.max(peak, ++running);
              return sim.work(ms, 0)().finally(() => running--);
            },
          })
          .then(one);
      };
      for (let i = 0; i < 3; i++) one();
    };
    counted('a', 4);
    counted('b', 4);
    counted('c', 8);
    await sim.runUntil(10_000);
    expect(peak).toBe(2);
    const stats = s.stats();
    expect(stats.busyFraction).toBeGreaterThan(0.999);
    // Capacity 2: λ = 2 / (1·0.004 + 2·0.004 + 1·0.008) = 100 per unit of priority.
    for (const t of stats.tasks) {
      expect(t.entitledRateHz).toBeCloseTo(100 * t.priority, 6);
      expect(Math.abs(t.receivedRateHz / t.entitledRateHz - 1)).toBeLessThan(0.03);
    }
  });
});

describe('DeviceScheduler: real time', () => {
  it('shares a real clock by priority (generous tolerance)', async () => {
    const s = new DeviceScheduler('cpu:0', { windowMs: 10_000 });
    s.addTask({ id: 'a', priority: 3 });
    s.addTask({ id: 'b', priority: 1 });
    let stop = false;
    const pending: Promise<unknown>[] = [];
    const loop = (id: string): void => {
      if (stop) return;
      const p = s.submit(id, { costMs: 2, run: () => new Promise((resolve) => setTimeout(resolve, 2)) });
      pending.push(p);
      void p.then(() => loop(id));
    };
    for (let i = 0; i < 2; i++) {
      loop('a');
      loop('b');
    }
    await new Promise((resolve) => setTimeout(resolve, 400));
    stop = true;
    await Promise.all(pending);
    const a = statsOf(s, 'a');
    const b = statsOf(s, 'b');
    expect(a.served + b.served).toBeGreaterThan(30);
    expect(a.served / b.served).toBeGreaterThan(2.4);
    expect(a.served / b.served).toBeLessThan(3.6);
    expect(s.stats().tasks.every((t) => t.queued === 0 && t.running === 0)).toBe(true);
  });
});
