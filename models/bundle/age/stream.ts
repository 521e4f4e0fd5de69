/**
 * age v1 files as Node streams: {@link createEncryptStream} turns plaintext into a whole age file
 * (header, nonce, payload), {@link createDecryptStream} the reverse. The payload is STREAM over
 * ChaCha20-Poly1305: 64 KiB plaintext chunks, key HKDF-SHA256(file key, nonce, "payload"), chunk
 * nonce an 11-byte big-endian counter and a last-chunk flag byte.
 *
 * Memory is bounded by one chunk plus the piece being written, whatever the file size: a chunk is
 * decrypted as soon as the byte after it arrives (that byte proves it is not the last) and its
 * plaintext is pushed only once its tag has verified. Plaintext of earlier chunks is released
 * before later chunks are checked, as STREAM allows; a consumer learns of a truncated or altered
 * file through the stream's error, which always comes before 'end'. So write to a temporary
 * name and rename on 'finish', never act on a half-read model.
 *
 * {@link encrypt} and {@link decrypt} run the same code synchronously on a whole buffer.
 */
import { hkdfSync, randomBytes } from 'node:crypto';
import { chaChaPoly, type ChaChaPoly } from '../../../drivers/crypto/chacha20-poly1305.js';
import { Transform, type TransformCallback } from 'node:stream';
import { AgeError, encodeHeader, FILE_KEY_SIZE, MAX_HEADER_BYTES, parseHeader, verifyHeaderMac, type AgeHeader, type AgeStanza } from './format.js';
import { X25519Identity, X25519Recipient, type AgeIdentity, type AgeRecipient } from './keys.js';

/** Plaintext bytes per STREAM chunk. */
export const CHUNK_SIZE = 64 * 1024;
const TAG_SIZE = 16;
const ENC_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE;
const NONCE_SIZE = 16;

/** Options for decryption. */
export interface DecryptOptions {
  /** Refuse a header longer than this many bytes (default {@link MAX_HEADER_BYTES}). */
  readonly maxHeaderBytes?: number;
}

/** Recipients as objects or `age1…` strings; identities as objects or `AGE-SECRET-KEY-1…` strings. */
export type RecipientLike = AgeRecipient | string;
export type IdentityLike = AgeIdentity | string;

type Emit = (bytes: Buffer) => void;

/**
 * A Transform whose output is an age file encrypted to every recipient: the header and nonce
 * are pushed at once, then one chunk each time a full 64 KiB and one more byte are in. Throws
 * `EAI_AGE_NO_KEYS` for an empty list and `EAI_AGE_KEY` for a bad recipient string, synchronously.
 */
export function createEncryptStream(recipients: readonly RecipientLike[]): Transform {
  const { preamble, sealer } = startEncryption(recipients);
  const stream = coreTransform(sealer);
  stream.push(preamble);
  return stream;
}

/**
 * A Transform that reads an age file and outputs its plaintext. Errors (all {@link AgeError}):
 * `EAI_AGE_HEADER`, `EAI_AGE_NO_MATCH`, `EAI_AGE_HEADER_MAC` before any output;
 * `EAI_AGE_PAYLOAD_AUTH`, `EAI_AGE_TRUNCATED`, `EAI_AGE_TRAILING_DATA` at the chunk concerned.
 * Bad identity strings throw `EAI_AGE_KEY` synchronously.
 */
export function createDecryptStream(identities: readonly IdentityLike[], options: DecryptOptions = {}): Transform {
  return coreTransform(new Decryptor(toIdentities(identities), options.maxHeaderBytes ?? MAX_HEADER_BYTES, false));
}

/**
 * Decryption driven by hand, for a consumer that uses each chunk at once (hashes it, writes it):
 * `update` with each piece of the age file in order, `final` at its end. `emit` receives
 * plaintext that is valid only until it returns: one buffer is reused, so nothing is allocated
 * per chunk (the bundle verifier's path, bench/age-decrypt.ts). Pieces are not kept after
 * `update` returns, so the caller may reuse their memory. Same errors as
 * {@link createDecryptStream}, thrown by the call concerned.
 */
