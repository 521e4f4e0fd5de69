import { createPublicKey, type KeyObject } from 'node:crypto';
import { curveFromId, curveSize, hashFromAlg, hex16, TPM_ALG, type TpmCurve, type TpmHash } from './algorithms.js';
import { TpmError } from './errors.js';
import { TpmReader } from './marshal.js';

/**
 * The public area of a TPM key (TPMT_PUBLIC, Part 2 §12.2.4), and its TPM2B_PUBLIC wrapper that
 * tpm2-tools writes with `-f tss`: what kind of key it is, what the TPM lets it do (attributes),
 * and the public key itself as a node:crypto KeyObject.
 *
 * A verifier trusts a quote only if it was signed by a *restricted signing* key (the TPM signs
 * with such a key only data it produced itself, starting with the TPM_GENERATED magic), so the
 * attributes are decoded for it to check: see `isRestrictedSigningKey`.
 *
 * RSA and ECC keys are read; keyed-hash and symmetric objects end in `EAI_TPM_UNSUPPORTED`.
 */
export interface ObjectAttributes {
  /** The raw TPMA_OBJECT bits. */
  readonly raw: number;
  readonly fixedTPM: boolean;
  readonly stClear: boolean;
  readonly fixedParent: boolean;
  readonly sensitiveDataOrigin: boolean;
  readonly userWithAuth: boolean;
  readonly adminWithPolicy: boolean;
  readonly noDA: boolean;
  readonly encryptedDuplication: boolean;
  readonly restricted: boolean;
  readonly decrypt: boolean;
  readonly sign: boolean;
}

/** A signing or key-exchange scheme a key is fixed to; undefined when the key leaves it open (TPM_ALG_NULL). */
export interface KeyScheme {
  readonly scheme: 'rsassa' | 'rsapss' | 'rsaes' | 'oaep' | 'ecdsa' | 'ecdh' | 'ecdaa' | 'sm2' | 'ecschnorr' | 'ecmqv';
  /** The scheme's hash; undefined only for rsaes. */
  readonly hash?: TpmHash;
  /** ECDAA's commit count. */
  readonly count?: number;
}

/** The symmetric algorithm of a storage key (an EK: AES-128-CFB); undefined for signing keys. */
export interface SymmetricDef {
  readonly algorithm: 'aes' | 'sm4' | 'camellia';
  readonly keyBits: number;
  readonly mode: 'ctr' | 'ofb' | 'cbc' | 'cfb' | 'ecb';
}

interface PublicAreaBase {
  readonly nameAlg: TpmHash;
  readonly attributes: ObjectAttributes;
  readonly authPolicy: Buffer;
  readonly symmetric: SymmetricDef | undefined;
  readonly scheme: KeyScheme | undefined;
  /** The marshalled TPMT_PUBLIC these fields came from: the key's name is computed over it. */
  readonly bytes: Buffer;
}

export interface RsaPublicArea extends PublicAreaBase {
  readonly type: 'rsa';
  readonly keyBits: number;
  /** The public exponent (a TPMT_PUBLIC's 0 already replaced by the default 65537). */
  readonly exponent: number;
  readonly modulus: Buffer;
}

export interface EccPublicArea extends PublicAreaBase {
  readonly type: 'ecc';
  readonly curve: TpmCurve;
  readonly kdf: { readonly scheme: number; readonly hash: TpmHash } | undefined;
  readonly x: Buffer;
  readonly y: Buffer;
}

export type PublicArea = RsaPublicArea | EccPublicArea;

/** TPMA_OBJECT bits (Part 2 §8.3). */
const ATTR = {
  fixedTPM: 1 << 1,
  stClear: 1 << 2,
  fixedParent: 1 << 4,
  sensitiveDataOrigin: 1 << 5,
  userWithAuth: 1 << 6,
  adminWithPolicy: 1 << 7,
  noDA: 1 << 10,
  encryptedDuplication: 1 << 11,
  restricted: 1 << 16,
  decrypt: 1 << 17,
  sign: 1 << 18,
} as const;

/** TPM2B_PUBLIC_KEY_RSA holds at most a 4096-bit modulus; TPM2B_ECC_PARAMETER at most 128 bytes. */
const MAX_RSA_BYTES = 512;
const MAX_ECC_BYTES = 128;
const MAX_DIGEST = 64;

/** Decodes a TPM2B_PUBLIC (the size-prefixed form tpm2-tools writes with `-f tss`). */
export function decodePublic(bytes: Uint8Array): PublicArea {
  const r = new TpmReader(bytes, 'TPM2B_PUBLIC');
  const size = r.u16('size');
  if (size !== r.remaining) r.fail(`size says ${size} bytes but ${r.remaining} follow`, 0);
  const area = readPublicArea(r);
  r.end();
  return area;
}

