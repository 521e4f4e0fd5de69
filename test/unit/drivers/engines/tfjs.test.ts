import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceUnavailableError, ModelError, UsageError } from '../../../../drivers/errors.js';
import { createTfjsEngine } from '../../../../drivers/engines/tfjs.js';
import type { TfjsLoadedModel } from '../../../../drivers/engines/tfjs.js';
import { detectModel } from '../../../../drivers/hal/model-format.js';
import type { DeviceInfo, Outputs } from '../../../../drivers/hal/types.js';
import { readNpy } from '../../../../drivers/tensor/npy.js';
import { Tensor } from '../../../../drivers/tensor/tensor.js';

const repo = path.resolve(import.meta.dirname, '../../../..');
const BLAZEFACE = path.join(repo, 'models/zoo/human-blazeface');
const inputs = (name: string): string => path.join(repo, 'test/fixtures/inputs', name);
const cpu: DeviceInfo = { id: 'cpu:0', kind: 'cpu', name: 'cpu', formats: ['tfjs-graph', 'tfjs-layers'], status: { state: 'ready' } };
const cuda: DeviceInfo = { id: 'cuda:0000:01:00.0', kind: 'cuda', name: 'NVIDIA H100', formats: ['onnx', 'tfjs-graph', 'tfjs-layers'], status: { state: 'ready' } };
const edgetpu: DeviceInfo = { id: 'edgetpu:usb-1-1', kind: 'edgetpu', name: 'Coral USB Accelerator', formats: ['tflite-edgetpu'], status: { state: 'ready' } };

const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

/**
 * BlazeFace's answer for one image: the best of its 896 anchors (16x16 cells x 2, then 8x8 x 6),
 * its face probability, and its box decoded from the regressor (centre offset and size in input
 * pixels) as fractions of the 256 px input. See models/zoo/human-blazeface/README.md.
 */
function bestFace(out: Outputs): { score: number; anchor: number; cx: number; cy: number; w: number } {
  const logits = [...(out['Identity']?.data as Float32Array), ...(out['Identity_1']?.data as Float32Array)];
  let best = 0;
  for (let i = 1; i < logits.length; i++) if ((logits[i] as number) > (logits[best] as number)) best = i;
  const [grid, perCell, index, boxes] = best < 512 ? [16, 2, best, out['Identity_2']] : [8, 6, best - 512, out['Identity_3']];
  const cell = Math.floor(index / perCell);
  const row = (boxes?.data as Float32Array).subarray(index * 16, index * 16 + 16);
  return {
    score: sigmoid(logits[best] as number),
    anchor: best,
    cx: ((cell % grid) + 0.5) / grid + (row[0] as number) / 256,
    cy: (Math.floor(cell / grid) + 0.5) / grid + (row[1] as number) / 256,
    w: (row[2] as number) / 256,
  };
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof ModelError || error instanceof DeviceUnavailableError || error instanceof UsageError) return error.code;
    throw error;
  }
  throw new Error('expected a rejection');
}

