import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Duplex, PassThrough, Readable, Transform, type TransformCallback } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { AiosError } from '../../../../drivers/errors.js';
import { extractBundle, inspectBundle, packBundle, signBundle, verifyBundle, type DecryptFactory, type DeliveredFile, type Encryption, type PackOptions } from '../../../../models/bundle/bundle.js';
import type { ModelMetadata } from '../../../../models/bundle/manifest.js';
import { fileSource } from '../../../../models/bundle/tar.js';
import { generateSigningKey, publicKeyPem, type PublicKey, type SigningKey } from '../../../../models/keys.js';
import { findBinary } from '../../../support/wait.js';

const TAR = findBinary('tar');
const OPENSSL = findBinary('openssl');
const JQ = findBinary('jq');
const AGE = findBinary('age');
const AGE_KEYGEN = findBinary('age-keygen');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-bundle-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const SSD = 'models/zoo/ssd-mobilenet-v2-coco-quant-tflite';
const BLAZEFACE = 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx';
const [alice, bob] = [generateSigningKey(), generateSigningKey()] as [SigningKey, SigningKey];
const pub = (k: SigningKey): PublicKey => ({ keyid: k.keyid, publicKey: k.publicKey });
const policy = { keys: [pub(alice)], threshold: 1 };

const ssdMetadata: ModelMetadata = {
  name: 'ssd-mobilenet-v2-coco',
  version: '1.0.0',
  branch: 'main',
  format: 'tflite',
  entry: 'model.tflite',
  inputs: [{ name: 'normalized_input_image_tensor', dtype: 'uint8', shape: [1, 300, 300, 3] }],
  outputs: [{ name: 'TFLite_Detection_PostProcess', dtype: 'float32', shape: [1, 10, 4] }],
  targets: ['cpu'],
  minRuntimeVersion: '0.1.0',
  created: '2026-01-15T12:00:00Z',
  author: 'tests@aios.dev',
  metrics: { 'coco.mAP': 0.22 },
};
const ssdFiles = [
  { path: 'model.tflite', source: `${SSD}/mobilenet_ssd_v2_coco_quant_postprocess.tflite` },
  { path: 'labels/coco.txt', source: `${SSD}/coco_labels.txt` },
];
const faceMetadata: ModelMetadata = { ...ssdMetadata, name: 'blazeface-front', format: 'onnx', entry: 'face.onnx', inputs: [{ name: 'input:0', dtype: 'float32', shape: [1, 128, 128, 3] }], outputs: [] };

async function pack(options: Partial<PackOptions> = {}): Promise<Buffer> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  await packBundle({ metadata: ssdMetadata, files: ssdFiles, keys: [alice], ...options }, out);
  return Buffer.concat(chunks);
}

