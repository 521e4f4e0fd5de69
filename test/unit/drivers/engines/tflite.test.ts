import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceUnavailableError, ModelError } from '../../../../drivers/errors.js';
import { createTfliteEngine, type TfliteLoadedModel } from '../../../../drivers/engines/tflite.js';
import { loadTflite, tfliteCandidates } from '../../../../drivers/engines/tflite/library.js';
import { detectModel } from '../../../../drivers/hal/model-format.js';
import type { DeviceInfo } from '../../../../drivers/hal/types.js';
import { readNpy } from '../../../../drivers/tensor/npy.js';
import { Tensor } from '../../../../drivers/tensor/tensor.js';
import { stringInputModel, unknownOpModel, writeModels } from '../../../fixtures/delegates/models.js';
import { tempRoot } from '../../../support/sysroots.js';

const repo = path.resolve(import.meta.dirname, '../../../..');
const BLAZEFACE = path.join(repo, 'models/zoo/blazeface-short-range-tflite/face_detection_short_range.tflite');
const SSD_DIR = path.join(repo, 'models/zoo/ssd-mobilenet-v2-coco-quant-tflite');
const SSD = path.join(SSD_DIR, 'mobilenet_ssd_v2_coco_quant_postprocess.tflite');
const SSD_EDGETPU = path.join(SSD_DIR, 'mobilenet_ssd_v2_coco_quant_postprocess_edgetpu.tflite');
const inputs = (name: string): string => path.join(repo, 'test/fixtures/inputs', name);
const cpu: DeviceInfo = { id: 'cpu:0', kind: 'cpu', name: 'cpu', formats: ['onnx', 'tflite'], status: { state: 'ready' } };

const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

/** The best anchor's face score from BlazeFace's `classificators` [1, 896, 1] logits. */
function bestFace(out: Record<string, Tensor>): { anchor: number; score: number } {
  const logits = out['classificators']?.data as Float32Array;
  let anchor = 0;
  for (let i = 1; i < logits.length; i++) if ((logits[i] as number) > (logits[anchor] as number)) anchor = i;
  return { anchor, score: sigmoid(logits[anchor] as number) };
}

const LABELS = new Map(readFileSync(path.join(SSD_DIR, 'coco_labels.txt'), 'utf8').trim().split('\n').map((l) => {
  const [, id, name] = /^(\d+)\s+(.*)$/u.exec(l) ?? [];
  return [Number(id), name ?? ''] as const;
}));

/** The SSD's detections, best first: label, score and box (ymin, xmin, ymax, xmax as fractions). */
function detections(out: Record<string, Tensor>): { label: string; score: number; box: number[] }[] {
  const boxes = out['TFLite_Detection_PostProcess']?.data as Float32Array;
  const classes = out['TFLite_Detection_PostProcess:1']?.data as Float32Array;
  const scores = out['TFLite_Detection_PostProcess:2']?.data as Float32Array;
  const count = (out['TFLite_Detection_PostProcess:3']?.data as Float32Array)[0] as number;
  return Array.from({ length: count }, (_, i) => ({ label: LABELS.get(classes[i] as number) ?? `class ${classes[i]}`, score: scores[i] as number, box: Array.from(boxes.subarray(i * 4, i * 4 + 4)) }));
}

async function codeOf(promise: Promise<unknown>): Promise<{ code: string; message: string; error: unknown }> {
  const error = await promise.then(() => undefined, (e: unknown) => e);
  expect(error, 'expected a rejection').toBeDefined();
  const e = error as { code: string; message: string };
  return { code: e.code, message: e.message, error };
}

