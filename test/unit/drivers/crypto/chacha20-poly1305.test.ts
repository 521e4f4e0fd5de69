import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { chaChaPoly } from '../../../../drivers/crypto/chacha20-poly1305.js';

// RFC 8439 section 2.8.2: the AEAD test vector.
const KEY = Buffer.from('808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f', 'hex');
const NONCE = Buffer.from('070000004041424344454647', 'hex');
const PLAIN = Buffer.from("Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.");

describe('ChaCha20-Poly1305 backends', () => {
  const libcrypto = (() => {
    try {
      return chaChaPoly(KEY, 'libcrypto');
    } catch (error) {
      console.warn(`libcrypto backend not tested: ${(error as Error).message}`);
      return undefined;
    }
  })();

  it('the node:crypto backend gives the RFC 8439 ciphertext for the section 2.8.2 plaintext (the tag there covers AAD, which age does not use)', () => {
    const sealed = chaChaPoly(KEY, 'node').seal(NONCE, PLAIN);
    // The ciphertext does not depend on AAD: RFC 8439 2.8.2's first 16 bytes.
    expect(sealed.subarray(0, 16).toString('hex')).toBe('d31a8d34648e60db7b86afbc53ef7ec2');
    expect(sealed).toHaveLength(PLAIN.length + 16);
  });

  it.skipIf(libcrypto === undefined)('libcrypto and node:crypto seal to the same bytes and open each other, for any length', () => {
    const node = chaChaPoly(KEY, 'node');
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 70_000 }), fc.uint8Array({ minLength: 12, maxLength: 12 }), (plain, nonce) => {
        const p = Buffer.from(plain);
        const n = Buffer.from(nonce);
        const a = (libcrypto as NonNullable<typeof libcrypto>).seal(n, p);
        expect(a.equals(node.seal(n, p))).toBe(true);
        expect(node.open(n, a)?.equals(p)).toBe(true);
        expect((libcrypto as NonNullable<typeof libcrypto>).open(n, a)?.equals(p)).toBe(true);
      }),
      { numRuns: 40 },
    );
  });

  it('both backends open a message given in parts, in place or not, and the keystream turns plaintext back into ciphertext', () => {
    const backends = [chaChaPoly(KEY, 'node'), ...(libcrypto === undefined ? [] : [chaChaPoly(KEY, 'libcrypto')])];
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 70_000 }), fc.array(fc.nat(), { maxLength: 6 }), fc.boolean(), (plain, cuts, inPlace) => {
        const p = Buffer.from(plain);
        const sealed = backends[0]?.seal(NONCE, p) as Buffer;
        const ciphertext = sealed.subarray(0, p.length);
        const tag = sealed.subarray(p.length);
        const bounds = [...new Set([0, ...cuts.map((c) => c % (p.length + 1)), p.length])].sort((a, b) => a - b);
        for (const b of backends) {
          const work = Buffer.from(ciphertext);
          const out = inPlace ? work : Buffer.alloc(p.length);
          b.beginOpen(NONCE);
          for (let i = 0; i + 1 < bounds.length; i++) b.decryptPart(work.subarray(bounds[i], bounds[i + 1]), out.subarray(bounds[i], bounds[i + 1]));
          expect(b.finishOpen(tag)).toBe(true);
          expect(out.equals(p)).toBe(true);
          b.applyKeystream(NONCE, out);
          expect(out.equals(ciphertext)).toBe(true);
          const wrong = Buffer.from(tag);
          wrong[0] = (wrong[0] as number) ^ 1;
          b.beginOpen(NONCE);
          b.decryptPart(ciphertext, Buffer.alloc(p.length));
          expect(b.finishOpen(wrong)).toBe(false);
          b.beginOpen(NONCE);
          expect(b.finishOpen(tag.subarray(0, 15))).toBe(false);
        }
      }),
      { numRuns: 40 },
    );
  });

  it.skipIf(libcrypto === undefined)('libcrypto refuses any flipped bit, a wrong nonce and a short message', () => {
    const l = libcrypto as NonNullable<typeof libcrypto>;
    const sealed = l.seal(NONCE, randomBytes(65536));
    for (const at of [0, 1000, 65535, 65536, 65551]) {
      const bad = Buffer.from(sealed);
      bad[at] = (bad[at] as number) ^ 0x04;
      expect(l.open(NONCE, bad)).toBeUndefined();
    }
    const other = Buffer.from(NONCE);
    other[11] = 1;
    expect(l.open(other, sealed)).toBeUndefined();
    expect(l.open(NONCE, sealed.subarray(0, 10))).toBeUndefined();
    expect(l.backend).toBe('libcrypto');
    l.dispose();
    expect(() => l.open(NONCE, sealed)).toThrow(/after dispose/u);
  });
});
