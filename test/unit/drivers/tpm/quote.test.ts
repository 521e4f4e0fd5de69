import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeQuoteAttest } from '../../../../drivers/tpm/attest.js';
import { TpmError } from '../../../../drivers/tpm/errors.js';
import { objectName } from '../../../../drivers/tpm/names.js';
import { pcrComposite, splitPcrValues } from '../../../../drivers/tpm/pcr.js';
import { decodePublic } from '../../../../drivers/tpm/public-area.js';
import { verifyQuote, type QuoteExpectation } from '../../../../drivers/tpm/quote.js';
import { decodeSignature } from '../../../../drivers/tpm/signature.js';

// Quotes made by tpm2_quote on swtpm 0.7.1 (test/fixtures/tpm/README.md): ECDSA, RSASSA and RSAPSS AKs.
const FIXTURES = path.resolve(import.meta.dirname, '../../../fixtures/tpm');
const read = (f: string): Buffer => readFileSync(path.join(FIXTURES, f));
const SCHEMES = ['ecdsa', 'rsassa', 'rsapss'] as const;
const nonce = read('nonce.bin');

function fixture(scheme: (typeof SCHEMES)[number]) {
  const attest = read(`quote-${scheme}.attest`);
  const signature = read(`quote-${scheme}.sig`);
  const ak = decodePublic(read(`ak-${scheme}.pub`));
  const pcrs = splitPcrValues(decodeQuoteAttest(attest).pcrSelection, read(`quote-${scheme}.pcrs`));
  return { attest, signature, ak, pcrs };
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    if (error instanceof TpmError) return error.code;
    throw error;
  }
  return 'ok';
}

describe('quotes made by tpm2_quote', () => {
  it.each(SCHEMES)('%s: decodes the TPMS_ATTEST field by field', (scheme) => {
    const { attest, ak, pcrs } = fixture(scheme);
    const q = decodeQuoteAttest(attest);
    expect(q.type).toBe('quote');
    expect(q.extraData).toEqual(nonce);
    expect(q.pcrSelection).toEqual([{ hash: 'sha256', pcrs: [0, 7, 16] }, { hash: 'sha1', pcrs: [16] }]);
    expect(q.pcrDigest).toHaveLength(32);
    expect(q.pcrDigest).toEqual(pcrComposite('sha256', q.pcrSelection, pcrs));
    // A quote names its signer by qualified name: the nameAlg id, then a SHA-256 digest.
    expect(q.qualifiedSigner.subarray(0, 2).toString('hex')).toBe('000b');
    expect(q.qualifiedSigner).toHaveLength(34);
    expect(q.clockInfo.safe).toBe(true);
    // clockInfo sits after magic, type, the 34-byte signer and the 18-byte nonce (each with its size).
    const clockAt = 4 + 2 + 2 + 34 + 2 + nonce.length;
    expect(q.clockInfo.clock).toBe(attest.readBigUInt64BE(clockAt));
    expect([q.clockInfo.resetCount, q.clockInfo.restartCount]).toEqual([attest.readUInt32BE(clockAt + 8), attest.readUInt32BE(clockAt + 12)]);
    expect(q.firmwareVersion).toBeGreaterThan(0n);
    // PCR 16 holds one extend of sha256("abc") (make-fixtures.sh), the others are untouched.
    const abc = createHash('sha256').update('abc').digest();
    expect(pcrs[0]?.values.get(16)).toEqual(createHash('sha256').update(Buffer.alloc(32)).update(abc).digest());
    expect(pcrs[0]?.values.get(0)).toEqual(Buffer.alloc(32));
    expect(pcrs[1]?.values.get(16)).toEqual(Buffer.alloc(20));
    expect(verifyQuote({ attest, signature: fixture(scheme).signature }, { ak, nonce, pcrs }).signature.scheme).toBe(scheme);
  });

  it.each(SCHEMES)('%s: the AK public area decodes to a restricted signing key whose name matches tpm2_createak -n', (scheme) => {
    const ak = decodePublic(read(`ak-${scheme}.pub`));
    expect(ak.attributes).toMatchObject({ restricted: true, sign: true, decrypt: false, fixedTPM: true, fixedParent: true, sensitiveDataOrigin: true, userWithAuth: true });
    expect(ak.scheme).toEqual({ scheme, hash: 'sha256' });
    expect(ak.nameAlg).toBe('sha256');
    if (ak.type === 'ecc') expect([ak.curve, ak.x.length, ak.y.length]).toEqual(['P-256', 32, 32]);
    else expect([ak.keyBits, ak.exponent, ak.modulus.length]).toEqual([2048, 65537, 256]);
    expect(objectName(ak)).toEqual(read(`ak-${scheme}.name`));
  });

  it('decodes the TPMT_SIGNATUREs: ECDSA r and s, RSA signatures of the modulus size', () => {
    const e = decodeSignature(read('quote-ecdsa.sig'));
    expect(e.scheme === 'ecdsa' && [e.hash, e.r.length <= 32, e.s.length <= 32]).toEqual(['sha256', true, true]);
    for (const s of ['rsassa', 'rsapss'] as const) {
      const r = decodeSignature(read(`quote-${s}.sig`));
      expect(r.scheme !== 'ecdsa' && [r.scheme, r.hash, r.signature.length]).toEqual([s, 'sha256', 256]);
    }
  });

  it('decodes the RSA EK public area: restricted decryption, AES-128-CFB, the TCG EK policy', () => {
    const ek = decodePublic(read('ek-rsa.pub'));
    expect(ek.type).toBe('rsa');
    expect(ek.attributes).toMatchObject({ restricted: true, decrypt: true, sign: false, adminWithPolicy: true, userWithAuth: false });
    expect(ek.symmetric).toEqual({ algorithm: 'aes', keyBits: 128, mode: 'cfb' });
    // PolicySecret(TPM_RH_ENDORSEMENT): the same digest on every TPM (EK Credential Profile, template L-1).
    expect(ek.authPolicy.toString('hex')).toBe('837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa');
  });
});

