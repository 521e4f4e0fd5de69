/**
 * How fast does aios decrypt an age-encrypted model? A 500 MiB age file (X25519 recipient, made
 * by createEncryptStream from generated data and held in memory, so no disk is involved) is fed
 * to createDecryptStream in 64 KiB pieces (what fs.createReadStream reads) and drained to a sink
 * that only counts. Baseline, same run: `openssl speed -evp chacha20-poly1305 -bytes 16384
 * -seconds 3`, OpenSSL's own single-core AEAD rate (one long-lived context, no per-chunk setup).
 * For context it also times node:crypto alone on the same chunks (a new decipher per 64 KiB
 * chunk, no streams): the floor any node:crypto implementation stands on; and encryption.
 * (That floor sits well under openssl speed because node:crypto allocates each update's output,
 * zero-fills a second buffer and copies into it, and creates a cipher context per chunk.)
 *
 * Goal (issue 6): decryption ≥ 0.8 × openssl's chacha20-poly1305 rate, one core.
 * Run: npx tsc -p tsconfig.json && node dist/bench/age-decrypt.js [--mb N (MiB, default 500)] [--rounds N] [--json]
 */
import { execFileSync } from 'node:child_process';
import { createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseHeader } from '../models/bundle/age/format.js';
import { X25519Identity } from '../models/bundle/age/keys.js';
import { CHUNK_SIZE, createDecryptStream, createEncryptStream } from '../models/bundle/age/stream.js';

const args = process.argv.slice(2);
const option = (name: string, fallback: number): number => Number(args[args.indexOf(name) + 1] ?? 0) || fallback;
const mb = option('--mb', 500);
const rounds = option('--rounds', 3);
const total = mb * 1024 * 1024;
const PIECE = 64 * 1024;
const GOAL = 0.8;

const openssl = opensslRate();

const identity = X25519Identity.generate();
const block = randomBytes(4 * 1024 * 1024 + 7);
const plainSource = (): Readable => {
  let produced = 0;
  return new Readable({
    read() {
      if (produced >= total) return void this.push(null);
      const n = Math.min(PIECE, total - produced);
      const off = produced % (block.length - n);
      produced += n;
      this.push(block.subarray(off, off + n));
    },
  });
};

// One encryption kept as the file to decrypt (copied into one buffer as it comes, so the bench
// holds the file once); then timed encryptions into a counting sink.
const room = Buffer.allocUnsafe(total + Math.ceil(total / CHUNK_SIZE + 1) * 16 + 64 * 1024);
let fileLength = 0;
await pipeline(plainSource(), createEncryptStream([identity.recipient]), new Writable({ write(c: Buffer, _e, cb) { fileLength += c.copy(room, fileLength); cb(); } }));
const file = room.subarray(0, fileLength);

const encryptS: number[] = [];
const decryptS: number[] = [];
const rawS: number[] = [];
for (let r = 0; r < rounds; r++) {
  encryptS.push(await timed(() => pipeline(plainSource(), createEncryptStream([identity.recipient]), counter())));
  decryptS.push(await timed(() => pipeline(filePieces(file), createDecryptStream([identity]), counter(total))));
  rawS.push(await timed(async () => rawDecrypt(file, identity)));
}

const rate = (seconds: number[]): number => total / Math.min(...seconds);
const result = {
  node: process.version,
  nodeOpenssl: process.versions.openssl,
  fileMiB: mb,
  pieceBytes: PIECE,
  rounds,
  opensslMBps: openssl === undefined ? null : round(openssl / 1e6),
  decryptMBps: round(rate(decryptS) / 1e6),
  encryptMBps: round(rate(encryptS) / 1e6),
  rawNodeDecryptMBps: round(rate(rawS) / 1e6),
  ratio: openssl === undefined ? null : round(rate(decryptS) / openssl, 3),
  rawNodeRatio: openssl === undefined ? null : round(rate(rawS) / openssl, 3),
  goal: GOAL,
  met: openssl === undefined ? null : rate(decryptS) / openssl >= GOAL,
};

if (args.includes('--json')) {
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
} else {
  console.log(`age decryption of a ${mb} MiB file in ${PIECE / 1024} KiB pieces, best of ${rounds}, node ${result.node} (OpenSSL ${result.nodeOpenssl}), one thread`);
  console.log(`openssl speed chacha20-poly1305 16 KiB   ${result.opensslMBps === null ? 'n/a (openssl not found)' : `${result.opensslMBps.toFixed(0).padStart(6)} MB/s`}`);
  console.log(`createDecryptStream                       ${result.decryptMBps.toFixed(0).padStart(6)} MB/s  ratio ${result.ratio?.toFixed(3) ?? 'n/a'}x  (goal >= ${GOAL}x: ${result.met === null ? 'n/a' : result.met ? 'met' : 'NOT met'})`);
  console.log(`node:crypto alone, a decipher per chunk   ${result.rawNodeDecryptMBps.toFixed(0).padStart(6)} MB/s  ratio ${result.rawNodeRatio?.toFixed(3) ?? 'n/a'}x  (the floor for any node:crypto implementation)`);
  console.log(`createEncryptStream                       ${result.encryptMBps.toFixed(0).padStart(6)} MB/s`);
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

/** The file as a stream of 64 KiB views, as a file read stream would deliver it. */
function filePieces(bytes: Buffer): Readable {
  let at = 0;
  return new Readable({
    read() {
      if (at >= bytes.length) return void this.push(null);
      this.push(bytes.subarray(at, at + PIECE));
      at += PIECE;
    },
  });
}

function counter(expect?: number): Writable {
  let n = 0;
  return new Writable({
    write(c: Buffer, _e, cb) {
      n += c.length;
      cb();
    },
    final(cb) {
      cb(expect !== undefined && n !== expect ? new Error(`decrypted ${n} bytes, expected ${expect}`) : null);
    },
  });
}

/** The same STREAM decryption with nothing around it: one decipher per chunk over a whole buffer. */
function rawDecrypt(bytes: Buffer, id: X25519Identity): void {
  const header = parseHeader(bytes);
  if (header === undefined) throw new Error('bench: no header');
  const fileKey = id.unwrap(header.stanzas) as Buffer;
  const key = Buffer.from(hkdfSync('sha256', fileKey, bytes.subarray(header.length, header.length + 16), 'payload', 32));
  const nonce = Buffer.alloc(12);
  const enc = CHUNK_SIZE + 16;
  let n = 0;
  for (let at = header.length + 16; at < bytes.length; at += enc, n++) {
    const end = Math.min(at + enc, bytes.length);
    nonce.writeUIntBE(n, 5, 6);
    nonce[11] = end === bytes.length ? 1 : 0;
    const d = createDecipheriv('chacha20-poly1305', key, nonce, { authTagLength: 16 });
    d.setAuthTag(bytes.subarray(end - 16, end));
    d.update(bytes.subarray(at, end - 16));
    d.final();
  }
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}

function round(x: number, digits = 1): number {
  return Number(x.toFixed(digits));
}
