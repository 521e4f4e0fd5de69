/**
 * DSSE envelopes (https://github.com/secure-systems-lab/dsse, protocol v1) signed with Ed25519.
 *
 * A signature is over PAE(payloadType, payload) = "DSSEv1" SP len(type) SP type SP len(body) SP body,
 * lengths in ASCII decimal bytes, body the raw (decoded) payload. So anyone can check one by hand
 * with openssl (docs/bundles.md). Verification never parses the payload: it returns the payload
 * bytes only once enough trusted keys have signed them.
 */
import { signBytes, verifyBytes, type PublicKey, type SigningKey } from '../keys.js';
import { BundleError } from './errors.js';

/** The in-toto payload type: the payload is an in-toto Statement (JSON). */
export const IN_TOTO_PAYLOAD_TYPE = 'application/vnd.in-toto+json';

export interface DsseSignature {
  /** Hex SHA-256 of the raw Ed25519 public key (`keyId` in models/keys.ts). A hint: only a matching trusted key counts. */
  readonly keyid: string;
  /** Standard base64 (with padding) of the 64-byte Ed25519 signature over the PAE. */
  readonly sig: string;
}

export interface DsseEnvelope {
  readonly payloadType: string;
  /** Standard base64 (with padding) of the payload bytes. */
  readonly payload: string;
  readonly signatures: readonly DsseSignature[];
}

/**
 * Who must have signed: the trusted keys (a trust root's `models` role) and how many distinct
 * ones of them. Signatures by other keys are ignored; a threshold below 1 or above the number of
 * keys is refused (EAI_BUNDLE_POLICY), so there is no way to ask for "unsigned".
 */
export interface SignaturePolicy {
  readonly keys: readonly PublicKey[];
  readonly threshold: number;
}

/** The most signatures an envelope may carry: bounds the work an attacker can cause. */
export const MAX_SIGNATURES = 64;

/** The Pre-Authentication Encoding that is signed. */
export function pae(payloadType: string, payload: Uint8Array): Buffer {
  const type = Buffer.from(payloadType, 'utf8');
  return Buffer.concat([Buffer.from(`DSSEv1 ${type.length} `, 'latin1'), type, Buffer.from(` ${payload.length} `, 'latin1'), payload]);
}

/** A new envelope over `payload`, signed by each key in order. */
export function signEnvelope(payload: Uint8Array, keys: readonly SigningKey[], payloadType = IN_TOTO_PAYLOAD_TYPE): DsseEnvelope {
  const message = pae(payloadType, payload);
  return { payloadType, payload: Buffer.from(payload).toString('base64'), signatures: keys.map((k) => ({ keyid: k.keyid, sig: signBytes(k, message).toString('base64') })) };
}

/** The envelope with `key`'s signature added; unchanged when that key already signed it. */
export function addSignature(envelope: DsseEnvelope, key: SigningKey): DsseEnvelope {
  if (envelope.signatures.some((s) => s.keyid === key.keyid)) return envelope;
  const sig = signBytes(key, pae(envelope.payloadType, decodeBase64(envelope.payload, 'payload'))).toString('base64');
  return { ...envelope, signatures: [...envelope.signatures, { keyid: key.keyid, sig }] };
}

/** Compact JSON with the keys in DSSE's order. */
export function encodeEnvelope(envelope: DsseEnvelope): Buffer {
  return Buffer.from(JSON.stringify({ payloadType: envelope.payloadType, payload: envelope.payload, signatures: envelope.signatures.map((s) => ({ keyid: s.keyid, sig: s.sig })) }), 'utf8');
}

/**
 * Reads an envelope strictly: UTF-8 JSON, exactly the DSSE fields and no others, canonical
 * base64, 1..MAX_SIGNATURES signatures each with a keyid. The payload is not decoded or parsed.
 */
export function parseEnvelope(bytes: Uint8Array): DsseEnvelope {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (cause) {
    throw invalid(`is not UTF-8 JSON (${cause instanceof Error ? cause.message : String(cause)})`, cause);
  }
  if (!isRecord(value) || !sameKeys(value, ['payloadType', 'payload', 'signatures'])) throw invalid('must be an object with exactly payloadType, payload and signatures');
  const { payloadType, payload, signatures } = value;
  if (typeof payloadType !== 'string' || typeof payload !== 'string') throw invalid('has a payloadType or payload that is not a string');
  decodeBase64(payload, 'payload');
  if (!Array.isArray(signatures) || signatures.length === 0 || signatures.length > MAX_SIGNATURES) throw invalid(`must have 1 to ${MAX_SIGNATURES} signatures`);
  const sigs: DsseSignature[] = [];
  for (const s of signatures as unknown[]) {
    if (!isRecord(s) || !sameKeys(s, ['keyid', 'sig']) || typeof s['keyid'] !== 'string' || typeof s['sig'] !== 'string') throw invalid('has a signature that is not exactly { keyid: string, sig: string }');
    decodeBase64(s['sig'], 'signature');
    sigs.push({ keyid: s['keyid'], sig: s['sig'] });
  }
  return { payloadType, payload, signatures: sigs };
}

