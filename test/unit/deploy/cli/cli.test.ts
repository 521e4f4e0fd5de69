import { cp, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { readNpy } from '../../../../drivers/tensor/npy.js';
import { runCli } from '../../../support/cli.js';

const repo = path.resolve(import.meta.dirname, '../../../..');
const BLAZEFACE = path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx');
const SILERO = path.join(repo, 'models/zoo/silero-vad-v4/silero_vad.onnx');
const FACE = path.join(repo, 'test/fixtures/inputs/blazeface128-face.npy');
const sysroot = (name: string): string => path.join(repo, 'test/fixtures/sysroots', name);

const aios = runCli;

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'aios-cli-'));
});
afterEach(() => vi.restoreAllMocks());

describe('aios devices', () => {
  it('prints a table for this machine with the CPU ready', async () => {
    const r = await aios('devices');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^ID\s+KIND\s+NAME\s+MEMORY\s+FORMATS\s+STATUS\s+ENGINES/u);
    expect(r.stdout).toMatch(/cpu:0\s+cpu\s+.*ready\s+onnxruntime,tflite,tfjs/u);
  });

  it('--json on this machine says which engines can use each ready device', async () => {
    const r = await aios('devices', '--json');
    const devices = JSON.parse(r.stdout) as { id: string; engines?: { engine: string; ok: boolean }[] }[];
    expect(devices.find((d) => d.id === 'cpu:0')?.engines).toEqual([{ engine: 'onnxruntime', ok: true }, { engine: 'tflite', ok: true }, { engine: 'tfjs', ok: true }]);
    const plain = JSON.parse((await aios('devices', '--json', '--no-engines')).stdout) as { engines?: unknown }[];
    expect(plain.every((d) => d.engines === undefined)).toBe(true);
  });

  it('shows a captured machine with its engines checked from its files', async () => {
    const r = await aios('devices', '--sysroot', sysroot('x86-rtx4090'));
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/cuda:0000:01:00.0\s+cuda\s+NVIDIA GeForce RTX 4090\s+24.0 GiB\s+onnx,tfjs-graph,tfjs-layers\s+ready\s+-/u);
    expect(r.stdout).toMatch(/\ncuda:0000:01:00.0: onnxruntime cannot use it: no GPU execution provider/u);
  });

  it('prints reason and fix under the table for an unavailable device', async () => {
    // A Raspberry Pi with a Coral USB stick plugged in but no Edge TPU runtime installed.
    const root = path.join(tmp, 'coral-no-runtime');
    await cp(sysroot('rpi5-coral-usb'), root, { recursive: true, verbatimSymlinks: true });
    await rm(path.join(root, 'usr/lib/aarch64-linux-gnu/libedgetpu.so.1'));
    const r = await aios('devices', '--sysroot', root);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/edgetpu:usb-2-1\s+edgetpu\s+Coral USB Accelerator\s+8.0 MiB\s+tflite-edgetpu,tflite\s+unavailable/u);
    expect(r.stdout).toMatch(/\nedgetpu:usb-2-1: libedgetpu.so.1 not found.*\n  fix: .*libedgetpu1-std/u);
  });

  it('an unknown option is a usage error with exit status 2', async () => {
    const r = await aios('devices', '--color');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^error EAI_CLI_USAGE: unknown option '--color'/u);
  });

  it('--json gives DeviceInfo objects for a captured H200 machine', async () => {
    const r = await aios('devices', '--sysroot', sysroot('x86-h200-server'), '--json');
    expect(r.code).toBe(0);
    const devices = JSON.parse(r.stdout) as { id: string; kind: string; name: string; memoryBytes: number; status: { state: string } }[];
    const gpu = devices.find((d) => d.kind === 'cuda');
    expect(gpu).toMatchObject({ id: 'cuda:0000:00:06.0', name: 'NVIDIA H200', memoryBytes: 143771 * 1024 * 1024, status: { state: 'ready' } });
    expect(devices.find((d) => d.kind === 'cpu')?.id).toBe('cpu:0');
  });

  it('a sysroot that does not exist is EAI_SYSROOT_NOT_FOUND, exit 1, no stack', async () => {
    const r = await aios('devices', '--sysroot', '/no/such/root');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error EAI_SYSROOT_NOT_FOUND: System root '\/no\/such\/root' does not exist/u);
    expect(r.stderr).not.toMatch(/\n\s+at /u);
  });

  it('--debug adds the stack', async () => {
    const r = await aios('--debug', 'devices', '--sysroot', '/no/such/root');
    expect(r.stderr).toMatch(/\n\s+at /u);
  });
});