export interface AgeDecryption {
  update(piece: Buffer, emit: (plaintext: Buffer) => void): void;
  final(emit: (plaintext: Buffer) => void): void;
}

export function createDecryption(identities: readonly IdentityLike[], options: DecryptOptions = {}): AgeDecryption {
  const d = new Decryptor(toIdentities(identities), options.maxHeaderBytes ?? MAX_HEADER_BYTES, true);
  return { update: (piece, emit) => d.write(piece, emit), final: (emit) => d.end(emit) };
}

/** Encrypts a whole buffer to an age file. For data that fits in memory twice over. */
export function encrypt(plaintext: Uint8Array, recipients: readonly RecipientLike[]): Buffer {
  const { preamble, sealer } = startEncryption(recipients);
  const out: Buffer[] = [preamble];
  sealer.write(asBuffer(plaintext), (b) => out.push(b));
  sealer.end((b) => out.push(b));
  return Buffer.concat(out);
}

/** Decrypts a whole age file held in memory; same errors as {@link createDecryptStream}. */
export function decrypt(file: Uint8Array, identities: readonly IdentityLike[], options: DecryptOptions = {}): Buffer {
  const d = new Decryptor(toIdentities(identities), options.maxHeaderBytes ?? MAX_HEADER_BYTES, false);
  const out: Buffer[] = [];
  d.write(asBuffer(file), (b) => out.push(b));
  d.end((b) => out.push(b));
  return Buffer.concat(out);
}

interface Core {
  write(piece: Buffer, emit: Emit): void;
  end(emit: Emit): void;
}

function coreTransform(core: Core): Transform {
  return new Transform({
    transform(this: Transform, chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback) {
      try {
        core.write(chunk, (b) => this.push(b));
        done();
      } catch (err) {
        done(err as Error);
      }
    },
    flush(this: Transform, done: TransformCallback) {
      try {
        core.end((b) => this.push(b));
        done();
      } catch (err) {
        done(err as Error);
      }
    },
  });
}

function startEncryption(recipients: readonly RecipientLike[]): { preamble: Buffer; sealer: Sealer } {
  if (recipients.length === 0) throw new AgeError('EAI_AGE_NO_KEYS', 'encrypting needs at least one recipient (an age1… public key); none was given.');
  const parsed = recipients.map((r) => (typeof r === 'string' ? X25519Recipient.parse(r) : r));
  const fileKey = randomBytes(FILE_KEY_SIZE);
  const stanzas: AgeStanza[] = parsed.flatMap((r) => [...r.wrap(fileKey)]);
  const nonce = randomBytes(NONCE_SIZE);
  return { preamble: Buffer.concat([encodeHeader(stanzas, fileKey), nonce]), sealer: new Sealer(payloadKey(fileKey, nonce)) };
}

function toIdentities(identities: readonly IdentityLike[]): AgeIdentity[] {
  if (identities.length === 0) throw new AgeError('EAI_AGE_NO_KEYS', 'decrypting needs at least one identity (an AGE-SECRET-KEY-1… secret key); none was given.');
  return identities.map((i) => (typeof i === 'string' ? X25519Identity.parse(i) : i));
}

