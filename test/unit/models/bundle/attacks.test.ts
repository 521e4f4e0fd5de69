/**
 * One test per attack on a bundle, each asserting its own error code, then a property test:
 * whatever single byte is changed, inserted or cut, the bundle is refused with an AiosError and
 * no file stream that ended cleanly carried anything but the signed bytes.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable, Transform } from 'node:stream';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AiosError } from '../../../../drivers/errors.js';
import { extractBundle, packBundle, verifyBundle, type DecryptFactory, type VerifyOptions } from '../../../../models/bundle/bundle.js';
import { encodeEnvelope, signEnvelope } from '../../../../models/bundle/dsse.js';
import { buildStatement, type ModelMetadata, type ModelStatement } from '../../../../models/bundle/manifest.js';
import { encodeHeader, endOfArchive, padding, REUSES_BUFFERS, type ReusingSource } from '../../../../models/bundle/tar.js';
import { generateSigningKey, type PublicKey, type SigningKey } from '../../../../models/keys.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-attacks-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const [alice, bob, mallory] = [generateSigningKey(), generateSigningKey(), generateSigningKey()] as [SigningKey, SigningKey, SigningKey];
const pub = (k: SigningKey): PublicKey => ({ keyid: k.keyid, publicKey: k.publicKey });
const policy = { keys: [pub(alice)], threshold: 1 };
const metadata: ModelMetadata = { name: 'tiny', version: '1.0.0', format: 'onnx', entry: 'a.onnx', inputs: [], outputs: [], targets: ['cpu'], minRuntimeVersion: '0.1.0', created: '2026-01-15T12:00:00Z', author: 'tests' };
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

// Small files (a real model and a deterministic pseudo-random one) keep the property test fast.
const A = readFileSync('models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx').subarray(0, 700);
const B = Buffer.from(Array.from({ length: 1300 }, (_, i) => (i * 2654435761) >>> 24));
const B2 = Buffer.from(B.map((x) => x ^ 0x5a)); // same size, other content: "another bundle's file"

let bundle: Buffer;
let other: Buffer;

async function packFiles(files: { path: string; data: Buffer }[], keys: SigningKey[] = [alice]): Promise<Buffer> {
  const sources = files.map((f, i) => {
    const source = path.join(tmp, `${sha256(f.data).slice(0, 12)}-${i}`);
    writeFileSync(source, f.data);
    return { path: f.path, source };
  });
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  await packBundle({ metadata, files: sources, keys }, out);
  return Buffer.concat(chunks);
}

beforeAll(async () => {
  bundle = await packFiles([{ path: 'a.onnx', data: A }, { path: 'b.bin', data: B }]);
  other = await packFiles([{ path: 'a.onnx', data: A }, { path: 'b.bin', data: B2 }]);
});

// --- crafting archives by hand -------------------------------------------------------------------

function header(name: string, size: number, typeflag = '0', linkname = ''): Buffer {
  const h = encodeHeader({ name, size });
  h.write(typeflag, 156, 'latin1');
  if (linkname !== '') h.write(linkname, 157, 'latin1');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}
const entry = (name: string, data: Buffer, typeflag = '0', linkname = ''): Buffer => Buffer.concat([header(name, data.length, typeflag, linkname), data, padding(data.length)]);
const tar = (...parts: Buffer[]): Buffer => Buffer.concat([...parts, endOfArchive()]);
const envelopeOf = (statement: unknown, keys: SigningKey[] = [alice]): Buffer => encodeEnvelope(signEnvelope(Buffer.from(JSON.stringify(statement)), keys));
const statementOf = (files: { path: string; data: Buffer }[]): ModelStatement => buildStatement({ ...metadata, entry: files[0]?.path ?? 'a.onnx' }, files.map((f) => ({ path: f.path, size: f.data.length, sha256: sha256(f.data) })));
const fileEntries = (s: Buffer): { env: Buffer; a: Buffer; b: Buffer } => {
  const envEnd = 512 + Math.ceil(parseInt(s.toString('latin1', 124, 135), 8) / 512) * 512;
  const aEnd = envEnd + 512 + Math.ceil(A.length / 512) * 512;
  return { env: s.subarray(0, envEnd), a: s.subarray(envEnd, aEnd), b: s.subarray(aEnd, s.length - 1024) };
};
/** A trusted, well-signed envelope followed by whatever entries. */
const signedWith = (entries: Buffer[], files = [{ path: 'a.onnx', data: A }, { path: 'b.bin', data: B }]): Buffer => tar(entry('envelope.dsse.json', envelopeOf(statementOf(files))), ...entries);

