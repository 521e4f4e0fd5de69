import { cp, mkdtemp, mkdir, readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceUnavailableError, ModelError } from '../../../../drivers/errors.js';
import type { OnnxruntimeEngineOptions } from '../../../../drivers/engines/onnxruntime.js';
import { createOnnxruntimeEngine } from '../../../../drivers/engines/onnxruntime.js';
import { checkWebGpu } from '../../../../drivers/engines/onnxruntime/webgpu-check.js';
import { detectModel } from '../../../../drivers/hal/model-format.js';
import { SysRoot } from '../../../../drivers/hal/sysroot.js';
import type { DeviceInfo, LoadedModel, Support } from '../../../../drivers/hal/types.js';
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

  describe('execution providers on NVIDIA devices', () => {
    const h200: DeviceInfo = { id: 'cuda:0000:00:06.0', kind: 'cuda', name: 'NVIDIA H200', formats: ['onnx'], status: { state: 'ready' } };
    const noAdapter = async (): Promise<Support> => ({ ok: false, reason: 'WebGPU has no usable adapter: Vulkan shaderUniform*ArrayDynamicIndexing required.', fix: 'install the Vulkan driver' });
    /** The captured H200 machine, plus extra files (provider libraries, CUDA 12). */
    async function h200With(extra: Record<string, string>): Promise<SysRoot> {
      const root = path.join(dir, `h200-${Object.keys(extra).length}-${Math.random().toString(36).slice(2)}`);
      await cp(path.join(repo, 'test/fixtures/sysroots/x86-h200-server'), root, { recursive: true, verbatimSymlinks: true });
      for (const [file, text] of Object.entries(extra)) {
        await mkdir(path.dirname(path.join(root, file)), { recursive: true });
        await writeFile(path.join(root, file), text);
      }
      return SysRoot.open(root);
    }
    const engineOn = (sys: SysRoot, extra: Partial<OnnxruntimeEngineOptions> = {}) => createOnnxruntimeEngine({ sys, install: sys, bindingDir: '/opt/ort', webgpuBundled: true, webgpuCheck: noAdapter, ...extra });
    const providerLibs = { 'opt/ort/libonnxruntime_providers_cuda.so': '', 'opt/ort/libonnxruntime_providers_shared.so': '' };
    const cuda12 = { 'usr/lib/x86_64-linux-gnu/libcudart.so.12': '', 'usr/lib/x86_64-linux-gnu/libcublasLt.so.12': '', 'usr/lib/x86_64-linux-gnu/libcudnn.so.9': '' };

    it('on the real H200 machine as npm installs it: every GPU provider refused, each with its reason', async () => {
      const s = await engineOn(await SysRoot.open(path.join(repo, 'test/fixtures/sysroots/x86-h200-server'))).supports(h200);
      expect(s.ok).toBe(false);
      if (s.ok) return;
      expect(s.reason).toContain('tensorrt: libonnxruntime_providers_tensorrt.so not found in /opt/ort');
      expect(s.reason).toContain('cuda: libonnxruntime_providers_cuda.so not found in /opt/ort');
      expect(s.reason).toContain('webgpu: libvulkan.so.1 not found');
      expect(s.fix).toContain('onnxruntime-node-install=cuda12');
    });

    it('with the CUDA provider copied in, the CUDA 13 machine still lacks CUDA 12', async () => {
      const s = await engineOn(await h200With(providerLibs)).supports(h200);
      expect(s.ok === false && s.reason).toContain('cuda: libcudart.so.12 not found');
    });

    it('with CUDA 12 and cuDNN 9 present, CUDA is supported while TensorRT still is not', async () => {
      const engine = engineOn(await h200With({ ...providerLibs, ...cuda12 }));
      expect(await engine.supports(h200)).toEqual({ ok: true });
    });

    it('WebGPU counts when its adapter check passes, and a Vulkan-less machine says so', async () => {
      const vulkan = { 'usr/lib/x86_64-linux-gnu/libvulkan.so.1': '' };
      expect(await engineOn(await h200With(vulkan), { webgpuCheck: async () => ({ ok: true }) }).supports(h200)).toEqual({ ok: true });
      const s = await engineOn(await h200With(vulkan)).supports(h200);
      expect(s.ok === false && s.reason).toContain('webgpu: WebGPU has no usable adapter: Vulkan shaderUniform*ArrayDynamicIndexing required.');
    });

    it('a Jetson with the npm binding is told to build onnxruntime-node on the device', async () => {
      const orin: DeviceInfo = { id: 'jetson:gpu0', kind: 'jetson', name: 'Orin NX', formats: ['onnx'], status: { state: 'ready' } };
      const s = await engineOn(await SysRoot.open(path.join(repo, 'test/fixtures/sysroots/jetson-orin-nx-jp6')), { webgpuBundled: false }).supports(orin);
      expect(s.ok === false && s.reason).toContain('onnxruntime-node from npm for linux/');
      expect(s.ok === false && s.fix).toContain('deploy/jetson/build-onnxruntime-node.sh');
    });

    it('an aios source build is detected by its aios-build.json and checked against the libraries it names', async () => {
      const build = JSON.stringify({ providers: ['tensorrt', 'cuda'], requires: { cuda: ['libcudart.so.11.0'], tensorrt: ['libnvinfer.so.8'] }, tensorrtOptions: true, jetpack: '5.1.2' });
      const sys = await h200With({ ...providerLibs, 'opt/ort/libonnxruntime_providers_tensorrt.so': '', 'opt/ort/aios-build.json': build });
      const engine = createOnnxruntimeEngine({ sys, install: sys, bindingDir: '/opt/ort', webgpuBundled: false });
      const s = await engine.supports(h200);
      expect(s.ok === false && s.reason).toContain('tensorrt: libnvinfer.so.8 not found');
      expect(s.ok === false && s.reason).toContain('cuda: libcudart.so.11.0 not found');
    });

    it('when every GPU provider fails at session creation, load says why for each and refuses', async () => {
      // Files say WebGPU could run, the adapter check is told it can, but this machine has no GPU:
      // the real session creation fails, and the engine reports it instead of crashing.
      const engine = engineOn(await h200With({ 'usr/lib/x86_64-linux-gnu/libvulkan.so.1': '' }), { bindingDir: '/opt/ort', webgpuCheck: async () => ({ ok: true }) });
      const e = (await engine.load(await detectModel(BLAZEFACE), h200).catch((x: unknown) => x)) as DeviceUnavailableError;
      expect(e).toBeInstanceOf(DeviceUnavailableError);
      expect(e.code).toBe('EAI_HAL_ENGINE_UNAVAILABLE');
      expect(e.message).toContain('tensorrt: libonnxruntime_providers_tensorrt.so not found');
      expect(e.message).toMatch(/webgpu: session creation failed: .*adapter/iu);
    });
  });

  it('asks a real WebGPU adapter on this machine in a child process and explains the refusal', async () => {
    const s = await checkWebGpu(createRequire(import.meta.url).resolve('onnxruntime-node'));
    // This CI-class machine has no GPU: with Mesa's llvmpipe Vulkan installed Dawn rejects it for a
    // missing feature; without any Vulkan driver there is no adapter at all. Either way: refused.
    expect(s.ok).toBe(false);
    expect(s.ok === false && s.reason).toMatch(/^WebGPU has no usable adapter: .*(required|adapter)/u);
  });
});
