import { constants, verify, type KeyObject } from 'node:crypto';
import { hashFromAlg, hex16, TPM_ALG, type TpmHash } from './algorithms.js';
import { TpmError } from './errors.js';
import { TpmReader } from './marshal.js';
import { leftPad, stripZeros } from './public-area.js';

/**
 * A TPM signature (TPMT_SIGNATURE, Part 2 §11.3.4), as tpm2_quote writes it with `-s` (its
 * default `tss` format), and its check with node:crypto.
 *
 * * RSASSA (PKCS#1 v1.5) and RSAPSS: hash u16, then the signature as a TPM2B.
 * * ECDSA: hash u16, then r and s as two TPM2B big-endian integers; node:crypto wants them as
 *   one r||s string of twice the curve's size (`dsaEncoding: 'ieee-p1363'`).
 *
 * Other schemes (ECDAA, SM2, EC-Schnorr, HMAC) end in `EAI_TPM_UNSUPPORTED`.
 */
export type TpmSignature = RsaSignature | EcdsaSignature;

export interface RsaSignature {
  readonly scheme: 'rsassa' | 'rsapss';
  readonly hash: TpmHash;
  readonly signature: Buffer;
}

export interface EcdsaSignature {
  readonly scheme: 'ecdsa';
  readonly hash: TpmHash;
  readonly r: Buffer;
  readonly s: Buffer;
}

const MAX_RSA_BYTES = 512;
const MAX_ECC_BYTES = 128;

const SCHEME_NAMES: Record<number, string> = {
  [TPM_ALG.HMAC]: 'HMAC',
  [TPM_ALG.ECDAA]: 'ECDAA',
  [TPM_ALG.SM2]: 'SM2',
  [TPM_ALG.ECSCHNORR]: 'EC-Schnorr',
  [TPM_ALG.NULL]: 'NULL (the key has no signing scheme)',
};

/** Decodes a whole TPMT_SIGNATURE (no trailing bytes). */
export function decodeSignature(bytes: Uint8Array): TpmSignature {
  const r = new TpmReader(bytes, 'TPMT_SIGNATURE');
  const alg = r.u16('sigAlg');
  let sig: TpmSignature;
  if (alg === TPM_ALG.RSASSA || alg === TPM_ALG.RSAPSS) {
    const hash = hashFromAlg(r.u16('signature.hash'), 'TPMT_SIGNATURE');
    const signature = r.sized('signature.sig', MAX_RSA_BYTES);
    if (signature.byteLength === 0) r.fail('an empty RSA signature');
    sig = { scheme: alg === TPM_ALG.RSASSA ? 'rsassa' : 'rsapss', hash, signature };
  } else if (alg === TPM_ALG.ECDSA) {
    const hash = hashFromAlg(r.u16('signature.hash'), 'TPMT_SIGNATURE');
    const sr = r.sized('signature.signatureR', MAX_ECC_BYTES);
    const ss = r.sized('signature.signatureS', MAX_ECC_BYTES);
    if (sr.byteLength === 0 || ss.byteLength === 0) r.fail('an ECDSA signature with an empty r or s');
    sig = { scheme: 'ecdsa', hash, r: sr, s: ss };
  } else {
    const name = SCHEME_NAMES[alg];
    if (name === undefined) r.fail(`sigAlg ${hex16(alg)} is no signature scheme`, 0);
    throw new TpmError('EAI_TPM_UNSUPPORTED', `TPMT_SIGNATURE uses ${name}; only RSASSA, RSAPSS and ECDSA signatures are verified`, { details: { structure: 'TPMT_SIGNATURE', sigAlg: alg } });
  }
  r.end();
  return sig;
}

/**
 * Whether `signature` is a valid signature by `key` over `message` (the message is hashed here
 * with the signature's hash). A key of the wrong kind for the scheme (an EC key for RSASSA) is
 * `false`, not an error: to a verifier it is just a signature that does not check.
 */
export function verifySignature(signature: TpmSignature, key: KeyObject, message: Uint8Array): boolean {
  if (signature.scheme === 'ecdsa') {
    if (key.asymmetricKeyType !== 'ec') return false;
    const size = CURVE_BYTES[key.asymmetricKeyDetails?.namedCurve ?? ''];
    if (size === undefined) return false;
    const r = stripZeros(signature.r);
    const s = stripZeros(signature.s);
    if (r.byteLength > size || s.byteLength > size) return false;
    const p1363 = Buffer.concat([leftPad(r, size), leftPad(s, size)]);
    try {
      return verify(signature.hash, message, { key, dsaEncoding: 'ieee-p1363' }, p1363);
    } catch {
      return false;
    }
  }
  if (key.asymmetricKeyType !== 'rsa') return false;
  const padding = signature.scheme === 'rsassa' ? constants.RSA_PKCS1_PADDING : constants.RSA_PKCS1_PSS_PADDING;
  try {
    // TPMs use a salt as long as the digest, some the maximum: AUTO accepts whatever the signature says.
    return verify(signature.hash, message, { key, padding, saltLength: constants.RSA_PSS_SALTLEN_AUTO }, signature.signature);
  } catch {
    // OpenSSL throws rather than answering false for some malformed RSA signatures (wrong length).
    return false;
  }
}

/** Coordinate size of the curves node:crypto names (OpenSSL's names). */
const CURVE_BYTES: Record<string, number> = {
  prime192v1: 24,
  secp224r1: 28,
  prime256v1: 32,
  secp384r1: 48,
  secp521r1: 66,
};