/** Result of a verified envelope: the payload bytes and the trusted keys that signed them. */
export interface VerifiedPayload {
  readonly payload: Buffer;
  readonly keyids: readonly string[];
}

/**
 * Checks the signatures against the policy and returns the payload. Signatures naming keys the
 * policy does not hold are ignored (a bundle may be signed for several fleets), as is a repeated
 * keyid; but a signature naming a trusted key that does not verify is an error even when the
 * threshold is met by others: it means the envelope was changed, and we never accept a changed one.
 */
export function verifyEnvelope(envelope: DsseEnvelope, policy: SignaturePolicy, payloadType = IN_TOTO_PAYLOAD_TYPE): VerifiedPayload {
  checkPolicy(policy);
  if (envelope.payloadType !== payloadType) {
    throw new BundleError('EAI_BUNDLE_PAYLOAD_TYPE', `the envelope's payloadType is '${envelope.payloadType.slice(0, 100)}', expected '${payloadType}'; this is not a model bundle envelope.`, { details: { payloadType: envelope.payloadType.slice(0, 100) } });
  }
  const trusted = new Map(policy.keys.map((k) => [k.keyid, k]));
  const payload = decodeBase64(envelope.payload, 'payload');
  const message = pae(envelope.payloadType, payload);
  const good = new Set<string>();
  for (const s of envelope.signatures) {
    const key = trusted.get(s.keyid);
    if (key === undefined) continue;
    if (!verifyBytes(key, message, decodeBase64(s.sig, 'signature'))) {
      throw new BundleError('EAI_BUNDLE_SIGNATURE_INVALID', `the signature by trusted key ${s.keyid} does not verify: the manifest or the signature was changed after signing. Do not use this bundle; fetch it again from its source.`, { details: { keyid: s.keyid } });
    }
    good.add(s.keyid);
  }
  if (good.size < policy.threshold) {
    const named = envelope.signatures.map((s) => s.keyid);
    if (good.size === 0) {
      throw new BundleError('EAI_BUNDLE_SIGNATURE_UNKNOWN_KEY', `no signature is by a trusted key: the bundle is signed by ${named.map((k) => k.slice(0, 16)).join(', ')}, the trust root's models role lists ${policy.keys.map((k) => k.keyid.slice(0, 16)).join(', ')}. Sign it with a listed key (\`aios bundle sign\`) or add the key to the trust root.`, { details: { signedBy: named, trusted: policy.keys.map((k) => k.keyid) } });
    }
    throw new BundleError('EAI_BUNDLE_SIGNATURE_THRESHOLD', `${good.size} trusted key(s) signed the bundle, ${policy.threshold} are required; have more of the models role's key holders sign it (\`aios bundle sign\`).`, { details: { signedBy: [...good], threshold: policy.threshold } });
  }
  return { payload, keyids: [...good] };
}

export function checkPolicy(policy: SignaturePolicy): void {
  const distinct = new Set(policy.keys.map((k) => k.keyid)).size;
  if (!Number.isInteger(policy.threshold) || policy.threshold < 1 || policy.threshold > distinct) {
    throw new BundleError('EAI_BUNDLE_POLICY', `a signature threshold must be a whole number from 1 to the number of trusted keys (${distinct}), got ${policy.threshold}; fix the trust root's models role.`, { details: { threshold: policy.threshold, keys: distinct } });
  }
}

/** Standard base64 with padding, and only its canonical spelling (no byte may change unnoticed). */
export function decodeBase64(s: string, what: string): Buffer {
  const bytes = Buffer.from(s, 'base64');
  if (s.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/u.test(s) || bytes.toString('base64') !== s) throw invalid(`has a ${what} that is not canonical standard base64`);
  return bytes;
}

function invalid(what: string, cause?: unknown): BundleError {
  return new BundleError('EAI_BUNDLE_ENVELOPE_INVALID', `the bundle's envelope.dsse.json ${what}; it is corrupt or not a DSSE envelope.`, cause === undefined ? {} : { cause });
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function sameKeys(o: Record<string, unknown>, keys: readonly string[]): boolean {
  const own = Object.keys(o);
  return own.length === keys.length && keys.every((k) => Object.hasOwn(o, k));
}