async function code(source: Buffer | AsyncIterable<unknown>, options: VerifyOptions = {}, p = policy): Promise<string> {
  try {
    await verifyBundle(Buffer.isBuffer(source) ? Readable.from(source) : source, p, options);
  } catch (error) {
    if (error instanceof AiosError) return error.code;
    throw error;
  }
  return 'resolved';
}

function flip(b: Buffer, at: number, mask = 0x01): Buffer {
  const c = Buffer.from(b);
  c[at] = (c[at] as number) ^ mask;
  return c;
}

// --- the attacks --------------------------------------------------------------------------------

describe('attacks, each with its own code', () => {
  it('the untouched bundle verifies (control)', async () => {
    expect(await code(bundle)).toBe('resolved');
  });

  it('a flipped byte in the manifest (the envelope payload): EAI_BUNDLE_SIGNATURE_INVALID', async () => {
    const at = bundle.indexOf('"payload":"') + 11 + 40;
    const c = Buffer.from(bundle);
    c[at] = c[at] === 0x41 ? 0x42 : 0x41; // another base64 letter: still canonical, other bytes
    expect(await code(c)).toBe('EAI_BUNDLE_SIGNATURE_INVALID');
  });

  it('a flipped byte in a signature: EAI_BUNDLE_SIGNATURE_INVALID', async () => {
    const at = bundle.indexOf('"sig":"') + 7 + 10;
    const c = Buffer.from(bundle);
    c[at] = c[at] === 0x41 ? 0x42 : 0x41;
    expect(await code(c)).toBe('EAI_BUNDLE_SIGNATURE_INVALID');
  });

  it('a flipped byte in a file: EAI_BUNDLE_FILE_DIGEST', async () => {
    const { env, a } = fileEntries(bundle);
    expect(await code(flip(bundle, env.length + a.length + 512 + 1000))).toBe('EAI_BUNDLE_FILE_DIGEST');
  });

  it('a flipped byte in a tar header: EAI_BUNDLE_TAR_CHECKSUM', async () => {
    const { env } = fileEntries(bundle);
    expect(await code(flip(bundle, env.length + 137))).toBe('EAI_BUNDLE_TAR_CHECKSUM'); // the mtime of files/a.onnx
    expect(await code(flip(bundle, 3))).toBe('EAI_BUNDLE_TAR_CHECKSUM'); // the envelope's name
  });

  it('a non-zero byte in data padding: EAI_BUNDLE_TAR_PADDING', async () => {
    const { env } = fileEntries(bundle);
    expect(await code(flip(bundle, env.length + 512 + A.length + 5))).toBe('EAI_BUNDLE_TAR_PADDING');
  });

  it('signed by an unknown key only: EAI_BUNDLE_SIGNATURE_UNKNOWN_KEY', async () => {
    expect(await code(await packFiles([{ path: 'a.onnx', data: A }], [mallory]))).toBe('EAI_BUNDLE_SIGNATURE_UNKNOWN_KEY');
  });

  it('fewer trusted signatures than the threshold: EAI_BUNDLE_SIGNATURE_THRESHOLD', async () => {
    const twoOfThree = { keys: [pub(alice), pub(bob), pub(mallory)], threshold: 2 };
    expect(await code(bundle, {}, twoOfThree)).toBe('EAI_BUNDLE_SIGNATURE_THRESHOLD');
    expect(await code(await packFiles([{ path: 'a.onnx', data: A }], [alice, mallory]), {}, twoOfThree)).toBe('resolved');
  });

  it('mix-and-match: another bundle\'s file under this envelope: EAI_BUNDLE_FILE_DIGEST', async () => {
    const mine = fileEntries(bundle);
    const theirs = fileEntries(other);
    expect(await code(tar(mine.env, mine.a, theirs.b))).toBe('EAI_BUNDLE_FILE_DIGEST');
    expect(await code(tar(theirs.env, mine.a, mine.b))).toBe('EAI_BUNDLE_FILE_DIGEST');
    // This envelope's payload with the other's signature.
    const sigOf = (s: Buffer): string => /"sig":"([^"]+)"/u.exec(s.toString('latin1'))?.[1] ?? '';
    const swapped = mine.env.toString('latin1').replace(sigOf(bundle), sigOf(other));
    expect(sigOf(bundle)).not.toBe(sigOf(other));
    expect(await code(tar(Buffer.from(swapped, 'latin1'), mine.a, mine.b))).toBe('EAI_BUNDLE_SIGNATURE_INVALID');
  });

  it('a file longer or shorter than declared: EAI_BUNDLE_FILE_TOO_LONG / _TOO_SHORT', async () => {
    expect(await code(signedWith([entry('files/a.onnx', A), entry('files/b.bin', Buffer.concat([B, Buffer.from('more')]))]))).toBe('EAI_BUNDLE_FILE_TOO_LONG');
    expect(await code(signedWith([entry('files/a.onnx', A), entry('files/b.bin', B.subarray(0, 1299))]))).toBe('EAI_BUNDLE_FILE_TOO_SHORT');
  });

  it('endless data is refused without reading it: a huge declared size, zeros forever after the end', async () => {
    async function* endless(prefix: Buffer, fill: Buffer): AsyncGenerator<Buffer> {
      yield prefix;
      for (let i = 0; i < 1e6; i++) yield fill; // 64 GiB: a test that read it all would time out
    }
    const chunk = Buffer.alloc(65536, 0x61);
    const { env, a } = fileEntries(bundle);
    expect(await code(endless(Buffer.concat([env, a, header('files/b.bin', 2 ** 40)]), chunk))).toBe('EAI_BUNDLE_FILE_TOO_LONG');
    expect(await code(endless(bundle, Buffer.alloc(65536)))).toBe('EAI_BUNDLE_TRAILING_DATA');
    expect(await code(endless(header('envelope.dsse.json', 2 ** 30), chunk))).toBe('EAI_BUNDLE_ENVELOPE_TOO_LARGE');
    // A decrypter that never stops producing plaintext (a decompression bomb, say).
    const enc = await packEncrypted();
    const bomb: DecryptFactory = () => new Transform({ transform: (_c, _e, cb) => cb(null, Buffer.alloc(1 << 20)) });
    expect(await code(enc, { decrypt: bomb })).toBe('EAI_BUNDLE_FILE_TOO_LONG');
  });

  it('a truncated bundle: EAI_BUNDLE_TRUNCATED', async () => {
    for (const cut of [0, 100, 512, 1500, bundle.length >> 1, bundle.length - 1024, bundle.length - 1]) {
      expect(await code(bundle.subarray(0, cut)), `cut at ${cut}`).toBe('EAI_BUNDLE_TRUNCATED');
    }
  });

  it('path traversal: EAI_BUNDLE_PATH_TRAVERSAL, in the tar or in a signed manifest', async () => {
    expect(await code(signedWith([entry('files/../../etc/cron.d/x', A)]))).toBe('EAI_BUNDLE_PATH_TRAVERSAL');
    const evil = { ...statementOf([{ path: 'a.onnx', data: A }]) };
    const poisoned = JSON.parse(JSON.stringify(evil).replaceAll('"a.onnx"', '"../a.onnx"')) as unknown;
    expect(await code(tar(entry('envelope.dsse.json', envelopeOf(poisoned)), entry('files/../a.onnx', A)))).toBe('EAI_BUNDLE_PATH_TRAVERSAL');
  });

  it('absolute paths: EAI_BUNDLE_PATH_ABSOLUTE, in the tar or in a signed manifest', async () => {
    expect(await code(signedWith([entry('/etc/passwd', A)]))).toBe('EAI_BUNDLE_PATH_ABSOLUTE');
    const poisoned = JSON.parse(JSON.stringify(statementOf([{ path: 'a.onnx', data: A }])).replaceAll('"a.onnx"', '"/a.onnx"')) as unknown;
    expect(await code(tar(entry('envelope.dsse.json', envelopeOf(poisoned))))).toBe('EAI_BUNDLE_PATH_ABSOLUTE');
  });

  it('symbolic and hard links: EAI_BUNDLE_ENTRY_LINK', async () => {
    expect(await code(signedWith([entry('files/a.onnx', Buffer.alloc(0), '2', '/etc/shadow')]))).toBe('EAI_BUNDLE_ENTRY_LINK');
    expect(await code(signedWith([entry('files/a.onnx', Buffer.alloc(0), '1', 'envelope.dsse.json')]))).toBe('EAI_BUNDLE_ENTRY_LINK');
  });

  it('character and block devices, FIFOs, directories: EAI_BUNDLE_ENTRY_SPECIAL', async () => {
    for (const flag of ['3', '4', '6', '5']) expect(await code(signedWith([entry('files/a.onnx', Buffer.alloc(0), flag)])), `type ${flag}`).toBe('EAI_BUNDLE_ENTRY_SPECIAL');
    expect(await code(tar(entry('envelope.dsse.json', Buffer.alloc(0), '6')))).toBe('EAI_BUNDLE_ENTRY_SPECIAL');
  });

  it('pax and GNU extension headers: EAI_BUNDLE_TAR_UNSUPPORTED', async () => {
    expect(await code(signedWith([entry('PaxHeaders/a.onnx', Buffer.from('30 path=files/../../etc/passwd\n'), 'x'), entry('files/a.onnx', A)]))).toBe('EAI_BUNDLE_TAR_UNSUPPORTED');
    expect(await code(signedWith([entry('././@LongLink', Buffer.from('files/a.onnx\0'), 'L')]))).toBe('EAI_BUNDLE_TAR_UNSUPPORTED');
  });

  it('duplicate entries: EAI_BUNDLE_FILE_DUPLICATE', async () => {
    const { env, a, b } = fileEntries(bundle);
    expect(await code(tar(env, a, b, entry('files/a.onnx', Buffer.from('evil'))))).toBe('EAI_BUNDLE_FILE_DUPLICATE');
    expect(await code(tar(env, a, a, b))).toBe('EAI_BUNDLE_FILE_DUPLICATE');
    expect(await code(tar(env, env, a, b))).toBe('EAI_BUNDLE_FILE_DUPLICATE');
  });

  it('missing, reordered and extra files: EAI_BUNDLE_FILE_MISSING / _UNEXPECTED', async () => {
    const { env, a, b } = fileEntries(bundle);
    expect(await code(tar(env, a))).toBe('EAI_BUNDLE_FILE_MISSING');
    expect(await code(tar(env, b, a))).toBe('EAI_BUNDLE_FILE_MISSING');
    expect(await code(tar(env, a, b, entry('files/c.bin', A)))).toBe('EAI_BUNDLE_FILE_UNEXPECTED');
    expect(await code(tar(env, a, entry('files/c.bin', B)))).toBe('EAI_BUNDLE_FILE_UNEXPECTED');
  });

  it('non-ustar garbage: EAI_BUNDLE_TAR_HEADER', async () => {
    expect(await code(Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 131 + 7) & 0xff)))).toBe('EAI_BUNDLE_TAR_HEADER');
    const zip = Buffer.concat([Buffer.from('PK\x03\x04', 'latin1'), Buffer.alloc(2044, 1)]);
    expect(await code(zip)).toBe('EAI_BUNDLE_TAR_HEADER');
    const { env, a } = fileEntries(bundle);
    expect(await code(Buffer.concat([env, a, Buffer.alloc(512, 0x20), endOfArchive()]))).toBe('EAI_BUNDLE_TAR_HEADER');
  });

  it('trailing garbage after the end-of-archive blocks: EAI_BUNDLE_TRAILING_DATA', async () => {
    expect(await code(Buffer.concat([bundle, Buffer.from('#!/bin/sh\n')]))).toBe('EAI_BUNDLE_TRAILING_DATA');
    expect(await code(Buffer.concat([bundle, Buffer.alloc(1)]))).toBe('EAI_BUNDLE_TRAILING_DATA');
    expect(await code(Buffer.concat([bundle, entry('files/c.bin', A)]))).toBe('EAI_BUNDLE_TRAILING_DATA');
  });

  it('an envelope that is not first, or too large: EAI_BUNDLE_ENVELOPE_MISSING / _TOO_LARGE', async () => {
    const { env, a, b } = fileEntries(bundle);
    expect(await code(tar(a, env, b))).toBe('EAI_BUNDLE_ENVELOPE_MISSING');
    expect(await code(tar())).toBe('EAI_BUNDLE_ENVELOPE_MISSING');
    expect(await code(tar(entry('envelope.dsse.json', Buffer.alloc(1024 * 1024 + 1, 0x20))))).toBe('EAI_BUNDLE_ENVELOPE_TOO_LARGE');
  });

  it('the payload is not parsed before the signatures are checked', async () => {
    const junk = encodeEnvelope(signEnvelope(Buffer.from('{"__proto__":{"polluted":1}, not json'), [mallory]));
    expect(await code(tar(entry('envelope.dsse.json', junk)))).toBe('EAI_BUNDLE_SIGNATURE_UNKNOWN_KEY');
    const trustedJunk = encodeEnvelope(signEnvelope(Buffer.from('{"__proto__":{"polluted":1}, not json'), [alice]));
    expect(await code(tar(entry('envelope.dsse.json', trustedJunk)))).toBe('EAI_BUNDLE_MANIFEST_INVALID');
    expect(await code(tar(entry('envelope.dsse.json', Buffer.from('{"payloadType":'))))).toBe('EAI_BUNDLE_ENVELOPE_INVALID');
  });

  it('a signed manifest that breaks the schema: EAI_BUNDLE_MANIFEST_INVALID', async () => {
    const s = statementOf([{ path: 'a.onnx', data: A }]);
    for (const bad of [{ ...s, extra: 1 }, { ...s, predicate: { ...s.predicate, files: [{ ...s.predicate.files[0], size: -1 }] } }, { ...s, subject: [{ name: 'a.onnx', digest: { sha256: sha256(B) } }] }]) {
      expect(await code(tar(entry('envelope.dsse.json', envelopeOf(bad)), entry('files/a.onnx', A)))).toBe('EAI_BUNDLE_MANIFEST_INVALID');
    }
  });
});

