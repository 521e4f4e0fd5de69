import { createHash, sign, verify, type KeyObject } from 'node:crypto';
import { canonicalBytes } from '../../models/trust/canonical-json.js';
import { keyId } from '../../models/keys.js';
import { AttestError } from './errors.js';
import type { MeasurementEvent } from './measurement.js';

/**
 * The quote-like statement a device without a TPM signs with its device key: the verifier's
 * nonce, the software PCR values, and a digest of the whole log (times included). It is the
 * canonical JSON (RFC 8785) of
 *
 *   { "_type": "aios-software-quote/1", "keyid": …, "logDigest": <hex>, "nonce": <hex>,
 *     "pcrs": [{ "hash": "sha256", "index": 23, "value": <hex> }], "time": <RFC 3339> }
 *
 * signed with Ed25519 (the aios device key kind), or ECDSA-SHA256 (DER) for a P-256/P-384 key.
 * The signature proves only that the holder of the device key said so; nothing stops that holder
 * from saying anything, hence evidence kind `software`.
 */
export const STATEMENT_TYPE = 'aios-software-quote/1';

export interface SoftwareStatement {
  readonly _type: typeof STATEMENT_TYPE;
  readonly keyid: string;
  readonly logDigest: string;
  readonly nonce: string;
  readonly pcrs: readonly { readonly hash: 'sha256'; readonly index: number; readonly value: string }[];
  readonly time: string;
}

/** Lowercase hex SHA-256 of the log's canonical JSON (the events as plain objects, in order). */
export function logDigest(events: readonly MeasurementEvent[]): string {
  const plain = events.map((e) => ({ pcr: e.pcr, type: e.type, name: e.name, sha256: e.sha256, time: e.time }));
  return createHash('sha256').update(canonicalBytes(plain)).digest('hex');
}

/** The id evidence names a device key by: SHA-256 of the raw key for Ed25519 (as bundles name keys), of the SPKI DER otherwise. */
export function softwareKeyId(publicKey: KeyObject): string {
  if (publicKey.asymmetricKeyType === 'ed25519') return keyId(publicKey);
  return createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('hex');
}

export function encodeStatement(statement: SoftwareStatement): Buffer {
  return canonicalBytes(statement);
}

/** Parses signed statement bytes; throws `EAI_ATTEST_MALFORMED`. */
export function parseStatement(bytes: Uint8Array): SoftwareStatement {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch {
    throw bad('is not JSON');
  }
  const o = v as Record<string, unknown>;
  if (typeof v !== 'object' || v === null || o['_type'] !== STATEMENT_TYPE) throw bad(`is not an ${STATEMENT_TYPE} object`);
  for (const k of ['keyid', 'logDigest', 'nonce', 'time']) if (typeof o[k] !== 'string') throw bad(`has no string ${k}`);
  const pcrs = o['pcrs'];
  if (!Array.isArray(pcrs) || pcrs.some((p: unknown) => typeof p !== 'object' || p === null || (p as Record<string, unknown>)['hash'] !== 'sha256' || typeof (p as Record<string, unknown>)['index'] !== 'number' || typeof (p as Record<string, unknown>)['value'] !== 'string')) {
    throw bad('has no pcrs list of { hash: "sha256", index, value }');
  }
  return v as SoftwareStatement;
}

/** Signs statement bytes with an Ed25519 or EC private key. */
export function signStatement(bytes: Uint8Array, privateKey: KeyObject): Buffer {
  const type = privateKey.asymmetricKeyType;
  if (type === 'ed25519') return sign(null, bytes, privateKey);
  if (type === 'ec') return sign('sha256', bytes, { key: privateKey, dsaEncoding: 'der' });
  throw new AttestError('EAI_ATTEST_ARGUMENT', `a device key for software attestation is Ed25519 or EC (P-256/P-384), got ${type ?? privateKey.type}`);
}

/** Whether `signature` over `bytes` verifies with `publicKey` (false for a key of another kind). */
export function verifyStatement(bytes: Uint8Array, signature: Uint8Array, publicKey: KeyObject): boolean {
  try {
    if (publicKey.asymmetricKeyType === 'ed25519') return verify(null, bytes, publicKey, signature);
    if (publicKey.asymmetricKeyType === 'ec') return verify('sha256', bytes, { key: publicKey, dsaEncoding: 'der' }, signature);
  } catch {
    // OpenSSL throws for some malformed signatures rather than answering false.
  }
  return false;
}

function bad(why: string): AttestError {
  return new AttestError('EAI_ATTEST_MALFORMED', `malformed evidence: the software statement ${why}`, { details: { why: `statement ${why}` } });
}
