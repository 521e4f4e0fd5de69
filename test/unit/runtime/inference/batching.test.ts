import { randomFillSync } from 'node:crypto';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AiosError } from '../../../../drivers/errors.js';
import { createOnnxruntimeEngine } from '../../../../drivers/engines/onnxruntime.js';
import type { DeviceInfo, Feeds, LoadedModel, Outputs, TensorSpec } from '../../../../drivers/hal/types.js';
import { readNpy } from '../../../../drivers/tensor/npy.js';
import { shapeSize, Tensor, type DType } from '../../../../drivers/tensor/tensor.js';
import { BatchError, batchKey, batchLayout, rowsOf, split, stack, type BatchLayout } from '../../../../runtime/inference/batching.js';

const repo = path.resolve(import.meta.dirname, '../../../..');
const SILERO = path.join(repo, 'models/zoo/silero-vad-v4/silero_vad.onnx');
const BLAZEFACE = path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx');
const cpu: DeviceInfo = { id: 'cpu', kind: 'cpu', name: 'cpu', formats: ['onnx'], status: { state: 'ready' } };

function random<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D> {
  const t = Tensor.zeros(dtype, shape);
  randomFillSync(t.bytes());
  return t;
}

function spec(name: string, dtype: DType, dims: readonly (number | string)[]): TensorSpec {
  const named = dims.some((d) => typeof d === 'string');
  return { name, dtype, shape: dims.map((d) => (typeof d === 'number' ? d : null)), ...(named ? { dimNames: dims.map((d) => (typeof d === 'string' ? d : null)) } : {}) };
}

const bytesEqual = (a: Tensor, b: Tensor): boolean => a.dtype === b.dtype && a.shape.join() === b.shape.join() && Buffer.compare(a.bytes(), b.bytes()) === 0;