async function packEncrypted(): Promise<Buffer> {
  const source = path.join(tmp, 'enc-a');
  writeFileSync(source, A);
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  const identity = (): Transform => new Transform({ transform: (c, _e, cb) => cb(null, c) });
  await packBundle({ metadata, files: [{ path: 'a.onnx', source }], keys: [alice], encryptTo: { recipients: 1, createEncryptStream: identity } }, out);
  return Buffer.concat(chunks);
}

// --- the property ----------------------------------------------------------------------------------

type Mutation = { kind: 'flip'; at: number; mask: number } | { kind: 'cut'; at: number } | { kind: 'insert'; at: number; byte: number };

function mutate(b: Buffer, m: Mutation): Buffer {
  const at = m.at % (b.length + (m.kind === 'insert' ? 1 : 0));
  if (m.kind === 'flip') return flip(b, at, m.mask);
  if (m.kind === 'cut') return b.subarray(0, at);
  return Buffer.concat([b.subarray(0, at), Buffer.from([m.byte]), b.subarray(at)]);
}

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), mask: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
);

/** Hands out `bytes` in `chunk`-sized pieces the way fileSource does (two buffers, reused), scribbling over a buffer before refilling it. */
function reusingSource(bytes: Buffer, chunk: number): ReusingSource {
  return {
    [REUSES_BUFFERS]: true,
    async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
      const buffers = [Buffer.alloc(chunk), Buffer.alloc(chunk)];
      for (let i = 0, at = 0; at < bytes.length; i++, at += chunk) {
        const b = buffers[i & 1] as Buffer;
        b.fill(0xee);
        const n = bytes.copy(b, 0, at, at + chunk);
        yield b.subarray(0, n);
      }
    },
  };
}

