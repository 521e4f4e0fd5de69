/**
 * The age v1 header (https://age-encryption.org/v1): the version line, one or more recipient
 * stanzas, and the closing `--- <MAC>` line. Encoding and a strict, incremental parser; the
 * payload that follows is stream.ts's business, the stanza types keys.ts's.
 *
 * Parsing is canonical, as the reference implementation's is: base64 without padding and with
 * zero trailing bits, bodies wrapped at exactly 64 columns and closed by a shorter (possibly empty)
 * line, arguments of printable ASCII separated by single spaces, LF only. So a header has exactly
 * one encoding, and the MAC can be checked over the bytes as received.
 */
import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';
import { AiosError } from '../../../drivers/errors.js';

/**
 * Every age failure. Codes: `EAI_AGE_KEY` (a key string that cannot be read),
 * `EAI_AGE_NO_KEYS` (no recipients or identities given), `EAI_AGE_HEADER` (malformed header or
 * stanza), `EAI_AGE_NO_MATCH` (not encrypted to any identity given), `EAI_AGE_HEADER_MAC`,
 * `EAI_AGE_PAYLOAD_AUTH`, `EAI_AGE_TRUNCATED`, `EAI_AGE_TRAILING_DATA`.
 */
export class AgeError extends AiosError {}

/** The first line of every age v1 file, LF included. */
export const AGE_VERSION_LINE = 'age-encryption.org/v1\n';
/** File keys are 16 random bytes. */
export const FILE_KEY_SIZE = 16;
/**
 * The longest header the parser accepts before the closing line: a bound on memory for files
 * that are not age at all. 1 MiB is several thousand X25519 stanzas.
 */
export const MAX_HEADER_BYTES = 1024 * 1024;

const MAC_SIZE = 32;
const COLUMNS = 64;
const ARMOR_BEGIN = '-----BEGIN AGE ENCRYPTED FILE-----';
const BASE64 = /^[A-Za-z0-9+/]*$/u;
const VCHAR = /^[\x21-\x7e]+$/u;

/** One recipient stanza: `-> type args...` and its body. Unknown types are kept, and skipped by identities. */
export interface AgeStanza {
  readonly type: string;
  readonly args: readonly string[];
  readonly body: Buffer;
}

/** A parsed header. `macInput` is what the MAC covers: from the version line through `---`. */
export interface AgeHeader {
  readonly stanzas: readonly AgeStanza[];
  readonly mac: Buffer;
  readonly macInput: Buffer;
  /** Bytes the header takes, closing LF included; the 16-byte payload nonce starts here. */
  readonly length: number;
}

/** Base64, standard alphabet, no padding: how age writes every binary field. */
export function encodeBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64').replace(/=+$/u, '');
}

/** Decodes canonical unpadded base64; `undefined` for anything else (padding, stray bits, other characters). */
export function decodeBase64(s: string): Buffer | undefined {
  if (!BASE64.test(s) || s.length % 4 === 1) return undefined;
  const bytes = Buffer.from(s, 'base64');
  // Node ignores non-zero trailing bits; re-encoding catches them, so each value has one spelling.
  return encodeBase64(bytes) === s ? bytes : undefined;
}

/**
 * The full header for `stanzas` under `fileKey`: version line, stanzas, `--- <MAC>` and LF.
 * Throws `EAI_AGE_HEADER` if a stanza's type or arguments are not non-empty printable ASCII.
 */
export function encodeHeader(stanzas: readonly AgeStanza[], fileKey: Buffer): Buffer {
  if (stanzas.length === 0) throw new AgeError('EAI_AGE_HEADER', 'an age header needs at least one recipient stanza; the recipients produced none.');
  let text = AGE_VERSION_LINE;
  for (const s of stanzas) {
    for (const a of [s.type, ...s.args]) {
      if (!VCHAR.test(a)) throw new AgeError('EAI_AGE_HEADER', `a recipient produced a stanza argument ${JSON.stringify(a)}; arguments must be non-empty printable ASCII without spaces.`);
    }
    text += `-> ${[s.type, ...s.args].join(' ')}\n`;
    const b64 = encodeBase64(s.body);
    let i = 0;
    for (; i + COLUMNS <= b64.length; i += COLUMNS) text += `${b64.slice(i, i + COLUMNS)}\n`;
    // The body always ends with a line shorter than 64 columns, empty if need be.
    text += `${b64.slice(i)}\n`;
  }
  text += '---';
  const macInput = Buffer.from(text, 'latin1');
  return Buffer.concat([macInput, Buffer.from(` ${encodeBase64(headerMac(fileKey, macInput))}\n`, 'latin1')]);
}

/**
 * Parses a header from the start of `bytes`. Returns `undefined` while the bytes seen so far are a
 * valid beginning but the closing line has not arrived, so a stream can call it again with more;
 * throws `EAI_AGE_HEADER` as soon as they cannot begin one, or when no closing line comes within
 * `maxBytes`.
 */