describe('verifyQuote refuses', () => {
  const good = fixture('ecdsa');
  const expectation: QuoteExpectation = { ak: good.ak, nonce, pcrs: good.pcrs };

  it('every single-byte change of the attest, with the code of the check that caught it', () => {
    const codes = new Set<string>();
    for (let i = 0; i < good.attest.length; i++) {
      const bad = Buffer.from(good.attest);
      bad[i] = bad[i]! ^ 0x01;
      const code = codeOf(() => verifyQuote({ attest: bad, signature: good.signature }, expectation));
      expect(code, `byte ${i}`).not.toBe('ok');
      codes.add(code);
    }
    expect([...codes].sort()).toEqual(expect.arrayContaining(['EAI_TPM_MALFORMED', 'EAI_TPM_QUOTE_SIGNATURE']));
  });

  it('a changed signature', () => {
    for (const scheme of SCHEMES) {
      const f = fixture(scheme);
      const sig = Buffer.from(f.signature);
      sig[sig.length - 5] = sig[sig.length - 5]! ^ 0x80;
      expect(codeOf(() => verifyQuote({ attest: f.attest, signature: sig }, { ak: f.ak, nonce }))).toBe('EAI_TPM_QUOTE_SIGNATURE');
    }
  });

  it('another nonce than the one sent (a replay)', () => {
    expect(codeOf(() => verifyQuote(good, { ...expectation, nonce: Buffer.from('another nonce') }))).toBe('EAI_TPM_QUOTE_NONCE');
  });

  it('another AK: each fixture quote fails with every other fixture key', () => {
    for (const a of SCHEMES) {
      for (const b of SCHEMES) {
        if (a === b) continue;
        const f = fixture(a);
        expect(codeOf(() => verifyQuote(f, { ak: fixture(b).ak, nonce }))).toBe('EAI_TPM_QUOTE_SIGNATURE');
      }
    }
  });

  it('PCR values that differ from what was quoted, or miss a quoted PCR', () => {
    const changed = good.pcrs.map((b) => ({ hash: b.hash, values: new Map([...b.values].map(([i, v]) => [i, i === 7 ? Buffer.alloc(v.length, 1) : v])) }));
    expect(codeOf(() => verifyQuote(good, { ...expectation, pcrs: changed }))).toBe('EAI_TPM_QUOTE_PCRS');
    expect(codeOf(() => verifyQuote(good, { ...expectation, pcrs: good.pcrs.slice(0, 1) }))).toBe('EAI_TPM_QUOTE_PCRS');
  });

  it('a key that is not a restricted signing key (the EK), and a hash the verifier does not accept', () => {
    expect(codeOf(() => verifyQuote(good, { ...expectation, ak: decodePublic(read('ek-rsa.pub')) }))).toBe('EAI_TPM_KEY_TYPE');
    expect(codeOf(() => verifyQuote(good, { ...expectation, hashes: ['sha384'] }))).toBe('EAI_TPM_QUOTE_SIGNATURE');
  });

  it('a qualified signer other than the expected one', () => {
    const q = decodeQuoteAttest(good.attest);
    expect(verifyQuote(good, { ...expectation, qualifiedSigner: q.qualifiedSigner }).attest.qualifiedSigner).toEqual(q.qualifiedSigner);
    expect(codeOf(() => verifyQuote(good, { ...expectation, qualifiedSigner: Buffer.alloc(34) }))).toBe('EAI_TPM_QUOTE_SIGNATURE');
  });
});

