import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTfliteEngine, type TfliteLoadedModel } from '../../../../../../drivers/engines/tflite.js';
import { detectModel } from '../../../../../../drivers/hal/model-format.js';
import type { DeviceInfo } from '../../../../../../drivers/hal/types.js';
import type { ImageFrame } from '../../../../../../drivers/sensors/types.js';
import { readNpy } from '../../../../../../drivers/tensor/npy.js';
import { Tensor } from '../../../../../../drivers/tensor/tensor.js';
import { PortTypeMismatch } from '../../../../../../runtime/pipeline/definition.js';
import { decodeClasses, type Classes } from '../../../../../../runtime/pipeline/nodes/stages/decode-classes.js';
import { loadLabels } from '../../../../../../runtime/pipeline/nodes/stages/decode-detections.js';
import type { Detections } from '../../../../../../runtime/pipeline/payloads.js';
import { decodeKeypoints } from '../../../../../../runtime/pipeline/nodes/stages/decode-keypoints.js';
import { decodeSsd } from '../../../../../../runtime/pipeline/nodes/stages/decode-ssd.js';
import { imageResize } from '../../../../../../runtime/pipeline/nodes/stages/image-resize.js';
import { imageToTensor } from '../../../../../../runtime/pipeline/nodes/stages/image-to-tensor.js';
import { defaults, startStage } from './harness.js';

const repo = path.resolve(import.meta.dirname, '../../../../../..');
const SSD_DIR = path.join(repo, 'models/zoo/ssd-mobilenet-v2-coco-quant-tflite');
const cpu: DeviceInfo = { id: 'cpu:0', kind: 'cpu', name: 'cpu', formats: ['tflite'], status: { state: 'ready' } };

describe('decode.ssd on the real SSD MobileNet v2 (TFLite, uint8)', () => {
  let model: TfliteLoadedModel;
  beforeAll(async () => {
    model = await createTfliteEngine().load(await detectModel(path.join(SSD_DIR, 'mobilenet_ssd_v2_coco_quant_postprocess.tflite')), cpu);
  });
  afterAll(async () => model?.dispose());

  /** The fixture photo as a frame, through image.to_tensor as a pipeline would feed it. */
  async function detect(file: string, params: object): Promise<Detections> {
    const x = await readNpy(path.join(repo, 'test/fixtures/inputs', file));
    const frame: ImageFrame = { width: 300, height: 300, format: 'rgb24', data: x.data as Uint8Array };
    const toTensor = await startStage(imageToTensor, {});
    await toTensor.send(frame);
    const outputs = await model.run({ normalized_input_image_tensor: toTensor.emitted[0]?.value as Tensor });
    const s = await startStage(decodeSsd, params, { baseDir: SSD_DIR });
    await s.send(outputs);
    return s.emitted[0]?.value as Detections;
  }

  it('messi5: person 0.9531 and sports ball 0.8398 with COCO labels, boxes in pixels', async () => {
    const d = await detect('ssd300-messi.npy', { labels: 'coco_labels.txt' });
    expect(d.boxes.map((b) => [b.label, b.classId, Number(b.score.toFixed(4))])).toEqual([['person', 0, 0.9531], ['sports ball', 36, 0.8398]]);
    const person = d.boxes[0]!;
    // (ymin, xmin, ymax, xmax) = (0.202, 0.111, 0.970, 0.812) of 300 px.
    expect(person.x).toBeCloseTo(0.111 * 300, 0);
    expect(person.y).toBeCloseTo(0.202 * 300, 0);
    expect(person.width).toBeCloseTo((0.812 - 0.111) * 300, 0);
    expect(person.height).toBeCloseTo((0.97 - 0.202) * 300, 0);
  });

  it('fruits: only oranges above 0.5; lower thresholds and maxDetections', async () => {
    const d = await detect('ssd300-fruits.npy', { labels: 'coco_labels.txt' });
    expect(d.boxes.map((b) => b.label)).toEqual(['orange']);
    expect(d.boxes[0]?.score).toBeCloseTo(0.7891, 3);
    const low = await detect('ssd300-fruits.npy', { labels: 'coco_labels.txt', scoreThreshold: 0.25, maxDetections: 2 });
    expect(low.boxes.map((b) => [b.label, Number(b.score.toFixed(4))])).toEqual([['orange', 0.7891], ['orange', 0.418]]);
  });

  it('scales to the camera frame; without labels, ids only', async () => {
    const d = await detect('ssd300-messi.npy', { imageWidth: 548, imageHeight: 342 });
    expect([d.imageWidth, d.imageHeight]).toEqual([548, 342]);
    expect(d.boxes[0]?.x).toBeCloseTo(0.111 * 548, 0);
    expect(d.boxes[0]?.label).toBeUndefined();
    expect(d.boxes[0]?.classId).toBe(0);
  });

  it('check: a labels file that does not exist', async () => {
    expect(await decodeSsd.check?.(defaults(decodeSsd, { labels: 'nope.txt' }), { baseDir: SSD_DIR, inputs: {} })).toEqual([{ path: ['params', 'labels'], message: expect.stringContaining('does not exist') }]);
    await expect(startStage(decodeSsd, { labels: 'nope.txt' }, { baseDir: SSD_DIR })).rejects.toMatchObject({ code: 'EAI_STAGE_LABELS' });
  });

  it('a resize + to_tensor chain from a larger frame feeds the model', async () => {
    // Nearest-neighbour up to 600 and back to 300 is the identity, through the worker path.
    const x = await readNpy(path.join(repo, 'test/fixtures/inputs/ssd300-messi.npy'));
    const up = await startStage(imageResize, { width: 600, height: 600, interpolation: 'nearest', worker: 'always' });
    await up.send({ width: 300, height: 300, format: 'rgb24', data: x.data });
    const down = await startStage(imageResize, { width: 300, height: 300, interpolation: 'nearest' });
    await down.send(up.emitted[0]?.value);
    await up.stop();
    expect(Buffer.compare((down.emitted[0]?.value as ImageFrame).data, x.data as Uint8Array)).toBe(0);
  });
});