/** Decodes a bare TPMT_PUBLIC. */
export function decodePublicArea(bytes: Uint8Array): PublicArea {
  const r = new TpmReader(bytes, 'TPMT_PUBLIC');
  const area = readPublicArea(r);
  r.end();
  return area;
}

/** The TPM2B_PUBLIC bytes of an area (what `tpm2_checkquote -u` and `tpm2_loadexternal` read). */
export function encodePublic(area: PublicArea): Buffer {
  const size = Buffer.alloc(2);
  size.writeUInt16BE(area.bytes.byteLength);
  return Buffer.concat([size, area.bytes]);
}

/** The public key as a node:crypto KeyObject (RSA, or EC on a NIST curve). */
export function publicKey(area: PublicArea): KeyObject {
  try {
    if (area.type === 'rsa') {
      const e = Buffer.alloc(4);
      e.writeUInt32BE(area.exponent);
      return createPublicKey({ key: { kty: 'RSA', n: b64url(area.modulus), e: b64url(stripZeros(e)) }, format: 'jwk' });
    }
    const size = curveSize(area.curve);
    return createPublicKey({ key: { kty: 'EC', crv: area.curve, x: b64url(leftPad(area.x, size)), y: b64url(leftPad(area.y, size)) }, format: 'jwk' });
  } catch (cause) {
    throw new TpmError('EAI_TPM_MALFORMED', `the ${area.type.toUpperCase()} public key in a TPMT_PUBLIC is not a valid key: ${(cause as Error).message}`, { cause, details: { structure: 'TPMT_PUBLIC' } });
  }
}

/**
 * Whether the TPM will sign with this key only data it generated itself (restricted + sign), and
 * the key cannot leave the TPM (fixedTPM, fixedParent) — what an attestation key must be.
 */
export function isRestrictedSigningKey(area: PublicArea): boolean {
  const a = area.attributes;
  return a.restricted && a.sign && !a.decrypt && a.fixedTPM && a.fixedParent;
}

/** Whether this is a storage key such as an EK: restricted, decrypt, not sign, fixed to its TPM. */
export function isRestrictedDecryptionKey(area: PublicArea): boolean {
  const a = area.attributes;
  return a.restricted && a.decrypt && !a.sign && a.fixedTPM && a.fixedParent;
}

/** Reads a TPMT_PUBLIC at the reader's position. */
export function readPublicArea(r: TpmReader): PublicArea {
  const start = r.position;
  const type = r.u16('type');
  if (type !== TPM_ALG.RSA && type !== TPM_ALG.ECC) {
    throw new TpmError('EAI_TPM_UNSUPPORTED', `${r.structure} describes an object of type ${hex16(type)}; only RSA (0x0001) and ECC (0x0023) keys are read`, { details: { structure: r.structure } });
  }
  const nameAlg = hashFromAlg(r.u16('nameAlg'), r.structure);
  const attributes = decodeAttributes(r.u32('objectAttributes'));
  const authPolicy = r.sized('authPolicy', MAX_DIGEST);
  const symmetric = readSymmetric(r);
  const scheme = readScheme(r);
  if (type === TPM_ALG.RSA) {
    const keyBits = r.u16('parameters.keyBits');
    const exponent = r.u32('parameters.exponent');
    const modulus = r.sized('unique.rsa', MAX_RSA_BYTES);
    if (keyBits === 0 || modulus.byteLength * 8 !== keyBits) r.fail(`an RSA ${keyBits}-bit key with a ${modulus.byteLength * 8}-bit modulus`);
    return { type: 'rsa', nameAlg, attributes, authPolicy, symmetric, scheme, keyBits, exponent: exponent === 0 ? 65537 : exponent, modulus, bytes: r.span(start) };
  }
  const curve = curveFromId(r.u16('parameters.curveID'), r.structure);
  const kdfScheme = r.u16('parameters.kdf.scheme');
  const kdf = kdfScheme === TPM_ALG.NULL ? undefined : { scheme: kdfScheme, hash: hashFromAlg(r.u16('parameters.kdf.hashAlg'), r.structure) };
  const x = r.sized('unique.ecc.x', MAX_ECC_BYTES);
  const y = r.sized('unique.ecc.y', MAX_ECC_BYTES);
  const size = curveSize(curve);
  if (stripZeros(x).byteLength > size || stripZeros(y).byteLength > size) r.fail(`an ECC point with coordinates longer than ${curve}'s ${size} bytes`);
  return { type: 'ecc', nameAlg, attributes, authPolicy, symmetric, scheme, curve, kdf, x, y, bytes: r.span(start) };
}

