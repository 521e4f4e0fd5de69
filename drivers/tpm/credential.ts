import { constants, createCipheriv, createECDH, createHmac, publicEncrypt, randomBytes } from 'node:crypto';
import { curveSize, digestSize } from './algorithms.js';
import { TpmError } from './errors.js';
import { kdfa, kdfe } from './kdf.js';
import { sized, TpmReader, u32 } from './marshal.js';
import { isRestrictedDecryptionKey, leftPad, publicKey, type PublicArea } from './public-area.js';

/**
 * MakeCredential in software: the verifier's side of proving that an attestation key lives in the
 * same TPM as an endorsement key (TPM 2.0 Part 1 §24, "Credential Protection").
 *
 * The verifier knows the EK (from its certificate) and is shown an AK's public area. It picks a
 * secret and seals it so that only a TPM holding that EK's private key will release it, and only
 * to an object whose name is the AK's name: TPM2_ActivateCredential checks an HMAC over the
 * encrypted secret and the AK name before decrypting. The device proves possession by returning
 * the secret (or something keyed with it).
 *
 * The sealing, for an EK with nameAlg H and symmetric AES-k-CFB (every TCG EK template):
 * 1. seed: RSA EK — random |H| bytes, encrypted with RSA-OAEP(H, label "IDENTITY\0");
 *    ECC EK — KDFe(H, ECDH(ephemeral, EK).x, "IDENTITY", ephemeral.x, EK.x), and the "encrypted"
 *    secret is the ephemeral public point.
 * 2. encIdentity = AES-k-CFB(key = KDFa(H, seed, "STORAGE", akName, "", k), IV = 0) over the
 *    credential as a TPM2B_DIGEST (2-byte size, then the secret).
 * 3. outerHMAC = HMAC-H(key = KDFa(H, seed, "INTEGRITY", "", "", |H|·8), encIdentity || akName).
 * 4. credentialBlob (TPM2B_ID_OBJECT) = size || TPM2B(outerHMAC) || encIdentity.
 *
 * `encodeCredentialFile` writes the file tpm2_makecredential writes and tpm2_activatecredential
 * reads: u32 0xBADCC0DE, u32 version 1, then the TPM2B_ID_OBJECT and the TPM2B_ENCRYPTED_SECRET.
 */
export interface Credential {
  /** TPM2B_ID_OBJECT, size included. */
  readonly credentialBlob: Buffer;
  /** TPM2B_ENCRYPTED_SECRET, size included. */
  readonly encryptedSecret: Buffer;
}

/** The credential file header tpm2-tools writes (tpm2_makecredential -o). */
export const CREDENTIAL_FILE_MAGIC = 0xbadcc0de;
export const CREDENTIAL_FILE_VERSION = 1;

/**
 * TPM2B_DIGEST holds up to the largest digest the TPM implements: 32 bytes fit every TPM 2.0,
 * 64 only one with SHA-512.
 */
export const MAX_CREDENTIAL_BYTES = 64;

/**
 * Seals `secret` (1–64 bytes; 32 random bytes is the usual choice) to the EK `ek` for the object
 * named `akName`. Throws `EAI_TPM_KEY_TYPE` when `ek` is not a restricted decryption key with an
 * AES-CFB symmetric definition, `EAI_TPM_ARGUMENT` for a bad secret or name.
 */
export function makeCredential(ek: PublicArea, akName: Uint8Array, secret: Uint8Array): Credential {
  if (secret.byteLength < 1 || secret.byteLength > MAX_CREDENTIAL_BYTES) {
    throw new TpmError('EAI_TPM_ARGUMENT', `a credential secret is 1 to ${MAX_CREDENTIAL_BYTES} bytes, got ${secret.byteLength}`);
  }
  if (akName.byteLength < 3) throw new TpmError('EAI_TPM_ARGUMENT', `an object name is a 2-byte algorithm id and a digest, got ${akName.byteLength} bytes`);
  const sym = ek.symmetric;
  if (!isRestrictedDecryptionKey(ek) || sym === undefined || sym.algorithm !== 'aes' || sym.mode !== 'cfb') {
    throw new TpmError('EAI_TPM_KEY_TYPE', 'MakeCredential needs an endorsement key: a restricted decryption key with an AES-CFB symmetric definition (the TCG EK templates); this key is not one', { details: { attributes: ek.attributes.raw } });
  }
  const hash = ek.nameAlg;
  const { seed, encryptedSecret } = ek.type === 'rsa' ? rsaSeed(ek) : eccSeed(ek);

  const storageKey = kdfa(hash, seed, 'STORAGE', akName, Buffer.alloc(0), sym.keyBits);
  const cipher = createCipheriv(`aes-${sym.keyBits}-cfb`, storageKey, Buffer.alloc(16));
  const encIdentity = Buffer.concat([cipher.update(sized(secret)), cipher.final()]);
  const hmacKey = kdfa(hash, seed, 'INTEGRITY', Buffer.alloc(0), Buffer.alloc(0), digestSize(hash) * 8);
  const outerHmac = createHmac(hash, hmacKey).update(encIdentity).update(akName).digest();

  return { credentialBlob: sized(Buffer.concat([sized(outerHmac), encIdentity])), encryptedSecret: sized(encryptedSecret) };
}

