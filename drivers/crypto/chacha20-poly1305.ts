import { createCipheriv, createDecipheriv, type DecipherChaCha20Poly1305 } from 'node:crypto';
import { createRequire } from 'node:module';

/**
 * ChaCha20-Poly1305 (RFC 8439, 12-byte nonce, 16-byte tag) for one key, message by message: what
 * age's STREAM needs for every 64 KiB chunk of an encrypted model.
 *
 * Two backends with the same answers. `libcrypto` calls OpenSSL's EVP API in the system
 * libcrypto.so.3 through koffi, with one cipher context per key re-keyed only by nonce and
 * output written straight into the result: node:crypto builds a fresh cipher object per message
 * and allocates, zero-fills and copies its output, which caps it at about a third of OpenSSL's
 * speed on 64 KiB messages (docs/performance.md). `node` is node:crypto, used where libcrypto or
 * koffi cannot be loaded (and to check the other in tests).
 */
export interface ChaChaPoly {
  readonly backend: 'libcrypto' | 'node';
  /** `plain` sealed: ciphertext followed by the 16-byte tag. */
  seal(nonce: Buffer, plain: Buffer): Buffer;
  /** The plaintext of `sealed` (ciphertext || tag), or undefined when the tag does not verify. */
  open(nonce: Buffer, sealed: Buffer): Buffer | undefined;
  /**
   * Starts opening one message whose ciphertext arrives in parts: then {@link decryptPart} for
   * each part in order and {@link finishOpen} with the tag. Lets a reader decrypt straight out of
   * the buffers its input arrived in, never gathering a chunk that spans two of them.
   */
  beginOpen(nonce: Buffer): void;
  /** Decrypts the next `part` of the message into `out` (`part.length` bytes; may be `part` itself). */
  decryptPart(part: Buffer, out: Buffer): void;
  /**
   * Whether the message's `tag` verifies. Until it has, the plaintext written by decryptPart is
   * unauthenticated and must not be used.
   */
  finishOpen(tag: Buffer): boolean;
  /**
   * XORs `bytes` in place with the message keystream for `nonce` (what sealing does, without the
   * tag): turns the plaintext decryptPart wrote back into the ciphertext it came from, so a
   * message opened under the wrong nonce can be opened again without having kept its ciphertext.
   */
  applyKeystream(nonce: Buffer, bytes: Buffer): void;
  /** Frees native state; later calls fail. Also done by the collector if forgotten. */
  dispose(): void;
}

const TAG = 16;

/** A sealer/opener for `key` (32 bytes), on libcrypto when it can be loaded (`backend: 'auto'`). */
export function chaChaPoly(key: Buffer, backend: 'auto' | 'libcrypto' | 'node' = 'auto'): ChaChaPoly {
  if (key.length !== 32) throw new RangeError(`ChaCha20-Poly1305 keys are 32 bytes, got ${key.length}`);
  const evp = backend === 'node' ? undefined : libcrypto();
  if (evp === undefined) {
    if (backend === 'libcrypto') throw new Error(`libcrypto.so.3 could not be loaded through koffi: ${loadError ?? 'unknown reason'}`);
    return nodeChaCha(key);
  }
  return evpChaCha(evp, key);
}

