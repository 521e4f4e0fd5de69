import { mkdtemp, mkdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelError } from '../../../../drivers/errors.js';
import { createOnnxruntimeEngine } from '../../../../drivers/engines/onnxruntime.js';
import { detectModel } from '../../../../drivers/hal/model-format.js';
import { SysRoot } from '../../../../drivers/hal/sysroot.js';
import type { DeviceInfo, LoadedModel } from '../../../../drivers/hal/types.js';
import { readNpy } from '../../../../drivers/tensor/npy.js';
import { Tensor } from '../../../../drivers/tensor/tensor.js';

const repo = path.resolve(import.meta.dirname, '../../../..');
const BLAZEFACE = path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx');
const SILERO = path.join(repo, 'models/zoo/silero-vad-v4/silero_vad.onnx');
const inputs = (name: string): string => path.join(repo, 'test/fixtures/inputs', name);
const cpu: DeviceInfo = { id: 'cpu:0', kind: 'cpu', name: 'cpu', formats: ['onnx'], status: { state: 'ready' } };

const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

/** The image's face score: the best anchor's sigmoid over BlazeFace's two logit outputs. */
function faceScore(out: Record<string, Tensor>): number {
  let best = Number.NEGATIVE_INFINITY;
  for (const name of ['Identity:0', 'Identity_1:0']) for (const v of out[name]?.data as Float32Array) best = Math.max(best, v);
  return sigmoid(best);
}

describe('onnxruntime engine on cpu: BlazeFace front 128', () => {
  const engine = createOnnxruntimeEngine();
  let model: LoadedModel;
  beforeAll(async () => {
    model = await engine.load(await detectModel(BLAZEFACE), cpu, { threads: 1 });
  });
  afterAll(async () => model.dispose());

  it('reports the model signature', () => {
    expect(model.engine).toBe('onnxruntime');
    expect(model.backend).toBe('cpu');
    expect(model.inputs).toEqual([{ name: 'input:0', dtype: 'float32', shape: [1, 128, 128, 3] }]);
    expect(model.outputs.map((o) => [o.name, o.shape])).toEqual([
      ['Identity:0', [1, 512, 1]],
      ['Identity_1:0', [1, 384, 1]],
      ['Identity_2:0', [1, 512, 16]],
      ['Identity_3:0', [1, 384, 16]],
    ]);
  });

  it('scores a real face photo high and a photo without a face low', async () => {
    const face = faceScore(await model.run({ 'input:0': await readNpy(inputs('blazeface128-face.npy')) }));
    const none = faceScore(await model.run({ 'input:0': await readNpy(inputs('blazeface128-noface.npy')) }));
    expect(face).toBeGreaterThan(0.8);
    expect(none).toBeLessThan(0.3);
  });

  it('gives the same answer for concurrent runs', async () => {
    const x = await readNpy(inputs('blazeface128-face.npy'));
    const scores = await Promise.all([1, 2, 3, 4].map(async () => faceScore(await model.run({ 'input:0': x }))));
    expect(new Set(scores).size).toBe(1);
  });

  it('says expected vs got for a wrong input name, dtype or shape', async () => {
    const good = Tensor.zeros('float32', [1, 128, 128, 3]);
    const codeOf = async (feeds: Record<string, Tensor>): Promise<[string, string]> => {
      const e = (await model.run(feeds).catch((x: unknown) => x)) as ModelError;
      expect(e).toBeInstanceOf(ModelError);
      return [e.code, e.message];
    };
    const [c1, m1] = await codeOf({ image: good });
    expect(c1).toBe('EAI_MODEL_INPUT_UNKNOWN');
    expect(m1).toContain("'input:0' float32[1, 128, 128, 3]");
    const [c2, m2] = await codeOf({ 'input:0': Tensor.zeros('uint8', [1, 128, 128, 3]) });
    expect(c2).toBe('EAI_MODEL_INPUT_DTYPE');
    expect(m2).toContain('must be float32, got uint8');
    const [c3, m3] = await codeOf({ 'input:0': Tensor.zeros('float32', [1, 3, 128, 128]) });
    expect(c3).toBe('EAI_MODEL_INPUT_SHAPE');
    expect(m3).toContain('must have shape [1, 128, 128, 3], got [1, 3, 128, 128]');
    const [c4] = await codeOf({});
    expect(c4).toBe('EAI_MODEL_INPUT_MISSING');
  });
});

