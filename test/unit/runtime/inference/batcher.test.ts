import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createOnnxruntimeEngine } from '../../../../drivers/engines/onnxruntime.js';
import type { Feeds, Outputs } from '../../../../drivers/hal/types.js';
import { readNpy } from '../../../../drivers/tensor/npy.js';
import { Tensor } from '../../../../drivers/tensor/tensor.js';
import { Batcher, type BatchTimers } from '../../../../runtime/inference/batcher.js';
import { BatchError, batchLayout, split, stack, type BatchLayout } from '../../../../runtime/inference/batching.js';

/** A clock and timers moved by hand: `advance` fires due timers in time order. */
class FakeTime implements BatchTimers {
  t = 0;
  private nextId = 0;
  private readonly pending = new Map<number, { at: number; fn: () => void }>();
  readonly now = (): number => this.t;
  set(callback: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.pending.set(id, { at: this.t + Math.max(0, ms), fn: callback });
    return id;
  }
  clear(handle: unknown): void {
    this.pending.delete(handle as number);
  }
  get armed(): number {
    return this.pending.size;
  }
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      const due = [...this.pending].filter(([, p]) => p.at <= end).sort((a, b) => a[1].at - b[1].at || a[0] - b[0])[0];
      if (due === undefined) break;
      this.pending.delete(due[0]);
      this.t = due[1].at;
      due[1].fn();
    }
    this.t = end;
  }
}

/** A toy model: y[i] = x[i] * 10 + k, with `x` batched on axis 0 and `k` shared. */
const layout: BatchLayout = { model: 'toy.onnx', symbol: 'batch', inputs: { x: 0, k: null }, outputs: { y: 0 } };
const k = (v: number): Tensor => new Tensor('float32', [], Float32Array.of(v));
const request = (values: number[], kv = 0): Feeds => ({ x: new Tensor('float32', [values.length], Float32Array.from(values)), k: k(kv) });
const toy = (feeds: Feeds): Outputs => {
  const x = feeds['x'] as Tensor<'float32'>;
  const kv = (feeds['k'] as Tensor<'float32'>).data[0] as number;
  return { y: new Tensor('float32', x.shape, x.data.map((v) => v * 10 + kv)) };
};
const ys = (out: Outputs): number[] => Array.from((out['y'] as Tensor<'float32'>).data);

interface Call {
  readonly feeds: Feeds;
  readonly rows: number;
  readonly deadline: number | undefined;
  resolve(out?: Outputs): void;
  reject(error: unknown): void;
}