/** Verifies and collects every delivered file (content read fully). */
async function collect(bundle: Buffer, options: { decrypt?: DecryptFactory; keys?: PublicKey[]; threshold?: number } = {}): Promise<{ files: Map<string, { file: DeliveredFile; data: Buffer }>; signedBy: readonly string[] }> {
  const files = new Map<string, { file: DeliveredFile; data: Buffer }>();
  const verified = await verifyBundle(Readable.from(bundle), { keys: options.keys ?? [pub(alice)], threshold: options.threshold ?? 1 }, {
    ...(options.decrypt ? { decrypt: options.decrypt } : {}),
    onFile: async (file, content) => {
      const chunks: Buffer[] = [];
      for await (const c of content) chunks.push(c as Buffer);
      files.set(file.path, { file, data: Buffer.concat(chunks) });
    },
  });
  return { files, signedBy: verified.signedBy };
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (error) {
    if (error instanceof AiosError) return error.code;
    throw error;
  }
  return 'resolved';
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A stand-in for age (models/bundle/age): AES-256-CTR with a random IV as a 16-byte header. */
function fakeAge(key: Buffer): Encryption & { decrypt: DecryptFactory } {
  class Encrypt extends Transform {
    readonly #iv = randomBytes(16);
    readonly #cipher = createCipheriv('aes-256-ctr', key, this.#iv);
    #started = false;
    override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
      if (!this.#started) this.push(this.#iv);
      this.#started = true;
      cb(null, this.#cipher.update(chunk));
    }
    override _flush(cb: TransformCallback): void {
      if (!this.#started) this.push(this.#iv);
      cb(null, this.#cipher.final());
    }
  }
  class Decrypt extends Transform {
    #head = Buffer.alloc(0);
    #decipher: ReturnType<typeof createDecipheriv> | undefined;
    override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
      if (this.#decipher === undefined) {
        this.#head = Buffer.concat([this.#head, chunk]);
        if (this.#head.length < 16) return cb();
        this.#decipher = createDecipheriv('aes-256-ctr', key, this.#head.subarray(0, 16));
        chunk = this.#head.subarray(16);
      }
      cb(null, this.#decipher.update(chunk));
    }
    override _flush(cb: TransformCallback): void {
      if (this.#decipher === undefined) return cb(new Error('ciphertext shorter than its header'));
      cb(null, this.#decipher.final());
    }
  }
  return { recipients: 2, createEncryptStream: () => new Encrypt(), decrypt: () => new Decrypt() };
}

describe('pack and verify', () => {
  it('packs real model files and verifies them, delivering exactly their bytes', async () => {
    const bundle = await pack();
    const { files, signedBy } = await collect(bundle);
    expect(signedBy).toEqual([alice.keyid]);
    for (const f of ssdFiles) {
      const data = readFileSync(f.source);
      expect(files.get(f.path)?.data.equals(data)).toBe(true);
      expect(files.get(f.path)?.file).toMatchObject({ path: f.path, size: data.length, sha256: sha256(data), entryName: `files/${f.path}`, content: 'plaintext' });
    }
    const verified = await verifyBundle(Readable.from(bundle), policy);
    expect(verified.statement).toMatchObject({ _type: 'https://in-toto.io/Statement/v1', predicateType: 'https://aios.dev/model/v1', subject: [{ name: 'model.tflite', digest: { sha256: sha256(readFileSync(ssdFiles[0]?.source as string)) } }, { name: 'labels/coco.txt' }] });
    expect(verified.statement.predicate).toMatchObject({ ...ssdMetadata, files: [{ path: 'model.tflite' }, { path: 'labels/coco.txt' }] });
  });

  it('is reproducible: the same inputs give the same bytes (Ed25519 is deterministic)', async () => {
    expect((await pack()).equals(await pack())).toBe(true);
  });

  it('verifies from a file stream in small chunks, and the source is released', async () => {
    const file = path.join(tmp, 'ssd.bundle');
    writeFileSync(file, await pack());
    const stream = createReadStream(file, { highWaterMark: 1000 });
    await verifyBundle(stream, policy);
    expect(stream.destroyed).toBe(true);
    const broken = createReadStream(file, { end: 5000 });
    expect(await code(verifyBundle(broken, policy))).toBe('EAI_BUNDLE_TRUNCATED');
    expect(broken.destroyed).toBe(true);
  });

  it('verifies and extracts from fileSource (reused buffers, async or sync reads), delivering intact files', async () => {
    const file = path.join(tmp, 'ssd-src.bundle');
    writeFileSync(file, await pack());
    for (const options of [{}, { sync: true }, { chunkSize: 777 }]) {
      const dir = path.join(tmp, 'from-file-source', JSON.stringify(options).replace(/\W/gu, '') || 'default');
      await extractBundle(fileSource(file, options), policy, dir);
      for (const f of ssdFiles) expect(readFileSync(path.join(dir, f.path)).equals(readFileSync(f.source))).toBe(true);
    }
  });

  it('expires: refused at or after `expires`, accepted before', async () => {
    const bundle = await pack({ metadata: { ...ssdMetadata, expires: '2026-06-01T00:00:00Z' } });
    expect(await code(verifyBundle(Readable.from(bundle), policy, { now: new Date('2026-05-31T23:59:59Z') }))).toBe('resolved');
    expect(await code(verifyBundle(Readable.from(bundle), policy, { now: new Date('2026-06-01T00:00:00Z') }))).toBe('EAI_BUNDLE_EXPIRED');
  });

  it('refuses bad pack input', async () => {
    expect(await code(pack({ keys: [] }))).toBe('EAI_BUNDLE_PACK_INPUT');
    expect(await code(pack({ files: [] }))).toBe('EAI_BUNDLE_PACK_INPUT');
    expect(await code(pack({ files: [{ path: 'model.tflite', source: path.join(tmp, 'missing.tflite') }] }))).toBe('EAI_BUNDLE_PACK_INPUT');
    expect(await code(pack({ files: [{ path: '../model.tflite', source: BLAZEFACE }] }))).toBe('EAI_BUNDLE_PATH_TRAVERSAL');
    expect(await code(pack({ files: [{ path: 'model.tflite', source: BLAZEFACE, encrypt: true }] }))).toBe('EAI_BUNDLE_PACK_INPUT');
    expect(await code(pack({ metadata: { ...ssdMetadata, version: 'v1' } }))).toBe('EAI_BUNDLE_MANIFEST_INVALID');
    expect(await code(pack({ metadata: { ...ssdMetadata, entry: 'other.tflite' } }))).toBe('EAI_BUNDLE_MANIFEST_INVALID');
    expect(await code(pack({ files: [...ssdFiles, { path: 'MODEL.tflite', source: BLAZEFACE }] }))).toBe('EAI_BUNDLE_MANIFEST_INVALID');
    expect(await code(pack({ metadata: { ...ssdMetadata, notes: 'x'.repeat(60_000), labels: Array.from({ length: 2000 }, () => 'y'.repeat(1000)) } }))).toBe('EAI_BUNDLE_ENVELOPE_TOO_LARGE');
  });
  it('refuses a source file that changes while it is packed (EAI_BUNDLE_SOURCE_CHANGED), and destroys the output', async () => {
    const changing = path.join(tmp, 'changing.onnx');
    writeFileSync(changing, readFileSync(BLAZEFACE));
    // The encrypter of the second file is made after the first was measured: it changes the first.
    const meddler: Encryption = { recipients: 1, createEncryptStream: () => (writeFileSync(changing, 'changed'), new PassThrough()) };
    const out = new PassThrough();
    out.resume();
    const files = [{ path: 'face.onnx', source: changing, encrypt: false }, { path: 'labels.txt', source: `${SSD}/coco_labels.txt` }];
    await expect(packBundle({ metadata: faceMetadata, files, keys: [alice], encryptTo: meddler }, out)).rejects.toMatchObject({ code: 'EAI_BUNDLE_SOURCE_CHANGED' });
    expect(out.destroyed).toBe(true);
  });
});

describe('sinks', () => {
  it('a sink that ignores or destroys its stream still gets a fully verified bundle', async () => {
    const bundle = await pack();
    await verifyBundle(Readable.from(bundle), policy, { onFile: () => undefined });
    await verifyBundle(Readable.from(bundle), policy, { onFile: (_f, content) => void content.destroy() });
  });

  it('a sink that fails stops verification with its error', async () => {
    const boom = new Error('disk full');
    await expect(verifyBundle(Readable.from(await pack()), policy, { onFile: () => Promise.reject(boom) })).rejects.toBe(boom);
  });
});

describe('inspect', () => {
  it('shows the manifest and claimed signers without verifying anything', async () => {
    const inspection = await inspectBundle(Readable.from(await pack({ keys: [bob] })));
    expect(inspection).toMatchObject({ verified: false, payloadType: 'application/vnd.in-toto+json', keyids: [bob.keyid], issues: [], statement: { predicate: { name: 'ssd-mobilenet-v2-coco' } } });
  });
});

describe('extract', () => {
  it('writes the files once verified, plain ones 0644', async () => {
    const dir = path.join(tmp, 'extract', 'ssd');
    await extractBundle(Readable.from(await pack()), policy, dir);
    expect(readFileSync(path.join(dir, 'labels/coco.txt')).equals(readFileSync(ssdFiles[1]?.source as string))).toBe(true);
    expect(statSync(path.join(dir, 'model.tflite')).mode & 0o777).toBe(0o644);
    expect(statSync(dir).mode & 0o777).toBe(0o755);
    expect(await code(extractBundle(Readable.from(await pack()), policy, dir))).toBe('EAI_BUNDLE_EXTRACT_EXISTS');
  });

  it('leaves nothing behind when the bundle fails after some files were written', async () => {
    const bundle = await pack();
    const dir = path.join(tmp, 'extract-bad', 'ssd');
    // Break the last file (labels): the model has been written to the staging folder by then.
    const broken = Buffer.from(bundle);
    const at = broken.length - 1024 - 512 - 100;
    broken[at] = (broken[at] as number) ^ 0xff;
    expect(await code(extractBundle(Readable.from(broken), policy, dir))).not.toBe('resolved');
    expect(existsSync(dir)).toBe(false);
    expect(readdirSync(path.dirname(dir))).toEqual([]);
  });
});

describe('co-signing', () => {
  it('signBundle adds a signature so a 2-of-2 policy passes; adding it again changes nothing', async () => {
    const file = path.join(tmp, 'cosign.bundle');
    writeFileSync(file, await pack());
    const both = { keys: [pub(alice), pub(bob)], threshold: 2 };
    expect(await code(verifyBundle(createReadStream(file), both))).toBe('EAI_BUNDLE_SIGNATURE_THRESHOLD');
    expect(await signBundle(file, bob)).toEqual({ added: true, keyids: [alice.keyid, bob.keyid] });
    expect((await collect(readFileSync(file), both)).signedBy).toEqual([alice.keyid, bob.keyid]);
    const before = readFileSync(file);
    expect(await signBundle(file, bob)).toEqual({ added: false, keyids: [alice.keyid, bob.keyid] });
    expect(readFileSync(file).equals(before)).toBe(true);
  });

  it('signBundle refuses to sign a bundle whose files do not match its manifest, and leaves it as it was', async () => {
    const file = path.join(tmp, 'cosign-bad.bundle');
    const broken = await pack();
    broken[broken.length >> 1] = (broken[broken.length >> 1] as number) ^ 1; // inside the model file's data
    writeFileSync(file, broken);
    expect(await code(signBundle(file, bob))).toBe('EAI_BUNDLE_FILE_DIGEST');
    expect(readFileSync(file).equals(broken)).toBe(true);
    expect(readdirSync(tmp).filter((n) => n.includes('signing'))).toEqual([]);
  });
});

describe('encrypted files (a stand-in cipher; age itself is tested in age.test.ts)', () => {
  const age = fakeAge(randomBytes(32));
  const encrypted = (): Promise<Buffer> => pack({ encryptTo: age, files: [ssdFiles[0] as PackOptions['files'][0], { ...(ssdFiles[1] as PackOptions['files'][0]), encrypt: false }] });

  it('records plaintext and stored digests, and verifies the plaintext while decrypting', async () => {
    const bundle = await encrypted();
    const model = readFileSync(ssdFiles[0]?.source as string);
    const { files } = await collect(bundle, { decrypt: age.decrypt });
    expect(files.get('model.tflite')?.data.equals(model)).toBe(true);
    expect(files.get('model.tflite')?.file).toMatchObject({ entryName: 'files/model.tflite.age', content: 'plaintext', sha256: sha256(model), encrypted: { recipients: 2, size: model.length + 16 } });
    expect(files.get('labels/coco.txt')?.file).toMatchObject({ entryName: 'files/labels/coco.txt', content: 'plaintext' });
  });

  it('without a decrypter, checks and delivers the ciphertext (a registry can verify what it cannot read)', async () => {
    const { files } = await collect(await encrypted());
    const f = files.get('model.tflite');
    expect(f?.file.content).toBe('ciphertext');
    expect(sha256(f?.data as Buffer)).toBe(f?.file.encrypted?.sha256);
  });

  it('a wrong key yields the wrong plaintext: refused by its digest; a failing decrypter is EAI_BUNDLE_DECRYPT', async () => {
    const bundle = await encrypted();
    expect(await code(collect(bundle, { decrypt: fakeAge(randomBytes(32)).decrypt }))).toBe('EAI_BUNDLE_FILE_DIGEST');
    const failing: DecryptFactory = () => new Transform({ transform: (_c, _e, cb) => cb(new Error('no identity matched')) });
    expect(await code(collect(bundle, { decrypt: failing }))).toBe('EAI_BUNDLE_DECRYPT');
  });

  it('extracts decrypted files 0600 in a 0700 folder, or keeps them as .age without a decrypter', async () => {
    const bundle = await encrypted();
    const dir = path.join(tmp, 'extract-enc', 'ssd');
    await extractBundle(Readable.from(bundle), policy, dir, { decrypt: age.decrypt });
    expect(statSync(path.join(dir, 'model.tflite')).mode & 0o777).toBe(0o600);
    expect(statSync(path.join(dir, 'labels/coco.txt')).mode & 0o777).toBe(0o644);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    const raw = path.join(tmp, 'extract-enc', 'raw');
    await extractBundle(Readable.from(bundle), policy, raw);
    expect(readdirSync(raw).sort()).toEqual(['labels', 'model.tflite.age']);
  });
});

describe.skipIf(AGE === undefined || AGE_KEYGEN === undefined)('age interop (the age CLI as the encrypter and decrypter)', () => {
  /** A child process as a Transform: bytes to its stdin, its stdout out. */
  const ageProcess = (...args: string[]): Duplex => {
    const child = spawn(AGE as string, args, { stdio: ['pipe', 'pipe', 'inherit'] });
    return Duplex.from({ writable: child.stdin, readable: child.stdout });
  };

  it('files encrypted by age verify while age decrypts them, and `age -d` of an extracted .age matches the manifest', async () => {
    const identity = path.join(tmp, 'device.key');
    execFileSync(AGE_KEYGEN as string, ['-o', identity], { stdio: 'ignore' });
    const recipient = execFileSync(AGE_KEYGEN as string, ['-y', identity], { encoding: 'utf8' }).trim();
    const bundle = await pack({ metadata: faceMetadata, files: [{ path: 'face.onnx', source: BLAZEFACE }], encryptTo: { recipients: 1, createEncryptStream: () => ageProcess('-r', recipient) } });
    const decrypt: DecryptFactory = () => ageProcess('-d', '-i', identity);
    const { files } = await collect(bundle, { decrypt });
    expect(files.get('face.onnx')?.data.equals(readFileSync(BLAZEFACE))).toBe(true);
    const dir = path.join(tmp, 'age-raw');
    const verified = await extractBundle(Readable.from(bundle), policy, dir);
    const plaintext = execFileSync(AGE as string, ['-d', '-i', identity, path.join(dir, 'face.onnx.age')]);
    expect(sha256(plaintext)).toBe(verified.statement.predicate.files[0]?.sha256);
  });
});

describe.skipIf(TAR === undefined)('GNU tar interop', () => {
  it('tar -tvf lists the bundle; a bundle repacked by GNU tar (ustar and gnu formats) still verifies', async () => {
    const file = path.join(tmp, 'gnu.bundle');
    writeFileSync(file, await pack());
    const names = execFileSync(TAR as string, ['-tf', file], { encoding: 'utf8' }).trim().split('\n');
    expect(names).toEqual(['envelope.dsse.json', 'files/model.tflite', 'files/labels/coco.txt']);
    expect(execFileSync(TAR as string, ['-tvf', file], { encoding: 'utf8' })).toMatch(/^-rw-r--r-- 0\/0 .* 2026-01-15 12:00 envelope\.dsse\.json$/mu);
    const dir = path.join(tmp, 'gnu-x');
    mkdirSync(dir);
    execFileSync(TAR as string, ['-xf', file, '-C', dir]);
    for (const format of ['ustar', 'gnu']) {
      const repacked = path.join(tmp, `repacked-${format}.bundle`);
      execFileSync(TAR as string, [`--format=${format}`, '-cf', repacked, '-C', dir, ...names]);
      expect(statSync(repacked).size % 10240).toBe(0); // GNU tar's record padding is accepted
      await verifyBundle(createReadStream(repacked), policy);
    }
  });
});

describe.skipIf(TAR === undefined || OPENSSL === undefined || JQ === undefined)('docs/bundles.md: checking a bundle by hand', () => {
  it('the documented commands verify our bundle with tar, jq, openssl and sha256sum, and catch a forged manifest', async () => {
    const doc = readFileSync('docs/bundles.md', 'utf8');
    const script = /<!-- tested: verify-by-hand -->\s*```sh\n([\s\S]*?)```/u.exec(doc)?.[1];
    expect(script).toBeDefined();
    const dir = path.join(tmp, 'by-hand');
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'model.bundle'), await pack({ metadata: faceMetadata, files: [{ path: 'face.onnx', source: BLAZEFACE }], keys: [bob, alice] }));
    writeFileSync(path.join(dir, 'key.pub'), publicKeyPem(alice.publicKey));
    const run = spawnSync('bash', ['-euo', 'pipefail', '-c', script as string], { cwd: dir, encoding: 'utf8' });
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout).toContain('Signature Verified Successfully');
    expect(run.stdout).toContain('files/face.onnx: OK');
    // The same commands on a bundle whose manifest was re-encoded with a different sha256 fail.
    const env = JSON.parse(readFileSync(path.join(dir, 'envelope.json'), 'utf8')) as { payload: string };
    const forged = Buffer.from(env.payload, 'base64').toString().replace(/"sha256":"[0-9a-f]{8}/u, '"sha256":"00000000');
    writeFileSync(path.join(dir, 'envelope.dsse.json'), JSON.stringify({ ...env, payload: Buffer.from(forged).toString('base64') }));
    execFileSync(TAR as string, ['--format=ustar', '-cf', 'model.bundle', 'envelope.dsse.json', 'files/face.onnx'], { cwd: dir });
    const bad = spawnSync('bash', ['-euo', 'pipefail', '-c', script as string], { cwd: dir, encoding: 'utf8' });
    expect(bad.status).not.toBe(0);
    expect(bad.stdout + bad.stderr).toMatch(/Signature Verification Failure/u);
  });
});