describe('tflite engine on cpu: BlazeFace short range (float, XNNPACK)', () => {
  const engine = createTfliteEngine();
  let model: TfliteLoadedModel;
  beforeAll(async () => {
    model = await engine.load(await detectModel(BLAZEFACE), cpu);
  });
  afterAll(async () => model.dispose());

  it('reports the signature, the backend and the library that runs it', () => {
    expect(model.engine).toBe('tflite');
    expect(model.backend).toBe('cpu+xnnpack');
    expect(model.threads).toBe(1);
    expect(model.inputs).toEqual([{ name: 'input', dtype: 'float32', shape: [1, 128, 128, 3] }]);
    expect(model.outputs).toEqual([
      { name: 'regressors', dtype: 'float32', shape: [1, 896, 16] },
      { name: 'classificators', dtype: 'float32', shape: [1, 896, 1] },
    ]);
    expect(model.quantization).toEqual({});
    expect(model.warnings).toEqual([]);
    expect(model.libraries.tfliteVersion).toBe('2.9.0');
    expect(model.libraries.tflite).toMatch(/tfjs-tflite-node\/cc_deps\/linux_(amd64|arm64)\/libtensorflowlite_c\.so$/u);
  });

  it('gives the known answers on real photos (test/fixtures/inputs/README.md)', async () => {
    const face = bestFace(await model.run({ input: await readNpy(inputs('blazeface128-face.npy')) }));
    const none = bestFace(await model.run({ input: await readNpy(inputs('blazeface128-noface.npy')) }));
    expect(face.anchor).toBe(305);
    expect(face.score).toBeCloseTo(0.9549, 3);
    expect(none.anchor).toBe(397);
    expect(none.score).toBeCloseTo(0.1218, 3);
  });

  it('serialises overlapping runs: each gets its own input’s answer', async () => {
    const face = await readNpy(inputs('blazeface128-face.npy'));
    const none = await readNpy(inputs('blazeface128-noface.npy'));
    const results = await Promise.all([face, none, face, none, face].map(async (x) => bestFace(await model.run({ input: x })).anchor));
    expect(results).toEqual([305, 397, 305, 397, 305]);
  });

  it('checks feeds before touching TFLite', async () => {
    expect((await codeOf(model.run({ image: Tensor.zeros('float32', [1, 128, 128, 3]) }))).code).toBe('EAI_MODEL_INPUT_UNKNOWN');
    const dtype = await codeOf(model.run({ input: Tensor.zeros('uint8', [1, 128, 128, 3]) }));
    expect(dtype.code).toBe('EAI_MODEL_INPUT_DTYPE');
    expect(dtype.message).toContain('must be float32, got uint8');
    expect((await codeOf(model.run({ input: Tensor.zeros('float32', [1, 3, 128, 128]) }))).code).toBe('EAI_MODEL_INPUT_SHAPE');
  });

  it('runs the same model without XNNPACK on TFLite’s own kernels, to the same answer', async () => {
    const plain = await engine.load(await detectModel(BLAZEFACE), cpu, { engine: { xnnpack: false } });
    try {
      expect(plain.backend).toBe('cpu');
      const x = await readNpy(inputs('blazeface128-face.npy'));
      const a = (await model.run({ input: x }))['classificators']?.data as Float32Array;
      const b = (await plain.run({ input: x }))['classificators']?.data as Float32Array;
      // Measured: at most 1.0e-4 apart in logits (summation order differs between XNNPACK and TFLite kernels).
      let worst = 0;
      for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs((a[i] as number) - (b[i] as number)));
      expect(worst).toBeLessThan(1e-3);
    } finally {
      await plain.dispose();
    }
  });

  it('caps threads at the machine’s cores', async () => {
    const wide = await engine.load(await detectModel(BLAZEFACE), cpu, { threads: 1024 });
    expect(wide.threads).toBe(os.availableParallelism());
    await wide.dispose();
  });
});

