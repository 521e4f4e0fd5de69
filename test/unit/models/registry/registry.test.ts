import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyBundle } from '../../../../models/bundle/bundle.js';
import { fileSource } from '../../../../models/bundle/tar.js';
import { generateSigningKey } from '../../../../models/keys.js';
import { Registry } from '../../../../models/registry/registry.js';
import { FACE, faceMetadata, makeBundle, patchInitializer, pub, tempDir, VAD } from './fixtures.js';

const alice = generateSigningKey();
const mallory = generateSigningKey();
const policy = { keys: [pub(alice)], threshold: 1 };
const { dir: tmp, cleanup } = tempDir('aios-registry-test-');
afterAll(cleanup);

let v1: string;
let v2: string;
let changed: string;
beforeAll(async () => {
  const face2 = path.join(tmp, 'face-v2.onnx');
  changed = await patchInitializer(FACE, face2, 10, 6);
  v1 = await makeBundle(tmp, alice, faceMetadata('1.0.0', { notes: 'first' }));
  v2 = await makeBundle(tmp, alice, faceMetadata('1.1.0', { parentVersion: '1.0.0', notes: 'fine-tuned', metrics: { 'wider.ap': 0.84 } }), [{ path: 'face.onnx', source: face2 }, { path: 'LICENSE', source: 'models/zoo/blazeface-front-128/LICENSE' }]);
});

function blobCount(root: string): number {
  const base = path.join(root, 'blobs', 'sha256');
  return readdirSync(base).reduce((n, p) => n + readdirSync(path.join(base, p)).length, 0);
}

describe('Registry push', () => {
  it('stores a verified bundle, shares unchanged files between versions, and re-push is idempotent', async () => {
    const root = path.join(tmp, 'reg-push');
    const reg = await Registry.open(root);
    try {
      const a = await reg.push(v1, policy);
      expect(a.status).toBe('added');
      expect(a.version).toMatchObject({ model: 'blazeface-front', version: '1.0.0', author: 'tests@aios.dev', notes: 'first', signedBy: [alice.keyid] });
      expect(blobCount(root)).toBe(3); // face.onnx, LICENSE, skeleton
      const b = await reg.push(v2, policy);
      expect(b).toMatchObject({ status: 'added', sharedBlobs: 1, newBlobs: 2 }); // LICENSE shared
      expect(blobCount(root)).toBe(5);
      const again = await reg.push(v1, policy);
      expect(again.status).toBe('unchanged');
      expect(blobCount(root)).toBe(5);
      expect(reg.list()).toEqual([{ name: 'blazeface-front', versions: 2, latest: '1.1.0', channels: {} }]);
      const shown = reg.show('blazeface-front', '1.1.0');
      expect(shown.files.map((f) => f.path)).toEqual(['face.onnx', 'LICENSE']);
      expect(shown.files[1]?.blob).toBe(reg.show('blazeface-front', '1.0.0').files[1]?.blob);
    } finally {
      reg.close();
    }
  });

  it('refuses an unverifiable bundle and stores nothing', async () => {
    const root = path.join(tmp, 'reg-refuse');
    const reg = await Registry.open(root);
    try {
      const forged = await makeBundle(tmp, mallory, faceMetadata('9.0.0'));
      await expect(reg.push(forged, policy)).rejects.toMatchObject({ code: 'EAI_BUNDLE_SIGNATURE_UNKNOWN_KEY' });
      // A tampered file body: signature fine, digest not.
      const tampered = path.join(tmp, 'tampered.bundle');
      const bytes = Buffer.from(readFileSync(v1));
      bytes[bytes.length - 3000] = (bytes[bytes.length - 3000] as number) ^ 1;
      writeBytes(tampered, bytes);
      await expect(reg.push(tampered, policy)).rejects.toMatchObject({ code: expect.stringMatching(/^EAI_BUNDLE_/u) });
      expect(reg.list()).toEqual([]);
      expect(blobCount(root)).toBe(0);
      expect(readdirSync(path.join(root, 'tmp'))).toEqual([]);
    } finally {
      reg.close();
    }
  });

  it('refuses another bundle under a version already pushed', async () => {
    const reg = await Registry.open(path.join(tmp, 'reg-conflict'));
    try {
      await reg.push(v1, policy);
      const other = await makeBundle(tmp, alice, faceMetadata('1.0.0', { notes: 'different' }));
      await expect(reg.push(other, policy)).rejects.toMatchObject({ code: 'EAI_REGISTRY_VERSION_CONFLICT' });
    } finally {
      reg.close();
    }
  });

  it('a failure between blobs and row leaves no half version, and gc removes the orphans', async () => {
    const root = path.join(tmp, 'reg-crash');
    let crash = true;
    const reg = await Registry.open(root, {
      beforeRecord: () => {
        if (crash) throw new Error('power cut');
      },
    });
    try {
      await expect(reg.push(v1, policy)).rejects.toThrow('power cut');
      expect(reg.list()).toEqual([]);
      expect(blobCount(root)).toBe(3);
      expect((await reg.gc({ graceMs: 0 })).removed).toHaveLength(3);
      expect(blobCount(root)).toBe(0);
      crash = false;
      expect((await reg.push(v1, policy)).status).toBe('added');
    } finally {
      reg.close();
    }
  });

  it('gc keeps referenced blobs and spares young ones by default', async () => {
    const root = path.join(tmp, 'reg-gc');
    const reg = await Registry.open(root);
    try {
      await reg.push(v1, policy);
      await reg.blobs.put(Buffer.from('orphan'));
      expect((await reg.gc()).removed).toEqual([]);
      const r = await reg.gc({ graceMs: 0 });
      expect(r.removed).toHaveLength(1);
      expect(r.bytes).toBe(6);
      expect(blobCount(root)).toBe(3);
    } finally {
      reg.close();
    }
  });
});