describe('any single-byte change, cut or insertion (property)', () => {
  it('a source that reuses its buffers verifies, and delivers (and decrypts) intact files', async () => {
    for (const chunk of [1, 100, 512, 4096]) {
      const got = new Map<string, Buffer>();
      await verifyBundle(reusingSource(bundle, chunk), policy, {
        onFile: async (file, content) => {
          const parts: Buffer[] = [];
          for await (const c of content) parts.push(c as Buffer);
          got.set(file.path, Buffer.concat(parts));
        },
      });
      expect(got.get('a.onnx')?.equals(A)).toBe(true);
      expect(got.get('b.bin')?.equals(B)).toBe(true);
    }
    const enc = await packEncrypted();
    const keep: Buffer[] = [];
    const hoarder: DecryptFactory = () => new Transform({ transform: (c: Buffer, _e, cb) => void (keep.push(c), cb(null, c)) });
    await verifyBundle(reusingSource(enc, 300), policy, { decrypt: hoarder });
    expect(Buffer.concat(keep).equals(A)).toBe(true);
  });

  it('is refused with an AiosError, and no cleanly ended file stream carried other bytes than signed', async () => {
    const originals = new Map([['a.onnx', A], ['b.bin', B]]);
    await fc.assert(
      fc.asyncProperty(mutation, fc.integer({ min: 1, max: 4096 }), fc.boolean(), async (m, chunk, reuse) => {
        const bad = mutate(bundle, m);
        const delivered: { path: string; data: Buffer; ended: boolean }[] = [];
        const source = reuse
          ? reusingSource(bad, chunk)
          : Readable.from((function* () {
              for (let i = 0; i < bad.length; i += chunk) yield bad.subarray(i, i + chunk);
            })());
        let error: unknown;
        try {
          await verifyBundle(source, policy, {
            onFile: async (file, content) => {
              const record = { path: file.path, data: Buffer.alloc(0), ended: false };
              delivered.push(record);
              const chunks: Buffer[] = [];
              try {
                for await (const c of content) chunks.push(c as Buffer);
                record.ended = true;
              } catch {
                // the stream ended with the verifier's error: the sink must drop what it got
              }
              record.data = Buffer.concat(chunks);
            },
          });
        } catch (e) {
          error = e;
        }
        expect(error, `mutation ${JSON.stringify(m)} was accepted`).toBeInstanceOf(AiosError);
        for (const d of delivered.filter((x) => x.ended)) expect(d.data.equals(originals.get(d.path) as Buffer)).toBe(true);
      }),
      { numRuns: 600 },
    );
  });

  it('extractBundle never leaves a folder (or its staging) behind', async () => {
    const parent = path.join(tmp, 'extract-property');
    let n = 0;
    await fc.assert(
      fc.asyncProperty(mutation, async (m) => {
        const dir = path.join(parent, `m${n++}`);
        await expect(extractBundle(Readable.from(mutate(bundle, m)), policy, dir)).rejects.toBeInstanceOf(AiosError);
        expect(existsSync(dir)).toBe(false);
      }),
      { numRuns: 100 },
    );
    expect(readdirSync(parent)).toEqual([]);
  });
});
