import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOnnxruntimeEngine } from '../../../../drivers/engines/onnxruntime.js';
import { createTfliteEngine } from '../../../../drivers/engines/tflite.js';
import { detectModel } from '../../../../drivers/hal/model-format.js';
import type { DeviceInfo, LoadedModel, Outputs } from '../../../../drivers/hal/types.js';
import { readNpy } from '../../../../drivers/tensor/npy.js';

// BlazeFace (MediaPipe's front / short-range face detector) through two engines: the ONNX
// conversion in models/zoo/blazeface-front-128 on onnxruntime, and MediaPipe's own .tflite in
// models/zoo/blazeface-short-range-tflite on TFLite (with XNNPACK, and with TFLite's own kernels).
// Both take float32 [1, 128, 128, 3] RGB in [-1, 1]: the same .npy files feed both.
//
// Output layouts differ and are mapped by anchor: ONNX splits the 896 anchors into the 16x16 grid
// (512, `Identity:0` logits, `Identity_2:0` boxes) and the 8x8 grid (384, `Identity_1:0`,
// `Identity_3:0`); TFLite concatenates them in the same order (`classificators` [1, 896, 1],
// `regressors` [1, 896, 16]). So anchor i is row i of the concatenation in both.
//
// Tolerances: the two files hold the same trained weights (the ONNX file is a conversion of this
// network), so they differ only in float32 summation order (MLAS vs XNNPACK vs TFLite kernels).
// Measured over all 896 anchors on both photos: face scores at most 6.2e-7 apart, logits 2.5e-4,
// box and keypoint offsets 1.1e-4 px. Asserted: scores 1e-5, logits 2e-3, offsets 2e-3 px, about
// ten times the measured worst case, and still 10^4 below anything that could move a detection
// across the usual 0.5 threshold or a box by a visible fraction of a pixel.

const repo = path.resolve(import.meta.dirname, '../../../..');
const ONNX = path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx');
const TFLITE = path.join(repo, 'models/zoo/blazeface-short-range-tflite/face_detection_short_range.tflite');
const inputs = (name: string): string => path.join(repo, 'test/fixtures/inputs', name);
const cpu: DeviceInfo = { id: 'cpu:0', kind: 'cpu', name: 'cpu', formats: ['onnx', 'tflite'], status: { state: 'ready' } };

const SCORE_TOLERANCE = 1e-5;
const LOGIT_TOLERANCE = 2e-3;
const OFFSET_TOLERANCE_PX = 2e-3;

const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

/** Per-anchor logits [896] and box + keypoint offsets [896 * 16], in anchor order. */
interface Anchors {
  readonly logits: Float32Array;
  readonly offsets: Float32Array;
}

function concat(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function fromOnnx(out: Outputs): Anchors {
  const f = (name: string): Float32Array => out[name]?.data as Float32Array;
  return { logits: concat(f('Identity:0'), f('Identity_1:0')), offsets: concat(f('Identity_2:0'), f('Identity_3:0')) };
}

function fromTflite(out: Outputs): Anchors {
  return { logits: out['classificators']?.data as Float32Array, offsets: out['regressors']?.data as Float32Array };
}

function worst(a: Float32Array, b: Float32Array, map: (x: number) => number = (x) => x): number {
  expect(a.length).toBe(b.length);
  let w = 0;
  for (let i = 0; i < a.length; i++) w = Math.max(w, Math.abs(map(a[i] as number) - map(b[i] as number)));
  return w;
}

function best(logits: Float32Array): number {
  let i = 0;
  for (let j = 1; j < logits.length; j++) if ((logits[j] as number) > (logits[i] as number)) i = j;
  return i;
}

describe('cross-engine: BlazeFace front on onnxruntime and on TFLite agree anchor by anchor', () => {
  let onnx: LoadedModel;
  let xnnpack: LoadedModel;
  let plain: LoadedModel;
  beforeAll(async () => {
    onnx = await createOnnxruntimeEngine().load(await detectModel(ONNX), cpu, { threads: 1 });
    const tflite = createTfliteEngine();
    xnnpack = await tflite.load(await detectModel(TFLITE), cpu, { threads: 1 });
    plain = await tflite.load(await detectModel(TFLITE), cpu, { threads: 1, engine: { xnnpack: false } });
  });
  afterAll(async () => {
    await Promise.all([onnx?.dispose(), xnnpack?.dispose(), plain?.dispose()]);
  });

  it('runs on the backends the comparison is about', () => {
    expect([onnx.backend, xnnpack.backend, plain.backend]).toEqual(['cpu', 'cpu+xnnpack', 'cpu']);
  });

  it.each([
    ['blazeface128-face.npy', 305, 0.9549],
    ['blazeface128-noface.npy', 397, 0.1218],
  ])('%s: same best anchor, same scores and boxes within tolerance', async (file, anchor, score) => {
    const x = await readNpy(inputs(file));
    const reference = fromOnnx(await onnx.run({ 'input:0': x }));
    expect(best(reference.logits)).toBe(anchor);
    expect(sigmoid(reference.logits[anchor] as number)).toBeCloseTo(score, 3);
    for (const model of [xnnpack, plain]) {
      const other = fromTflite(await model.run({ input: x }));
      expect(best(other.logits)).toBe(anchor);
      expect(worst(reference.logits, other.logits, sigmoid)).toBeLessThan(SCORE_TOLERANCE);
      expect(worst(reference.logits, other.logits)).toBeLessThan(LOGIT_TOLERANCE);
      expect(worst(reference.offsets, other.offsets)).toBeLessThan(OFFSET_TOLERANCE_PX);
    }
  });
});
