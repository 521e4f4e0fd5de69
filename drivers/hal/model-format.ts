import { promises as fs } from 'node:fs';
import path from 'node:path';
import { ModelError } from '../errors.js';
import type { ModelFormat, ModelSource } from './types.js';

/**
 * Works out a model's format from what is on disk, reading only as much as it needs: a folder (or
 * a `model.json`) is TF.js, told apart by the `format` field tensorflowjs_converter writes, unless
 * it holds an FPGA kernel descriptor (`model.xrt.json`; a `*.xrt.json` file is one too);
 * `.onnx`, `.tflite` and `.xclbin` by extension and magic bytes. An Edge TPU model is a .tflite
 * that contains the `edgetpu-custom-op` custom operator, which edgetpu_compiler inserts.
 *
 * Throws ModelError EAI_MODEL_NOT_FOUND for a missing path, EAI_MODEL_FORMAT for anything else.
 */
export async function detectModel(modelPath: string): Promise<ModelSource> {
  let stat;
  try {
    stat = await fs.stat(modelPath);
  } catch (cause) {
    throw new ModelError('EAI_MODEL_NOT_FOUND', `Model '${modelPath}' does not exist. Give the path of a .onnx or .tflite file, or of a TF.js model folder holding model.json.`, { cause, details: { path: modelPath } });
  }
  if (stat.isDirectory()) {
    // An FPGA kernel folder holds its descriptor; a TF.js folder holds model.json.
    if (await exists(path.join(modelPath, 'model.xrt.json'))) return { path: modelPath, format: 'xclbin' };
    return { path: modelPath, format: await tfjsFormat(path.join(modelPath, 'model.json')) };
  }
  if (modelPath.toLowerCase().endsWith('.xrt.json')) return { path: modelPath, format: 'xclbin' };
  const ext = path.extname(modelPath).toLowerCase();
  if (ext === '.json') return { path: path.dirname(modelPath), format: await tfjsFormat(modelPath) };
  const head = await readHead(modelPath, 8);
  if (ext === '.tflite') {
    // FlatBuffers put the file identifier at bytes 4..8; TFLite's is "TFL3".
    if (head.subarray(4, 8).toString('latin1') !== 'TFL3') throw corrupt(modelPath, 'a TFLite flatbuffer (identifier TFL3 at byte 4)');
    return { path: modelPath, format: (await containsAscii(modelPath, 'edgetpu-custom-op')) ? 'tflite-edgetpu' : 'tflite' };
  }
  if (ext === '.xclbin') {
    if (head.subarray(0, 7).toString('latin1') !== 'xclbin2') throw corrupt(modelPath, "an xclbin container (magic 'xclbin2')");
    return { path: modelPath, format: 'xclbin' };
  }
  if (ext === '.onnx' || ext === '.ort') {
    // An ONNX file is a protobuf ModelProto; field 1 (ir_version, varint) comes first in every
    // exporter's output, so byte 0 is 0x08. Anything else is not a model we can open.
    if (head.length === 0 || head[0] !== 0x08) throw corrupt(modelPath, 'an ONNX protobuf (ModelProto starting with ir_version)');
    return { path: modelPath, format: 'onnx' };
  }
  throw new ModelError('EAI_MODEL_FORMAT', `Cannot tell the format of '${modelPath}'. Supported: .onnx, .tflite, .xclbin, or a TF.js folder with model.json.`, { details: { path: modelPath } });
}

async function tfjsFormat(jsonPath: string): Promise<ModelFormat> {
  let text: string;
  try {
    text = await fs.readFile(jsonPath, 'utf8');
  } catch (cause) {
    throw new ModelError('EAI_MODEL_NOT_FOUND', `TF.js model file '${jsonPath}' does not exist. A TF.js model folder holds model.json and its weight shards.`, { cause, details: { path: jsonPath } });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (cause) {
    throw new ModelError('EAI_MODEL_CORRUPT', `'${jsonPath}' is not valid JSON, so it is not a TF.js model. Re-export it with tensorflowjs_converter.`, { cause, details: { path: jsonPath } });
  }
  const model = json as { format?: unknown; modelTopology?: { class_name?: unknown; node?: unknown } };
  if (typeof model !== 'object' || model === null || model.modelTopology === undefined) {
    throw new ModelError('EAI_MODEL_CORRUPT', `'${jsonPath}' has no modelTopology, so it is not a TF.js model.json. Re-export it with tensorflowjs_converter.`, { details: { path: jsonPath } });
  }
  if (model.format === 'graph-model' || Array.isArray(model.modelTopology.node)) return 'tfjs-graph';
  return 'tfjs-layers';
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.access(file);
    return true;
  } catch {
    return false;
  }
}

function corrupt(modelPath: string, expected: string): ModelError {
  return new ModelError('EAI_MODEL_CORRUPT', `'${modelPath}' is not ${expected}; the file is corrupt or truncated. Copy the model again.`, { details: { path: modelPath } });
}

async function readHead(file: string, n: number): Promise<Buffer> {
  const handle = await fs.open(file, 'r');
  try {
    const buf = Buffer.alloc(n);
    const { bytesRead } = await handle.read(buf, 0, n, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/** Streams the file looking for a marker, so a 100 MB model is never held whole. */
async function containsAscii(file: string, marker: string): Promise<boolean> {
  const needle = Buffer.from(marker, 'latin1');
  const handle = await fs.open(file, 'r');
  try {
    const chunk = Buffer.alloc(1 << 20);
    let carry = Buffer.alloc(0);
    let position = 0;
    for (;;) {
      const { bytesRead } = await handle.read(chunk, 0, chunk.length, position);
      if (bytesRead === 0) return false;
      position += bytesRead;
      const window = Buffer.concat([carry, chunk.subarray(0, bytesRead)]);
      if (window.includes(needle)) return true;
      carry = window.subarray(Math.max(0, window.length - needle.length + 1));
    }
  } finally {
    await handle.close();
  }
}