describe('tflite engine on cpu: SSD MobileNet v2 COCO, quantised (uint8)', () => {
  const engine = createTfliteEngine();
  let model: TfliteLoadedModel;
  beforeAll(async () => {
    model = await engine.load(await detectModel(SSD), cpu);
  });
  afterAll(async () => model.dispose());

  it('takes uint8 input and reports its quantisation', () => {
    expect(model.backend).toBe('cpu'); // XNNPACK is applied to float models only
    expect(model.inputs).toEqual([{ name: 'normalized_input_image_tensor', dtype: 'uint8', shape: [1, 300, 300, 3] }]);
    expect(model.quantization).toEqual({ normalized_input_image_tensor: { scale: 0.0078125, zeroPoint: 128 } });
    expect(model.outputs.map((o) => [o.name, o.dtype, o.shape])).toEqual([
      ['TFLite_Detection_PostProcess', 'float32', [1, 20, 4]],
      ['TFLite_Detection_PostProcess:1', 'float32', [1, 20]],
      ['TFLite_Detection_PostProcess:2', 'float32', [1, 20]],
      ['TFLite_Detection_PostProcess:3', 'float32', [1]],
    ]);
  });

  it('finds Messi and the ball, and oranges in the fruit bowl', async () => {
    const messi = detections(await model.run({ normalized_input_image_tensor: await readNpy(inputs('ssd300-messi.npy')) }));
    expect(messi.slice(0, 2).map((d) => d.label)).toEqual(['person', 'sports ball']);
    expect(messi[0]?.score).toBeCloseTo(0.9531, 3);
    expect(messi[1]?.score).toBeCloseTo(0.8398, 3);
    // The ball lies in the bottom right quarter of the photo.
    expect(messi[1]?.box.map((v) => Number(v.toFixed(2)))).toEqual([0.85, 0.61, 0.98, 0.7]);
    const fruits = detections(await model.run({ normalized_input_image_tensor: await readNpy(inputs('ssd300-fruits.npy')) }));
    expect(fruits[0]?.label).toBe('orange');
    expect(fruits[0]?.score).toBeCloseTo(0.7891, 3);
    expect(fruits.filter((d) => d.score > 0.5).every((d) => d.label === 'orange')).toBe(true);
  });

  it('refuses float input for the quantised model', async () => {
    const e = await codeOf(model.run({ normalized_input_image_tensor: Tensor.zeros('float32', [1, 300, 300, 3]) }));
    expect(e.code).toBe('EAI_MODEL_INPUT_DTYPE');
    expect(e.message).toContain('must be uint8, got float32');
  });
});

describe('tflite engine: bad models never crash the process', () => {
  const engine = createTfliteEngine();
  const good = readFileSync(BLAZEFACE);
  const header = Buffer.alloc(64);
  header.writeUInt32LE(16, 0);
  header.write('TFL3', 4, 'latin1');
  const files = writeModels({
    truncated: good.subarray(0, good.length >> 1),
    'almost-whole': good.subarray(0, good.length - 16),
    garbage: Buffer.concat([Buffer.from([0x1c, 0, 0, 0]), Buffer.from('TFL3'), Buffer.from('not a flatbuffer at all, just text')]),
    'empty-root': header,
    'unknown-op': unknownOpModel(),
    'string-input': stringInputModel(),
  });

  it.each(['truncated', 'almost-whole', 'garbage', 'empty-root'] as const)('%s .tflite is EAI_MODEL_CORRUPT', async (name) => {
    const e = await codeOf(engine.load({ path: files[name], format: 'tflite' }, cpu));
    expect(e.error).toBeInstanceOf(ModelError);
    expect(e.code).toBe('EAI_MODEL_CORRUPT');
    expect(e.message).toContain(files[name]);
  });

  it('still loads and runs a good model afterwards', async () => {
    const model = await engine.load(await detectModel(BLAZEFACE), cpu);
    expect(bestFace(await model.run({ input: await readNpy(inputs('blazeface128-face.npy')) })).anchor).toBe(305);
    await model.dispose();
  });

  it('names an operator this TFLite lacks', async () => {
    const e = await codeOf(engine.load({ path: files['unknown-op'], format: 'tflite' }, cpu));
    expect(e.code).toBe('EAI_MODEL_UNSUPPORTED_OP');
    expect(e.message).toContain('AiosNoSuchOp');
  });

  it('refuses a tensor type aios tensors cannot carry', async () => {
    const e = await codeOf(engine.load({ path: files['string-input'], format: 'tflite' }, cpu));
    expect(e.code).toBe('EAI_MODEL_UNSUPPORTED_TYPE');
    expect(e.message).toContain("tensor 'text' has type kTfLiteString");
  });

  it('says when the file is missing', async () => {
    expect((await codeOf(engine.load({ path: path.join(os.tmpdir(), 'aios-no-such-model.tflite'), format: 'tflite' }, cpu))).code).toBe('EAI_MODEL_NOT_FOUND');
  });
});

