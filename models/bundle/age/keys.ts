/**
 * age's X25519 recipient type: key strings (`age1…` public, `AGE-SECRET-KEY-1…` secret), key
 * generation, and wrapping / unwrapping the file key in an `X25519` stanza, on node:crypto.
 *
 * The stream code sees recipients and identities only through {@link AgeRecipient} and
 * {@link AgeIdentity}, so an identity whose secret never leaves a TPM or a secure element can
 * implement `unwrap` itself.
 */
import { createCipheriv, createDecipheriv, createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, type KeyObject } from 'node:crypto';
import { bech32Decode, bech32Encode } from './bech32.js';
import { AgeError, decodeBase64, encodeBase64, FILE_KEY_SIZE, type AgeStanza } from './format.js';

/** Something a file key can be encrypted to. `wrap` returns the stanza(s) that carry it. */
export interface AgeRecipient {
  wrap(fileKey: Buffer): readonly AgeStanza[];
}

/**
 * Something that may recover a file key. `unwrap` returns `undefined` when no stanza is meant for
 * it (wrong type, or the stanza opens under another key) and throws `EAI_AGE_HEADER` when a stanza
 * of its own type is malformed. `label` names it in messages; for X25519, its `age1…` public key.
 */
export interface AgeIdentity {
  readonly label: string;
  unwrap(stanzas: readonly AgeStanza[]): Buffer | undefined;
}

const RECIPIENT_HRP = 'age';
const IDENTITY_HRP = 'AGE-SECRET-KEY-';
const STANZA_TYPE = 'X25519';
const WRAP_LABEL = 'age-encryption.org/v1/X25519';
const KEY_SIZE = 32;
// DER prefixes of X25519 SubjectPublicKeyInfo and PKCS#8 PrivateKeyInfo: the raw 32 bytes follow.
/**
 * A public key object from its 32 raw bytes. Through JWK, not SPKI DER: Node parses DER keys by
 * trying decoders in turn (about 100 µs here, against 9 µs), and every file decrypted imports one
 * (its ephemeral share).
 */
function x25519PublicKey(raw: Buffer): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: raw.toString('base64url') }, format: 'jwk' });
}

const PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');
const ZERO_NONCE = Buffer.alloc(12);

/** An X25519 public key as a recipient: `age1…` (what `age -r` and `age-keygen -y` take and print). */
export class X25519Recipient implements AgeRecipient {
  /** The raw 32-byte Montgomery u-coordinate. */
  readonly publicKey: Buffer;
  readonly #key: KeyObject;

  private constructor(raw: Buffer) {
    this.publicKey = Buffer.from(raw);
    this.#key = x25519PublicKey(raw);
  }

  /** From the raw 32 bytes; throws `EAI_AGE_KEY` for another length. */
  static fromPublicKey(raw: Uint8Array): X25519Recipient {
    if (raw.length !== KEY_SIZE) throw badKey(`an X25519 public key of ${raw.length} bytes`, `${KEY_SIZE} bytes`);
    return new X25519Recipient(Buffer.from(raw));
  }

  /** Parses `age1…`; throws `EAI_AGE_KEY` naming what is wrong with it. */
  static parse(s: string): X25519Recipient {
    const raw = decodeKey(s.trim(), RECIPIENT_HRP, 'recipient');
    return new X25519Recipient(raw);
  }

  /** `age1…`, lower case. */
  toString(): string {
    return bech32Encode(RECIPIENT_HRP, this.publicKey);
  }

