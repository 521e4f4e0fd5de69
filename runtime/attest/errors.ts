import { AiosError, type AiosErrorOptions } from '../../drivers/errors.js';

/**
 * The stable codes of attestation (each listed in docs/errors.md). They serve twice: thrown as an
 * `AttestError` on the device (the measurement log cannot be trusted, an argument is wrong) and
 * returned as the `code` of a verifier's reason, so an operator looks both up in one place.
 *
 * The verifier never throws for bad evidence (it answers `untrusted` with a reason); it throws
 * `EAI_ATTEST_ARGUMENT` only for a caller's mistake, such as a missing policy.
 */
export type AttestErrorCode =
  // Thrown on the device, or for a caller's mistake.
  | 'EAI_ATTEST_ARGUMENT'
  | 'EAI_ATTEST_LOG_CORRUPT'
  | 'EAI_ATTEST_PCR_MISMATCH'
  // Reasons a verifier gives (EAI_ATTEST_MALFORMED is also thrown by decodeEvidence).
  | 'EAI_ATTEST_MALFORMED'
  | 'EAI_ATTEST_KIND'
  | 'EAI_ATTEST_NO_KEY'
  | 'EAI_ATTEST_KEY_TYPE'
  | 'EAI_ATTEST_NONCE_UNKNOWN'
  | 'EAI_ATTEST_NONCE_MISMATCH'
  | 'EAI_ATTEST_NONCE_REUSED'
  | 'EAI_ATTEST_NONCE_EXPIRED'
  | 'EAI_ATTEST_SIGNATURE'
  | 'EAI_ATTEST_QUOTE_NONCE'
  | 'EAI_ATTEST_QUOTE_PCRS'
  | 'EAI_ATTEST_PCR_SELECTION'
  | 'EAI_ATTEST_LOG_REPLAY'
  | 'EAI_ATTEST_FIRMWARE_PCR'
  | 'EAI_ATTEST_RUNTIME_UNMEASURED'
  | 'EAI_ATTEST_NOT_ALLOWED';

/** A measurement log that cannot be used, or a bad argument to an attester or the verifier. */
export class AttestError extends AiosError {
  override readonly code: AttestErrorCode;

  constructor(code: AttestErrorCode, message: string, options: AiosErrorOptions = {}) {
    super(code, message, options);
    this.code = code;
  }
}
