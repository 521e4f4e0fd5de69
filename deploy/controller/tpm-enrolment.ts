import { createHash, randomBytes, timingSafeEqual, X509Certificate } from 'node:crypto';
import { encodeCredentialFile, makeCredential } from '../../drivers/tpm/credential.js';
import { objectName } from '../../drivers/tpm/names.js';
import { decodePublic, isRestrictedDecryptionKey, isRestrictedSigningKey, publicKey, type PublicArea } from '../../drivers/tpm/public-area.js';
import { FleetError } from '../fleet/errors.js';
import type { Sql } from './store.js';

/**
 * The TPM half of enrolment: a device with a TPM registers its attestation key (AK) with its
 * certificate, and proves the AK lives in the same TPM as its endorsement key (EK) the way
 * TPM 2.0 intends (TCG "credential activation"): the controller makes a credential — a random
 * secret only the TPM holding that EK can unwrap, and only for an object with that AK's name —
 * and the device must send the secret back. So it takes two requests:
 *
 *  1. `{ csr, tpm: { ekPublic, akPublic, ekCertificate? } }` → a challenge: its id and the
 *     credential (tpm2-tools' file format, what `tpm2_activatecredential` reads);
 *  2. the same with `tpm.challenge` and `tpm.secret` → the certificate, the AK recorded.
 *
 * With `ekRoots` configured (the TPM makers' CA certificates), the EK must come with a
 * certificate for that very key chaining to one of them: otherwise anything that can run
 * MakeCredential's inverse — a software TPM — could pose as a device's TPM. Without them, the
 * binding proves "one TPM", not "a genuine TPM" (docs/attestation.md).
 */
export interface TpmEnrolmentRequest {
  /** TPM2B_PUBLIC of the EK. */
  readonly ekPublic: Uint8Array;
  /** TPM2B_PUBLIC of the AK. */
  readonly akPublic: Uint8Array;
  /** DER X.509: the EK certificate from the TPM's NV, where it has one. */
  readonly ekCertificate?: Uint8Array;
  /** Step 2: the challenge id and the secret the TPM unwrapped. */
  readonly challenge?: string;
  readonly secret?: Uint8Array;
}

export interface TpmChallenge {
  readonly id: string;
  /** tpm2-tools credential file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET. */
  readonly credential: Buffer;
  readonly expiresUnixMs: number;
}

/** How long a device has to answer a challenge. */
export const CHALLENGE_TTL_MS = 5 * 60_000;

/** Checks the keys a device presents: a restricted decryption EK, a restricted signing AK, a matching (and, with roots, chaining) EK certificate. */
export function checkTpmKeys(request: TpmEnrolmentRequest, ekRoots: readonly X509Certificate[]): { ek: PublicArea; ak: PublicArea } {
  const refuse = (why: string): FleetError => new FleetError('EAI_FLEET_ENROL_TPM', `the TPM keys in the enrolment request cannot be registered: ${why}.`, { details: { why } });
  let ek: PublicArea;
  let ak: PublicArea;
  try {
    ek = decodePublic(request.ekPublic);
    ak = decodePublic(request.akPublic);
  } catch (cause) {
    throw refuse(`they are not TPM2B_PUBLIC structures (${(cause as Error).message})`);
  }
  if (!isRestrictedDecryptionKey(ek)) throw refuse('the EK is not a restricted decryption key that never leaves its TPM (fixedTPM, fixedParent)');
  if (!isRestrictedSigningKey(ak)) throw refuse('the AK is not a restricted signing key that never leaves its TPM: a TPM only signs its own quotes with such a key');
  if (request.ekCertificate !== undefined) {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(Buffer.from(request.ekCertificate));
    } catch {
      throw refuse('the EK certificate is not DER X.509');
    }
    const spki = (k: ReturnType<typeof publicKey>): Buffer => k.export({ type: 'spki', format: 'der' });
    if (!spki(cert.publicKey).equals(spki(publicKey(ek)))) throw refuse('the EK certificate is for another key than the EK presented');
    if (ekRoots.length > 0 && !chains(cert, ekRoots)) throw refuse(`the EK certificate (issuer ${cert.issuer.replace(/\n/gu, ', ')}) does not chain to a TPM maker CA the controller trusts (--ek-ca)`);
  } else if (ekRoots.length > 0) throw refuse('the controller requires an EK certificate (it trusts TPM maker CAs) and the device sent none; its TPM holds none in NV, or the agent could not read it');
  return { ek, ak };
}

/** Step 1: records a challenge for the token and keys, and returns the credential to activate. */
export async function issueChallenge(tx: Sql, tokenId: string, deviceId: string, ek: PublicArea, ak: PublicArea, request: TpmEnrolmentRequest, now: number): Promise<TpmChallenge> {
  const secret = randomBytes(32);
  const credential = encodeCredentialFile(makeCredential(ek, objectName(ak), secret));
  const id = randomBytes(12).toString('hex');
  const expires = now + CHALLENGE_TTL_MS;
  await tx.run('INSERT INTO enrolment_challenges (id, token_id, device_id, ak_public, ek_public, secret_sha256, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?)', id, tokenId, deviceId, Buffer.from(request.akPublic), Buffer.from(request.ekPublic), sha256(secret), expires);
  return { id, credential, expiresUnixMs: expires };
}

/** Step 2: the secret must be the challenge's, for the same token, device and keys, in time, once. */
export async function answerChallenge(tx: Sql, tokenId: string, deviceId: string, request: TpmEnrolmentRequest, now: number): Promise<void> {
  const refuse = (why: string): FleetError => new FleetError('EAI_FLEET_ENROL_TPM_PROOF', `the TPM did not prove it holds both keys: ${why}. Enrol again from the start (the agent does on its next attempt).`, { details: { why } });
  const row = await tx.get<{ token_id: string; device_id: string; ak_public: Buffer; ek_public: Buffer; secret_sha256: Buffer; expires_ms: number; used_ms: number | null }>('SELECT * FROM enrolment_challenges WHERE id = ?', request.challenge);
  if (row === undefined) throw refuse('there is no such challenge');
  if (row.token_id !== tokenId || row.device_id !== deviceId) throw refuse('the challenge was issued for another token or device');
  if (!Buffer.from(row.ak_public).equals(Buffer.from(request.akPublic)) || !Buffer.from(row.ek_public).equals(Buffer.from(request.ekPublic))) throw refuse('the keys are not the ones the challenge was made for');
  if (row.used_ms !== null) throw refuse('the challenge was already answered');
  if (now > row.expires_ms) throw refuse('the challenge expired');
  const secret = request.secret ?? new Uint8Array(0);
  if (!timingSafeEqual(Buffer.from(row.secret_sha256), sha256(secret))) throw refuse('the secret is wrong: the AK is not in the TPM that holds this EK');
  if ((await tx.run('UPDATE enrolment_challenges SET used_ms = ? WHERE id = ? AND used_ms IS NULL', now, request.challenge)) !== 1) throw refuse('the challenge was answered by another request at the same moment');
}

/** Whether `cert` is issued by one of `roots` (each a trust anchor: a maker's root or the intermediate that signs its EK certificates). */
function chains(cert: X509Certificate, roots: readonly X509Certificate[]): boolean {
  return roots.some((r) => r.subject === cert.issuer && cert.verify(r.publicKey) && (r.ca || r.subject === r.issuer));
}

function sha256(bytes: Uint8Array): Buffer {
  return createHash('sha256').update(bytes).digest();
}
