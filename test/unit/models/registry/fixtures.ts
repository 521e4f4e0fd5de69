/** Shared helpers for the registry tests: signed bundles of zoo models, and a patched ONNX "v2". */
import { createWriteStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packBundle, type PackFile } from '../../../../models/bundle/bundle.js';
import type { ModelMetadata } from '../../../../models/bundle/manifest.js';
import type { PublicKey, SigningKey } from '../../../../models/keys.js';
import { readInitializers, withFileSource } from '../../../../models/registry/onnx-initializers.js';

export const FACE = 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx';
export const FACE_LICENSE = 'models/zoo/blazeface-front-128/LICENSE';
export const VAD = 'models/zoo/silero-vad-v4/silero_vad.onnx';

export const pub = (k: SigningKey): PublicKey => ({ keyid: k.keyid, publicKey: k.publicKey });

export function tempDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function faceMetadata(version: string, extra: Partial<ModelMetadata> = {}): ModelMetadata {
  return {
    name: 'blazeface-front',
    version,
    branch: 'main',
    format: 'onnx',
    entry: 'face.onnx',
    inputs: [{ name: 'input', dtype: 'float32', shape: [1, 3, 128, 128] }],
    outputs: [],
    targets: ['cpu'],
    minRuntimeVersion: '0.1.0',
    created: '2026-01-15T12:00:00Z',
    author: 'tests@aios.dev',
    metrics: { 'wider.ap': 0.81 },
    ...extra,
  };
}

/** Packs a signed bundle into `dir` and resolves its path. */
export async function makeBundle(dir: string, key: SigningKey, metadata: ModelMetadata, files: readonly PackFile[] = [{ path: 'face.onnx', source: FACE }, { path: 'LICENSE', source: FACE_LICENSE }]): Promise<string> {
  const out = path.join(dir, `${metadata.name}-${metadata.version}-${Math.random().toString(36).slice(2, 8)}.bundle`);
  const stream = createWriteStream(out);
  const closed = new Promise<void>((resolve) => stream.once('close', () => resolve()));
  await packBundle({ metadata, files, keys: [key] }, stream);
  await closed;
  return out;
}

/**
 * Copies `source` to `out` with `count` bytes of the raw_data of initializer `index` (in file
 * order, counting only those with raw data) changed: a realistic fine-tuned "v2". Resolves the
 * changed initializer's name.
 */
export async function patchInitializer(source: string, out: string, index: number, count = 4): Promise<string> {
  const inits = (await withFileSource(source, readInitializers)).filter((t) => t.ranges.length === 1 && (t.ranges[0]?.[1] ?? 0) >= count);
  const target = inits[index];
  if (target === undefined) throw new Error(`no initializer #${index} with raw data in ${source}`);
  const bytes = Buffer.from(readFileSync(source));
  const [offset] = target.ranges[0] as readonly [number, number];
  for (let i = 0; i < count; i++) bytes[offset + i] = (bytes[offset + i] as number) ^ 0x5a;
  writeFileSync(out, bytes);
  return target.name;
}