  /** One `-> X25519 <ephemeral share>` stanza; a fresh ephemeral key each call. */
  wrap(fileKey: Buffer): readonly AgeStanza[] {
    const ephemeral = generateKeyPairSync('x25519');
    const share = rawPublic(ephemeral.publicKey);
    let shared: Buffer;
    try {
      shared = diffieHellman({ privateKey: ephemeral.privateKey, publicKey: this.#key });
    } catch (cause) {
      // OpenSSL refuses an all-zero shared secret: the recipient is a low-order point, not a real key.
      throw new AgeError('EAI_AGE_KEY', `the recipient ${this.toString()} is not a usable X25519 public key (a low-order point); ask its owner for the output of \`age-keygen -y\`.`, { cause });
    }
    const key = wrapKey(shared, share, this.publicKey);
    const cipher = createCipheriv('chacha20-poly1305', key, ZERO_NONCE, { authTagLength: 16 });
    const body = Buffer.concat([cipher.update(fileKey), cipher.final(), cipher.getAuthTag()]);
    return [{ type: STANZA_TYPE, args: [encodeBase64(share)], body }];
  }
}

/**
 * An X25519 secret key: what a device holds to decrypt. `toString()` is deliberately not the
 * secret (it prints the public key), so an identity in a log line or template string leaks
 * nothing; {@link X25519Identity.encode} gives the `AGE-SECRET-KEY-1…` string.
 */
export class X25519Identity implements AgeIdentity {
  /** The public half, to encrypt to this identity. */
  readonly recipient: X25519Recipient;
  /** The `age1…` public key. */
  readonly label: string;
  readonly #privateKey: KeyObject;

  private constructor(privateKey: KeyObject) {
    this.#privateKey = privateKey;
    this.recipient = X25519Recipient.fromPublicKey(rawPublic(createPublicKey(privateKey)));
    this.label = this.recipient.toString();
  }

  /** A new random identity (as `age-keygen` makes). */
  static generate(): X25519Identity {
    return new X25519Identity(generateKeyPairSync('x25519').privateKey);
  }

  /** From the raw 32-byte scalar (unclamped, as age stores it); throws `EAI_AGE_KEY` for another length. */
  static fromSecretKey(raw: Uint8Array): X25519Identity {
    if (raw.length !== KEY_SIZE) throw badKey(`an X25519 secret key of ${raw.length} bytes`, `${KEY_SIZE} bytes`);
    return new X25519Identity(createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, raw]), format: 'der', type: 'pkcs8' }));
  }

  /** Parses `AGE-SECRET-KEY-1…` (upper case, as age-keygen writes it); throws `EAI_AGE_KEY`. */
  static parse(s: string): X25519Identity {
    return X25519Identity.fromSecretKey(decodeKey(s.trim(), IDENTITY_HRP, 'identity'));
  }

  /** The `AGE-SECRET-KEY-1…` string. Handle it as the secret it is. */
  encode(): string {
    return bech32Encode(IDENTITY_HRP, this.secretKey());
  }

  /** The raw 32-byte secret (what `fromSecretKey` takes). Handle it as the secret it is. */
  secretKey(): Buffer {
    const der = this.#privateKey.export({ format: 'der', type: 'pkcs8' });
    return Buffer.from(der.subarray(der.length - KEY_SIZE));
  }

  /** Public, so that printing an identity cannot leak its secret. */
  toString(): string {
    return `age X25519 identity ${this.label}`;
  }

  /**
   * The file key from the first `X25519` stanza that opens under this key. Every X25519 stanza is
   * checked for form first, whichever identity is asked, so whether a file is accepted does not
   * depend on the order of stanzas or identities.
   */
  unwrap(stanzas: readonly AgeStanza[]): Buffer | undefined {
    const ours = stanzas.map((s, index) => ({ s, index })).filter(({ s }) => s.type === STANZA_TYPE);
    const shares = ours.map(({ s, index }) => {
      const share = s.args.length === 1 ? decodeBase64(s.args[0] as string) : undefined;
      if (share?.length !== KEY_SIZE) throw badStanza(index, 'it needs exactly one argument, the 43-character base64 ephemeral share');
      if (s.body.length !== FILE_KEY_SIZE + 16) throw badStanza(index, `its body is ${s.body.length} bytes, expected ${FILE_KEY_SIZE + 16} (the wrapped file key and its tag)`);
      return share;
    });
    for (let i = 0; i < ours.length; i++) {
      const { s, index } = ours[i] as { s: AgeStanza; index: number };
      const share = shares[i] as Buffer;
      let shared: Buffer;
      try {
        shared = diffieHellman({ privateKey: this.#privateKey, publicKey: x25519PublicKey(share) });
      } catch (cause) {
        throw badStanza(index, 'its ephemeral share is a low-order point (the shared secret would be zero)', cause);
      }
      const decipher = createDecipheriv('chacha20-poly1305', wrapKey(shared, share, this.recipient.publicKey), ZERO_NONCE, { authTagLength: 16 });
      decipher.setAuthTag(s.body.subarray(FILE_KEY_SIZE));
      const fileKey = decipher.update(s.body.subarray(0, FILE_KEY_SIZE));
      try {
        decipher.final();
        return fileKey;
      } catch {
        // Not for us: the stanza was made for another recipient.
      }
    }
    return undefined;
  }
}

/**
 * Reads an identity file as `age-keygen` writes it: `#` comments and blank lines ignored, one
 * `AGE-SECRET-KEY-1…` per other line. Throws `EAI_AGE_KEY` naming the first bad line, or if there
 * is no key at all.
 */
export function parseIdentityFile(text: string): X25519Identity[] {
  const out: X25519Identity[] = [];
  text.split(/\r?\n/u).forEach((line, i) => {
    const t = line.trim();
    if (t === '' || t.startsWith('#')) return;
    try {
      out.push(X25519Identity.parse(t));
    } catch (cause) {
      throw new AgeError('EAI_AGE_KEY', `identity file line ${i + 1}: ${(cause as Error).message}`, { cause, details: { line: i + 1 } });
    }
  });
  if (out.length === 0) throw new AgeError('EAI_AGE_KEY', 'the identity file holds no AGE-SECRET-KEY-1… line; make one with `age-keygen -o key.txt`.');
  return out;
}

function decodeKey(s: string, hrp: string, what: 'recipient' | 'identity'): Buffer {
  const shown = what === 'identity' ? `${s.slice(0, IDENTITY_HRP.length + 1)}…` : s;
  const expected = what === 'identity' ? 'AGE-SECRET-KEY-1 followed by 58 Bech32 characters, as age-keygen writes it' : 'age1 followed by 58 Bech32 characters, as age-keygen -y prints it';
  const r = bech32Decode(s);
  if (!r.ok) throw badKey(`the ${what} ${JSON.stringify(shown)}, which ${r.reason}`, expected);
  if (r.hrp !== hrp) {
    const hint = r.hrp.toLowerCase() === hrp.toLowerCase() ? ` (${what === 'identity' ? 'an identity is upper case' : 'a recipient is lower case'})` : '';
    throw badKey(`a key with prefix ${JSON.stringify(`${r.hrp}1`)}${hint}`, expected);
  }
  if (r.data.length !== KEY_SIZE) throw badKey(`an ${what} of ${r.data.length} bytes`, `${KEY_SIZE} bytes: ${expected}`);
  return r.data;
}

function wrapKey(shared: Buffer, share: Buffer, recipient: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', shared, Buffer.concat([share, recipient]), WRAP_LABEL, 32));
}

function rawPublic(key: KeyObject): Buffer {
  const der = key.export({ format: 'der', type: 'spki' });
  return der.subarray(der.length - KEY_SIZE);
}

function badKey(found: string, expected: string): AgeError {
  return new AgeError('EAI_AGE_KEY', `expected ${expected}; found ${found}.`);
}

function badStanza(index: number, why: string, cause?: unknown): AgeError {
  return new AgeError('EAI_AGE_HEADER', `malformed age header: X25519 stanza ${index + 1}: ${why}. The file is damaged; fetch it again.`, { cause, details: { stanza: index + 1 } });
}
