/**
 * Bech32 (BIP 173, the original checksum constant 1, not Bech32m) as age spells its key strings:
 * `age1…` recipients and `AGE-SECRET-KEY-1…` identities. Like age, and unlike BIP 173, there is no
 * 90-character limit (age plugins use longer strings); a string must be all lower or all upper
 * case, and an upper-case string decodes to an upper-case HRP so callers can tell the two apart.
 *
 * Pure functions with no aios dependencies. Decoding returns a result rather than throwing, so the
 * caller (keys.ts) turns a refusal into an error that names the key it was reading.
 */

const CHARSET = 'qpzry9x8gf2tvdw0s3jn54khce6mua7l';
const GENERATOR = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3] as const;
const CHARSET_INDEX: ReadonlyMap<string, number> = new Map([...CHARSET].map((c, i) => [c, i]));

/** The outcome of {@link bech32Decode}: the HRP (in the string's case) and the data bytes, or why not. */
export type Bech32Result = { readonly ok: true; readonly hrp: string; readonly data: Buffer } | { readonly ok: false; readonly reason: string };

/**
 * Encodes `data` under `hrp`. An upper-case HRP gives an all upper-case string (age identities),
 * a lower-case one a lower-case string. Throws a RangeError for an empty or mixed-case HRP or one
 * with characters outside US-ASCII 33..126: those are programming errors, not input errors.
 */
export function bech32Encode(hrp: string, data: Uint8Array): string {
  checkHrp(hrp);
  const upper = hrp !== hrp.toLowerCase();
  const lowHrp = hrp.toLowerCase();
  const values = convertBits(data, 8, 5, true);
  if (values === undefined) throw new RangeError('bech32: internal error converting bits');
  let out = `${lowHrp}1`;
  for (const v of values) out += CHARSET[v];
  for (const v of checksum(lowHrp, values)) out += CHARSET[v];
  return upper ? out.toUpperCase() : out;
}

/** Decodes a Bech32 string; never throws. */
export function bech32Decode(s: string): Bech32Result {
  if (s !== s.toLowerCase() && s !== s.toUpperCase()) return { ok: false, reason: 'mixes upper and lower case' };
  const pos = s.lastIndexOf('1');
  if (pos < 1 || pos + 7 > s.length) return { ok: false, reason: `the separator '1' is missing or misplaced (a string needs an HRP, '1' and a 6-character checksum)` };
  const hrp = s.slice(0, pos);
  for (let i = 0; i < hrp.length; i++) {
    const c = hrp.charCodeAt(i);
    if (c < 33 || c > 126) return { ok: false, reason: `character ${i} of the prefix is not printable ASCII` };
  }
  const lower = s.toLowerCase();
  const values: number[] = [];
  for (let i = pos + 1; i < lower.length; i++) {
    const v = CHARSET_INDEX.get(lower.charAt(i));
    if (v === undefined) return { ok: false, reason: `character ${i} (${JSON.stringify(s.charAt(i))}) is not in the Bech32 alphabet` };
    values.push(v);
  }
  if (polymod([...hrpExpand(hrp.toLowerCase()), ...values]) !== 1) return { ok: false, reason: 'the checksum does not match (a typo, or a truncated copy)' };
  const data = convertBits(values.slice(0, -6), 5, 8, false);
  if (data === undefined) return { ok: false, reason: 'the data part has non-zero or excess padding bits' };
  return { ok: true, hrp, data: Buffer.from(data) };
}

function checkHrp(hrp: string): void {
  if (hrp.length === 0) throw new RangeError('bech32: empty HRP');
  if (hrp !== hrp.toLowerCase() && hrp !== hrp.toUpperCase()) throw new RangeError(`bech32: mixed-case HRP ${JSON.stringify(hrp)}`);
  for (let i = 0; i < hrp.length; i++) {
    const c = hrp.charCodeAt(i);
    if (c < 33 || c > 126) throw new RangeError(`bech32: HRP character ${i} is not printable ASCII`);
  }
}

function polymod(values: readonly number[]): number {
  let chk = 1;
  for (const v of values) {
    const top = chk >>> 25;
    chk = (((chk & 0x1ffffff) << 5) ^ v) >>> 0;
    for (let i = 0; i < 5; i++) if ((top >>> i) & 1) chk = (chk ^ (GENERATOR[i] as number)) >>> 0;
  }
  return chk;
}

function hrpExpand(hrp: string): number[] {
  const out: number[] = [];
  for (let i = 0; i < hrp.length; i++) out.push(hrp.charCodeAt(i) >>> 5);
  out.push(0);
  for (let i = 0; i < hrp.length; i++) out.push(hrp.charCodeAt(i) & 31);
  return out;
}

function checksum(hrp: string, values: readonly number[]): number[] {
  const mod = polymod([...hrpExpand(hrp), ...values, 0, 0, 0, 0, 0, 0]) ^ 1;
  const out: number[] = [];
  for (let p = 0; p < 6; p++) out.push((mod >>> (5 * (5 - p))) & 31);
  return out;
}

/** Regroups bits; `undefined` when unpadded input leaves a non-zero or whole-group remainder. */
function convertBits(data: ArrayLike<number>, from: number, to: number, pad: boolean): number[] | undefined {
  let acc = 0;
  let bits = 0;
  const out: number[] = [];
  const max = (1 << to) - 1;
  for (let i = 0; i < data.length; i++) {
    const value = data[i] as number;
    if (value >>> from !== 0) return undefined;
    acc = ((acc << from) | value) & 0xffffff; // only the low bits still to be emitted matter
    bits += from;
    while (bits >= to) {
      bits -= to;
      out.push((acc >>> bits) & max);
    }
  }
  if (pad) {
    if (bits > 0) out.push((acc << (to - bits)) & max);
  } else if (bits >= from || ((acc << (to - bits)) & max) !== 0) {
    return undefined;
  }
  return out;
}