function nodeChaCha(key: Buffer): ChaChaPoly {
  let opening: DecipherChaCha20Poly1305 | undefined;
  return {
    backend: 'node',
    seal(nonce, plain) {
      const cipher = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG });
      const body = plain.length > 0 ? cipher.update(plain) : Buffer.alloc(0);
      cipher.final();
      return Buffer.concat([body, cipher.getAuthTag()]);
    },
    open(nonce, sealed) {
      if (sealed.length < TAG) return undefined;
      const out = Buffer.allocUnsafe(sealed.length - TAG);
      this.beginOpen(nonce);
      this.decryptPart(sealed.subarray(0, out.length), out);
      return this.finishOpen(sealed.subarray(out.length)) ? out : undefined;
    },
    beginOpen(nonce) {
      opening = createDecipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG });
    },
    decryptPart(part, out) {
      if (opening === undefined) throw new Error('decryptPart() before beginOpen()');
      if (part.length > 0) opening.update(part).copy(out);
    },
    finishOpen(tag) {
      if (opening === undefined) throw new Error('finishOpen() before beginOpen()');
      const d = opening;
      opening = undefined;
      if (tag.length !== TAG) return false;
      d.setAuthTag(tag);
      try {
        d.final();
        return true;
      } catch {
        return false;
      }
    },
    applyKeystream(nonce, bytes) {
      if (bytes.length > 0) createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG }).update(bytes).copy(bytes);
    },
    dispose() {},
  };
}

interface Evp {
  newCtx(): unknown;
  freeCtx(ctx: unknown): void;
  cipher: unknown;
  encryptInit(ctx: unknown, cipher: unknown, impl: null, key: Buffer | null, iv: Buffer | null): number;
  decryptInit(ctx: unknown, cipher: unknown, impl: null, key: Buffer | null, iv: Buffer | null): number;
  ctrl(ctx: unknown, type: number, arg: number, ptr: Buffer | null): number;
  encryptUpdate(ctx: unknown, out: Buffer, outl: Int32Array, input: Buffer, inl: number): number;
  decryptUpdate(ctx: unknown, out: Buffer, outl: Int32Array, input: Buffer, inl: number): number;
  encryptFinal(ctx: unknown, out: Buffer, outl: Int32Array): number;
  decryptFinal(ctx: unknown, out: Buffer, outl: Int32Array): number;
}

// EVP_CTRL_AEAD_GET_TAG / EVP_CTRL_AEAD_SET_TAG (openssl/evp.h).
const GET_TAG = 0x10;
const SET_TAG = 0x11;

let loaded: Evp | null | undefined;
let loadError: string | undefined;

function libcrypto(): Evp | undefined {
  if (loaded !== undefined) return loaded ?? undefined;
  try {
    const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');
    const lib = koffi.load('libcrypto.so.3');
    const chacha = lib.func('void* EVP_chacha20_poly1305()') as () => unknown;
    const init = (name: string): Evp['encryptInit'] => lib.func(`int ${name}(void* ctx, void* cipher, void* impl, const uint8_t* key, const uint8_t* iv)`) as Evp['encryptInit'];
    // outl is a plain `int*` filled into an Int32Array: cheaper per call than koffi's _Out_ arrays.
    const update = (name: string): Evp['encryptUpdate'] => lib.func(`int ${name}(void* ctx, uint8_t* out, int* outl, const uint8_t* in, int inl)`) as Evp['encryptUpdate'];
    const final = (name: string): Evp['encryptFinal'] => lib.func(`int ${name}(void* ctx, uint8_t* out, int* outl)`) as Evp['encryptFinal'];
    loaded = {
      newCtx: lib.func('void* EVP_CIPHER_CTX_new()') as () => unknown,
      freeCtx: lib.func('void EVP_CIPHER_CTX_free(void* ctx)') as (ctx: unknown) => void,
      cipher: chacha(),
      encryptInit: init('EVP_EncryptInit_ex'),
      decryptInit: init('EVP_DecryptInit_ex'),
      ctrl: lib.func('int EVP_CIPHER_CTX_ctrl(void* ctx, int type, int arg, void* ptr)') as Evp['ctrl'],
      encryptUpdate: update('EVP_EncryptUpdate'),
      decryptUpdate: update('EVP_DecryptUpdate'),
      encryptFinal: final('EVP_EncryptFinal_ex'),
      decryptFinal: final('EVP_DecryptFinal_ex'),
    };
  } catch (error) {
    loadError = error instanceof Error ? error.message : String(error);
    loaded = null;
  }
  return loaded ?? undefined;
}

