import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOnnxruntimeEngine } from '../../../../../../drivers/engines/onnxruntime.js';
import { createTfliteEngine } from '../../../../../../drivers/engines/tflite.js';
import { detectModel } from '../../../../../../drivers/hal/model-format.js';
import type { DeviceInfo, LoadedModel, Outputs } from '../../../../../../drivers/hal/types.js';
import { readNpy } from '../../../../../../drivers/tensor/npy.js';
import { PortTypeMismatch } from '../../../../../../runtime/pipeline/definition.js';
import { decodeBlazeface } from '../../../../../../runtime/pipeline/nodes/stages/decode-blazeface.js';
import { iou, nonMaxSuppression, type RelativeBox } from '../../../../../../runtime/pipeline/nodes/stages/decode-detections.js';
import type { Detection, Detections } from '../../../../../../runtime/pipeline/payloads.js';
import { defaults, startStage } from './harness.js';

// Known answers (test/fixtures/inputs/README.md): the face photo's best anchor is 305 with score
// 0.9549 and box centre (0.511, 0.590), width 0.198 of the 128 px input; the no-face photo peaks
// at 0.1218. The 256 px back model (same answers as TF.js human-blazeface): centre (0.522, 0.585),
// width 0.216.

const repo = path.resolve(import.meta.dirname, '../../../../../..');
const zoo = (p: string): string => path.join(repo, 'models/zoo', p);
const input = (name: string): string => path.join(repo, 'test/fixtures/inputs', name);
const cpu: DeviceInfo = { id: 'cpu:0', kind: 'cpu', name: 'cpu', formats: ['onnx', 'tflite'], status: { state: 'ready' } };

async function decode(outputs: Outputs, params: object = {}): Promise<Detections> {
  const s = await startStage(decodeBlazeface, params);
  await s.send(outputs);
  return s.emitted[0]?.value as Detections;
}

const centre = (d: Detection): [number, number] => [d.x + d.width / 2, d.y + d.height / 2];