describe('tflite engine: placement rules and lifecycle', () => {
  const engine = createTfliteEngine();

  it('supports cpu, and says why not for GPUs', async () => {
    expect(await engine.supports(cpu)).toEqual({ ok: true });
    const gpu: DeviceInfo = { id: 'cuda:0', kind: 'cuda', name: 'GPU', formats: ['onnx'], status: { state: 'ready' } };
    const support = await engine.supports(gpu);
    expect(support.ok).toBe(false);
    expect(!support.ok && support.reason).toContain('cpu and edgetpu devices, not cuda');
  });

  it('refuses an Edge TPU-compiled model on the cpu, before loading anything', async () => {
    const source = await detectModel(SSD_EDGETPU);
    expect(source.format).toBe('tflite-edgetpu');
    const e = await codeOf(engine.load(source, cpu));
    expect(e.error).toBeInstanceOf(ModelError);
    expect(e.code).toBe('EAI_MODEL_NEEDS_EDGETPU');
    expect(e.message).toContain('edgetpu-custom-op');
  });

  it('recognises edgetpu-custom-op from TFLite itself when a model is given as plain tflite', async () => {
    const e = await codeOf(engine.load({ path: SSD_EDGETPU, format: 'tflite' }, cpu));
    expect(e.code).toBe('EAI_MODEL_NEEDS_EDGETPU');
  });

  it('refuses other formats', async () => {
    expect((await codeOf(engine.load({ path: BLAZEFACE, format: 'onnx' }, cpu))).code).toBe('EAI_MODEL_FORMAT');
  });

  it('dispose waits for queued runs, frees once, and refuses later runs', async () => {
    const model = await engine.load(await detectModel(BLAZEFACE), cpu);
    const x = await readNpy(inputs('blazeface128-face.npy'));
    const pending = model.run({ input: x });
    await Promise.all([model.dispose(), model.dispose()]);
    expect(bestFace(await pending).anchor).toBe(305);
    expect((await codeOf(model.run({ input: x }))).code).toBe('EAI_MODEL_DISPOSED');
    await model.dispose();
  });
});

describe('tflite engine: where the TFLite library comes from', () => {
  const bundled = async (): Promise<string> => {
    const all = await tfliteCandidates(undefined, await tempRoot({}));
    return all.find((c) => c.source === 'tfjs-tflite-node')?.path ?? '';
  };

  it('tries an explicit path, AIOS_TFLITE_LIB, the system, then tfjs-tflite-node', async () => {
    const lib = await bundled();
    const sys = await tempRoot({ '/usr/lib/libtensorflowlite_c.so': { link: lib } });
    const saved = process.env['AIOS_TFLITE_LIB'];
    process.env['AIOS_TFLITE_LIB'] = '/nowhere/from-env.so';
    try {
      const candidates = await tfliteCandidates('/nowhere/explicit.so', sys);
      expect(candidates.map((c) => [c.source, c.path])).toEqual([
        ['options.libraryPath', '/nowhere/explicit.so'],
        ['AIOS_TFLITE_LIB', '/nowhere/from-env.so'],
        ['system', sys.resolve('/usr/lib/libtensorflowlite_c.so')],
        ['tfjs-tflite-node', lib],
      ]);
      // The two bad paths fail to load; the system copy (a link to the bundled file) is used.
      const engine = createTfliteEngine({ sys, libraryPath: '/nowhere/explicit.so' });
      const model = await engine.load(await detectModel(BLAZEFACE), cpu);
      expect(model.libraries.tflite).toBe(sys.resolve('/usr/lib/libtensorflowlite_c.so'));
      await model.dispose();
    } finally {
      if (saved === undefined) delete process.env['AIOS_TFLITE_LIB'];
      else process.env['AIOS_TFLITE_LIB'] = saved;
    }
  });

  it('lists every place tried, and the install that fixes it, when none loads', async () => {
    const koffi = await import('koffi');
    let error: unknown;
    try {
      loadTflite(koffi, [
        { source: 'options.libraryPath', path: '/nowhere/libtensorflowlite_c.so' },
        { source: 'system', missing: 'libtensorflowlite_c.so is not in the dynamic loader\'s folders' },
        { source: 'tfjs-tflite-node', missing: 'tfjs-tflite-node@0.0.2 is not installed (it is an optional dependency)' },
      ]);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(DeviceUnavailableError);
    const e = error as DeviceUnavailableError;
    expect(e.code).toBe('EAI_HAL_ENGINE_UNAVAILABLE');
    expect(e.reason).toContain('options.libraryPath (/nowhere/libtensorflowlite_c.so)');
    expect(e.reason).toContain('tfjs-tflite-node@0.0.2 is not installed');
    expect(e.fix).toContain('npm install tfjs-tflite-node@0.0.2');
  });
});