describe('batchLayout', () => {
  it('finds the batch dimension of Silero VAD from the names onnxruntime reports', async () => {
    const model = await createOnnxruntimeEngine().load({ path: SILERO, format: 'onnx' }, cpu, { threads: 1, executor: 'inline' });
    try {
      const layout = batchLayout(model.inputs, model.outputs, 'silero_vad.onnx');
      expect(layout).toEqual({ model: 'silero_vad.onnx', symbol: 'batch', inputs: { input: 0, sr: null, h: 1, c: 1 }, outputs: { output: 0, hn: 1, cn: 1 } });
      expect(Object.isFrozen(layout) && Object.isFrozen(layout.inputs)).toBe(true);
    } finally {
      await model.dispose();
    }
  });

  it('refuses BlazeFace (fixed batch of 1) and says what to do', async () => {
    const model = await createOnnxruntimeEngine().load({ path: BLAZEFACE, format: 'onnx' }, cpu, { threads: 1, executor: 'inline' });
    try {
      let error: unknown;
      try {
        batchLayout(model.inputs, model.outputs, 'face_detection_front_128x128_barracuda.onnx');
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(BatchError);
      expect(error).toBeInstanceOf(AiosError);
      expect(error).toMatchObject({ code: 'EAI_BATCH_UNSUPPORTED' });
      const message = (error as Error).message;
      expect(message).toContain('Model face_detection_front_128x128_barracuda.onnx cannot be batched');
      expect(message).toContain("'input:0' float32[1, 128, 128, 3]");
      expect(message).toContain("'Identity:0' float32[1, 512, 1]");
      expect(message).toContain('Re-export it with a named dynamic batch dimension');
      expect(message).toContain('maxBatch 1');
    } finally {
      await model.dispose();
    }
  });

  it('prefers a conventional batch name, takes an explicit symbol, refuses one that does not qualify', () => {
    const inputs = [spec('x', 'float32', ['unk__7', 'N', 3]), spec('scale', 'float32', [])];
    const outputs = [spec('y', 'float32', ['unk__7', 'N'])];
    expect(batchLayout(inputs, outputs, 'm').symbol).toBe('N');
    expect(batchLayout(inputs, outputs, 'm', 'unk__7')).toMatchObject({ symbol: 'unk__7', inputs: { x: 0, scale: null }, outputs: { y: 0 } });
    expect(() => batchLayout(inputs, outputs, 'm', 'seq')).toThrow(/no batch dimension named 'seq'.*Names that qualify: unk__7, N/u);
    // onnxruntime's generated name wins over an arbitrary one; then the name most often on axis 0.
    expect(batchLayout([spec('x', 'float32', ['a', 'unk__1'])], [spec('y', 'float32', ['a', 'unk__1'])], 'm').symbol).toBe('unk__1');
    expect(batchLayout([spec('x', 'float32', ['q', 'p'])], [spec('y', 'float32', ['p', 'q']), spec('z', 'float32', ['p', 'q'])], 'm').symbol).toBe('p');
  });

  it('needs the name once in every output and in an input', () => {
    // Only in the inputs (Silero's `sequence`): not a batch dimension.
    expect(() => batchLayout([spec('x', 'float32', ['seq', 4])], [spec('y', 'float32', [1, 4])], 'm')).toThrow(BatchError);
    // Twice in one tensor (a square dynamic matrix): which axis is the batch is ambiguous.
    expect(() => batchLayout([spec('x', 'float32', ['n', 'n'])], [spec('y', 'float32', ['n'])], 'm')).toThrow(/cannot be batched/u);
    // Missing from one output.
    expect(() => batchLayout([spec('x', 'float32', ['b', 4])], [spec('y', 'float32', ['b']), spec('z', 'float32', [4])], 'm')).toThrow(/'z' float32\[4\]/u);
  });
});

describe('stack and split', () => {
  const DT: DType[] = ['float32', 'float16', 'float64', 'int8', 'uint8', 'int32', 'int64', 'uint64', 'bool'];
  const caseArb = fc
    .record({
      dtype: fc.constantFrom(...DT),
      dims: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 1, maxLength: 4 }),
      axisSeed: fc.nat(),
      rows: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 1, maxLength: 5 }),
    })
    .map(({ dtype, dims, axisSeed, rows }) => ({ dtype, dims, axis: axisSeed % dims.length, rows }));

  it('stacks along any axis exactly as index arithmetic says, and split gives every request back bit for bit', () => {
    fc.assert(
      fc.property(caseArb, ({ dtype, dims, axis, rows }) => {
        const layout: BatchLayout = { model: 'm', symbol: 'b', inputs: { x: axis, k: null }, outputs: { x: axis } };
        const k = random('int64', [2]);
        const requests = rows.map((n) => ({ x: random(dtype, dims.map((d, i) => (i === axis ? n : d))), k }));
        const { feeds, sizes } = stack(requests, layout);
        expect(sizes).toEqual(rows);
        expect(feeds['k']).toBe(k);
        const x = feeds['x'] as Tensor;
        const total = rows.reduce((a, b) => a + b, 0);
        expect(x.shape).toEqual(dims.map((d, i) => (i === axis ? total : d)));

        // Reference: every element of the batch, found through its multi-index.
        const starts = rows.map((_, r) => rows.slice(0, r).reduce((a, b) => a + b, 0));
        const element = (t: Tensor, i: number): bigint | number => (t.data as unknown as ArrayLike<number | bigint>)[i] as number | bigint;
        for (let flat = 0; flat < x.size; flat++) {
          const idx: number[] = [];
          let rest = flat;
          for (let d = x.rank - 1; d >= 0; d--) {
            const size = x.shape[d] as number;
            idx[d] = rest % size;
            rest = Math.floor(rest / size);
          }
          const at = idx[axis] as number;
          const r = starts.filter((s) => s <= at).length - 1;
          const src = requests[r]?.x as Tensor;
          const local = idx.map((v, d) => (d === axis ? v - (starts[r] as number) : v));
          const srcFlat = local.reduce((acc, v, d) => acc * (src.shape[d] as number) + v, 0);
          const [a, b] = [element(x, flat), element(src, srcFlat)];
          if (!(Object.is(a, b) || (typeof a === 'number' && Number.isNaN(a) && Number.isNaN(b)))) throw new Error(`element ${flat} differs`);
        }

        const pieces = split({ x }, sizes, layout);
        expect(pieces).toHaveLength(rows.length);
        pieces.forEach((p, r) => {
          expect(bytesEqual(p['x'] as Tensor, requests[r]?.x as Tensor)).toBe(true);
          if (rows.length > 1) expect((p['x'] as Tensor).data.buffer).not.toBe(x.data.buffer); // each piece owns its memory
        });
      }),
      { numRuns: 300 },
    );
  });

  it('passes a single request through without copying', () => {
    const layout: BatchLayout = { model: 'm', symbol: 'b', inputs: { x: 0 }, outputs: { y: 1 } };
    const request = { x: random('float32', [2, 3]) };
    const { feeds, sizes } = stack([request], layout);
    expect(feeds).toBe(request);
    expect(sizes).toEqual([2]);
    const outputs = { y: random('float32', [4, 2]) };
    expect(split(outputs, [2], layout)[0]).toBe(outputs);
  });

  it('refuses requests that do not fit the layout or each other', () => {
    const layout: BatchLayout = { model: 'vad.onnx', symbol: 'batch', inputs: { x: 0, h: 1, sr: null }, outputs: { y: 0 } };
    const sr = new Tensor('int64', [], BigInt64Array.of(16000n));
    const ok = { x: random('float32', [1, 8]), h: random('float32', [2, 1, 4]), sr };
    expect(rowsOf(ok, layout)).toBe(1);
    const code = (fn: () => unknown): string | undefined => {
      try {
        fn();
      } catch (e) {
        return (e as BatchError).code;
      }
      return undefined;
    };
    expect(() => rowsOf({ x: ok.x, h: ok.h }, layout)).toThrow("Model vad.onnx needs input 'sr' in every request");
    expect(() => rowsOf({ ...ok, extra: sr }, layout)).toThrow("has no input named 'extra'");
    expect(() => rowsOf({ ...ok, h: random('float32', [2, 3, 4]) }, layout)).toThrow("1 in 'x' and 3 in 'h'");
    expect(() => rowsOf({ ...ok, h: random('float32', [2]) }, layout)).toThrow('along axis 1');
    expect(() => rowsOf({ x: random('float32', [0, 8]), h: random('float32', [2, 0, 4]), sr }, layout)).toThrow('0 rows');
    expect(code(() => stack([ok, { ...ok, sr: new Tensor('int64', [], BigInt64Array.of(8000n)) }], layout))).toBe('EAI_BATCH_INPUT');
    expect(() => stack([ok, { ...ok, x: random('float32', [1, 9]) }], layout)).toThrow('request 0 has float32[1, 8] and request 1 has float32[1, 9]');
    expect(() => stack([ok, { ...ok, x: random('float64', [1, 8]) }], layout)).toThrow(BatchError);
    expect(code(() => stack([], layout))).toBe('EAI_BATCH_INPUT');
  });

  it('refuses outputs that do not split', () => {
    const layout: BatchLayout = { model: 'm.onnx', symbol: 'batch', inputs: { x: 0 }, outputs: { y: 0, z: 1 } };
    expect(() => split({ y: random('float32', [3, 2]), z: random('float32', [2, 3]) }, [1, 1], layout)).toThrow(/batch of 2 rows but output 'y' has shape \[3, 2\]/u);
    expect(() => split({ y: random('float32', [2, 2]), z: random('float32', [2]) }, [1, 1], layout)).toThrow(/with no axis 1/u);
    expect(() => split({ w: random('float32', [2]) }, [1, 1], layout)).toThrow(expect.objectContaining({ code: 'EAI_BATCH_OUTPUT' }));
  });

  it('keys requests by what must be equal to share a batch', () => {
    const layout: BatchLayout = { model: 'm', symbol: 'b', inputs: { x: 0, sr: null, big: null }, outputs: {} };
    const sr = (v: bigint): Tensor => new Tensor('int64', [], BigInt64Array.of(v));
    const big = random('float32', [1000]);
    const key = (f: Feeds): string => batchKey(f, layout);
    const base = key({ x: random('float32', [1, 8]), sr: sr(16000n), big });
    expect(key({ x: random('float32', [3, 8]), sr: sr(16000n), big: big.clone() })).toBe(base); // rows and values of x do not matter
    expect(key({ x: random('float32', [1, 8]), sr: sr(8000n), big })).not.toBe(base);
    expect(key({ x: random('float32', [1, 9]), sr: sr(16000n), big })).not.toBe(base);
    expect(key({ x: random('float64', [1, 8]), sr: sr(16000n), big })).not.toBe(base);
    const other = big.clone();
    (other.data as Float32Array)[999] = -1;
    expect(key({ x: random('float32', [1, 8]), sr: sr(16000n), big: other })).not.toBe(base);
    // Shared memory (frames from a worker pool) keys the same as ordinary memory.
    const shared = new Float32Array(new SharedArrayBuffer(4000));
    shared.set(big.data);
    expect(key({ x: random('float32', [1, 8]), sr: sr(16000n), big: new Tensor('float32', [1000], shared) })).toBe(base);
  });
});