describe('labels files', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'aios-labels-'));

  it("reads 'id name' files with gaps, and one-name-per-line files", async () => {
    const coco = await loadLabels('coco_labels.txt', SSD_DIR);
    expect([coco.get(0), coco.get(36), coco.get(11), coco.get(12)]).toEqual(['person', 'sports ball', undefined, 'stop sign']);
    writeFileSync(path.join(dir, 'plain.txt'), 'background\ncat\n\ndog\n');
    expect([...(await loadLabels('plain.txt', dir))]).toEqual([[0, 'background'], [1, 'cat'], [2, ''], [3, 'dog']]);
    expect([...(await loadLabels(['a', 'b'], dir))]).toEqual([[0, 'a'], [1, 'b']]);
  });
});

describe('decode.classes', () => {
  it('top-k with labels, best first, ties by id', async () => {
    const s = await startStage(decodeClasses, { topK: 3, labels: ['cat', 'dog', 'bird', 'fish'] });
    await s.send(new Tensor('float32', [1, 4], Float32Array.of(0.1, 0.5, 0.1, 0.3)));
    expect(s.emitted[0]?.value).toEqual({ classes: [{ id: 1, score: 0.5, label: 'dog' }, { id: 3, score: Math.fround(0.3), label: 'fish' }, { id: 0, score: Math.fround(0.1), label: 'cat' }] });
  });

  it('softmax over logits; reads a named output of an infer record', async () => {
    const s = await startStage(decodeClasses, { topK: 2, activation: 'softmax', output: 'logits' });
    await s.send({ logits: new Tensor('float32', [2], Float32Array.of(0, Math.log(3))), other: Tensor.zeros('float32', [1]) });
    const c = (s.emitted[0]?.value as Classes).classes;
    expect(c.map((x) => x.id)).toEqual([1, 0]);
    expect(c[0]?.score).toBeCloseTo(0.75, 7); // log(3) rounded to float32
    expect(c[1]?.score).toBeCloseTo(0.25, 7);
  });

  it('dequantises uint8 scores and applies the threshold', async () => {
    const s = await startStage(decodeClasses, { scale: 1 / 256, zeroPoint: 0, scoreThreshold: 0.5 });
    await s.send({ out: new Tensor('uint8', [1, 3], Uint8Array.of(10, 200, 128)) });
    expect(s.emitted[0]?.value).toEqual({ classes: [{ id: 1, score: 200 / 256 }, { id: 2, score: 0.5 }] });
  });

  it('refuses batches and ambiguous records; types', async () => {
    const s = await startStage(decodeClasses, {});
    await expect(s.send(Tensor.zeros('float32', [2, 5]))).rejects.toMatchObject({ code: 'EAI_STAGE_INPUT', message: expect.stringContaining('a batch of 2') });
    await expect(s.send({ a: Tensor.zeros('float32', [5]), b: Tensor.zeros('float32', [5]) })).rejects.toMatchObject({ code: 'EAI_STAGE_INPUT' });
    expect(() => decodeClasses.types?.(defaults(decodeClasses, {}), { in: { kind: 'image', width: 1, height: 1, format: 'gray8' } })).toThrow(PortTypeMismatch);
  });
});

