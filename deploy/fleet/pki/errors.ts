import { AiosError, type AiosErrorOptions } from '../../../drivers/errors.js';

/**
 * The fleet PKI's failure codes (docs/errors.md). CSRs arrive from devices not yet trusted, so
 * every way one can be wrong has a code here, and the enrolment service answers with the code
 * rather than crashing.
 */
export type PkiErrorCode =
  | 'EAI_PKI_DER'
  | 'EAI_PKI_PEM'
  | 'EAI_PKI_CSR_INVALID'
  | 'EAI_PKI_CSR_SIGNATURE'
  | 'EAI_PKI_KEY_UNSUPPORTED'
  | 'EAI_PKI_CA_INVALID'
  | 'EAI_PKI_ARGUMENT';

/** A certificate, CSR or key the fleet PKI cannot use, or an argument it cannot issue with. */
export class PkiError extends AiosError {
  declare readonly code: PkiErrorCode;

  constructor(code: PkiErrorCode, message: string, options: AiosErrorOptions = {}) {
    super(code, message, options);
  }
}