describe('aios infer', () => {
  it('prints each output with dtype, shape and summary', async () => {
    const r = await aios('infer', BLAZEFACE, '--input', `input:0=${FACE}`, '--device', 'cpu');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('device  cpu:0 (onnxruntime, cpu)');
    expect(r.stdout).toMatch(/Identity:0\s+float32\s+\[1, 512, 1\]/u);
    expect(r.stdout).toMatch(/Identity_3:0\s+float32\s+\[1, 384, 16\]/u);
  });

  it('--json and --out give the outputs as data and as .npy files', async () => {
    const out = path.join(tmp, 'out');
    const r = await aios('infer', BLAZEFACE, '-i', FACE, '--json', '--out', out);
    expect(r.code).toBe(0);
    const json = JSON.parse(r.stdout) as { device: string; engine: string; outputs: Record<string, { dtype: string; shape: number[]; data: number[] }> };
    expect(json.engine).toBe('onnxruntime');
    expect(json.outputs['Identity:0']?.shape).toEqual([1, 512, 1]);
    expect(json.outputs['Identity:0']?.data).toHaveLength(512);
    expect((await readdir(out)).sort()).toEqual(['Identity_0.npy', 'Identity_1_0.npy', 'Identity_2_0.npy', 'Identity_3_0.npy']);
    const saved = await readNpy(path.join(out, 'Identity_0.npy'));
    expect(Array.from(saved.data as Float32Array)).toEqual(json.outputs['Identity:0']?.data);
  });

  const failures: [string, string[], RegExp][] = [
    ['missing model', ['/no/model.onnx', '-i', FACE], /^error EAI_MODEL_NOT_FOUND: Model '\/no\/model.onnx' does not exist/u],
    ['wrong input name', [BLAZEFACE, '-i', `image=${FACE}`], /^error EAI_MODEL_INPUT_UNKNOWN: .*has no input named 'image'/u],
    ['unknown device kind', [BLAZEFACE, '-i', FACE, '--device', 'tpu'], /^error EAI_HAL_UNKNOWN_DEVICE: Unknown device 'tpu'/u],
    ['missing .npy', [BLAZEFACE, '-i', 'input:0=/no/x.npy'], /^error EAI_NPY_NOT_FOUND: .*\/no\/x.npy/u],
    ['no inputs', [BLAZEFACE], /^error EAI_CLI_USAGE: No inputs given/u],
    ['unnamed input for a multi-input model', [SILERO, '-i', FACE], /^error EAI_CLI_USAGE: The model has 4 inputs/u],
    ['bad thread count', [BLAZEFACE, '-i', FACE, '--threads', 'zero'], /^error EAI_CLI_USAGE: --threads must be a positive integer/u],
  ];
  for (const [label, args, message] of failures) {
    it(`${label}: clear error, non-zero exit, no stack`, async () => {
      const r = await aios('infer', ...args);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).not.toMatch(/\n\s+at /u);
    });
  }

  it('a corrupt model file and a malformed .npy are reported with their codes', async () => {
    const corrupt = path.join(tmp, 'corrupt.onnx');
    await writeFile(corrupt, 'this is not a model');
    const r1 = await aios('infer', corrupt, '-i', FACE);
    expect(r1.stderr).toMatch(/^error EAI_MODEL_CORRUPT: .*corrupt.onnx/u);
    const bad = path.join(tmp, 'bad.npy');
    await writeFile(bad, 'not numpy at all');
    const r2 = await aios('infer', BLAZEFACE, '-i', `input:0=${bad}`);
    expect(r2.stderr).toMatch(/^error EAI_NPY_MAGIC: /u);
    expect(r2.code).toBe(1);
  });

  it('--help lists every option', async () => {
    const r = await aios('infer', '--help');
    for (const flag of ['--input', '--device', '--threads', '--out', '--json']) expect(r.stdout).toContain(flag);
    expect(r.code).toBe(0);
  });
});

describe('aios devices on captured machines: engines per device', () => {
  const engines = async (root: string): Promise<Map<string, { engine: string; ok: boolean; reason?: string }[]>> => {
    const r = await aios('devices', '--sysroot', sysroot(root), '--json');
    const devices = JSON.parse(r.stdout) as { id: string; engines?: { engine: string; ok: boolean; reason?: string }[] }[];
    return new Map(devices.map((d) => [d.id, d.engines ?? []]));
  };

  it('Raspberry Pi 5 + Coral USB: tflite drives both sticks (libedgetpu is installed there)', async () => {
    const m = await engines('rpi5-coral-usb');
    expect(m.get('edgetpu:usb-2-1')).toEqual([{ engine: 'tflite', ok: true }]);
    expect(m.get('cpu:0')?.map((e) => e.engine)).toEqual(['onnxruntime', 'tflite', 'tfjs']);
  });

  it('Jetson Orin NX: the npm onnxruntime cannot use the GPU and says to build it on the device', async () => {
    const gpu = (await engines('jetson-orin-nx-jp6')).get('jetson:gpu0');
    const ort = gpu?.find((e) => e.engine === 'onnxruntime');
    expect(ort?.ok).toBe(false);
    expect(ort?.reason).toContain('onnxruntime-node from npm for linux/arm64 is CPU-only');
    expect(gpu?.find((e) => e.engine === 'tfjs')?.reason).toBe('@tensorflow/tfjs-node-gpu is not installed');
  });

  it('x86 + RTX 4090: no GPU provider in the npm install, each reason listed', async () => {
    const ort = (await engines('x86-rtx4090')).get('cuda:0000:01:00.0')?.find((e) => e.engine === 'onnxruntime');
    expect(ort?.reason).toMatch(/tensorrt: .*not found.*cuda: libonnxruntime_providers_cuda.so not found.*webgpu: /u);
  });

  it('Alveo U50 and Kria KV260: xrt can drive the FPGA where XRT is installed', async () => {
    expect((await engines('x86-alveo-u50')).get('fpga:0000:3b:00.1')).toEqual([{ engine: 'xrt', ok: true }]);
    expect((await engines('kria-kv260')).get('fpga:fpga0')).toEqual([{ engine: 'xrt', ok: true }]);
  });
});