/** The tpm2-tools credential file for `credential`. */
export function encodeCredentialFile(credential: Credential): Buffer {
  return Buffer.concat([u32(CREDENTIAL_FILE_MAGIC), u32(CREDENTIAL_FILE_VERSION), credential.credentialBlob, credential.encryptedSecret]);
}

/** Reads a tpm2-tools credential file strictly (magic, version 1, two TPM2Bs, nothing after). */
export function decodeCredentialFile(bytes: Uint8Array): Credential {
  const r = new TpmReader(bytes, 'credential file');
  const magic = r.u32('magic');
  if (magic !== CREDENTIAL_FILE_MAGIC) r.fail(`magic is 0x${magic.toString(16)}, not 0xbadcc0de: not a tpm2_makecredential file`, 0);
  const version = r.u32('version');
  if (version !== CREDENTIAL_FILE_VERSION) r.fail(`version ${version}; only version 1 is known`, 4);
  let start = r.position;
  r.sized('credentialBlob');
  const credentialBlob = r.span(start);
  start = r.position;
  r.sized('secret');
  const encryptedSecret = r.span(start);
  r.end();
  return { credentialBlob, encryptedSecret };
}

function rsaSeed(ek: PublicArea): { seed: Buffer; encryptedSecret: Buffer } {
  const seed = randomBytes(digestSize(ek.nameAlg));
  const encryptedSecret = publicEncrypt(
    { key: publicKey(ek), padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: ek.nameAlg, oaepLabel: Buffer.from('IDENTITY\0', 'latin1') },
    seed,
  );
  return { seed, encryptedSecret };
}

const ECDH_CURVES: Record<string, string> = { 'P-256': 'prime256v1', 'P-384': 'secp384r1', 'P-521': 'secp521r1' };

function eccSeed(ek: PublicArea): { seed: Buffer; encryptedSecret: Buffer } {
  if (ek.type !== 'ecc') throw new TpmError('EAI_TPM_KEY_TYPE', 'an ECC seed for a non-ECC key');
  const curveName = ECDH_CURVES[ek.curve];
  if (curveName === undefined) throw new TpmError('EAI_TPM_UNSUPPORTED', `MakeCredential for an ECC EK on ${ek.curve}; P-256, P-384 and P-521 are supported`);
  const size = curveSize(ek.curve);
  const ekX = leftPad(ek.x, size);
  const ekY = leftPad(ek.y, size);
  const ephemeral = createECDH(curveName);
  ephemeral.generateKeys();
  let z: Buffer;
  try {
    z = leftPad(ephemeral.computeSecret(Buffer.concat([Buffer.from([4]), ekX, ekY])), size);
  } catch (cause) {
    throw new TpmError('EAI_TPM_MALFORMED', `the ECC EK's point is not on ${ek.curve}`, { cause, details: { structure: 'TPMT_PUBLIC' } });
  }
  const point = ephemeral.getPublicKey();
  const x = point.subarray(1, 1 + size);
  const y = point.subarray(1 + size);
  // partyVInfo is the EK's x exactly as its public area holds it: that is what the TPM hashes.
  const seed = kdfe(ek.nameAlg, z, 'IDENTITY', x, ek.x, digestSize(ek.nameAlg) * 8);
  return { seed, encryptedSecret: Buffer.concat([sized(x), sized(y)]) };
}
