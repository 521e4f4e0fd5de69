import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { createDecryption, createDecryptStream, createEncryptStream } from '../../../../models/bundle/age/stream.js';
import { X25519Identity } from '../../../../models/bundle/age/keys.js';
import { extractBundle, packBundle, verifyBundle, type DecryptFactory } from '../../../../models/bundle/bundle.js';
import { fileSource } from '../../../../models/bundle/tar.js';
import type { ModelMetadata } from '../../../../models/bundle/manifest.js';
import { generateSigningKey } from '../../../../models/keys.js';
import { findBinary } from '../../../support/wait.js';

// The bundle format with its real encryption: model files encrypted by aios's age module to two
// devices, verified and decrypted by aios on one device, refused on a third, and decrypted by
// the age CLI from the bundle's bytes.

const AGE = findBinary('age');
const TAR = findBinary('tar');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-enc-bundle-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const MODEL = 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx';
const publisher = generateSigningKey();
const policy = { keys: [{ keyid: publisher.keyid, publicKey: publisher.publicKey }], threshold: 1 };
const [robot1, robot2, stranger] = [X25519Identity.generate(), X25519Identity.generate(), X25519Identity.generate()] as [X25519Identity, X25519Identity, X25519Identity];
const metadata: ModelMetadata = {
  name: 'blazeface-front',
  version: '1.2.0',
  branch: 'main',
  format: 'onnx',
  entry: 'face.onnx',
  inputs: [{ name: 'input:0', dtype: 'float32', shape: [1, 128, 128, 3] }],
  outputs: [],
  targets: ['cpu', 'cuda'],
  minRuntimeVersion: '0.1.0',
  author: 'tests@aios.dev',
};
const plain = readFileSync(MODEL);

async function encryptedBundle(): Promise<Buffer> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  const recipients = [robot1.recipient, robot2.recipient];
  await packBundle({ metadata, files: [{ path: 'face.onnx', source: MODEL, encrypt: true }], keys: [publisher], encryptTo: { recipients: recipients.length, createEncryptStream: () => createEncryptStream(recipients) } }, out);
  return Buffer.concat(chunks);
}

// Both kinds of decrypter the verifier takes: a stream, and one driven by hand with lent buffers.
const decrypters: readonly [string, (id: X25519Identity) => DecryptFactory][] = [
  ['createDecryption', (id) => () => createDecryption([id])],
  ['createDecryptStream', (id) => () => createDecryptStream([id])],
];

describe.each(decrypters)('an encrypted bundle, decrypted by %s', (_kind, decrypter) => {
  it('verifies and decrypts on each recipient device to the exact model bytes', async () => {
    const bundle = await encryptedBundle();
    expect(bundle.includes(plain.subarray(1000, 1064))).toBe(false); // the model is not in the clear
    for (const device of [robot1, robot2]) {
      let got: Buffer | undefined;
      const verified = await verifyBundle(Readable.from(bundle), policy, {
        decrypt: decrypter(device),
        onFile: async (file, content) => {
          const parts: Buffer[] = [];
          for await (const c of content) parts.push(c as Buffer);
          got = Buffer.concat(parts);
          expect(file).toMatchObject({ path: 'face.onnx', content: 'plaintext', encrypted: { recipients: 2 } });
        },
      });
      expect(got?.equals(plain)).toBe(true);
      expect(verified.statement.subject[0]?.digest.sha256).toBe(createHash('sha256').update(plain).digest('hex'));
    }
  });

  it('on a device it was not encrypted to, says so', async () => {
    const bundle = await encryptedBundle();
    const error = await verifyBundle(Readable.from(bundle), policy, { decrypt: decrypter(stranger), onFile: (_f, c) => void c.resume() }).then(
      () => undefined,
      (e: unknown) => e as { code: string; message: string },
    );
    expect(error?.code).toBe('EAI_AGE_NO_MATCH');
    expect(error?.message).toMatch(/not encrypted to this device/u);
    expect(error?.message).toContain(stranger.recipient.toString());
  });

  it('extracts the plaintext into a private folder on the device', async () => {
    const dir = path.join(tmp, `extracted-${_kind}`);
    await extractBundle(Readable.from(await encryptedBundle()), policy, dir, { decrypt: decrypter(robot2) });
    const file = path.join(dir, 'face.onnx');
    expect(readFileSync(file).equals(plain)).toBe(true);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
  });

  it('read from a file (buffers reused between reads), a corrupted chunk is refused and nothing reaches the sink after it', async () => {
    const bundle = await encryptedBundle();
    const at = bundle.indexOf(Buffer.from('files/face.onnx.age')) + 512 + 300_000;
    const bad = Buffer.from(bundle);
    bad[at] = (bad[at] as number) ^ 0x10;
    const file = path.join(tmp, `bad-${_kind}.bundle`);
    writeFileSync(file, bad);
    let received = 0;
    const error = await verifyBundle(fileSource(file, { chunkSize: 100_000 }), policy, {
      decrypt: decrypter(robot1),
      onFile: async (_f, content) => {
        for await (const c of content) received += (c as Buffer).length;
      },
    }).then(
      () => undefined,
      (e: unknown) => e as { code: string },
    );
    expect(error?.code).toBe('EAI_AGE_PAYLOAD_AUTH');
    expect(received).toBeLessThan(300_000);
    const good = path.join(tmp, `good-${_kind}.bundle`);
    writeFileSync(good, bundle);
    const parts: Buffer[] = [];
    await verifyBundle(fileSource(good, { chunkSize: 100_000 }), policy, { decrypt: decrypter(robot1), onFile: async (_f, content) => void (await content.forEach((c: Buffer) => void parts.push(c))) });
    expect(Buffer.concat(parts).equals(plain)).toBe(true);
  });

  it.skipIf(AGE === undefined || TAR === undefined)('holds a standard age file the age CLI decrypts with the device key', async () => {
    const bundlePath = path.join(tmp, 'face.bundle');
    writeFileSync(bundlePath, await encryptedBundle());
    const ciphertext = execFileSync(TAR as string, ['-xOf', bundlePath, 'files/face.onnx.age'], { maxBuffer: 64 * 1024 * 1024 });
    const identityFile = path.join(tmp, 'robot1.key');
    writeFileSync(identityFile, `${robot1.encode()}\n`, { mode: 0o600 });
    const decrypted = execFileSync(AGE as string, ['-d', '-i', identityFile], { input: ciphertext, maxBuffer: 64 * 1024 * 1024 });
    expect(decrypted.equals(plain)).toBe(true);
  });
});
