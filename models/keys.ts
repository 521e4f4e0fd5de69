import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { AiosError } from '../drivers/errors.js';

/** A key that cannot be read, is of the wrong type, or does not match what was expected. */
export class KeyError extends AiosError {}

/**
 * An Ed25519 signing key as aios uses it everywhere (bundles, trust roots, fleet commands): the
 * key objects, and its id, the lowercase hex SHA-256 of the raw 32-byte public key. The id is
 * what signatures name (DSSE `keyid`, TUF `keyids`), so it can be computed by anyone holding
 * the public key: `openssl pkey -pubin -in key.pub -outform DER | tail -c 32 | sha256sum`.
 */
export interface SigningKey {
  readonly keyid: string;
  readonly publicKey: KeyObject;
  readonly privateKey: KeyObject;
}

/** A public key and its id: what trust roots list and verifiers hold. */
export interface PublicKey {
  readonly keyid: string;
  readonly publicKey: KeyObject;
}

export function generateSigningKey(): SigningKey {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  return { keyid: keyId(publicKey), publicKey, privateKey };
}

/** The raw 32 bytes of an Ed25519 public key (the last 32 bytes of its SPKI DER encoding). */
export function rawPublicKey(key: KeyObject): Buffer {
  if (key.asymmetricKeyType !== 'ed25519') throw new KeyError('EAI_KEY_TYPE', `expected an Ed25519 key, got ${key.asymmetricKeyType ?? key.type}; generate one with \`aios keys generate\`.`);
  const der = key.export({ format: 'der', type: 'spki' });
  return der.subarray(der.length - 32);
}

/** Lowercase hex SHA-256 of the raw public key. */
export function keyId(publicKey: KeyObject): string {
  return createHash('sha256').update(rawPublicKey(publicKey)).digest('hex');
}

/** Reads a PEM private key (PKCS#8, as `openssl genpkey -algorithm ed25519` writes). */
export function privateKeyFromPem(pem: string | Buffer, source = 'the private key'): SigningKey {
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(pem);
  } catch (cause) {
    throw new KeyError('EAI_KEY_UNREADABLE', `${source} is not a PEM private key (${cause instanceof Error ? cause.message : String(cause)}); expected what \`aios keys generate\` or \`openssl genpkey -algorithm ed25519\` writes.`, { cause });
  }
  const publicKey = createPublicKey(privateKey);
  return { keyid: keyId(publicKey), publicKey, privateKey };
}

/** Reads a PEM public key (SPKI, as `openssl pkey -pubout` writes). */
export function publicKeyFromPem(pem: string | Buffer, source = 'the public key'): PublicKey {
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey(pem);
  } catch (cause) {
    throw new KeyError('EAI_KEY_UNREADABLE', `${source} is not a PEM public key (${cause instanceof Error ? cause.message : String(cause)}); expected what \`aios keys generate\` or \`openssl pkey -pubout\` writes.`, { cause });
  }
  return { keyid: keyId(publicKey), publicKey };
}

/** A public key from its raw 32 bytes (hex), as trust roots store it. */
export function publicKeyFromRaw(hex: string): PublicKey {
  if (!/^[0-9a-f]{64}$/u.test(hex)) throw new KeyError('EAI_KEY_UNREADABLE', `an Ed25519 public key is 64 hex digits, got '${hex.slice(0, 80)}'.`);
  // SPKI DER prefix for Ed25519 (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING }.
  const der = Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), Buffer.from(hex, 'hex')]);
  const publicKey = createPublicKey({ key: der, format: 'der', type: 'spki' });
  return { keyid: keyId(publicKey), publicKey };
}

export function publicKeyPem(key: KeyObject): string {
  return key.export({ format: 'pem', type: 'spki' }).toString();
}

export function privateKeyPem(key: KeyObject): string {
  return key.export({ format: 'pem', type: 'pkcs8' }).toString();
}

/** Ed25519 signature over `message` (64 bytes). */
export function signBytes(key: SigningKey, message: Uint8Array): Buffer {
  return sign(null, message, key.privateKey);
}

/** Whether `signature` is `key`'s Ed25519 signature over `message`. Never throws on bad input. */
export function verifyBytes(key: PublicKey, message: Uint8Array, signature: Uint8Array): boolean {
  try {
    return signature.length === 64 && verify(null, message, key.publicKey, signature);
  } catch {
    return false;
  }
}
