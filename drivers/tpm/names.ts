import { createHash } from 'node:crypto';
import { hashAlg, hashFromAlg } from './algorithms.js';
import { TpmError } from './errors.js';
import { u16, u32 } from './marshal.js';
import type { PublicArea } from './public-area.js';

/**
 * TPM names (Part 1 §16): how a TPM identifies an object by its contents rather than its handle.
 *
 * * The *name* of a key is its nameAlg id (2 bytes) followed by the nameAlg digest of its
 *   TPMT_PUBLIC. MakeCredential binds a secret to this name, so the TPM releases the secret only
 *   to a key whose public area hashes to it.
 * * The *qualified name* adds the parent chain: H(parent's qualified name || name), with the
 *   hierarchy's handle as the root's qualified name. A quote carries its signer's qualified name
 *   (TPMS_ATTEST.qualifiedSigner), so a verifier can check the AK sits under a given EK.
 */

/** Handles of the hierarchies; a hierarchy's name and qualified name are its 4-byte handle. */
export const TPM_RH = {
  OWNER: 0x40000001,
  ENDORSEMENT: 0x4000000b,
  PLATFORM: 0x4000000c,
} as const;

/** nameAlg || H_nameAlg(TPMT_PUBLIC). */
export function objectName(area: PublicArea): Buffer {
  return Buffer.concat([u16(hashAlg(area.nameAlg)), createHash(area.nameAlg).update(area.bytes).digest()]);
}

/** The name (= qualified name) of a hierarchy: its handle, big-endian. */
export function hierarchyName(handle: number): Buffer {
  return u32(handle);
}

/**
 * The qualified name of an object with `name` under a parent whose qualified name is
 * `parentQualifiedName`: the object's nameAlg id || H_nameAlg(parentQualifiedName || name).
 * The hash is the object's own nameAlg, read from the first two bytes of `name`.
 */
export function qualifiedName(parentQualifiedName: Uint8Array, name: Uint8Array): Buffer {
  if (name.byteLength < 3) throw new TpmError('EAI_TPM_ARGUMENT', `an object name is a 2-byte algorithm id and a digest, got ${name.byteLength} bytes`);
  const alg = (name[0]! << 8) | name[1]!;
  const hash = hashFromAlg(alg, 'TPM2B_NAME');
  return Buffer.concat([u16(alg), createHash(hash).update(parentQualifiedName).update(name).digest()]);
}

/**
 * The qualified name of a key created directly under a primary key (an AK under its EK):
 * the primary's qualified name is computed from its hierarchy first.
 */
export function childQualifiedName(hierarchy: number, primaryName: Uint8Array, childName: Uint8Array): Buffer {
  return qualifiedName(qualifiedName(hierarchyName(hierarchy), primaryName), childName);
}