describe('decode.keypoints', () => {
  // Two instances of three keypoints, (y, x, score) as fractions.
  const poses = new Tensor('float32', [1, 2, 3, 3], Float32Array.of(0.1, 0.2, 0.9, 0.5, 0.4, 0.8, 0.9, 0.9, 0.1, 0.5, 0.5, 0.1, 0.5, 0.5, 0.1, 0.5, 0.5, 0.1));

  it('boxes span the confident keypoints; weak instances are left out', async () => {
    const s = await startStage(decodeKeypoints, { imageWidth: 200, imageHeight: 100, names: ['nose', 'hand', 'foot'] });
    await s.send(poses);
    const d = s.emitted[0]?.value as Detections;
    expect(d.boxes).toHaveLength(1);
    const p = d.boxes[0]!;
    // Confident: (x 0.2, y 0.1) and (0.4, 0.5); the foot (0.9) scores 0.1 and does not count.
    expect([p.x, p.y, p.width, p.height]).toEqual([Math.fround(0.2) * 200, Math.fround(0.1) * 100, (Math.fround(0.4) - Math.fround(0.2)) * 200, (Math.fround(0.5) - Math.fround(0.1)) * 100]);
    expect(p.score).toBeCloseTo(0.6, 6);
    expect(p.keypoints?.map((k) => k.name)).toEqual(['nose', 'hand', 'foot']);
    expect(p.keypoints?.[2]?.x).toBeCloseTo(180, 4);
  });

  it('xy order and pixel coordinates', async () => {
    const s = await startStage(decodeKeypoints, { order: 'xy', normalized: false, imageWidth: 640, imageHeight: 480, minInstanceScore: 0 });
    await s.send({ kp: new Tensor('float32', [1, 3], Float32Array.of(320, 10, 1)) });
    expect((s.emitted[0]?.value as Detections).boxes[0]?.keypoints).toEqual([{ x: 320, y: 10, score: 1 }]);
  });

  it('refuses tensors that are not [..., K, 3]', async () => {
    const s = await startStage(decodeKeypoints, { imageWidth: 1, imageHeight: 1 });
    await expect(s.send(Tensor.zeros('float32', [1, 17, 2]))).rejects.toMatchObject({ code: 'EAI_STAGE_INPUT' });
    expect(() => decodeKeypoints.types?.(defaults(decodeKeypoints, { imageWidth: 1, imageHeight: 1 }), { in: { kind: 'tensor', dtype: 'float32', shape: [1, 17, 2] } })).toThrow(PortTypeMismatch);
  });
});
