import { hashAlg, hashFromAlg, isTpmHash, type TpmHash } from './algorithms.js';
import { TpmError } from './errors.js';
import { TpmReader, u16, u32 } from './marshal.js';

/**
 * Which PCRs of which banks: the TPML_PCR_SELECTION of a quote, and the `-l sha256:0,1,16`
 * argument of tpm2-tools.
 *
 * On the wire (Part 2 §10.6): a u32 count, then per bank the hash algorithm (u16), the size of
 * the bitmap in bytes (u8, 3 on a PC Client TPM with 24 PCRs) and the bitmap, where bit `i` of
 * byte `j` selects PCR `8j + i`. Decoded selections keep the banks in wire order (the order the
 * composite digest uses) and each bank's PCRs ascending (the bitmap's order).
 */
export interface PcrBankSelection {
  readonly hash: TpmHash;
  /** PCR indices, ascending, no repeats. */
  readonly pcrs: readonly number[];
}

export type PcrSelection = readonly PcrBankSelection[];

/** PCRs a PC Client TPM has: 0–23. */
export const PCR_COUNT = 24;

/** The bitmap size every PC Client TPM accepts (24 PCRs). */
const SELECT_BYTES = 3;
/** Banks a TPML_PCR_SELECTION may list (HASH_COUNT is the number of hashes a TPM implements). */
const MAX_BANKS = 16;
/** Bitmap bytes accepted when reading: 32 bytes is 256 PCRs, far past any real TPM. */
const MAX_SELECT_BYTES = 32;

/**
 * Checks and normalises a caller's selection: known hashes, integer PCRs 0–23, sorted and de-duplicated,
 * no bank named twice, at least one PCR overall. Throws `EAI_TPM_ARGUMENT`.
 */
export function pcrSelection(banks: readonly { readonly hash: TpmHash; readonly pcrs: readonly number[] }[]): PcrSelection {
  if (banks.length === 0 || banks.length > MAX_BANKS) throw new TpmError('EAI_TPM_ARGUMENT', `a PCR selection needs 1 to ${MAX_BANKS} banks, got ${banks.length}`);
  const seen = new Set<string>();
  const out = banks.map((b) => {
    if (!isTpmHash(b.hash)) throw new TpmError('EAI_TPM_ARGUMENT', `unknown PCR bank '${String(b.hash)}'`);
    if (seen.has(b.hash)) throw new TpmError('EAI_TPM_ARGUMENT', `PCR bank ${b.hash} is named twice in one selection`);
    seen.add(b.hash);
    for (const i of b.pcrs) {
      if (!Number.isInteger(i) || i < 0 || i >= PCR_COUNT) throw new TpmError('EAI_TPM_ARGUMENT', `PCR index ${i} is not an integer from 0 to ${PCR_COUNT - 1}`);
    }
    return { hash: b.hash, pcrs: [...new Set(b.pcrs)].sort((x, y) => x - y) };
  });
  if (out.every((b) => b.pcrs.length === 0)) throw new TpmError('EAI_TPM_ARGUMENT', 'a PCR selection must select at least one PCR');
  return out;
}

/** TPML_PCR_SELECTION bytes, with 3-byte bitmaps (all PCRs of a PC Client TPM). */
export function encodePcrSelection(selection: PcrSelection): Buffer {
  const parts: Buffer[] = [u32(selection.length)];
  for (const bank of selection) {
    const bitmap = Buffer.alloc(Math.max(SELECT_BYTES, Math.ceil((Math.max(-1, ...bank.pcrs) + 1) / 8)));
    for (const i of bank.pcrs) bitmap[i >> 3] = (bitmap[i >> 3] ?? 0) | (1 << (i & 7));
    parts.push(u16(hashAlg(bank.hash)), Buffer.from([bitmap.length]), bitmap);
  }
  return Buffer.concat(parts);
}

/** Reads a TPML_PCR_SELECTION at the reader's position. */
export function readPcrSelection(r: TpmReader): PcrSelection {
  const count = r.u32('pcrSelect.count');
  if (count > MAX_BANKS) r.fail(`pcrSelect.count is ${count}, more than ${MAX_BANKS} banks`, r.position - 4);
  const banks: PcrBankSelection[] = [];
  for (let b = 0; b < count; b++) {
    const hash = hashFromAlg(r.u16(`pcrSelect[${b}].hash`), r.structure);
    const size = r.u8(`pcrSelect[${b}].sizeofSelect`);
    if (size > MAX_SELECT_BYTES) r.fail(`pcrSelect[${b}].sizeofSelect is ${size}, more than ${MAX_SELECT_BYTES}`, r.position - 1);
    const bitmap = r.bytes(size, `pcrSelect[${b}].pcrSelect`);
    const pcrs: number[] = [];
    bitmap.forEach((byte, j) => {
      for (let i = 0; i < 8; i++) if ((byte & (1 << i)) !== 0) pcrs.push(j * 8 + i);
    });
    banks.push({ hash, pcrs });
  }
  return banks;
}

/** Decodes a whole TPML_PCR_SELECTION (no trailing bytes). */
export function decodePcrSelection(bytes: Uint8Array): PcrSelection {
  const r = new TpmReader(bytes, 'TPML_PCR_SELECTION');
  const s = readPcrSelection(r);
  r.end();
  return s;
}

/** The tpm2-tools spelling: `sha256:0,1,16+sha1:7`. Banks without PCRs are left out. */
export function pcrSelectionSpec(selection: PcrSelection): string {
  return selection
    .filter((b) => b.pcrs.length > 0)
    .map((b) => `${toolsHashName(b.hash)}:${b.pcrs.join(',')}`)
    .join('+');
}

/** tpm2-tools names sha3 banks with an underscore. */
export function toolsHashName(hash: TpmHash): string {
  return hash.replace('-', '_');
}