describe('decode.blazeface on the real front-128 ONNX model', () => {
  let front: LoadedModel;
  let face: Outputs;
  let noface: Outputs;
  beforeAll(async () => {
    front = await createOnnxruntimeEngine().load(await detectModel(zoo('blazeface-front-128/face_detection_front_128x128_barracuda.onnx')), cpu, { threads: 1 });
    face = await front.run({ 'input:0': await readNpy(input('blazeface128-face.npy')) });
    noface = await front.run({ 'input:0': await readNpy(input('blazeface128-noface.npy')) });
  });
  afterAll(async () => front?.dispose());

  it('finds exactly one face where the fixture says, with its keypoints in place', async () => {
    const d = await decode(face);
    expect([d.imageWidth, d.imageHeight]).toEqual([128, 128]);
    expect(d.boxes).toHaveLength(1);
    const f = d.boxes[0] as Detection;
    expect(f.score).toBeCloseTo(0.9549, 3);
    const [cx, cy] = centre(f);
    // Weighted NMS averages the neighbouring anchors: measured (65.96, 75.37), 25.69 px wide.
    expect(Math.abs(cx - 0.511 * 128)).toBeLessThan(1);
    expect(Math.abs(cy - 0.59 * 128)).toBeLessThan(1);
    expect(Math.abs(f.width - 0.198 * 128)).toBeLessThan(1);
    expect(f.height).toBeCloseTo(f.width, 2);
    const k = Object.fromEntries((f.keypoints ?? []).map((p) => [p.name, p]));
    expect(Object.keys(k)).toEqual(['right_eye', 'left_eye', 'nose_tip', 'mouth_center', 'right_ear_tragion', 'left_ear_tragion']);
    // Eyes above the nose above the mouth, all inside the box.
    expect(k['right_eye']!.y).toBeLessThan(k['nose_tip']!.y);
    expect(k['nose_tip']!.y).toBeLessThan(k['mouth_center']!.y);
    for (const p of f.keypoints ?? []) {
      expect(p.x).toBeGreaterThanOrEqual(f.x - 1);
      expect(p.x).toBeLessThanOrEqual(f.x + f.width + 1);
    }
  });

  it('plain NMS keeps the best anchor\'s own box: the fixture values exactly', async () => {
    const f = (await decode(face, { nms: 'plain' })).boxes[0] as Detection;
    const [cx, cy] = centre(f);
    expect(cx / 128).toBeCloseTo(0.511, 3);
    expect(cy / 128).toBeCloseTo(0.59, 2);
    expect(f.width / 128).toBeCloseTo(0.198, 3);
  });

  it('finds no face in the fruit photo, even at MediaPipe\'s lower 0.5 threshold', async () => {
    expect((await decode(noface)).boxes).toEqual([]);
    expect((await decode(noface, { scoreThreshold: 0.5 })).boxes).toEqual([]);
    expect((await decode(noface, { scoreThreshold: 0.1 })).boxes[0]?.score).toBeCloseTo(0.1218, 3);
  });

  it('at 0.5 a blurred spectator on the left also passes (0.505), which is why the default is 0.75', async () => {
    const d = await decode(face, { scoreThreshold: 0.5 });
    expect(d.boxes.map((b) => Number(b.score.toFixed(3)))).toEqual([0.955, 0.505]);
    expect(centre(d.boxes[1] as Detection)[0]).toBeLessThan(40);
  });

  it('scales boxes to the frame the input was made from', async () => {
    // The fixture is a 160 px crop scaled to 128: boxes in crop pixels are 1.25 times larger.
    const small = (await decode(face)).boxes[0] as Detection;
    const big = await decode(face, { imageWidth: 160, imageHeight: 160 });
    expect([big.imageWidth, big.imageHeight]).toEqual([160, 160]);
    expect(big.boxes[0]?.x).toBeCloseTo(small.x * 1.25, 9);
    expect(big.boxes[0]?.width).toBeCloseTo(small.width * 1.25, 9);
    expect(big.boxes[0]?.keypoints?.[0]?.y).toBeCloseTo((small.keypoints?.[0]?.y ?? 0) * 1.25, 9);
  });

  it('names the outputs it expected and the ones the model has', async () => {
    const s = await startStage(decodeBlazeface, { scores: ['logits'] });
    await expect(s.send(face)).rejects.toMatchObject({ code: 'EAI_STAGE_TENSOR_MISSING', message: expect.stringContaining('Identity:0, Identity_1:0, Identity_2:0, Identity_3:0') });
    await expect(s.send(face['Identity:0'])).rejects.toMatchObject({ code: 'EAI_STAGE_INPUT' });
  });

  it('accepts output names without the :0 suffix (as TF.js reports them)', async () => {
    const renamed = Object.fromEntries(Object.entries(face).map(([k, v]) => [k.replace(':0', ''), v]));
    expect((await decode(renamed)).boxes).toEqual((await decode(face)).boxes);
  });

  it('types: takes tensors, refuses images', () => {
    const p = defaults(decodeBlazeface, {});
    expect(decodeBlazeface.types?.(p, { in: { kind: 'tensors' } })).toEqual({ out: { kind: 'detections' } });
    expect(() => decodeBlazeface.types?.(p, { in: { kind: 'image', width: 128, height: 128, format: 'rgb24' } })).toThrow(PortTypeMismatch);
  });
});

