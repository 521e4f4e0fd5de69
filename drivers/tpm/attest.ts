import { TpmError } from './errors.js';
import { TpmReader } from './marshal.js';
import { readPcrSelection, type PcrSelection } from './pcr-selection.js';

/**
 * The quote a TPM signs: TPMS_ATTEST (Part 2 §10.12.12) of type TPM_ST_ATTEST_QUOTE, the exact
 * bytes tpm2_quote writes with `-m`. The signature covers these bytes as they are, so keep the raw
 * bytes alongside the decoded form and verify over the raw ones (`verifyQuote` does).
 *
 * Layout: magic 0xff544347 ("\xffTCG", TPM_GENERATED_VALUE) | type u16 | qualifiedSigner TPM2B_NAME
 * | extraData TPM2B_DATA (the verifier's nonce) | clockInfo (clock u64, resetCount u32,
 * restartCount u32, safe u8) | firmwareVersion u64 | TPMS_QUOTE_INFO (TPML_PCR_SELECTION,
 * pcrDigest TPM2B_DIGEST).
 */
export interface QuoteAttest {
  readonly type: 'quote';
  /** The signing key's qualified name (see names.ts). */
  readonly qualifiedSigner: Buffer;
  /** The qualifying data the caller passed to TPM2_Quote: the verifier's nonce. */
  readonly extraData: Buffer;
  readonly clockInfo: ClockInfo;
  /** Vendor-defined firmware version of the TPM. */
  readonly firmwareVersion: bigint;
  /** The PCRs the quote covers, banks in the order the digest was computed. */
  readonly pcrSelection: PcrSelection;
  /** H(selected PCR values concatenated), with the signing scheme's hash. */
  readonly pcrDigest: Buffer;
}

/**
 * The TPM's clock when it signed. `resetCount` grows on every TPM reset (reboot),
 * `restartCount` on every resume since; a verifier comparing two quotes of one device can tell a
 * reboot (PCRs legitimately back to boot values) from a replay.
 */
export interface ClockInfo {
  /** Milliseconds the TPM has been powered, across reboots (may be obfuscated for non-endorsement keys). */
  readonly clock: bigint;
  readonly resetCount: number;
  readonly restartCount: number;
  /** Whether the clock value is known not to have run backwards. */
  readonly safe: boolean;
}

export const TPM_GENERATED_VALUE = 0xff544347;
export const TPM_ST_ATTEST_QUOTE = 0x8018;

const ATTEST_TYPES: Record<number, string> = {
  0x8014: 'NV',
  0x8015: 'COMMAND_AUDIT',
  0x8016: 'SESSION_AUDIT',
  0x8017: 'CERTIFY',
  0x8018: 'QUOTE',
  0x8019: 'TIME',
  0x801a: 'CREATION',
  0x801c: 'NV_DIGEST',
};

/** TPM2B_NAME holds at most a 2-byte algorithm id and a 64-byte digest; TPM2B_DATA at most a TPMT_HA. */
const MAX_NAME = 66;
const MAX_DATA = 66;
const MAX_DIGEST = 64;

/**
 * Decodes a TPMS_ATTEST that must be a quote. Throws `EAI_TPM_MALFORMED` for wrong magic,
 * truncation, bad sizes or trailing bytes, `EAI_TPM_UNSUPPORTED` for another attestation type.
 */
export function decodeQuoteAttest(bytes: Uint8Array): QuoteAttest {
  const r = new TpmReader(bytes, 'TPMS_ATTEST');
  const magic = r.u32('magic');
  if (magic !== TPM_GENERATED_VALUE) r.fail(`magic is 0x${magic.toString(16).padStart(8, '0')}, not TPM_GENERATED 0xff544347: these bytes were not produced by a TPM`, 0);
  const type = r.u16('type');
  if (type !== TPM_ST_ATTEST_QUOTE) {
    const known = ATTEST_TYPES[type];
    if (known === undefined) r.fail(`type 0x${type.toString(16)} is no TPM_ST_ATTEST_* value`, 4);
    throw new TpmError('EAI_TPM_UNSUPPORTED', `TPMS_ATTEST is a TPM_ST_ATTEST_${known}, not a quote (TPM_ST_ATTEST_QUOTE 0x8018)`, { details: { structure: 'TPMS_ATTEST', type } });
  }
  const qualifiedSigner = r.sized('qualifiedSigner', MAX_NAME);
  const extraData = r.sized('extraData', MAX_DATA);
  const clock = r.u64('clockInfo.clock');
  const resetCount = r.u32('clockInfo.resetCount');
  const restartCount = r.u32('clockInfo.restartCount');
  const safe = r.u8('clockInfo.safe');
  if (safe > 1) r.fail(`clockInfo.safe is ${safe}, not 0 or 1`, r.position - 1);
  const firmwareVersion = r.u64('firmwareVersion');
  const pcrSelection = readPcrSelection(r);
  const pcrDigest = r.sized('quote.pcrDigest', MAX_DIGEST);
  r.end();
  return { type: 'quote', qualifiedSigner, extraData, clockInfo: { clock, resetCount, restartCount, safe: safe === 1 }, firmwareVersion, pcrSelection, pcrDigest };
}
