import { copyFile, mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ModelError } from '../../../../drivers/errors.js';
import { detectModel } from '../../../../drivers/hal/model-format.js';

const repo = path.resolve(import.meta.dirname, '../../../..');
let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'aios-format-'));
});

async function code(p: string): Promise<string> {
  const e = await detectModel(p).catch((x: unknown) => x);
  expect(e).toBeInstanceOf(ModelError);
  return (e as ModelError).code;
}

describe('detectModel', () => {
  it('recognises the zoo ONNX models', async () => {
    expect(await detectModel(path.join(repo, 'models/zoo/silero-vad-v4/silero_vad.onnx'))).toMatchObject({ format: 'onnx' });
  });

  it('tells TF.js graph from layers models, by folder or by model.json', async () => {
    const graph = path.join(dir, 'graph');
    await mkdir(graph);
    await writeFile(path.join(graph, 'model.json'), JSON.stringify({ format: 'graph-model', modelTopology: { node: [] }, weightsManifest: [] }));
    expect(await detectModel(graph)).toEqual({ path: graph, format: 'tfjs-graph' });
    const layers = path.join(dir, 'layers');
    await mkdir(layers);
    await writeFile(path.join(layers, 'model.json'), JSON.stringify({ format: 'layers-model', modelTopology: { class_name: 'Sequential' }, weightsManifest: [] }));
    expect(await detectModel(path.join(layers, 'model.json'))).toEqual({ path: layers, format: 'tfjs-layers' });
  });

  it('recognises an FPGA kernel descriptor, as a file or as a folder, before TF.js', async () => {
    const folder = path.join(dir, 'vadd');
    await mkdir(folder);
    await writeFile(path.join(folder, 'model.xrt.json'), '{}');
    await writeFile(path.join(folder, 'model.json'), '{}');
    expect(await detectModel(folder)).toEqual({ path: folder, format: 'xclbin' });
    await writeFile(path.join(dir, 'vadd.xrt.json'), '{}');
    expect(await detectModel(path.join(dir, 'vadd.xrt.json'))).toEqual({ path: path.join(dir, 'vadd.xrt.json'), format: 'xclbin' });
  });

  it('tells an Edge TPU-compiled .tflite from a plain one by its custom op', async () => {
    const head = Buffer.from([0x1c, 0, 0, 0, 0x54, 0x46, 0x4c, 0x33]); // flatbuffer root offset + "TFL3"
    await writeFile(path.join(dir, 'plain.tflite'), Buffer.concat([head, Buffer.alloc(64)]));
    await writeFile(path.join(dir, 'tpu.tflite'), Buffer.concat([head, Buffer.alloc(3 << 20), Buffer.from('edgetpu-custom-op'), Buffer.alloc(16)]));
    expect((await detectModel(path.join(dir, 'plain.tflite'))).format).toBe('tflite');
    expect((await detectModel(path.join(dir, 'tpu.tflite'))).format).toBe('tflite-edgetpu');
  });

  it('finds the Edge TPU marker across a 1 MiB read boundary', async () => {
    const head = Buffer.from([0x1c, 0, 0, 0, 0x54, 0x46, 0x4c, 0x33]);
    const file = path.join(dir, 'boundary.tflite');
    await writeFile(file, Buffer.concat([head, Buffer.alloc((1 << 20) - 8 - 5), Buffer.from('edgetpu-custom-op')]));
    expect((await detectModel(file)).format).toBe('tflite-edgetpu');
  });

  it('gives stable codes for missing, corrupt and unknown models', async () => {
    expect(await code(path.join(dir, 'missing.onnx'))).toBe('EAI_MODEL_NOT_FOUND');
    await writeFile(path.join(dir, 'text.onnx'), 'hello');
    expect(await code(path.join(dir, 'text.onnx'))).toBe('EAI_MODEL_CORRUPT');
    await writeFile(path.join(dir, 'bad.tflite'), 'abcdefgh');
    expect(await code(path.join(dir, 'bad.tflite'))).toBe('EAI_MODEL_CORRUPT');
    await writeFile(path.join(dir, 'weights.pt'), 'x');
    expect(await code(path.join(dir, 'weights.pt'))).toBe('EAI_MODEL_FORMAT');
    const empty = path.join(dir, 'empty-folder');
    await mkdir(empty);
    expect(await code(empty)).toBe('EAI_MODEL_NOT_FOUND');
    const notJson = path.join(dir, 'notjson');
    await mkdir(notJson);
    await writeFile(path.join(notJson, 'model.json'), '{');
    expect(await code(notJson)).toBe('EAI_MODEL_CORRUPT');
    await copyFile(path.join(repo, 'package.json'), path.join(dir, 'package.json'));
    expect(await code(path.join(dir, 'package.json'))).toBe('EAI_MODEL_CORRUPT');
  });
});