describe('onnxruntime engine on cpu: Silero VAD v4 (stateful, dynamic shapes)', () => {
  it('finds speech in a real recording and none in silence', async () => {
    const model = await createOnnxruntimeEngine().load(await detectModel(SILERO), cpu, { threads: 1 });
    try {
      expect(model.inputs.map((i) => [i.name, i.dtype, i.shape])).toEqual([
        ['input', 'float32', [null, null]],
        ['sr', 'int64', []],
        ['h', 'float32', [2, null, 64]],
        ['c', 'float32', [2, null, 64]],
      ]);
      const probabilities = async (file: string): Promise<number[]> => {
        const audio = (await readNpy(file)).data as Float32Array;
        let h = Tensor.zeros('float32', [2, 1, 64]);
        let c = Tensor.zeros('float32', [2, 1, 64]);
        const sr = new Tensor('int64', [], BigInt64Array.of(16000n));
        const out: number[] = [];
        for (let i = 0; i + 512 <= audio.length; i += 512) {
          const r = await model.run({ input: new Tensor('float32', [1, 512], audio.slice(i, i + 512)), sr, h, c });
          out.push((r['output']?.data as Float32Array)[0] ?? Number.NaN);
          h = r['hn'] as Tensor<'float32'>;
          c = r['cn'] as Tensor<'float32'>;
        }
        return out;
      };
      const speech = await probabilities(inputs('vad-speech.npy'));
      const silence = await probabilities(inputs('vad-silence.npy'));
      expect(speech.length).toBeGreaterThan(10);
      expect(Math.max(...speech)).toBeGreaterThan(0.9);
      expect(speech.filter((p) => p > 0.5).length / speech.length).toBeGreaterThan(0.3);
      expect(Math.max(...silence)).toBeLessThan(0.5);
    } finally {
      await model.dispose();
    }
  });
});

describe('onnxruntime engine: bad models and GPU support', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'aios-ort-'));
  });

  it('a truncated model fails to load with EAI_MODEL_CORRUPT naming the file', async () => {
    const truncated = path.join(dir, 'truncated.onnx');
    await writeFile(truncated, (await readFile(BLAZEFACE)).subarray(0, 5000));
    const e = (await createOnnxruntimeEngine().load(await detectModel(truncated), cpu).catch((x: unknown) => x)) as ModelError;
    expect(e).toBeInstanceOf(ModelError);
    expect(e.code).toBe('EAI_MODEL_CORRUPT');
    expect(e.message).toContain('truncated.onnx');
  });

  it('run after dispose is a clear error', async () => {
    const model = await createOnnxruntimeEngine().load(await detectModel(BLAZEFACE), cpu);
    await model.dispose();
    await expect(model.run({})).rejects.toMatchObject({ code: 'EAI_MODEL_DISPOSED' });
  });

  it('supports cpu everywhere and refuses device kinds it has no provider for', async () => {
    const engine = createOnnxruntimeEngine();
    expect(await engine.supports(cpu)).toEqual({ ok: true });
    const fpga: DeviceInfo = { id: 'fpga:0000:3b:00.1', kind: 'fpga', name: 'Alveo U50', formats: ['xclbin'], status: { state: 'ready' } };
    expect(await engine.supports(fpga)).toMatchObject({ ok: false, reason: 'onnxruntime has no execution provider for fpga devices' });
  });

  it.runIf(process.arch === 'x64')('on the real H200 machine: CUDA provider missing from the npm install, then CUDA 12 runtime missing', async () => {
    const gpu: DeviceInfo = { id: 'cuda:0000:00:06.0', kind: 'cuda', name: 'NVIDIA H200', formats: ['onnx'], status: { state: 'ready' } };
    const sys = await SysRoot.open(path.join(repo, 'test/fixtures/sysroots/x86-h200-server'));
    const bare = createOnnxruntimeEngine({ sys, bindingDir: '/opt/ort' });
    const s1 = await bare.supports(gpu);
    expect(s1).toMatchObject({ ok: false, reason: 'libonnxruntime_providers_cuda.so not found in /opt/ort' });
    expect(s1.ok === false && s1.fix).toContain('onnxruntime-node-install=cuda12');

    // Same machine with the provider libraries copied in: the CUDA 13 machine lacks CUDA 12.
    const root = path.join(dir, 'h200-with-provider');
    await mkdir(path.join(root, 'opt/ort'), { recursive: true });
    await writeFile(path.join(root, 'opt/ort/libonnxruntime_providers_cuda.so'), '');
    await writeFile(path.join(root, 'opt/ort/libonnxruntime_providers_shared.so'), '');
    const s2 = await createOnnxruntimeEngine({ sys: await SysRoot.open(root), bindingDir: '/opt/ort' }).supports(gpu);
    expect(s2).toMatchObject({ ok: false, reason: 'libcudart.so.12 not found (the CUDA execution provider needs CUDA 12 and cuDNN 9)' });

    // And with CUDA 12 + cuDNN 9 present, the GPU is supported.
    for (const lib of ['libcudart.so.12', 'libcublasLt.so.12', 'libcudnn.so.9']) {
      await mkdir(path.join(root, 'usr/lib/x86_64-linux-gnu'), { recursive: true });
      await writeFile(path.join(root, 'usr/lib/x86_64-linux-gnu', lib), '');
    }
    expect(await createOnnxruntimeEngine({ sys: await SysRoot.open(root), bindingDir: '/opt/ort' }).supports(gpu)).toEqual({ ok: true });
  });
});
