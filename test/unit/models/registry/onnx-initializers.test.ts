import { readFileSync } from 'node:fs';
import path from 'node:path';
import protobuf from 'protobufjs';
import { afterAll, describe, expect, it } from 'vitest';
import { compareInitializers } from '../../../../models/registry/diff.js';
import { readInitializers, withFileSource } from '../../../../models/registry/onnx-initializers.js';
import { FACE, patchInitializer, tempDir, VAD } from './fixtures.js';

// An independent decoder: the few ONNX messages we read, described for protobufjs.
const proto = protobuf.parse(`
  syntax = "proto3";
  message TensorProto { repeated int64 dims = 1; int32 data_type = 2; string name = 8; bytes raw_data = 9; repeated float float_data = 4; repeated int64 int64_data = 7; }
  message GraphProto { repeated TensorProto initializer = 5; }
  message ModelProto { GraphProto graph = 7; }
`).root;
const Model = proto.lookupType('ModelProto');
const { dir: tmp, cleanup } = tempDir('aios-onnx-test-');
afterAll(cleanup);

describe('readInitializers', () => {
  for (const file of [FACE, VAD, 'models/zoo/blazeface-back-256/face_detection_back_256x256_barracuda.onnx']) {
    it(`matches protobufjs on ${path.basename(file)}`, async () => {
      const ours = await withFileSource(file, readInitializers);
      const theirs = (Model.toObject(Model.decode(readFileSync(file)), { longs: Number }) as { graph: { initializer: { name: string; dims?: number[]; dataType?: number; rawData?: Uint8Array }[] } }).graph.initializer;
      expect(ours.map((t) => t.name)).toEqual(theirs.map((t) => t.name));
      expect(ours.map((t) => t.dims)).toEqual(theirs.map((t) => t.dims ?? []));
      expect(ours.map((t) => t.dataType)).toEqual(theirs.map((t) => t.dataType ?? 0));
      for (const [i, t] of ours.entries()) {
        const raw = theirs[i]?.rawData;
        if (raw !== undefined && raw.length > 0) expect(t.bytes).toBe(raw.length);
      }
    });
  }

  it('finds the expected counts in the zoo models (silero: float weights sized dims × 4)', async () => {
    const vad = await withFileSource(VAD, readInitializers);
    expect(vad).toHaveLength(69);
    expect(vad[0]).toMatchObject({ name: 'model.feature_extractor.forward_basis_buffer', dims: [258, 1, 256], dataType: 1, bytes: 258 * 256 * 4, external: false });
    for (const t of vad.filter((x) => x.dataType === 1)) expect(t.bytes).toBe(t.dims.reduce((a, b) => a * b, 1) * 4);
    expect(await withFileSource(FACE, readInitializers)).toHaveLength(71);
  });

  it('reports exactly the patched initializer as changed', async () => {
    const out = path.join(tmp, 'v2.onnx');
    const name = await patchInitializer(VAD, out, 3, 8);
    const diff = compareInitializers(await withFileSource(VAD, readInitializers), await withFileSource(out, readInitializers));
    expect(diff.unchanged).toBe(68);
    expect(diff.changes).toEqual([expect.objectContaining({ name, status: 'changed' })]);
  });

  it('refuses a file that is not protobuf with EAI_REGISTRY_ONNX_INVALID', async () => {
    const bytes = Buffer.from([0x3a, 0xff, 0xff, 0x03, 0x00]); // field 7, length past the end
    await expect(readInitializers({ size: bytes.length, read: async (o, l) => bytes.subarray(o, o + l) })).rejects.toMatchObject({ code: 'EAI_REGISTRY_ONNX_INVALID' });
  });
});