describe('Registry history, export, diff', () => {
  let reg: Registry;
  beforeAll(async () => {
    reg = await Registry.open(path.join(tmp, 'reg-hist'));
    await reg.push(v1, policy);
    await reg.push(v2, policy);
    await reg.push(await makeBundle(tmp, alice, faceMetadata('1.0.1-exp.1', { parentVersion: '1.0.0', branch: 'exp', notes: 'vad' }), [{ path: 'face.onnx', source: FACE }, { path: 'vad.onnx', source: VAD }]), policy);
  });
  afterAll(() => reg.close());

  it('log lists newest first with parents and filters by branch', () => {
    expect(reg.log('blazeface-front').map((v) => [v.version, v.parent, v.branch])).toEqual([
      ['1.0.1-exp.1', '1.0.0', 'exp'],
      ['1.1.0', '1.0.0', 'main'],
      ['1.0.0', undefined, 'main'],
    ]);
    expect(reg.log('blazeface-front', { branch: 'exp' }).map((v) => v.version)).toEqual(['1.0.1-exp.1']);
    expect(() => reg.log('nope')).toThrow(expect.objectContaining({ code: 'EAI_REGISTRY_MODEL_UNKNOWN' }));
  });

  it('exports every version byte-identical to what was pushed, and it verifies', async () => {
    for (const [version, original] of [['1.0.0', v1], ['1.1.0', v2]] as const) {
      const out = path.join(tmp, `export-${version}.bundle`);
      await reg.exportBundle('blazeface-front', version, out);
      expect(readFileSync(out).equals(readFileSync(original))).toBe(true);
      const verified = await verifyBundle(fileSource(out), policy);
      expect(verified.statement.predicate.version).toBe(version);
    }
    expect(statSync(path.join(tmp, 'export-1.0.0.bundle')).size).toBe(reg.show('blazeface-front', '1.0.0').bundleSize);
  });

  it('diff reports files, metadata and the changed ONNX initializer', async () => {
    const d = await reg.diff('blazeface-front', '1.0.0', '1.1.0');
    expect(d.files).toEqual([
      { path: 'face.onnx', status: 'changed', oldSize: statSync(FACE).size, newSize: statSync(FACE).size, delta: 0 },
      { path: 'LICENSE', status: 'unchanged', oldSize: expect.any(Number), newSize: expect.any(Number), delta: 0 },
    ]);
    expect(d.metadata).toEqual([
      { field: 'version', old: '1.0.0', new: '1.1.0' },
      { field: 'parentVersion', new: '1.0.0' },
      { field: 'notes', old: 'first', new: 'fine-tuned' },
      { field: 'metrics.wider.ap', old: 0.81, new: 0.84 },
    ]);
    expect(d.onnx).toHaveLength(1);
    const onnx = d.onnx[0];
    expect(onnx).toMatchObject({ path: 'face.onnx', oldInitializers: 71, newInitializers: 71, unchanged: 70 });
    expect(onnx?.changes).toEqual([expect.objectContaining({ name: changed, status: 'changed', changedBytes: 6 })]);
    const exp = await reg.diff('blazeface-front', '1.0.0', '1.0.1-exp.1');
    expect(exp.files.map((f) => [f.path, f.status])).toEqual([['face.onnx', 'unchanged'], ['LICENSE', 'removed'], ['vad.onnx', 'added']]);
    expect(exp.metadata).toContainEqual({ field: 'branch', old: 'main', new: 'exp' });
  });
});

function writeBytes(file: string, bytes: Buffer): void {
  writeFileSync(file, bytes);
}