/**
 * Silero VAD through the real onnxruntime engine: N different frames of real speech, each with the
 * LSTM state it has at that point of the recording.
 *
 * Measured (onnxruntime-node 1.30, CPU EP, 1 thread, x86-64 with AVX-512): a request's result is
 * bit-for-bit the same in every batch of 2 or more rows, whatever its companions, position or the
 * batch size; but a batch of 1 differs in the last bits (up to 1.2e-7 in `output`, 3e-6 in `hn`,
 * 8.5e-6 in `cn`; about a quarter of the state elements). The cause is MLAS, not the graph (every
 * graph optimisation level gives the same): MlasSgemmOperation sends M == 1 GEMMs (the LSTM's
 * recurrent product when batch = 1) to its dedicated KernelM1 / KernelM1TransposeB routines, which
 * sum in a different order than the blocked kernel used for M ≥ 2 (onnxruntime
 * core/mlas/lib/sgemm.cpp, "Handle the special case of a small M").
 */
describe('batching preserves per-request results (Silero VAD, real onnxruntime)', () => {
  const N = 8;
  let model: LoadedModel;
  let layout: BatchLayout;
  const requests: Feeds[] = [];
  const sr = new Tensor('int64', [], BigInt64Array.of(16000n));

  beforeAll(async () => {
    model = await createOnnxruntimeEngine().load({ path: SILERO, format: 'onnx' }, cpu, { threads: 1, executor: 'inline' });
    layout = batchLayout(model.inputs, model.outputs, 'silero_vad.onnx');
    const audio = (await readNpy(path.join(repo, 'test/fixtures/inputs/vad-speech.npy'))).data as Float32Array;
    let h = Tensor.zeros('float32', [2, 1, 64]);
    let c = Tensor.zeros('float32', [2, 1, 64]);
    // Frames 10, 16, 22, ...: room tone, speech onset and speech, each with the state it has there.
    for (let f = 0; requests.length < N; f++) {
      const input = new Tensor('float32', [1, 512], audio.slice(f * 512, (f + 1) * 512));
      if (f >= 10 && (f - 10) % 6 === 0) requests.push({ input, sr, h, c });
      const out = await model.run({ input, sr, h, c });
      h = out['hn'] as Tensor<'float32'>;
      c = out['cn'] as Tensor<'float32'>;
    }
  });
  afterAll(async () => model.dispose());

  const runBatch = async (batch: readonly Feeds[]): Promise<Outputs[]> => {
    const { feeds, sizes } = stack(batch, layout);
    return split(await model.run(feeds), sizes, layout);
  };

  it('gives every request the same bits in any batch of two or more, and within 1e-5 of running it alone', async () => {
    const batched = await runBatch(requests);
    const reversed = (await runBatch([...requests].reverse())).reverse();
    let maxAbs = { output: 0, hn: 0, cn: 0 };
    let speech = 0;
    for (let i = 0; i < N; i++) {
      const request = requests[i] as Feeds;
      // The same request beside a copy of itself: a batch of 2, so the same GEMM kernels as a batch of N.
      const [pair] = await runBatch([request, request]);
      const [beside] = await runBatch([requests[(i + 3) % N] as Feeds, request]).then((r) => r.slice(1));
      const [alone] = await runBatch([request]);
      for (const name of ['output', 'hn', 'cn'] as const) {
        const b = batched[i]?.[name] as Tensor<'float32'>;
        expect(bytesEqual(b, pair?.[name] as Tensor), `${name} of request ${i}: batch of ${N} vs batch of 2`).toBe(true);
        expect(bytesEqual(b, beside?.[name] as Tensor), `${name} of request ${i}: batch of ${N} vs beside another`).toBe(true);
        expect(bytesEqual(b, reversed[i]?.[name] as Tensor), `${name} of request ${i}: position in the batch`).toBe(true);
        const a = alone?.[name] as Tensor<'float32'>;
        expect(a.shape).toEqual(b.shape);
        for (let j = 0; j < a.size; j++) maxAbs = { ...maxAbs, [name]: Math.max(maxAbs[name], Math.abs((a.data[j] as number) - (b.data[j] as number))) };
      }
      if (((batched[i]?.['output'] as Tensor<'float32'>).data[0] as number) > 0.5) speech++;
    }
    // The batch of 1 takes MLAS's M == 1 GEMM path (see above): last-bit differences, bounded.
    expect(maxAbs.output).toBeLessThanOrEqual(1e-6);
    expect(maxAbs.hn).toBeLessThanOrEqual(2e-5);
    expect(maxAbs.cn).toBeLessThanOrEqual(2e-5);
    expect(speech).toBeGreaterThan(2); // the frames are real speech, not only room tone
  });

  it('splits requests of several rows back to the right owners', async () => {
    // Request 0 + 1 as one two-row request, then 2 and 3 alone: rows land where they came from.
    const [a, b] = [requests[0] as Feeds, requests[1] as Feeds];
    const two = (await runBatch([a, b])) as Outputs[];
    const merged = stack([a, b], layout).feeds;
    const [m, c, d] = await runBatch([merged, requests[2] as Feeds, requests[3] as Feeds]);
    const single = await runBatch([requests[2] as Feeds, requests[3] as Feeds]);
    expect((m?.['output'] as Tensor).shape).toEqual([2, 1]);
    expect((m?.['hn'] as Tensor).shape).toEqual([2, 2, 64]);
    const back = split(m as Outputs, [1, 1], layout);
    for (const name of ['output', 'hn', 'cn']) {
      expect(bytesEqual(back[0]?.[name] as Tensor, two[0]?.[name] as Tensor)).toBe(true);
      expect(bytesEqual(back[1]?.[name] as Tensor, two[1]?.[name] as Tensor)).toBe(true);
      expect(bytesEqual(c?.[name] as Tensor, single[0]?.[name] as Tensor)).toBe(true);
      expect(bytesEqual(d?.[name] as Tensor, single[1]?.[name] as Tensor)).toBe(true);
    }
    expect(shapeSize((c?.['hn'] as Tensor).shape)).toBe(128);
  });
});