/** Frees contexts of instances the caller forgot to dispose. */
const contexts = new FinalizationRegistry<{ evp: Evp; ctxs: unknown[] }>(({ evp, ctxs }) => {
  for (const c of ctxs) evp.freeCtx(c);
});

function evpChaCha(evp: Evp, key: Buffer): ChaChaPoly {
  const enc = evp.newCtx();
  const dec = evp.newCtx();
  if (enc === null || dec === null) return nodeChaCha(key);
  evp.encryptInit(enc, evp.cipher, null, key, null);
  evp.decryptInit(dec, evp.cipher, null, key, null);
  const outl = new Int32Array(1);
  const scratch = Buffer.alloc(TAG);
  const slab = new Slab();
  let live = true;
  const handle = {};
  const instance: ChaChaPoly = {
    backend: 'libcrypto',
    seal(nonce, plain) {
      if (!live) throw new Error('ChaChaPoly used after dispose()');
      const out = Buffer.allocUnsafe(plain.length + TAG);
      evp.encryptInit(enc, null, null, null, nonce);
      if (plain.length > 0 && evp.encryptUpdate(enc, out, outl, plain, plain.length) !== 1) throw new Error('EVP_EncryptUpdate failed');
      if (evp.encryptFinal(enc, scratch, outl) !== 1) throw new Error('EVP_EncryptFinal_ex failed');
      if (evp.ctrl(enc, GET_TAG, TAG, scratch) !== 1) throw new Error('EVP_CTRL_AEAD_GET_TAG failed');
      scratch.copy(out, plain.length);
      return out;
    },
    open(nonce, sealed) {
      if (sealed.length < TAG) return undefined;
      const n = sealed.length - TAG;
      const out = slab.take(n);
      this.beginOpen(nonce);
      this.decryptPart(sealed.subarray(0, n), out);
      return this.finishOpen(sealed.subarray(n)) ? out : undefined;
    },
    beginOpen(nonce) {
      if (!live) throw new Error('ChaChaPoly used after dispose()');
      evp.decryptInit(dec, null, null, null, nonce);
    },
    decryptPart(part, out) {
      if (part.length > 0 && evp.decryptUpdate(dec, out, outl, part, part.length) !== 1) throw new Error('EVP_DecryptUpdate failed');
    },
    finishOpen(tag) {
      // Set late, once the whole ciphertext went through: the provider only compares at Final.
      if (tag.length !== TAG) return false;
      tag.copy(scratch);
      if (evp.ctrl(dec, SET_TAG, TAG, scratch) !== 1) return false;
      return evp.decryptFinal(dec, scratch, outl) === 1;
    },
    applyKeystream(nonce, bytes) {
      if (!live) throw new Error('ChaChaPoly used after dispose()');
      evp.encryptInit(enc, null, null, null, nonce);
      if (bytes.length > 0 && evp.encryptUpdate(enc, bytes, outl, bytes, bytes.length) !== 1) throw new Error('EVP_EncryptUpdate failed');
    },
    dispose() {
      if (!live) return;
      live = false;
      contexts.unregister(handle);
      evp.freeCtx(enc);
      evp.freeCtx(dec);
    },
  };
  contexts.register(instance, { evp, ctxs: [enc, dec] }, handle);
  return instance;
}

/**
 * Output buffers carved from 1 MiB blocks: one allocation per 16 chunks of 64 KiB instead of
 * one each (allocation and its collection cost more than the copy-free decrypt saves
 * otherwise). A block lives until every view of it is collected.
 */
class Slab {
  private block = Buffer.allocUnsafeSlow(0);
  private used = 0;

  take(n: number): Buffer {
    if (this.used + n > this.block.length) {
      this.block = Buffer.allocUnsafeSlow(Math.max(n, 1 << 20));
      this.used = 0;
    }
    const out = this.block.subarray(this.used, this.used + n);
    this.used += n;
    return out;
  }
}
