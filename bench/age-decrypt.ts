/**
 * How fast does aios decrypt an age-encrypted model, against OpenSSL's own ChaCha20-Poly1305?
 *
 * Baseline, same run: `openssl speed -evp chacha20-poly1305 -bytes 16384 -seconds 3`, the rate
 * the issue names: one core, one long-lived context, one 16 KiB buffer that never leaves the
 * cache, no framing, no I/O.
 *
 * Measured, each best of --rounds:
 *  - in cache (held to the goal): a 16 MiB age file (a typical detector's weights) in memory,
 *    decrypted over and over by `createDecryption` (the hand-driven decrypter the bundle
 *    verifier uses) in 1 MiB pieces, the plaintext drained chunk by chunk: the whole of aios's
 *    decryption (header, X25519 unwrap, STREAM framing, a nonce, a tag check and four EVP calls
 *    per 64 KiB chunk) on data in the cache, as openssl speed's is. Goal (issue 6): >= 0.8x
 *    openssl speed. Also a 2 MiB file, and the fixed cost per file (an empty one).
 *  - from a 500 MiB file (page cache warm) to a counting sink: `createDecryption` over
 *    `fileSource` (1 MiB reads into reused buffers) and `createDecryptStream` over
 *    fs.createReadStream; the `age` CLI (Go) on the same file when installed; and the memory
 *    ceiling: OpenSSL alone decrypting the 500 MiB in RAM in 1 MiB calls into one reused
 *    buffer, no aios code at all. A file that does not fit in the cache is read from RAM at this machine's memory
 *    bandwidth, which openssl speed never pays: compare these with the ceiling, not with it.
 *  - a 500 MiB encrypted bundle verified and decrypted (`verifyBundle` + `createDecryption`,
 *    what `aios bundle verify --identity` and installBundle run), no sink.
 *
 * Run: npx tsc -p tsconfig.json && node dist/bench/age-decrypt.js [--mb N (MiB, default 500)] [--rounds N] [--json]
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { hkdfSync, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { chaChaPoly } from '../drivers/crypto/chacha20-poly1305.js';
import { parseHeader } from '../models/bundle/age/format.js';
import { X25519Identity } from '../models/bundle/age/keys.js';
import { createDecryptStream, createDecryption, createEncryptStream, encrypt } from '../models/bundle/age/stream.js';
import { packBundle, verifyBundle } from '../models/bundle/bundle.js';
import { fileSource } from '../models/bundle/tar.js';
import { generateSigningKey } from '../models/keys.js';
import { round } from './stats.js';

const args = process.argv.slice(2);
const option = (name: string, fallback: number): number => Number(args[args.indexOf(name) + 1] ?? 0) || fallback;
const mb = option('--mb', 500);
const rounds = option('--rounds', 3);
const total = mb * 1024 * 1024;
const GOAL = 0.8;
// A typical detector's weights (SSD MobileNet v2 fp32 ~17 MB, YOLOv8n ~12 MB), and a small model.
const TYPICAL_MODEL = 16 * 1024 * 1024;
const SMALL_MODEL = 2 * 1024 * 1024;
const IN_CACHE_TOTAL = 512 * 1024 * 1024;

const openssl = opensslRate();
const identity = X25519Identity.generate();
const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'aios-bench-age-'));
try {
  // In cache: one file decrypted again and again; and the fixed cost per file on an empty one.
  const inCache = (fileBytes: number): number => {
    const file = encrypt(randomBytes(fileBytes), [identity.recipient]);
    return best(() => {
      for (let done = 0; done < IN_CACHE_TOTAL; done += fileBytes) decryptInMemory(file, fileBytes);
    }, IN_CACHE_TOTAL);
  };
  const typical = inCache(TYPICAL_MODEL);
  const small = inCache(SMALL_MODEL);
  const empty = encrypt(Buffer.alloc(0), [identity.recipient]);
  const perFileUs = (1e6 * IN_CACHE_TOTAL) / best(() => {
    for (let i = 0; i < 2000; i++) decryptInMemory(empty, 0);
  }, IN_CACHE_TOTAL) / 2000;

  // From disk: a big age file, and the same payload in a bundle.
  const plainFile = path.join(dir, 'model.bin');
  const ageFile = path.join(dir, 'model.bin.age');
  const bundleFile = path.join(dir, 'model.bundle');
  await writeRandom(plainFile, total);
  await pipeline(createReadStream(plainFile), createEncryptStream([identity.recipient]), createWriteStream(ageFile));
  const signer = generateSigningKey();
  await packBundle(
    {
      metadata: { name: 'bench', version: '1.0.0', format: 'onnx', entry: 'model.bin', inputs: [], outputs: [], targets: ['cpu'], minRuntimeVersion: '0.1.0', author: 'bench' },
      files: [{ path: 'model.bin', source: plainFile, encrypt: true }],
      keys: [signer],
      encryptTo: { recipients: 1, createEncryptStream: () => createEncryptStream([identity.recipient]) },
    },
    createWriteStream(bundleFile),
  );
  await fs.rm(plainFile);
  spawnSync('sync'); // no write-back of the fresh files competing with the measurements
  const policy = { keys: [{ keyid: signer.keyid, publicKey: signer.publicKey }], threshold: 1 };

  const results = { byHand: [] as number[], stream: [] as number[], bundle: [] as number[], ceiling: [] as number[], ageCli: [] as number[] };
  const ciphertext = await fs.readFile(ageFile);
  for (let r = 0; r < rounds; r++) {
    results.byHand.push(await timed(async () => {
      let n = 0;
      const d = createDecryption([identity]);
      const drain = (p: Buffer): void => void (n += p.length);
      for await (const piece of fileSource(ageFile)) d.update(piece, drain);
      d.final(drain);
      if (n !== total) throw new Error(`decrypted ${n} bytes, expected ${total}`);
    }));
    results.stream.push(await timed(() => pipeline(createReadStream(ageFile, { highWaterMark: 1 << 20 }), createDecryptStream([identity]), counter(total))));
    results.bundle.push(await timed(() => verifyBundle(fileSource(bundleFile), policy, { decrypt: () => createDecryption([identity]) })));
    results.ceiling.push(await timed(async () => ceiling(ciphertext, identity)));
    const cli = ageCli(ageFile, identity, dir);
    if (cli !== undefined) results.ageCli.push(cli);
  }

  const rate = (seconds: readonly number[]): number => total / Math.min(...seconds);
  const vs = (bytesPerS: number): number | null => (openssl === undefined ? null : round(bytesPerS / openssl, 3));
  const ceilingRate = rate(results.ceiling);
  const row = (seconds: readonly number[]): { MBps: number; xOpenssl: number | null; xCeiling: number } | null =>
    seconds.length === 0 ? null : { MBps: round(rate(seconds) / 1e6), xOpenssl: vs(rate(seconds)), xCeiling: round(rate(seconds) / ceilingRate, 3) };
  const result = {
    node: process.version,
    nodeOpenssl: process.versions.openssl,
    rounds,
    opensslSpeedMBps: openssl === undefined ? null : round(openssl / 1e6),
    inCache: { fileMiB: TYPICAL_MODEL / 2 ** 20, MBps: round(typical / 1e6), xOpenssl: vs(typical), goal: GOAL, met: openssl === undefined ? null : typical / openssl >= GOAL },
    inCacheSmall: { fileMiB: SMALL_MODEL / 2 ** 20, MBps: round(small / 1e6), xOpenssl: vs(small) },
    perFileSetupUs: round(perFileUs),
    fromFile: {
      fileMiB: mb,
      ceilingOpensslAlone: row(results.ceiling),
      createDecryption: row(results.byHand),
      createDecryptStream: row(results.stream),
      verifyBundleDecrypting: row(results.bundle),
      ageCli: row(results.ageCli),
    },
  };

  if (args.includes('--json')) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } else {
    const line = (label: string, r: { MBps: number; xOpenssl: number | null; xCeiling?: number } | null, extra = ''): void =>
      console.log(`${label.padEnd(52)} ${r === null ? '   n/a' : `${r.MBps.toFixed(0).padStart(6)} MB/s  ${r.xOpenssl?.toFixed(3) ?? 'n/a'}x openssl${r.xCeiling === undefined ? '' : `  ${r.xCeiling.toFixed(3)}x ceiling`}`}${extra}`);
    console.log(`age decryption, best of ${rounds}, node ${result.node} (OpenSSL ${result.nodeOpenssl}), one thread`);
    console.log(`${'openssl speed -evp chacha20-poly1305, 16 KiB'.padEnd(52)} ${result.opensslSpeedMBps === null ? 'n/a (openssl not found)' : `${result.opensslSpeedMBps.toFixed(0).padStart(6)} MB/s`}`);
    line(`createDecryption, ${result.inCache.fileMiB} MiB file in cache`, result.inCache, `  (goal >= ${GOAL}x: ${result.inCache.met === null ? 'n/a' : result.inCache.met ? 'met' : 'NOT met'})`);
    line(`createDecryption, ${result.inCacheSmall.fileMiB} MiB file in cache`, result.inCacheSmall);
    console.log(`${'  fixed cost per file (X25519, HKDF, header MAC)'.padEnd(52)} ${result.perFileSetupUs.toFixed(0).padStart(6)} µs`);
    console.log(`from a ${mb} MiB file, page cache warm:`);
    line('  ceiling: OpenSSL alone over the file in RAM', result.fromFile.ceilingOpensslAlone);
    line('  createDecryption over fileSource', result.fromFile.createDecryption);
    line('  createDecryptStream over createReadStream', result.fromFile.createDecryptStream);
    line('  verifyBundle + createDecryption (bundle)', result.fromFile.verifyBundleDecrypting);
    line('  age -d (the Go CLI)', result.fromFile.ageCli, results.ageCli.length === 0 ? '  (age not installed)' : '');
  }
} finally {
  await fs.rm(dir, { recursive: true, force: true });
}

/** OpenSSL's rate in bytes/s from `openssl speed`, or undefined where openssl is missing. */
function opensslRate(): number | undefined {
  let out: string;
  try {
    out = execFileSync('openssl', ['speed', '-evp', 'chacha20-poly1305', '-bytes', '16384', '-seconds', '3'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch {
    return undefined;
  }
  // The table's last line: "ChaCha20-Poly1305  3629940.74k", in 1000s of bytes per second.
  const m = /^chacha20-poly1305\s+([\d.]+)k\s*$/imu.exec(out);
  return m ? Number(m[1]) * 1000 : undefined;
}

/**
 * What memory bandwidth allows: OpenSSL alone over the payload in RAM, 1 MiB per EVP call into
 * one reused output buffer, with no chunk framing, nonces or tag checks (so past the first chunk
 * the output is garbage; only the time counts).
 */
function ceiling(bytes: Buffer, id: X25519Identity): void {
  const header = parseHeader(bytes);
  if (header === undefined) throw new Error('bench: no age header');
  const fileKey = id.unwrap(header.stanzas) as Buffer;
  const key = Buffer.from(hkdfSync('sha256', fileKey, bytes.subarray(header.length, header.length + 16), 'payload', 32));
  const aead = chaChaPoly(key);
  const payload = bytes.subarray(header.length + 16);
  const out = Buffer.allocUnsafeSlow(1 << 20);
  aead.beginOpen(Buffer.alloc(12));
  for (let at = 0; at < payload.length; at += out.length) {
    const part = payload.subarray(at, at + out.length);
    aead.decryptPart(part, out.subarray(0, part.length));
  }
  aead.dispose();
}

/** Seconds `age -d` takes on the file (output to /dev/null), or undefined without the CLI. */
function ageCli(file: string, id: X25519Identity, where: string): number | undefined {
  const keyFile = path.join(where, 'identity.txt');
  spawnSync('sh', ['-c', `umask 077; cat > '${keyFile}'`], { input: `${id.encode()}\n` });
  const t0 = performance.now();
  const run = spawnSync('age', ['-d', '-i', keyFile, '-o', '/dev/null', file]);
  const s = (performance.now() - t0) / 1000;
  return run.status === 0 ? s : undefined;
}

function counter(expect: number): Writable {
  let n = 0;
  return new Writable({
    highWaterMark: 1 << 20,
    write(c: Buffer, _e, cb) {
      n += c.length;
      cb();
    },
    final(cb) {
      cb(n !== expect ? new Error(`decrypted ${n} bytes, expected ${expect}`) : null);
    },
  });
}

/** Decrypts an age file held in memory, in 1 MiB pieces, with createDecryption; checks the size. */
function decryptInMemory(file: Buffer, expect: number): void {
  let n = 0;
  const d = createDecryption([identity]);
  const drain = (p: Buffer): void => void (n += p.length);
  for (let at = 0; at < file.length; at += 1 << 20) d.update(file.subarray(at, at + (1 << 20)), drain);
  d.final(drain);
  if (n !== expect) throw new Error(`decrypted ${n} bytes, expected ${expect}`);
}

/** Bytes per second of `fn` over `bytes`, best of the rounds. */
function best(fn: () => void, bytes: number): number {
  let fastest = Infinity;
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    fn();
    fastest = Math.min(fastest, (performance.now() - t0) / 1000);
  }
  return bytes / fastest;
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}

async function writeRandom(file: string, bytes: number): Promise<void> {
  const block = randomBytes(4 * 1024 * 1024);
  const out = createWriteStream(file);
  await pipeline(
    Readable.from(
      (function* () {
        for (let left = bytes; left > 0; left -= block.length) yield block.subarray(0, Math.min(left, block.length));
      })(),
    ),
    out,
  );
}
