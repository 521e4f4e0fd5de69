import type { AttestErrorCode } from './errors.js';
import type { Evidence } from './evidence.js';
import type { MeasurementEvent } from './measurement.js';

/**
 * What a verifier concludes (RATS: the attestation result the relying party — the controller's
 * rollout and key release — acts on). Plain JSON-ready data.
 *
 * * `trusted`: every check passed.
 * * `stale`: the evidence checked out as far as it went, but it does not answer an open, recent
 *   nonce (reused, or too old): challenge again.
 * * `untrusted`: something failed; `reasons` says what, one entry per failed check.
 *
 * `claims` borrow the names of the IETF Entity Attestation Token (RFC 9711) and the EAT
 * Attestation Results draft (EAR) where they fit, and prefix aios's own with `aios.`.
 */
export type AttestationStatus = 'trusted' | 'untrusted' | 'stale';

export interface AttestationReason {
  /** A stable code (docs/errors.md). */
  readonly code: AttestErrorCode;
  /** What was expected, what was found. */
  readonly message: string;
  /** For logs and --json: the item, the values compared. */
  readonly details: Readonly<Record<string, unknown>>;
}

/** RFC 9711 §4.2.17 "measres" result values. */
export type MeasurementResultValue = 'success' | 'fail' | 'not-run' | 'absent';

export interface AttestationClaims {
  /** The profile of these claims. */
  readonly eat_profile: typeof CLAIMS_PROFILE;
  /** When the result was made, seconds since the epoch (CWT/JWT "iat"). */
  readonly iat: number;
  /** The nonce the evidence answered, base64url (EAT "eat_nonce"); absent when the evidence had none readable. */
  readonly eat_nonce?: string;
  /**
   * The entity's id (EAT "ueid"), base64url: type byte 0x01 (RAND) then the SHA-256 of the
   * attestation key's TPM name, or of the software key's id. Stable for as long as the key is.
   */
  readonly ueid?: string;
  /** EAR's status vocabulary for the same verdict: trusted → affirming, untrusted → contraindicated, stale → none. */
  readonly 'ear.status': 'affirming' | 'contraindicated' | 'none';
  /** Which verifier made this (EAR "ear.verifier-id"). */
  readonly 'ear.verifier-id': { readonly developer: 'aios'; readonly build: string };
  /** `tpm2` or `software`. */
  readonly 'aios.evidence-kind'?: Evidence['kind'];
  /** The quoted PCR values, "sha256:23" → hex; only once the signature over them verified. */
  readonly 'aios.pcrs'?: Readonly<Record<string, string>>;
  /** The measured items (the log as appraised); only once the log replayed to the quoted PCR. */
  readonly measurements?: readonly MeasurementEvent[];
  /**
   * Measurement results (EAT "measres"): [[measurement-system, [[result-id, result]]]], one
   * system "aios-pcr<N>", result ids "<type>:<name>@<sha256>".
   */
  readonly measres?: readonly (readonly [string, readonly (readonly [string, MeasurementResultValue])[]])[];
}

export const CLAIMS_PROFILE = 'tag:aios.dev,2026:attestation-result/1';

export interface AttestationResult {
  readonly status: AttestationStatus;
  readonly reasons: readonly AttestationReason[];
  readonly claims: AttestationClaims;
  /** RFC 3339 UTC. */
  readonly verifiedAt: string;
}

/** Reasons that make evidence stale rather than untrusted: about timing alone. */
export const STALE_CODES: readonly AttestErrorCode[] = ['EAI_ATTEST_NONCE_REUSED', 'EAI_ATTEST_NONCE_EXPIRED'];

/** The verdict for a list of reasons: none → trusted; only timing → stale; else untrusted. */
export function statusOf(reasons: readonly AttestationReason[]): AttestationStatus {
  if (reasons.length === 0) return 'trusted';
  return reasons.every((r) => STALE_CODES.includes(r.code)) ? 'stale' : 'untrusted';
}
