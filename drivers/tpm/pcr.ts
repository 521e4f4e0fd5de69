import { createHash } from 'node:crypto';
import { digestSize, type TpmHash } from './algorithms.js';
import { TpmError } from './errors.js';
import type { PcrSelection } from './pcr-selection.js';

/**
 * PCR arithmetic done in software, so that a verifier can check what a TPM reports without one:
 * the extend operation (a PCR only ever becomes H(old || digest)), and the composite digest a
 * quote signs over the PCRs it selects (TPMS_QUOTE_INFO.pcrDigest, Part 3 §18.4).
 */

/** PCR values of one bank, by index. */
export interface PcrBank {
  readonly hash: TpmHash;
  readonly values: ReadonlyMap<number, Buffer>;
}

/** Values of one or more banks, as read from a TPM or replayed from a log. */
export type PcrValues = readonly PcrBank[];

/** The value a PCR becomes when `digest` is extended into it: H(old || digest). */
export function extendPcr(hash: TpmHash, old: Uint8Array, digest: Uint8Array): Buffer {
  const size = digestSize(hash);
  if (old.byteLength !== size) throw new TpmError('EAI_TPM_ARGUMENT', `a ${hash} PCR holds ${size} bytes, got ${old.byteLength}`);
  if (digest.byteLength !== size) throw new TpmError('EAI_TPM_ARGUMENT', `a ${hash} extend takes a ${size}-byte digest, got ${digest.byteLength}`);
  return createHash(hash).update(old).update(digest).digest();
}

/** A PCR's value after reset: zeros (PCRs 0–16 and 23 of a PC Client TPM). */
export function resetPcr(hash: TpmHash): Buffer {
  return Buffer.alloc(digestSize(hash));
}

/**
 * The digest a quote carries for `selection`: `hash` over the selected PCR values concatenated,
 * bank by bank in selection order and each bank's PCRs ascending. `hash` is the hash of the
 * quote's signing scheme, not of the banks. Throws `EAI_TPM_QUOTE_PCRS` when a selected value is
 * missing or has the wrong size.
 */
export function pcrComposite(hash: TpmHash, selection: PcrSelection, values: PcrValues): Buffer {
  const h = createHash(hash);
  for (const bank of selection) {
    const have = values.find((v) => v.hash === bank.hash);
    for (const i of bank.pcrs) {
      const value = have?.values.get(i);
      if (value === undefined) throw new TpmError('EAI_TPM_QUOTE_PCRS', `the quote selects ${bank.hash} PCR ${i} but no value for it was given`, { details: { bank: bank.hash, pcr: i } });
      if (value.byteLength !== digestSize(bank.hash)) throw new TpmError('EAI_TPM_QUOTE_PCRS', `${bank.hash} PCR ${i} is ${value.byteLength} bytes, a ${bank.hash} PCR holds ${digestSize(bank.hash)}`, { details: { bank: bank.hash, pcr: i } });
      h.update(value);
    }
  }
  return h.digest();
}

/**
 * Splits concatenated PCR values (what `tpm2_pcrread -F values` and `tpm2_quote -F values` write)
 * into banks, following `selection`'s order. Throws `EAI_TPM_MALFORMED` when the length is not
 * exactly what the selection needs.
 */
export function splitPcrValues(selection: PcrSelection, bytes: Uint8Array): PcrValues {
  const need = selection.reduce((n, b) => n + b.pcrs.length * digestSize(b.hash), 0);
  if (bytes.byteLength !== need) {
    throw new TpmError('EAI_TPM_MALFORMED', `PCR values: the selection needs ${need} bytes, got ${bytes.byteLength}`, { details: { structure: 'PCR values', length: bytes.byteLength } });
  }
  let at = 0;
  return selection.map((bank) => {
    const size = digestSize(bank.hash);
    const values = new Map<number, Buffer>();
    for (const i of bank.pcrs) {
      values.set(i, Buffer.from(bytes.subarray(at, at + size)));
      at += size;
    }
    return { hash: bank.hash, values };
  });
}