function payloadKey(fileKey: Buffer, nonce: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', fileKey, nonce, 'payload', 32));
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * Pieces of input held by reference until a chunk's worth is in. A chunk that lies within one
 * piece is used in place; one that spans pieces is copied into a scratch buffer owned by the
 * reader and reused for every chunk (node:crypto copies its output anyway, and a fresh buffer per
 * chunk costs more in page faults and GC than the copy).
 */
class Pending {
  #parts: Buffer[] = [];
  #scratch: Buffer | undefined;
  length = 0;

  add(piece: Buffer): void {
    if (piece.length === 0) return;
    this.#parts.push(piece);
    this.length += piece.length;
  }

  /**
   * Removes the first `n` bytes and returns them as one buffer, valid until the next call (it
   * may be the scratch buffer).
   */
  take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const head = this.#parts[0];
    if (head !== undefined && head.length >= n) {
      if (head.length === n) this.#parts.shift();
      else this.#parts[0] = head.subarray(n);
      this.length -= n;
      return head.subarray(0, n);
    }
    if (this.#scratch === undefined || this.#scratch.length < n) this.#scratch = Buffer.allocUnsafeSlow(Math.max(n, ENC_CHUNK_SIZE));
    const out = this.#scratch.subarray(0, n);
    let filled = 0;
    while (filled < n) {
      const p = this.#parts[0] as Buffer;
      const k = Math.min(p.length, n - filled);
      p.copy(out, filled, 0, k);
      filled += k;
      if (k === p.length) this.#parts.shift();
      else this.#parts[0] = p.subarray(k);
    }
    this.length -= n;
    return out;
  }
}

/** STREAM nonce: bytes 0..10 a big-endian chunk counter, byte 11 the last-chunk flag. */
function chunkNonce(nonce: Buffer, counter: number, last: boolean): Buffer {
  nonce.writeUIntBE(counter, 5, 6); // bytes 0..4 stay zero: 2^48 chunks is 16 EiB
  nonce[11] = last ? 1 : 0;
  return nonce;
}

class Sealer implements Core {
  readonly #aead: ChaChaPoly;
  readonly #nonce = Buffer.alloc(12);
  readonly #pending = new Pending();
  #counter = 0;

  constructor(key: Buffer) {
    this.#aead = chaChaPoly(key);
  }

  write(piece: Buffer, emit: Emit): void {
    this.#pending.add(piece);
    // A full chunk is sealed as non-final only once a byte beyond it proves more follows, so a
    // payload of exactly n * 64 KiB ends with a full final chunk, as the spec wants.
    while (this.#pending.length > CHUNK_SIZE) this.#seal(this.#pending.take(CHUNK_SIZE), false, emit);
  }

  end(emit: Emit): void {
    this.#seal(this.#pending.take(this.#pending.length), true, emit);
    this.#aead.dispose();
  }

  #seal(plain: Buffer, last: boolean, emit: Emit): void {
    emit(this.#aead.seal(chunkNonce(this.#nonce, this.#counter++, last), plain));
  }
}

type Phase = 'header' | 'nonce' | 'payload' | 'done';

/**
 * Decrypts straight out of the pieces it is given: each chunk's ciphertext goes through
 * ChaCha20-Poly1305 as it arrives, so a chunk spanning two pieces is never gathered, and only the
 * last 16 bytes seen are held back (they may be the tag). A chunk is started as a non-final one,
 * the common case; if the file turns out to end there, its plaintext is turned back into
 * ciphertext with the same keystream and opened again as the final chunk.
 *
 * `lend` reuses one output buffer: emitted plaintext is valid only until `emit` returns, which
 * is what a consumer that hashes and writes at once wants (no allocation per chunk). Otherwise
 * every chunk gets fresh memory that the consumer may keep.
 */
class Decryptor implements Core {
  readonly #identities: readonly AgeIdentity[];
  readonly #maxHeaderBytes: number;
  readonly #lend: boolean;
  readonly #nonce = Buffer.alloc(12);
  readonly #tail = Buffer.alloc(TAG_SIZE);
  #tailLength = 0;
  #phase: Phase = 'header';
  #head: Buffer = Buffer.alloc(0);
  #fileKey: Buffer = Buffer.alloc(0);
  #aead: ChaChaPoly | undefined;
  #counter = 0;
  #out: Buffer = Buffer.alloc(0);
  #fed = 0;
  #slab: Buffer = Buffer.alloc(0);
  #slabUsed = 0;

  constructor(identities: readonly AgeIdentity[], maxHeaderBytes: number, lend: boolean) {
    this.#identities = identities;
    this.#maxHeaderBytes = maxHeaderBytes;
    this.#lend = lend;
  }

  write(piece: Buffer, emit: Emit): void {
    if (this.#phase === 'done') {
      if (piece.length > 0) throw trailing(this.#counter);
      return;
    }
    if (this.#phase === 'header') {
      const first = this.#head.length === 0;
      this.#head = first ? piece : Buffer.concat([this.#head, piece]);
      // Only a new LF can complete a line, so skip the re-parse without one (the first piece is
      // always parsed, to refuse a file that is not age at once).
      if (!first && piece.indexOf(0x0a) < 0 && this.#head.length <= this.#maxHeaderBytes) return;
      const header = parseHeader(this.#head, this.#maxHeaderBytes);
      if (header === undefined) {
        // Kept across calls: copy, the caller may reuse the piece's memory.
        if (first) this.#head = Buffer.from(piece);
        return;
      }
      this.#fileKey = this.#openHeader(header);
      piece = this.#head.subarray(header.length);
      this.#head = Buffer.alloc(0);
      this.#phase = 'nonce';
    }
    if (this.#phase === 'nonce') {
      if (this.#head.length + piece.length < NONCE_SIZE) {
        this.#head = Buffer.concat([this.#head, piece]);
        return;
      }
      const need = NONCE_SIZE - this.#head.length;
      const nonce = Buffer.concat([this.#head, piece.subarray(0, need)]);
      this.#aead = chaChaPoly(payloadKey(this.#fileKey, nonce));
      piece = piece.subarray(need);
      this.#head = Buffer.alloc(0);
      this.#phase = 'payload';
      this.#startChunk();
    }
    this.#payload(piece, emit);
  }

  end(emit: Emit): void {
    if (this.#phase === 'done') return;
    if (this.#phase !== 'payload') {
      throw new AgeError('EAI_AGE_TRUNCATED', `the age file ends inside its ${this.#phase === 'header' ? 'header' : 'payload nonce'} (${this.#head.length} bytes read): it was cut short. Fetch it again.`);
    }
    const aead = this.#aead as ChaChaPoly;
    // Fewer than 16 bytes left means nothing of this chunk was decrypted (16 are always held back).
    if (this.#tailLength < TAG_SIZE) throw truncated(this.#counter, this.#tailLength);
    const tag = this.#tail;
    const plain = this.#out.subarray(0, this.#fed);
    // A whole chunk that opens as a non-final one: the file stops at a chunk boundary.
    if (this.#fed === CHUNK_SIZE && aead.finishOpen(tag)) throw truncated(this.#counter + 1, 0);
    if (!this.#reopenAsFinal(plain, tag)) throw authFailed(this.#counter);
    if (this.#fed === 0 && this.#counter > 0) {
      throw new AgeError('EAI_AGE_PAYLOAD_AUTH', `the age payload ends with an empty final chunk after ${this.#counter} full chunks; the format allows an empty final chunk only for an empty payload. The file was not written by a conforming encryptor.`);
    }
    this.#counter++;
    this.#phase = 'done';
    aead.dispose();
    if (plain.length > 0) emit(plain);
  }

  #payload(piece: Buffer, emit: Emit): void {
    const aead = this.#aead as ChaChaPoly;
    let at = 0;
    for (;;) {
      const unfed = this.#tailLength + piece.length - at;
      if (this.#fed === CHUNK_SIZE) {
        // The tag, and at least one byte after it to show this is not the final chunk.
        if (unfed <= TAG_SIZE) break;
        const fromPiece = TAG_SIZE - this.#tailLength;
        piece.copy(this.#tail, this.#tailLength, at, at + fromPiece);
        at += fromPiece;
        this.#tailLength = 0;
        if (!aead.finishOpen(this.#tail)) {
          // A full chunk that opens as the final one, with bytes after it.
          if (this.#reopenAsFinal(this.#out, this.#tail)) throw trailing(this.#counter + 1);
          throw authFailed(this.#counter);
        }
        this.#counter++;
        emit(this.#out);
        this.#startChunk();
        continue;
      }
      const feed = Math.min(CHUNK_SIZE - this.#fed, unfed - TAG_SIZE);
      if (feed <= 0) break;
      if (this.#tailLength > 0) {
        const k = Math.min(this.#tailLength, feed);
        aead.decryptPart(this.#tail.subarray(0, k), this.#out.subarray(this.#fed, this.#fed + k));
        this.#tail.copyWithin(0, k, this.#tailLength);
        this.#tailLength -= k;
        this.#fed += k;
        continue;
      }
      aead.decryptPart(piece.subarray(at, at + feed), this.#out.subarray(this.#fed, this.#fed + feed));
      at += feed;
      this.#fed += feed;
    }
    // At most 16 bytes are left: held (copied, the caller may reuse the piece) until more come.
    this.#tailLength += piece.copy(this.#tail, this.#tailLength, at);
  }

  #startChunk(): void {
    this.#fed = 0;
    this.#out = this.#outputBuffer();
    (this.#aead as ChaChaPoly).beginOpen(chunkNonce(this.#nonce, this.#counter, false));
  }

  /** Opens the current chunk, decrypted so far as a non-final one into `plain`, as the final chunk. */
  #reopenAsFinal(plain: Buffer, tag: Buffer): boolean {
    const aead = this.#aead as ChaChaPoly;
    aead.applyKeystream(chunkNonce(this.#nonce, this.#counter, false), plain);
    aead.beginOpen(chunkNonce(this.#nonce, this.#counter, true));
    aead.decryptPart(plain, plain);
    return aead.finishOpen(tag);
  }

  /** A chunk's output: the one lent buffer, or a fresh view carved from 1 MiB blocks (one allocation per 16 chunks, not one each). */
  #outputBuffer(): Buffer {
    if (this.#lend) return this.#out.length === CHUNK_SIZE ? this.#out : Buffer.allocUnsafeSlow(CHUNK_SIZE);
    if (this.#slabUsed + CHUNK_SIZE > this.#slab.length) {
      this.#slab = Buffer.allocUnsafeSlow(16 * CHUNK_SIZE);
      this.#slabUsed = 0;
    }
    this.#slabUsed += CHUNK_SIZE;
    return this.#slab.subarray(this.#slabUsed - CHUNK_SIZE, this.#slabUsed);
  }

  #openHeader(header: AgeHeader): Buffer {
    for (const identity of this.#identities) {
      const fileKey = identity.unwrap(header.stanzas);
      if (fileKey !== undefined) {
        verifyHeaderMac(header, fileKey);
        return fileKey;
      }
    }
    throw noMatch(header, this.#identities);
  }
}

function noMatch(header: AgeHeader, identities: readonly AgeIdentity[]): AgeError {
  const n = header.stanzas.length;
  const types = [...new Set(header.stanzas.map((s) => s.type))].join(', ');
  const labels = identities.map((i) => i.label);
  const who = labels.length === 1 ? `this device's identity ${labels[0]}` : `any of this device's ${labels.length} identities (${labels.join(', ')})`;
  return new AgeError(
    'EAI_AGE_NO_MATCH',
    `not encrypted to this device: the file has ${n} recipient stanza${n === 1 ? '' : 's'} (${types}) and none opens with ${who}. Re-encrypt it adding this device as a recipient (age -r ${labels[0]}), or use the identity it was encrypted to.`,
    { details: { recipients: n, stanzaTypes: types, identities: labels } },
  );
}

function authFailed(chunk: number): AgeError {
  return new AgeError('EAI_AGE_PAYLOAD_AUTH', `age payload chunk ${chunk} (at plaintext offset ${chunk * CHUNK_SIZE}) failed authentication: the file was altered or cut short. Fetch it again from its source.`, {
    details: { chunk },
  });
}

function truncated(chunks: number, tail: number): AgeError {
  return new AgeError('EAI_AGE_TRUNCATED', `the age file is truncated: it ends after ${chunks} chunk${chunks === 1 ? '' : 's'}${tail > 0 ? ` and ${tail} stray bytes` : ''} without a final chunk. Fetch it again.`, {
    details: { chunks, tail },
  });
}

function trailing(chunks: number): AgeError {
  return new AgeError('EAI_AGE_TRAILING_DATA', `the age file has data after its final chunk (chunk ${chunks - 1}): something was appended to it. Fetch it again from its source.`, { details: { chunks } });
}
