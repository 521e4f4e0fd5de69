import { TpmError } from './errors.js';

/**
 * The TPM_ALG_ID and TPM_ECC_CURVE numbers this driver reads and writes (TCG Algorithm Registry),
 * and the bridge from a TPM hash algorithm to node:crypto's name for it.
 */
export const TPM_ALG = {
  RSA: 0x0001,
  SHA1: 0x0004,
  HMAC: 0x0005,
  AES: 0x0006,
  KEYEDHASH: 0x0008,
  XOR: 0x000a,
  SHA256: 0x000b,
  SHA384: 0x000c,
  SHA512: 0x000d,
  NULL: 0x0010,
  RSASSA: 0x0014,
  RSAES: 0x0015,
  RSAPSS: 0x0016,
  OAEP: 0x0017,
  ECDSA: 0x0018,
  ECDH: 0x0019,
  ECDAA: 0x001a,
  SM2: 0x001b,
  ECSCHNORR: 0x001c,
  ECMQV: 0x001d,
  ECC: 0x0023,
  SYMCIPHER: 0x0025,
  SHA3_256: 0x0027,
  SHA3_384: 0x0028,
  SHA3_512: 0x0029,
  CFB: 0x0043,
} as const;

/** A hash a TPM bank or signature can use, by node:crypto's name. */
export type TpmHash = 'sha1' | 'sha256' | 'sha384' | 'sha512' | 'sha3-256' | 'sha3-384' | 'sha3-512';

/** NIST curves by their node:crypto / JWK name. */
export type TpmCurve = 'P-192' | 'P-224' | 'P-256' | 'P-384' | 'P-521';

const HASHES: readonly { readonly alg: number; readonly name: TpmHash; readonly size: number }[] = [
  { alg: TPM_ALG.SHA1, name: 'sha1', size: 20 },
  { alg: TPM_ALG.SHA256, name: 'sha256', size: 32 },
  { alg: TPM_ALG.SHA384, name: 'sha384', size: 48 },
  { alg: TPM_ALG.SHA512, name: 'sha512', size: 64 },
  { alg: TPM_ALG.SHA3_256, name: 'sha3-256', size: 32 },
  { alg: TPM_ALG.SHA3_384, name: 'sha3-384', size: 48 },
  { alg: TPM_ALG.SHA3_512, name: 'sha3-512', size: 64 },
];

const CURVES: readonly { readonly id: number; readonly name: TpmCurve; readonly size: number }[] = [
  { id: 0x0001, name: 'P-192', size: 24 },
  { id: 0x0002, name: 'P-224', size: 28 },
  { id: 0x0003, name: 'P-256', size: 32 },
  { id: 0x0004, name: 'P-384', size: 48 },
  { id: 0x0005, name: 'P-521', size: 66 },
];

/** The TpmHash for a TPM_ALG_ID; throws `EAI_TPM_UNSUPPORTED` for any other algorithm. */
export function hashFromAlg(alg: number, where: string): TpmHash {
  const h = HASHES.find((x) => x.alg === alg);
  if (h === undefined) throw unsupported(`hash algorithm ${hex16(alg)}`, where);
  return h.name;
}

/** The TPM_ALG_ID of a hash. */
export function hashAlg(hash: TpmHash): number {
  return hashEntry(hash).alg;
}

/** Digest size in bytes. */
export function digestSize(hash: TpmHash): number {
  return hashEntry(hash).size;
}

/** Whether `name` is a hash this driver knows (for input validation). */
export function isTpmHash(name: string): name is TpmHash {
  return HASHES.some((h) => h.name === name);
}

export function curveFromId(id: number, where: string): TpmCurve {
  const c = CURVES.find((x) => x.id === id);
  if (c === undefined) throw unsupported(`ECC curve ${hex16(id)}`, where);
  return c.name;
}

export function curveId(curve: TpmCurve): number {
  return curveEntry(curve).id;
}

/** Bytes of one coordinate (and of r, s in a signature). */
export function curveSize(curve: TpmCurve): number {
  return curveEntry(curve).size;
}

export function hex16(v: number): string {
  return `0x${v.toString(16).padStart(4, '0')}`;
}

function hashEntry(hash: TpmHash): { alg: number; size: number } {
  const h = HASHES.find((x) => x.name === hash);
  if (h === undefined) throw new TpmError('EAI_TPM_ARGUMENT', `unknown hash '${String(hash)}': use one of ${HASHES.map((x) => x.name).join(', ')}`);
  return h;
}

function curveEntry(curve: TpmCurve): { id: number; size: number } {
  const c = CURVES.find((x) => x.name === curve);
  if (c === undefined) throw new TpmError('EAI_TPM_ARGUMENT', `unknown curve '${String(curve)}': use one of ${CURVES.map((x) => x.name).join(', ')}`);
  return c;
}

function unsupported(what: string, where: string): TpmError {
  return new TpmError('EAI_TPM_UNSUPPORTED', `${where} uses ${what}, which this driver does not handle`, { details: { structure: where } });
}