/** A Batcher over the toy model whose runs wait until the test settles them. */
function setup(options: { maxBatch?: number; maxDelayMs?: number; estimateMs?: (rows: number) => number } = {}) {
  const time = new FakeTime();
  const calls: Call[] = [];
  const batcher = new Batcher({
    maxBatch: options.maxBatch ?? 4,
    maxDelayMs: options.maxDelayMs ?? 10,
    layout,
    now: time.now,
    timers: time,
    ...(options.estimateMs === undefined ? {} : { estimateMs: options.estimateMs }),
    run: (feeds, rows, deadline) =>
      new Promise<Outputs>((resolve, reject) => {
        calls.push({ feeds, rows, deadline, resolve: (out) => resolve(out ?? toy(feeds)), reject });
      }),
  });
  return { time, calls, batcher };
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('Batcher', () => {
  it('sends a batch when it reaches maxBatch rows, and answers each request with its own rows', async () => {
    const { calls, batcher } = setup({ maxBatch: 4 });
    const a = batcher.submit(request([1]));
    const b = batcher.submit(request([2, 3])); // a request may carry several rows
    expect(calls).toHaveLength(0);
    const c = batcher.submit(request([4]));
    expect(calls).toHaveLength(1);
    expect(calls[0]?.rows).toBe(4);
    expect(Array.from((calls[0]?.feeds['x'] as Tensor<'float32'>).data)).toEqual([1, 2, 3, 4]);
    calls[0]?.resolve();
    expect(ys(await a)).toEqual([10]);
    expect(ys(await b)).toEqual([20, 30]);
    expect(ys(await c)).toEqual([40]);
    expect(batcher.stats()).toMatchObject({ batches: 1, requests: 3, rows: 4, meanBatch: 4, sizes: { 4: 1 }, waiting: 0, inFlight: 0 });
  });

  it('sends what waits maxDelayMs after the first request arrived', async () => {
    const { time, calls, batcher } = setup({ maxBatch: 8, maxDelayMs: 10 });
    const a = batcher.submit(request([1]));
    time.advance(6);
    const b = batcher.submit(request([2])); // joins; the delay still counts from the first
    time.advance(3.9);
    expect(calls).toHaveLength(0);
    expect(batcher.stats().waiting).toBe(2);
    time.advance(0.1);
    expect(calls.map((c) => c.rows)).toEqual([2]);
    expect(calls[0]?.deadline).toBeUndefined();
    calls[0]?.resolve();
    expect([ys(await a), ys(await b)]).toEqual([[10], [20]]);
    expect(time.armed).toBe(0);
  });

  it('with maxDelayMs 0 or maxBatch 1, sends every request at once', () => {
    const zero = setup({ maxDelayMs: 0 });
    void zero.batcher.submit(request([1]));
    void zero.batcher.submit(request([2]));
    expect(zero.calls.map((c) => c.rows)).toEqual([1, 1]);
    const one = setup({ maxBatch: 1, maxDelayMs: 50 });
    void one.batcher.submit(request([1]));
    expect(one.calls).toHaveLength(1);
    expect(one.time.armed).toBe(0);
  });

  it('sends early when waiting longer would miss the earliest deadline (deadline − estimateMs(rows) ≤ now)', async () => {
    const { time, calls, batcher } = setup({ maxBatch: 8, maxDelayMs: 100, estimateMs: (rows) => 2 * rows });
    const a = batcher.submit(request([1]), { deadline: 20 }); // due at 20 - 2 = 18
    time.advance(10);
    const b = batcher.submit(request([2]), { deadline: 50 }); // two rows now take 4: due at 16
    time.advance(5.9);
    expect(calls).toHaveLength(0);
    time.advance(0.1);
    expect(calls.map((c) => [c.rows, c.deadline])).toEqual([[2, 20]]);
    calls[0]?.resolve();
    await Promise.all([a, b]);
    // A deadline that cannot be met any more goes out at once, never dropped.
    void batcher.submit(request([3]), { deadline: time.t + 1 });
    expect(calls.map((c) => c.rows)).toEqual([2, 1]);
    // A later request with an earlier deadline pulls the batch forward.
    void batcher.submit(request([4]), { deadline: time.t + 90 });
    void batcher.submit(request([5]), { deadline: time.t + 30 }); // 30 - 4
    time.advance(25.9);
    expect(calls).toHaveLength(2);
    time.advance(0.1);
    expect(calls.map((c) => c.rows)).toEqual([2, 1, 2]);
    expect(time.armed).toBe(0);
  });

  it('learns run times when no estimate is given', async () => {
    const { time, calls, batcher } = setup({ maxBatch: 2, maxDelayMs: 100 });
    void batcher.submit(request([1]));
    void batcher.submit(request([2]));
    time.advance(8); // a batch of 2 took 8 ms
    calls[0]?.resolve();
    await tick();
    // A lone request due in 10: estimate(1) = 8 (the nearest size above), so it leaves at 2.
    void batcher.submit(request([3]), { deadline: time.t + 10 });
    time.advance(1.9);
    expect(calls).toHaveLength(1);
    time.advance(0.1);
    expect(calls).toHaveLength(2);
  });

  it('keeps requests with different shared inputs or shapes in different batches', async () => {
    const { calls, batcher } = setup({ maxBatch: 2 });
    const a = batcher.submit(request([1], 0.5));
    const b = batcher.submit(request([2], 0.25));
    const c = batcher.submit({ x: new Tensor('float32', [1, 2], Float32Array.of(7, 8)), k: k(0.5) }); // rank 2: its own batch
    expect(calls).toHaveLength(0);
    const d = batcher.submit(request([3], 0.5));
    const e = batcher.submit(request([4], 0.25));
    expect(calls.map((call) => Array.from((call.feeds['x'] as Tensor<'float32'>).data))).toEqual([
      [1, 3],
      [2, 4],
    ]);
    batcher.flush();
    expect(calls).toHaveLength(3);
    for (const call of calls) call.resolve();
    expect(await Promise.all([a, b, c, d, e].map(async (p) => ys(await p)))).toEqual([[10.5], [20.25], [70.5, 80.5], [30.5], [40.25]]);
  });

  it('collects the next batch while earlier ones run', async () => {
    const { calls, batcher } = setup({ maxBatch: 2 });
    const first = [batcher.submit(request([1])), batcher.submit(request([2]))];
    const second = [batcher.submit(request([3])), batcher.submit(request([4]))];
    expect(calls).toHaveLength(2);
    expect(batcher.stats().inFlight).toBe(2);
    calls[1]?.resolve(); // the second finishes first
    expect(await Promise.all(second.map(async (p) => ys(await p)))).toEqual([[30], [40]]);
    calls[0]?.resolve();
    expect(await Promise.all(first.map(async (p) => ys(await p)))).toEqual([[10], [20]]);
  });

  it('fails every request of a failed batch with the run error, and no other', async () => {
    const { calls, batcher } = setup({ maxBatch: 2 });
    const failed = [batcher.submit(request([1])), batcher.submit(request([2]))];
    const fine = [batcher.submit(request([3])), batcher.submit(request([4]))];
    const error = new Error('device lost');
    calls[0]?.reject(error);
    calls[1]?.resolve();
    for (const p of failed) await expect(p).rejects.toBe(error);
    expect(await Promise.all(fine.map(async (p) => ys(await p)))).toEqual([[30], [40]]);
  });

  it('fails a batch whose outputs do not split, with EAI_BATCH_OUTPUT', async () => {
    const { calls, batcher } = setup({ maxBatch: 2 });
    const both = [batcher.submit(request([1])), batcher.submit(request([2]))];
    calls[0]?.resolve({ y: new Tensor('float32', [3], new Float32Array(3)) });
    for (const p of both) await expect(p).rejects.toMatchObject({ code: 'EAI_BATCH_OUTPUT' });
  });

  it('turns a run that throws instead of rejecting into a rejection of its batch', async () => {
    const batcher = new Batcher({
      maxBatch: 1,
      maxDelayMs: 0,
      layout,
      run: () => {
        throw new Error('sync');
      },
    });
    await expect(batcher.submit(request([1]))).rejects.toThrow('sync');
  });

  it('refuses a request that does not fit the layout alone, at submit', async () => {
    const { calls, batcher } = setup({ maxBatch: 2 });
    const good = batcher.submit(request([1]));
    await expect(batcher.submit({ x: request([2])['x'] as Tensor })).rejects.toMatchObject({ code: 'EAI_BATCH_INPUT', message: expect.stringContaining("needs input 'k'") });
    await expect(batcher.submit({ ...request([2]), z: k(1) })).rejects.toBeInstanceOf(BatchError);
    expect(batcher.stats().waiting).toBe(1);
    void batcher.submit(request([3]));
    calls[0]?.resolve();
    expect(ys(await good)).toEqual([10]);
  });

  it('never grows a batch past maxBatch: an overflowing request sends what waits; an oversized one runs alone', () => {
    const { calls, batcher } = setup({ maxBatch: 4 });
    void batcher.submit(request([1, 2, 3]));
    void batcher.submit(request([4, 5])); // 3 + 2 > 4: the 3 go now, the 2 wait
    expect(calls.map((c) => c.rows)).toEqual([3]);
    void batcher.submit(request([6, 7, 8, 9, 10, 11])); // 2 + 6 > 4: the 2 go; 6 ≥ 4: sent at once
    expect(calls.map((c) => c.rows)).toEqual([3, 2, 6]);
    expect(batcher.stats().sizes).toEqual({ 2: 1, 3: 1, 6: 1 });
  });

  it('close() sends what waits and resolves when every batch has settled; submit afterwards fails', async () => {
    const { time, calls, batcher } = setup({ maxBatch: 4 });
    const a = batcher.submit(request([1]));
    let closed = false;
    const closing = batcher.close().then(() => (closed = true));
    expect(calls).toHaveLength(1);
    expect(time.armed).toBe(0);
    await tick();
    expect(closed).toBe(false);
    calls[0]?.resolve();
    expect(ys(await a)).toEqual([10]);
    await closing;
    expect(closed).toBe(true);
    expect(batcher.close()).toBe(batcher.close()); // idempotent: the first call decides
    await expect(batcher.submit(request([2]))).rejects.toMatchObject({ code: 'EAI_BATCH_CLOSED' });
    expect(calls).toHaveLength(1);
  });

  it('close(error) rejects what waits with the error and lets running batches finish', async () => {
    const { time, calls, batcher } = setup({ maxBatch: 2 });
    const running = [batcher.submit(request([1])), batcher.submit(request([2]))];
    const waiting = batcher.submit(request([3]));
    const stopped = new Error('service stopped');
    const closing = batcher.close(stopped);
    await expect(waiting).rejects.toBe(stopped);
    expect(time.armed).toBe(0);
    calls[0]?.resolve();
    expect(await Promise.all(running.map(async (p) => ys(await p)))).toEqual([[10], [20]]);
    await closing;
    expect(calls).toHaveLength(1);
  });

  it('checks its options', () => {
    expect(() => new Batcher({ maxBatch: 0, maxDelayMs: 1, layout, run: async () => ({}) })).toThrow(expect.objectContaining({ code: 'EAI_BATCH_OPTIONS' }));
    expect(() => new Batcher({ maxBatch: 2.5, maxDelayMs: 1, layout, run: async () => ({}) })).toThrow(/maxBatch/u);
    expect(() => new Batcher({ maxBatch: 2, maxDelayMs: -1, layout, run: async () => ({}) })).toThrow(/maxDelayMs/u);
    expect(() => new Batcher({ maxBatch: 2, maxDelayMs: Number.NaN, layout, run: async () => ({}) })).toThrow(/maxDelayMs/u);
  });

  it('settles every request exactly once, with its own answer, whatever the order of events', async () => {
    type Op = { kind: 'submit'; rows: number; key: number; deadline: number | null } | { kind: 'advance'; ms: number } | { kind: 'settle'; which: number; ok: boolean } | { kind: 'flush' };
    const op = fc.oneof(
      { weight: 5, arbitrary: fc.record({ kind: fc.constant('submit' as const), rows: fc.integer({ min: 1, max: 5 }), key: fc.integer({ min: 0, max: 2 }), deadline: fc.option(fc.integer({ min: -5, max: 40 })) }) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant('advance' as const), ms: fc.integer({ min: 0, max: 15 }) }) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant('settle' as const), which: fc.nat(), ok: fc.boolean() }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('flush' as const) }) },
    );
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 40 }), fc.boolean(), fc.integer({ min: 1, max: 6 }), async (ops: Op[], closeWithError, maxBatch) => {
        const { time, calls, batcher } = setup({ maxBatch, maxDelayMs: 7, estimateMs: (rows) => rows });
        const outcomes: { expected: number[]; settled: number; value?: number[]; error?: unknown }[] = [];
        let next = 0;
        const open = new Set<Call>();
        const failure = new Error('run failed');
        const seen = new Set<Call>();
        const track = (): void => {
          for (const c of calls) {
            if (!seen.has(c)) open.add(c);
            seen.add(c);
          }
        };
        for (const o of ops) {
          if (o.kind === 'submit') {
            const values = Array.from({ length: o.rows }, () => next++);
            const outcome: (typeof outcomes)[number] = { expected: values.map((v) => v * 10 + o.key), settled: 0 };
            outcomes.push(outcome);
            batcher.submit(request(values, o.key), o.deadline === null ? {} : { deadline: time.t + o.deadline }).then(
              (out) => ((outcome.settled += 1), (outcome.value = ys(out))),
              (error: unknown) => ((outcome.settled += 1), (outcome.error = error)),
            );
          } else if (o.kind === 'advance') time.advance(o.ms);
          else if (o.kind === 'flush') batcher.flush();
          else {
            track();
            const c = [...open][o.which % Math.max(1, open.size)];
            if (c !== undefined) {
              open.delete(c);
              if (o.ok) c.resolve();
              else c.reject(failure);
            }
          }
          track();
          for (const c of calls) expect(c.rows).toBeLessThanOrEqual(Math.max(maxBatch, 5));
        }
        const stopped = new Error('stopped');
        const closing = batcher.close(closeWithError ? stopped : undefined);
        track();
        for (const c of open) c.resolve();
        await closing;
        await tick();
        for (const outcome of outcomes) {
          expect(outcome.settled).toBe(1);
          if (outcome.value !== undefined) expect(outcome.value).toEqual(outcome.expected);
          else expect([failure, stopped]).toContain(outcome.error);
        }
        const stats = batcher.stats();
        expect(stats.waiting).toBe(0);
        expect(stats.inFlight).toBe(0);
        expect(stats.requests).toBe(outcomes.filter((o) => o.error !== stopped).length);
        expect(time.armed).toBe(0);
      }),
      { numRuns: 300 },
    );
  });
});

