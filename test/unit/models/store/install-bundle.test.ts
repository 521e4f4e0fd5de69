import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { AiosError } from '../../../../drivers/errors.js';
import { X25519Identity } from '../../../../models/bundle/age/keys.js';
import { createDecryptStream, createEncryptStream } from '../../../../models/bundle/age/stream.js';
import { packBundle } from '../../../../models/bundle/bundle.js';
import type { ModelMetadata } from '../../../../models/bundle/manifest.js';
import { generateSigningKey } from '../../../../models/keys.js';
import { installBundle } from '../../../../models/store/install-bundle.js';
import { ModelStore } from '../../../../models/store/model-store.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-install-bundle-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const MODEL = 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx';
const publisher = generateSigningKey();
const policy = { keys: [{ keyid: publisher.keyid, publicKey: publisher.publicKey }], threshold: 1 };
const device = X25519Identity.generate();
const metadata = (version: string): ModelMetadata => ({ name: 'blazeface-front', version, branch: 'main', format: 'onnx', entry: 'face.onnx', inputs: [{ name: 'input:0', dtype: 'float32', shape: [1, 128, 128, 3] }], outputs: [], targets: ['cpu'], minRuntimeVersion: '0.1.0', author: 'tests@aios.dev' });

const v2 = await bundle('1.3.0');

async function bundle(version: string): Promise<Buffer> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  await packBundle({ metadata: metadata(version), files: [{ path: 'face.onnx', source: MODEL, encrypt: true }], keys: [publisher], encryptTo: { recipients: 1, createEncryptStream: () => createEncryptStream([device.recipient]) } }, out);
  return Buffer.concat(chunks);
}

describe('installing a verified bundle into the model store', () => {
  it('installs decrypted versions A/B, rolls back, and refuses a tampered bundle without touching the active version', async () => {
    const store = await ModelStore.open(path.join(tmp, 'store'));
    const decrypt = (): ReturnType<typeof createDecryptStream> => createDecryptStream([device]);
    const v1 = await bundle('1.2.0');
    const slot1 = await installBundle(store, () => Readable.from(v1), policy, { decrypt });
    expect(slot1).toMatchObject({ model: 'blazeface-front', version: '1.2.0', entry: 'face.onnx' });
    expect(readFileSync(path.join(slot1.dir, 'face.onnx')).equals(readFileSync(MODEL))).toBe(true);
    const slot2 = await installBundle(store, () => Readable.from(v2), policy, { decrypt });
    expect(slot2.version).toBe('1.3.0');
    expect((await store.active('blazeface-front'))?.version).toBe('1.3.0');

    const tampered = Buffer.from(await bundle('1.4.0'));
    tampered[tampered.length - 2000] = (tampered[tampered.length - 2000] as number) ^ 1;
    await expect(installBundle(store, () => Readable.from(tampered), policy, { decrypt })).rejects.toMatchObject({ code: expect.stringMatching(/^EAI_(AGE|BUNDLE)_/u) });
    expect((await store.active('blazeface-front'))?.version).toBe('1.3.0');

    await store.rollback('blazeface-front');
    expect((await store.active('blazeface-front'))?.version).toBe('1.2.0');
    expect(await store.check('blazeface-front')).toMatchObject({ version: '1.2.0', files: 1 });
  });

  it('keeps encrypted files encrypted when the store is given no key', async () => {
    const store = await ModelStore.open(path.join(tmp, 'sealed'));
    const slot = await installBundle(store, () => Readable.from(v2), policy);
    expect(slot.entry).toBe('face.onnx.age');
    expect(readFileSync(path.join(slot.dir, 'face.onnx.age')).subarray(0, 21).toString()).toBe('age-encryption.org/v1');
  });

  it('never installs a corrupted bundle: any flipped byte or cut is refused and the active version stays whole', async () => {
    const store = await ModelStore.open(path.join(tmp, 'property'));
    const decrypt = (): ReturnType<typeof createDecryptStream> => createDecryptStream([device]);
    await installBundle(store, () => Readable.from(v2), policy, { decrypt });
    const good = await bundle('2.0.0');
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: good.length - 1 }), fc.integer({ min: 1, max: 255 }), fc.boolean(), async (at, xor, cut) => {
        const bad = cut ? good.subarray(0, at) : Buffer.from(good);
        if (!cut) bad[at] = (bad[at] as number) ^ xor;
        const error = await installBundle(store, () => Readable.from(bad), policy, { decrypt }).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(error).toBeInstanceOf(AiosError);
        const [entry] = await store.list();
        expect(entry?.active?.version).toBe('1.3.0');
        expect(entry?.inactive ?? []).toEqual([]);
      }),
      { numRuns: 40 },
    );
    expect(await store.check('blazeface-front')).toMatchObject({ version: '1.3.0' });
  });
});
