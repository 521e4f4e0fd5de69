import { AiosError, type AiosErrorOptions } from '../errors.js';

/**
 * The stable codes the TPM driver raises; each is listed in docs/errors.md.
 *
 * Two groups: codes about bytes and evidence (a verifier raises these on a controller that has
 * no TPM), and codes about talking to a TPM through tpm2-tools (only `Tpm` raises these).
 */
export type TpmErrorCode =
  // Bytes and evidence.
  | 'EAI_TPM_MALFORMED'
  | 'EAI_TPM_UNSUPPORTED'
  | 'EAI_TPM_ARGUMENT'
  | 'EAI_TPM_KEY_TYPE'
  | 'EAI_TPM_QUOTE_SIGNATURE'
  | 'EAI_TPM_QUOTE_NONCE'
  | 'EAI_TPM_QUOTE_PCRS'
  // Talking to a TPM.
  | 'EAI_TPM_TOOLS_MISSING'
  | 'EAI_TPM_NO_DEVICE'
  | 'EAI_TPM_DEVICE_ACCESS'
  | 'EAI_TPM_CONNECT'
  | 'EAI_TPM_NOT_STARTED'
  | 'EAI_TPM_OBJECT_MEMORY'
  | 'EAI_TPM_AUTH'
  | 'EAI_TPM_LOCKOUT'
  | 'EAI_TPM_CREDENTIAL'
  | 'EAI_TPM_TIMEOUT'
  | 'EAI_TPM_COMMAND';

/**
 * A TPM structure that cannot be read, a quote that does not verify, or a TPM that refused or
 * could not be reached. `details` carries what a log needs: the structure and byte offset for
 * malformed input, the tpm2-tools command, exit code, TPM response code and last stderr line for
 * a command that failed.
 */
export class TpmError extends AiosError {
  override readonly code: TpmErrorCode;

  constructor(code: TpmErrorCode, message: string, options: AiosErrorOptions = {}) {
    super(code, message, options);
    this.code = code;
  }
}