function decodeAttributes(raw: number): ObjectAttributes {
  const has = (bit: number): boolean => (raw & bit) !== 0;
  return {
    raw,
    fixedTPM: has(ATTR.fixedTPM),
    stClear: has(ATTR.stClear),
    fixedParent: has(ATTR.fixedParent),
    sensitiveDataOrigin: has(ATTR.sensitiveDataOrigin),
    userWithAuth: has(ATTR.userWithAuth),
    adminWithPolicy: has(ATTR.adminWithPolicy),
    noDA: has(ATTR.noDA),
    encryptedDuplication: has(ATTR.encryptedDuplication),
    restricted: has(ATTR.restricted),
    decrypt: has(ATTR.decrypt),
    sign: has(ATTR.sign),
  };
}

const SYM_ALGS: Record<number, SymmetricDef['algorithm']> = { [TPM_ALG.AES]: 'aes', 0x0013: 'sm4', 0x0026: 'camellia' };
const SYM_MODES: Record<number, SymmetricDef['mode']> = { 0x0040: 'ctr', 0x0041: 'ofb', 0x0042: 'cbc', [TPM_ALG.CFB]: 'cfb', 0x0044: 'ecb' };

function readSymmetric(r: TpmReader): SymmetricDef | undefined {
  const alg = r.u16('parameters.symmetric.algorithm');
  if (alg === TPM_ALG.NULL) return undefined;
  const algorithm = SYM_ALGS[alg];
  if (algorithm === undefined) throw new TpmError('EAI_TPM_UNSUPPORTED', `${r.structure} uses symmetric algorithm ${hex16(alg)}, which this driver does not handle`, { details: { structure: r.structure } });
  const keyBits = r.u16('parameters.symmetric.keyBits');
  const modeAlg = r.u16('parameters.symmetric.mode');
  const mode = SYM_MODES[modeAlg];
  if (mode === undefined) throw new TpmError('EAI_TPM_UNSUPPORTED', `${r.structure} uses symmetric mode ${hex16(modeAlg)}, which this driver does not handle`, { details: { structure: r.structure } });
  return { algorithm, keyBits, mode };
}

const SCHEMES: Record<number, KeyScheme['scheme']> = {
  [TPM_ALG.RSASSA]: 'rsassa',
  [TPM_ALG.RSAPSS]: 'rsapss',
  [TPM_ALG.RSAES]: 'rsaes',
  [TPM_ALG.OAEP]: 'oaep',
  [TPM_ALG.ECDSA]: 'ecdsa',
  [TPM_ALG.ECDH]: 'ecdh',
  [TPM_ALG.ECDAA]: 'ecdaa',
  [TPM_ALG.SM2]: 'sm2',
  [TPM_ALG.ECSCHNORR]: 'ecschnorr',
  [TPM_ALG.ECMQV]: 'ecmqv',
};

function readScheme(r: TpmReader): KeyScheme | undefined {
  const alg = r.u16('parameters.scheme.scheme');
  if (alg === TPM_ALG.NULL) return undefined;
  const scheme = SCHEMES[alg];
  if (scheme === undefined) throw new TpmError('EAI_TPM_UNSUPPORTED', `${r.structure} uses key scheme ${hex16(alg)}, which this driver does not handle`, { details: { structure: r.structure } });
  if (scheme === 'rsaes') return { scheme };
  const hash = hashFromAlg(r.u16('parameters.scheme.hashAlg'), r.structure);
  if (scheme === 'ecdaa') return { scheme, hash, count: r.u16('parameters.scheme.count') };
  return { scheme, hash };
}

function b64url(b: Uint8Array): string {
  return Buffer.from(b).toString('base64url');
}

/** Drops leading zero bytes (TPMs may pad an integer to a fixed size; JWK wants the minimal form for `e`). */
export function stripZeros(b: Uint8Array): Buffer {
  let i = 0;
  while (i < b.byteLength - 1 && b[i] === 0) i++;
  return Buffer.from(b.subarray(i));
}

/** Left-pads with zeros to `size` bytes (after dropping any leading zeros beyond it). */
export function leftPad(b: Uint8Array, size: number): Buffer {
  const s = stripZeros(b);
  if (s.byteLength >= size) return s;
  return Buffer.concat([Buffer.alloc(size - s.byteLength), s]);
}