describe('malformed input never crashes the parsers', () => {
  const inputs = {
    attest: { bytes: read('quote-ecdsa.attest'), parse: decodeQuoteAttest },
    signature: { bytes: read('quote-rsassa.sig'), parse: decodeSignature },
    ecdsaSignature: { bytes: read('quote-ecdsa.sig'), parse: decodeSignature },
    public: { bytes: read('ak-ecdsa.pub'), parse: decodePublic },
    rsaPublic: { bytes: read('ek-rsa.pub'), parse: decodePublic },
  };

  it.each(Object.entries(inputs))('%s: every truncation and every extension is EAI_TPM_MALFORMED', (_, { bytes, parse }) => {
    for (let n = 0; n < bytes.length; n++) expect(codeOf(() => parse(bytes.subarray(0, n))), `first ${n} bytes`).toBe('EAI_TPM_MALFORMED');
    expect(codeOf(() => parse(Buffer.concat([bytes, Buffer.from([0])])))).toBe('EAI_TPM_MALFORMED');
  });

  it.each(Object.entries(inputs))('%s: random corruptions decode or throw a TpmError, nothing else', (_, { bytes, parse }) => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(bytes.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }), (edits) => {
        const bad = Buffer.from(bytes);
        for (const [i, v] of edits) bad[i] = v;
        try {
          parse(bad);
        } catch (error) {
          expect(error).toBeInstanceOf(TpmError);
        }
      }),
      { numRuns: 500 },
    );
  });

  it('random bytes decode or throw a TpmError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        for (const parse of [decodeQuoteAttest, decodeSignature, decodePublic]) {
          try {
            parse(bytes);
          } catch (error) {
            expect(error).toBeInstanceOf(TpmError);
          }
        }
      }),
      { numRuns: 500 },
    );
  });

  it('names what is wrong: magic, size fields, the attestation type', () => {
    const attest = Buffer.from(read('quote-ecdsa.attest'));
    const wrongMagic = Buffer.from(attest);
    wrongMagic[0] = 0;
    expect(() => decodeQuoteAttest(wrongMagic)).toThrow(/magic is 0x00544347, not TPM_GENERATED/u);
    const certify = Buffer.from(attest);
    certify.writeUInt16BE(0x8017, 4);
    expect(codeOf(() => decodeQuoteAttest(certify))).toBe('EAI_TPM_UNSUPPORTED');
    const lyingSize = Buffer.from(attest);
    lyingSize.writeUInt16BE(0xfff0, 6); // qualifiedSigner.size
    expect(() => decodeQuoteAttest(lyingSize)).toThrow(/qualifiedSigner.size is 65520, more than the 66 bytes/u);
    const pub = Buffer.from(read('ak-ecdsa.pub'));
    pub.writeUInt16BE(pub.readUInt16BE(0) + 1, 0);
    expect(() => decodePublic(pub)).toThrow(/size says 89 bytes but 88 follow/u);
  });
});