describe('Batcher on Silero VAD (real onnxruntime)', () => {
  it('answers concurrent submitters from one run, each with what stack/split gives', async () => {
    const repo = path.resolve(import.meta.dirname, '../../../..');
    const cpu = { id: 'cpu', kind: 'cpu', name: 'cpu', formats: ['onnx'], status: { state: 'ready' } } as const;
    const model = await createOnnxruntimeEngine().load({ path: path.join(repo, 'models/zoo/silero-vad-v4/silero_vad.onnx'), format: 'onnx' }, cpu, { threads: 1, executor: 'inline' });
    try {
      const silero = batchLayout(model.inputs, model.outputs, 'silero_vad.onnx');
      const audio = (await readNpy(path.join(repo, 'test/fixtures/inputs/vad-speech.npy'))).data as Float32Array;
      const sr = new Tensor('int64', [], BigInt64Array.of(16000n));
      const requests: Feeds[] = Array.from({ length: 6 }, (_, i) => ({
        input: new Tensor('float32', [1, 512], audio.slice((20 + 7 * i) * 512, (21 + 7 * i) * 512)),
        sr,
        h: new Tensor('float32', [2, 1, 64], Float32Array.from({ length: 128 }, (_, j) => Math.sin(i + j) / 4)),
        c: new Tensor('float32', [2, 1, 64], Float32Array.from({ length: 128 }, (_, j) => Math.cos(i * j) / 4)),
      }));
      const sizes: number[] = [];
      const batcher = new Batcher({ maxBatch: 6, maxDelayMs: 1000, layout: silero, run: (feeds, rows) => (sizes.push(rows), model.run(feeds)) });
      const answers = await Promise.all(requests.map((r) => batcher.submit(r)));
      expect(sizes).toEqual([6]);
      const { feeds, sizes: rows } = stack(requests, silero);
      const direct = split(await model.run(feeds), rows, silero);
      answers.forEach((a, i) => {
        for (const name of ['output', 'hn', 'cn']) expect(Buffer.compare((a[name] as Tensor).bytes(), (direct[i]?.[name] as Tensor).bytes())).toBe(0);
        expect((a['hn'] as Tensor).shape).toEqual([2, 1, 64]);
      });
      await batcher.close();
    } finally {
      await model.dispose();
    }
  });
});