export function parseHeader(bytes: Buffer, maxBytes: number = MAX_HEADER_BYTES): AgeHeader | undefined {
  const version = Buffer.from(AGE_VERSION_LINE, 'latin1');
  const head = bytes.subarray(0, version.length);
  if (!head.equals(version.subarray(0, head.length))) throw notAge(bytes);
  if (head.length < version.length) return undefined;

  const stanzas: AgeStanza[] = [];
  let pos = version.length;
  const nextLine = (): string | undefined => {
    const nl = bytes.indexOf(0x0a, pos);
    if (nl < 0 || nl >= maxBytes) {
      // Whether the bytes are complete or not, a header may not run past maxBytes.
      if (bytes.length > maxBytes) throw malformed(`no closing '---' line within the first ${maxBytes} bytes`);
      return undefined;
    }
    const line = bytes.toString('latin1', pos, nl);
    pos = nl + 1;
    return line;
  };

  for (;;) {
    const lineStart = pos;
    const line = nextLine();
    if (line === undefined) return undefined;
    if (line.startsWith('---')) {
      const parts = line.split(' ');
      const mac = parts[0] === '---' && parts.length === 2 ? decodeBase64(parts[1] as string) : undefined;
      if (mac?.length !== MAC_SIZE) throw malformed(`the closing line ${JSON.stringify(clip(line))} is not '--- ' and a 43-character base64 MAC`);
      if (stanzas.length === 0) throw malformed('it has no recipient stanzas');
      checkStanzaRules(stanzas);
      return { stanzas, mac, macInput: bytes.subarray(0, lineStart + 3), length: pos };
    }
    const args = line.split(' ');
    if (args[0] !== '->' || args.length < 2 || !args.slice(1).every((a) => VCHAR.test(a))) {
      throw malformed(`expected a stanza line '-> type [args]' or the closing '--- ' line, found ${JSON.stringify(clip(line))}`);
    }
    const body: Buffer[] = [];
    for (;;) {
      const bodyLine = nextLine();
      if (bodyLine === undefined) return undefined;
      const decoded = bodyLine.length <= COLUMNS ? decodeBase64(bodyLine) : undefined;
      if (decoded === undefined) {
        const why = bodyLine.startsWith('-') ? 'the stanza ended without a short final body line' : 'not canonical base64 of at most 64 columns';
        throw malformed(`body line ${JSON.stringify(clip(bodyLine))} of stanza '${clip(args[1] as string)}': ${why}`);
      }
      body.push(decoded);
      if (bodyLine.length < COLUMNS) break;
    }
    stanzas.push({ type: args[1] as string, args: args.slice(2), body: Buffer.concat(body) });
  }
}

/** HMAC-SHA256 over `macInput` keyed by HKDF-SHA256(file key, no salt, "header"). */
export function headerMac(fileKey: Buffer, macInput: Buffer): Buffer {
  const key = Buffer.from(hkdfSync('sha256', fileKey, Buffer.alloc(0), 'header', 32));
  return createHmac('sha256', key).update(macInput).digest();
}

/** Throws `EAI_AGE_HEADER_MAC` unless the header's MAC is right for `fileKey`. */
export function verifyHeaderMac(header: AgeHeader, fileKey: Buffer): void {
  if (!timingSafeEqual(headerMac(fileKey, header.macInput), header.mac)) {
    throw new AgeError(
      'EAI_AGE_HEADER_MAC',
      'the age header MAC does not match: the header was modified after encryption (a stanza added, removed or edited). Fetch the file again from its source.',
      { details: { stanzas: header.stanzas.length } },
    );
  }
}

/** Rules of the spec that span stanzas. */
function checkStanzaRules(stanzas: readonly AgeStanza[]): void {
  // A passphrase (scrypt) stanza must stand alone, or a recipient could learn the file key.
  if (stanzas.length > 1 && stanzas.some((s) => s.type === 'scrypt')) throw malformed('an scrypt stanza must be the only stanza');
}

function malformed(why: string): AgeError {
  return new AgeError('EAI_AGE_HEADER', `malformed age header: ${why}. The file is damaged or was not written by an age v1 encryptor; fetch it again.`);
}

function notAge(bytes: Buffer): AgeError {
  const start = bytes.toString('latin1', 0, Math.min(bytes.length, 40));
  if (start.startsWith('-----BEGIN')) {
    return new AgeError('EAI_AGE_HEADER', `this looks like an ASCII-armored file (${ARMOR_BEGIN}); aios reads the binary age format. Re-encrypt without -a/--armor.`);
  }
  return new AgeError('EAI_AGE_HEADER', `not an age v1 file: expected it to start with "age-encryption.org/v1", found ${JSON.stringify(start.replace(/[^\x20-\x7e]/gu, '?'))}.`);
}

function clip(s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}