describe('tfjs engine on cpu: BlazeFace back 256 from @vladmandic/human', () => {
  const engine = createTfjsEngine();
  let model: TfjsLoadedModel;
  let face: Tensor;
  let noface: Tensor;
  beforeAll(async () => {
    model = (await engine.load(await detectModel(BLAZEFACE), cpu)) as TfjsLoadedModel;
    face = await readNpy(inputs('blazeface256-face.npy'));
    noface = await readNpy(inputs('blazeface256-noface.npy'));
  });
  afterAll(async () => model.dispose());

  it('runs on the wasm backend when tfjs-node is not installed', () => {
    expect(model.engine).toBe('tfjs');
    expect(model.backend).toBe('wasm');
    expect(tf.getBackend()).toBe('wasm');
    // tfjs ships Node the single-threaded SIMD build of its wasm backend.
    expect(model.threads).toBe(1);
  });

  it('reports the signature written by the converter', () => {
    expect(model.inputs).toEqual([{ name: 'input', dtype: 'float32', shape: [1, 256, 256, 3] }]);
    expect([...model.outputs].sort((a, b) => a.name.localeCompare(b.name))).toEqual([
      { name: 'Identity', dtype: 'float32', shape: [1, 512, 1] },
      { name: 'Identity_1', dtype: 'float32', shape: [1, 384, 1] },
      { name: 'Identity_2', dtype: 'float32', shape: [1, 512, 16] },
      { name: 'Identity_3', dtype: 'float32', shape: [1, 384, 16] },
    ]);
  });

  it('finds the face in a real photo, where it is, and nothing in a photo without one', async () => {
    const out = await model.run({ input: face });
    expect(Object.keys(out).sort()).toEqual(['Identity', 'Identity_1', 'Identity_2', 'Identity_3']);
    expect(out['Identity_2']?.shape).toEqual([1, 512, 16]);
    const found = bestFace(out);
    // Measured 0.9356 at anchor 305, box centre (0.522, 0.585), width 0.216 (README.md).
    expect(found.score).toBeGreaterThan(0.85);
    expect(found.anchor).toBe(305);
    expect(found.cx).toBeCloseTo(0.522, 1);
    expect(found.cy).toBeCloseTo(0.585, 1);
    expect(found.w).toBeGreaterThan(0.15);
    expect(found.w).toBeLessThan(0.3);
    // Measured 0.1890.
    expect(bestFace(await model.run({ input: noface })).score).toBeLessThan(0.3);
  });

  it('matches the plain JavaScript cpu backend', async () => {
    const reference = await createTfjsEngine({ backends: ['cpu'] }).load({ path: BLAZEFACE, format: 'tfjs-graph' }, cpu);
    try {
      expect(reference.backend).toBe('cpu');
      const a = await reference.run({ input: face });
      const b = await model.run({ input: face });
      for (const name of ['Identity', 'Identity_2']) {
        const x = a[name]?.data as Float32Array;
        const y = b[name]?.data as Float32Array;
        let worst = 0;
        for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs((x[i] as number) - (y[i] as number)));
        expect(worst).toBeLessThan(1e-3);
      }
    } finally {
      await reference.dispose();
    }
  });

  it('gives the same answer for concurrent runs', async () => {
    const scores = await Promise.all([1, 2, 3, 4].map(async () => bestFace(await model.run({ input: face })).score));
    expect(new Set(scores).size).toBe(1);
  });

  it('leaks no tfjs tensors over runs', async () => {
    await model.run({ input: face });
    const before = tf.memory().numTensors;
    for (let i = 0; i < 5; i++) await model.run({ input: i % 2 === 0 ? face : noface });
    expect(tf.memory().numTensors).toBe(before);
  });

  it('refuses a wrong input name, dtype or shape before running', async () => {
    const before = tf.memory().numTensors;
    expect(await codeOf(model.run({ 'input:0': face }))).toBe('EAI_MODEL_INPUT_UNKNOWN');
    expect(await codeOf(model.run({}))).toBe('EAI_MODEL_INPUT_MISSING');
    expect(await codeOf(model.run({ input: new Tensor('int32', face.shape, Int32Array.from(face.data as Float32Array)) }))).toBe('EAI_MODEL_INPUT_DTYPE');
    expect(await codeOf(model.run({ input: face.reshape([1, 512, 128, 3]) }))).toBe('EAI_MODEL_INPUT_SHAPE');
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('tfjs engine: devices and backends', () => {
  it('supports cpu, and CUDA only through @tensorflow/tfjs-node-gpu', async () => {
    const engine = createTfjsEngine();
    expect(engine.name).toBe('tfjs');
    expect(engine.formats).toEqual(['tfjs-graph', 'tfjs-layers']);
    expect(await engine.supports(cpu)).toEqual({ ok: true });
    const gpu = await engine.supports(cuda);
    expect(gpu).toEqual({ ok: false, reason: '@tensorflow/tfjs-node-gpu is not installed', fix: expect.stringContaining('npm install @tensorflow/tfjs-node-gpu@4.22.0') });
    expect(await engine.supports({ ...cuda, kind: 'jetson', id: 'jetson:0' })).toMatchObject({ ok: false, reason: '@tensorflow/tfjs-node-gpu is not installed' });
    expect(await engine.supports(edgetpu)).toMatchObject({ ok: false, reason: 'TF.js has no backend for edgetpu devices' });
  });

  it('refuses to load onto a CUDA device without tfjs-node-gpu rather than fall back to the CPU', async () => {
    const error = await createTfjsEngine().load({ path: BLAZEFACE, format: 'tfjs-graph' }, cuda).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DeviceUnavailableError);
    expect((error as DeviceUnavailableError).code).toBe('EAI_HAL_ENGINE_UNAVAILABLE');
    expect((error as DeviceUnavailableError).reason).toContain('@tensorflow/tfjs-node-gpu is not installed');
  });

  it('records why the tensorflow backend could not start', async () => {
    const support = await createTfjsEngine({ backends: ['tensorflow'] }).supports(cpu);
    expect(support.ok).toBe(false);
    if (!support.ok) {
      expect(support.reason).toContain('@tensorflow/tfjs-node is not installed');
      expect(support.fix).toContain('npm install @tensorflow/tfjs-node@4.22.0');
    }
  });

  it('rejects an unknown backend name when it is created', () => {
    expect(() => createTfjsEngine({ backends: ['webgpu'] })).toThrow(UsageError);
  });
});

describe('tfjs engine: model files', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'aios-tfjs-'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it('names a missing weight shard', async () => {
    const folder = path.join(dir, 'no-shard');
    await copyModelJson(folder);
    const error = await createTfjsEngine().load({ path: folder, format: 'tfjs-graph' }, cpu).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ModelError);
    expect((error as ModelError).code).toBe('EAI_MODEL_CORRUPT');
    expect((error as ModelError).message).toContain("'blazeface.bin'");
  });

  it('notices a truncated weight shard', async () => {
    const folder = path.join(dir, 'short-shard');
    await copyModelJson(folder);
    const bin = await readFile(path.join(BLAZEFACE, 'blazeface.bin'));
    await writeFile(path.join(folder, 'blazeface.bin'), bin.subarray(0, bin.length - 4));
    expect(await codeOf(createTfjsEngine().load({ path: folder, format: 'tfjs-graph' }, cpu))).toBe('EAI_MODEL_CORRUPT');
  });

  it('refuses a shard path that leaves the model folder', async () => {
    const folder = path.join(dir, 'escape');
    await writeModel(folder, { format: 'graph-model', modelTopology: { node: [] }, weightsManifest: [{ paths: ['../../etc/passwd'], weights: [] }] });
    const error = (await createTfjsEngine().load({ path: folder, format: 'tfjs-graph' }, cpu).catch((e: unknown) => e)) as ModelError;
    expect(error.code).toBe('EAI_MODEL_CORRUPT');
    expect(error.message).toContain('outside the model folder');
  });

  it('reports a missing model.json and a format that does not match the file', async () => {
    expect(await codeOf(createTfjsEngine().load({ path: path.join(dir, 'nothing-here'), format: 'tfjs-graph' }, cpu))).toBe('EAI_MODEL_NOT_FOUND');
    expect(await codeOf(createTfjsEngine().load({ path: BLAZEFACE, format: 'tfjs-layers' }, cpu))).toBe('EAI_MODEL_FORMAT');
  });

  it('loads a model given as the path of its model.json', async () => {
    const model = await createTfjsEngine().load({ path: path.join(BLAZEFACE, 'model.json'), format: 'tfjs-graph' }, cpu);
    expect(model.inputs[0]?.shape).toEqual([1, 256, 256, 3]);
    await model.dispose();
    expect(await codeOf(model.run({}))).toBe('EAI_MODEL_DISPOSED');
  });

  it('runs a layers model saved by tfjs, with its known weights', async () => {
    const folder = path.join(dir, 'layers');
    // y = relu(x W + b) with W = [[1, -1], [2, 0.5], [0, 3]], b = [0.5, -1].
    const net = tf.sequential({ layers: [tf.layers.dense({ inputShape: [3], units: 2, activation: 'relu', name: 'dense' })] });
    net.setWeights([tf.tensor2d([[1, -1], [2, 0.5], [0, 3]]), tf.tensor1d([0.5, -1])]);
    await net.save(tf.io.withSaveHandler(async (artifacts) => {
      const { weightData, weightSpecs, ...rest } = artifacts;
      await writeModel(folder, { ...rest, format: 'layers-model', weightsManifest: [{ paths: ['group1-shard1of1.bin'], weights: weightSpecs ?? [] }] });
      await writeFile(path.join(folder, 'group1-shard1of1.bin'), new Uint8Array(weightData as ArrayBuffer));
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    }));
    net.dispose();

    const source = await detectModel(folder);
    expect(source.format).toBe('tfjs-layers');
    const model = await createTfjsEngine().load(source, cpu);
    try {
      expect(model.inputs).toEqual([{ name: expect.any(String), dtype: 'float32', shape: [null, 3] }]);
      expect(model.outputs).toEqual([{ name: expect.any(String), dtype: 'float32', shape: [null, 2] }]);
      const inputName = model.inputs[0]?.name as string;
      const outputName = model.outputs[0]?.name as string;
      const out = await model.run({ [inputName]: new Tensor('float32', [2, 3], Float32Array.of(1, 1, 1, -1, 0, 2)) });
      expect(out[outputName]?.shape).toEqual([2, 2]);
      expect(Array.from(out[outputName]?.data as Float32Array)).toEqual([3.5, 1.5, 0, 6]);
    } finally {
      await model.dispose();
    }
  });

  it('carries int64 and bool through a graph with a dynamic-shape op (executeAsync)', async () => {
    const folder = path.join(dir, 'where');
    // indices = Where(x > threshold): output shape depends on the data, so only executeAsync runs it.
    await writeModel(folder, {
      format: 'graph-model',
      modelTopology: {
        node: [
          { name: 'x', op: 'Placeholder', attr: { dtype: { type: 'DT_INT64' }, shape: { shape: { dim: [{ size: '-1' }] } } } },
          { name: 'threshold', op: 'Placeholder', attr: { dtype: { type: 'DT_INT64' }, shape: { shape: {} } } },
          { name: 'above', op: 'Greater', input: ['x', 'threshold'], attr: { T: { type: 'DT_INT64' } } },
          { name: 'indices', op: 'Where', input: ['above'], attr: { T: { type: 'DT_BOOL' } } },
        ],
        versions: { producer: 1 },
      },
      signature: {
        inputs: {
          'x:0': { name: 'x:0', dtype: 'DT_INT64', tensorShape: { dim: [{ size: '-1' }] } },
          'threshold:0': { name: 'threshold:0', dtype: 'DT_INT64', tensorShape: {} },
        },
        outputs: { 'indices:0': { name: 'indices:0', dtype: 'DT_INT64', tensorShape: { dim: [{ size: '-1' }, { size: '1' }] } } },
      },
      weightsManifest: [],
    });
    const model = await createTfjsEngine().load({ path: folder, format: 'tfjs-graph' }, cpu);
    try {
      expect([...model.inputs].sort((a, b) => a.name.localeCompare(b.name))).toEqual([
        { name: 'threshold', dtype: 'int64', shape: [] },
        { name: 'x', dtype: 'int64', shape: [null] },
      ]);
      expect(model.outputs).toEqual([{ name: 'indices', dtype: 'int64', shape: [null, 1] }]);
      const threshold = new Tensor('int64', [], BigInt64Array.of(2n));
      const out = await model.run({ x: new Tensor('int64', [5], BigInt64Array.of(5n, 1n, 3n, 2n, 7n)), threshold });
      expect(out['indices']?.dtype).toBe('int64');
      expect(out['indices']?.shape).toEqual([3, 1]);
      expect(Array.from(out['indices']?.data as BigInt64Array)).toEqual([0n, 2n, 4n]);
      const before = tf.memory().numTensors;
      expect(await codeOf(model.run({ x: new Tensor('int64', [1], BigInt64Array.of(1n << 40n)), threshold }))).toBe('EAI_MODEL_INPUT_RANGE');
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      await model.dispose();
    }
  });
  it('refuses a tensor type aios cannot carry, and names an op TF.js does not implement', async () => {
    const strings = path.join(dir, 'strings');
    await writeModel(strings, {
      format: 'graph-model',
      modelTopology: { node: [{ name: 'text', op: 'Placeholder', attr: { dtype: { type: 'DT_STRING' }, shape: { shape: { dim: [{ size: '1' }] } } } }, { name: 'out', op: 'Identity', input: ['text'], attr: { T: { type: 'DT_STRING' } } }], versions: { producer: 1 } },
      weightsManifest: [],
    });
    const before = tf.memory().numTensors;
    expect(await codeOf(createTfjsEngine().load({ path: strings, format: 'tfjs-graph' }, cpu))).toBe('EAI_MODEL_UNSUPPORTED_TYPE');

    const unknownOp = path.join(dir, 'unknown-op');
    await writeModel(unknownOp, {
      format: 'graph-model',
      modelTopology: { node: [{ name: 'x', op: 'Placeholder', attr: { dtype: { type: 'DT_FLOAT' }, shape: { shape: { dim: [{ size: '2' }] } } } }, { name: 'y', op: 'FrobnicateV7', input: ['x'], attr: { T: { type: 'DT_FLOAT' } } }], versions: { producer: 1 } },
      weightsManifest: [],
    });
    const model = await createTfjsEngine().load({ path: unknownOp, format: 'tfjs-graph' }, cpu);
    const error = (await model.run({ x: new Tensor('float32', [2], Float32Array.of(1, 2)) }).catch((e: unknown) => e)) as ModelError;
    expect(error.code).toBe('EAI_MODEL_UNSUPPORTED_OP');
    expect(error.details['op']).toBe('FrobnicateV7');
    await model.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});

async function copyModelJson(folder: string): Promise<void> {
  await writeModel(folder, JSON.parse(await readFile(path.join(BLAZEFACE, 'model.json'), 'utf8')) as object);
}

async function writeModel(folder: string, json: object): Promise<void> {
  await mkdir(folder, { recursive: true });
  await writeFile(path.join(folder, 'model.json'), JSON.stringify(json));
}