describe('decode.blazeface on other builds of the model', () => {
  it('TFLite short-range (classificators / regressors): the same face', async () => {
    const model = await createTfliteEngine().load(await detectModel(zoo('blazeface-short-range-tflite/face_detection_short_range.tflite')), cpu, { threads: 1 });
    const onnx = await createOnnxruntimeEngine().load(await detectModel(zoo('blazeface-front-128/face_detection_front_128x128_barracuda.onnx')), cpu, { threads: 1 });
    try {
      const x = await readNpy(input('blazeface128-face.npy'));
      const tflite = await decode(await model.run({ input: x }), { scores: ['classificators'], boxes: ['regressors'] });
      const reference = await decode(await onnx.run({ 'input:0': x }));
      expect(tflite.boxes).toHaveLength(1);
      // The engines agree to 1.1e-4 px per offset (cross-engine.test.ts).
      expect(Math.abs((tflite.boxes[0]?.x ?? 0) - (reference.boxes[0]?.x ?? 0))).toBeLessThan(1e-3);
      expect(Math.abs((tflite.boxes[0]?.width ?? 0) - (reference.boxes[0]?.width ?? 0))).toBeLessThan(1e-3);
    } finally {
      await model.dispose();
      await onnx.dispose();
    }
  });

  it('back-256 ONNX: the face at the TF.js known answer, nothing in the fruit', async () => {
    const model = await createOnnxruntimeEngine().load(await detectModel(zoo('blazeface-back-256/face_detection_back_256x256_barracuda.onnx')), cpu, { threads: 1 });
    try {
      const d = await decode(await model.run({ 'input:0': await readNpy(input('blazeface256-face.npy')) }), { anchors: 'back-256', nms: 'plain' });
      expect(d.boxes).toHaveLength(1);
      const f = d.boxes[0] as Detection;
      expect(f.score).toBeCloseTo(0.9356, 3);
      const [cx, cy] = centre(f);
      expect(cx / 256).toBeCloseTo(0.522, 3);
      expect(cy / 256).toBeCloseTo(0.585, 2);
      expect(f.width / 256).toBeCloseTo(0.216, 3);
      const none = await decode(await model.run({ 'input:0': await readNpy(input('blazeface256-noface.npy')) }), { anchors: 'back-256' });
      expect(none.boxes).toEqual([]);
      // Front anchors on back outputs decode to boxes scaled for a 128 px input: the param matters.
      const wrong = await decode(await model.run({ 'input:0': await readNpy(input('blazeface256-face.npy')) }), { anchors: 'front-128', nms: 'plain' });
      expect((wrong.boxes[0]?.width ?? 0) / 128).toBeCloseTo(0.431, 2);
    } finally {
      await model.dispose();
    }
  });
});

describe('nonMaxSuppression', () => {
  const box = (xmin: number, score: number, kx = xmin): RelativeBox => ({ xmin, ymin: 0, xmax: xmin + 1, ymax: 1, score, keypoints: [{ x: kx, y: 0.5 }] });

  it('iou of unit boxes shifted by a quarter: 0.75 / 1.25', () => {
    expect(iou(box(0, 1), box(0.25, 1))).toBeCloseTo(0.6, 12);
    expect(iou(box(0, 1), box(2, 1))).toBe(0);
  });

  it('plain keeps the best of each cluster; weighted averages it by score', () => {
    const boxes = [box(0.25, 0.6), box(0, 0.9), box(5, 0.7), box(0.1, 0.3)];
    expect(nonMaxSuppression(boxes, 0.3, 10, 'plain').map((b) => [b.xmin, b.score])).toEqual([[0, 0.9], [5, 0.7]]);
    const [merged, other] = nonMaxSuppression(boxes, 0.3, 10, 'weighted');
    // (0 * 0.9 + 0.25 * 0.6 + 0.1 * 0.3) / 1.8 = 0.1
    expect(merged?.xmin).toBeCloseTo(0.1, 12);
    expect(merged?.keypoints[0]?.x).toBeCloseTo(0.1, 12);
    expect(merged?.score).toBe(0.9);
    expect(other?.xmin).toBe(5);
  });

  it('stops at max', () => {
    expect(nonMaxSuppression([box(0, 0.5), box(3, 0.6), box(6, 0.7)], 0.3, 2, 'plain').map((b) => b.xmin)).toEqual([6, 3]);
  });
});
