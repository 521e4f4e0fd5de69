import { PkiError } from './errors.js';

/**
 * ASN.1 DER (X.690), as much as X.509 certificates and PKCS#10 requests need. The encoder builds
 * byte buffers bottom-up; the decoder is strict because it reads CSRs from devices not yet
 * trusted: definite, minimal lengths only, every length checked against the bytes there are, no
 * trailing bytes, a nesting limit, and content checks (minimal INTEGERs and OID arcs, canonical
 * BOOLEANs, valid strings and times) in the `read*` functions. Every failure is a PkiError
 * EAI_PKI_DER naming the field and the byte offset.
 */

/** Identifier octets of the universal types we use (constructed bit included for SEQUENCE/SET). */
export const Tag = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

/** Identifier octet of `[n]`: constructed for EXPLICIT tags and IMPLICIT SETs/SEQUENCEs. */
export function contextTag(n: number, constructed: boolean): number {
  return 0x80 | (constructed ? 0x20 : 0) | n;
}

// ---------------------------------------------------------------------------------------------
// Encoding

export function tlv(tag: number, content: Uint8Array): Buffer {
  return Buffer.concat([Buffer.of(tag), encodeLength(content.length), content]);
}

export function sequence(...items: readonly Uint8Array[]): Buffer {
  return tlv(Tag.SEQUENCE, Buffer.concat(items));
}

/** SET / SET OF: DER orders the elements by their encodings (X.690 11.6). */
export function set(...items: readonly Uint8Array[]): Buffer {
  return tlv(Tag.SET, Buffer.concat([...items].sort((a, b) => Buffer.compare(a, b))));
}

/** A bigint in two's complement, or a Buffer read as an unsigned magnitude (serials, key ids). */
export function integer(value: bigint | Uint8Array): Buffer {
  if (typeof value !== 'bigint') {
    let start = 0;
    while (start < value.length - 1 && value[start] === 0) start++;
    const magnitude = Buffer.from(value.subarray(start));
    if (magnitude.length === 0) return tlv(Tag.INTEGER, Buffer.of(0));
    // A set top bit would read as negative: a leading zero keeps the value positive.
    return tlv(Tag.INTEGER, (magnitude[0] ?? 0) & 0x80 ? Buffer.concat([Buffer.of(0), magnitude]) : magnitude);
  }
  const bytes: number[] = [];
  let v = value;
  for (;;) {
    const low = Number(BigInt.asUintN(8, v));
    bytes.unshift(low);
    v >>= 8n;
    // Stop once the remaining bits are all sign bits and the top byte already carries that sign.
    if ((v === 0n && (low & 0x80) === 0) || (v === -1n && (low & 0x80) !== 0)) break;
  }
  return tlv(Tag.INTEGER, Buffer.from(bytes));
}

export function oid(dotted: string): Buffer {
  if (!/^\d+(\.\d+)+$/u.test(dotted)) throw new PkiError('EAI_PKI_ARGUMENT', `'${dotted}' is not an object identifier; write it as dotted decimal arcs such as 2.5.4.3`);
  const arcs = dotted.split('.').map((a) => BigInt(a));
  const [first = 0n, second = 0n, ...rest] = arcs;
  if (first > 2n || (first < 2n && second >= 40n)) throw new PkiError('EAI_PKI_ARGUMENT', `'${dotted}' is not an object identifier: the first arc must be 0, 1 or 2, and the second below 40 unless the first is 2`);
  return tlv(Tag.OID, Buffer.concat([first * 40n + second, ...rest].map(base128)));
}

export function utf8String(text: string): Buffer {
  return tlv(Tag.UTF8_STRING, Buffer.from(text, 'utf8'));
}

export function printableString(text: string): Buffer {
  if (!isPrintable(text)) throw new PkiError('EAI_PKI_ARGUMENT', `'${text}' has characters a PrintableString cannot hold (letters, digits, space and '()+,-./:=? only)`);
  return tlv(Tag.PRINTABLE_STRING, Buffer.from(text, 'latin1'));
}

export function ia5String(text: string): Buffer {
  if (!/^[\x00-\x7f]*$/u.test(text)) throw new PkiError('EAI_PKI_ARGUMENT', `'${text}' is not ASCII, so it cannot be an IA5String`);
  return tlv(Tag.IA5_STRING, Buffer.from(text, 'latin1'));
}

export function bitString(bytes: Uint8Array, unusedBits = 0): Buffer {
  return tlv(Tag.BIT_STRING, Buffer.concat([Buffer.of(unusedBits), bytes]));
}

/** A named BIT STRING such as KeyUsage: DER drops trailing zero bits (X.690 11.2.2). */
export function namedBits(bits: readonly number[]): Buffer {
  if (bits.length === 0) return bitString(Buffer.alloc(0));
  const highest = Math.max(...bits);
  const bytes = Buffer.alloc((highest >> 3) + 1);
  for (const bit of bits) bytes[bit >> 3] = (bytes[bit >> 3] ?? 0) | (0x80 >> (bit & 7));
  return bitString(bytes, 7 - (highest & 7));
}

export function octetString(bytes: Uint8Array): Buffer {
  return tlv(Tag.OCTET_STRING, bytes);
}

export function boolean(value: boolean): Buffer {
  return tlv(Tag.BOOLEAN, Buffer.of(value ? 0xff : 0x00));
}

export function nullValue(): Buffer {
  return tlv(Tag.NULL, Buffer.alloc(0));
}

/** RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, Zulu. */
export function time(date: Date): Buffer {
  const ms = date.getTime();
  if (!Number.isFinite(ms)) throw new PkiError('EAI_PKI_ARGUMENT', 'a certificate time is an invalid Date; pass a real date');
  const year = date.getUTCFullYear();
  if (year < 1950 || year > 9999) throw new PkiError('EAI_PKI_ARGUMENT', `year ${year} cannot be written in a certificate; use a date from 1950 to 9999`);
  const two = (n: number): string => String(n).padStart(2, '0');
  const rest = `${two(date.getUTCMonth() + 1)}${two(date.getUTCDate())}${two(date.getUTCHours())}${two(date.getUTCMinutes())}${two(date.getUTCSeconds())}Z`;
  return year < 2050 ? tlv(Tag.UTC_TIME, Buffer.from(`${two(year % 100)}${rest}`, 'latin1')) : tlv(Tag.GENERALIZED_TIME, Buffer.from(`${year}${rest}`, 'latin1'));
}

/** `[n] EXPLICIT`: the encoded value wrapped in a constructed context tag. */
export function explicit(n: number, encoded: Uint8Array): Buffer {
  return tlv(contextTag(n, true), encoded);
}

/** `[n] IMPLICIT`: the encoded value with its tag replaced, keeping its constructed bit. */
export function implicit(n: number, encoded: Uint8Array): Buffer {
  const out = Buffer.from(encoded);
  out[0] = contextTag(n, ((encoded[0] ?? 0) & 0x20) !== 0);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding

/** One decoded value. Its buffers are views of the decoded input, not copies. */
export interface DerNode {
  /** The identifier octet. */
  readonly tag: number;
  readonly constructed: boolean;
  /** Offset of the identifier octet in the decoded input, for messages. */
  readonly offset: number;
  /** The whole encoding, identifier to end: what a signature covers, and what an issuer copies. */
  readonly raw: Buffer;
  readonly content: Buffer;
  /** The elements of a constructed value; empty for a primitive one. */
  readonly children: readonly DerNode[];
}

/** Far deeper than any certificate or CSR (about 8), far shallower than the stack. */
export const MAX_DEPTH = 32;

/** Decodes exactly one DER value filling all of `input`. */
export function decodeDer(input: Uint8Array, what = 'DER input'): DerNode {
  const bytes = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  const node = decodeAt(bytes, 0, bytes.length, 0, what);
  if (node.raw.length !== bytes.length) {
    const extra = bytes.length - node.raw.length;
    fail(what, `${extra} trailing byte${extra === 1 ? '' : 's'} after the value`, node.raw.length);
  }
  return node;
}

/** The node, if its identifier octet is `tag`. */
export function expectTag(node: DerNode | undefined, tag: number, what: string): DerNode {
  if (node === undefined) throw new PkiError('EAI_PKI_DER', `${what} is missing: expected tag 0x${hex(tag)}`);
  if (node.tag !== tag) fail(what, `expected tag 0x${hex(tag)}, found 0x${hex(node.tag)}`, node.offset);
  return node;
}

/** The elements of a SEQUENCE (or other constructed value), if there are from `min` to `max`. */
export function elements(node: DerNode, min: number, max: number, what: string): readonly DerNode[] {
  const n = node.children.length;
  if (n < min || n > max) fail(what, `expected ${min === max ? min : `${min} to ${max}`} elements, found ${n}`, node.offset);
  return node.children;
}

export function readInteger(node: DerNode | undefined, what: string): bigint {
  const { content, offset } = expectTag(node, Tag.INTEGER, what);
  if (content.length === 0) fail(what, 'an INTEGER with no content octets', offset);
  const [a = 0, b = 0] = content;
  if (content.length > 1 && ((a === 0x00 && (b & 0x80) === 0) || (a === 0xff && (b & 0x80) !== 0))) fail(what, 'an INTEGER with a redundant leading octet (not minimal)', offset);
  let value = 0n;
  for (const byte of content) value = (value << 8n) | BigInt(byte);
  return a & 0x80 ? value - (1n << BigInt(content.length * 8)) : value;
}

export function readOid(node: DerNode | undefined, what: string): string {
  const { content, offset } = expectTag(node, Tag.OID, what);
  if (content.length === 0) fail(what, 'an OBJECT IDENTIFIER with no content octets', offset);
  const arcs: bigint[] = [];
  let arc = 0n;
  let fresh = true;
  for (const byte of content) {
    if (fresh && byte === 0x80) fail(what, 'an OBJECT IDENTIFIER arc with a leading 0x80 (not minimal)', offset);
    arc = (arc << 7n) | BigInt(byte & 0x7f);
    fresh = (byte & 0x80) === 0;
    if (fresh) {
      arcs.push(arc);
      arc = 0n;
    }
  }
  if (!fresh) fail(what, 'an OBJECT IDENTIFIER whose last arc is cut short', offset);
  const [head = 0n, ...rest] = arcs;
  const first = head < 80n ? head / 40n : 2n;
  return [first, head - first * 40n, ...rest].join('.');
}

/** A UTF8String, PrintableString or IA5String, checked for the characters its type allows. */
export function readString(node: DerNode | undefined, what: string): string {
  if (node === undefined) throw new PkiError('EAI_PKI_DER', `${what} is missing: expected a string`);
  const { tag, content, offset } = node;
  if (tag === Tag.UTF8_STRING) {
    try {
      return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(content);
    } catch {
      fail(what, 'a UTF8String that is not valid UTF-8', offset);
    }
  }
  const text = content.toString('latin1');
  if (tag === Tag.PRINTABLE_STRING && isPrintable(text)) return text;
  if (tag === Tag.IA5_STRING && /^[\x00-\x7f]*$/u.test(text)) return text;
  if (tag === Tag.PRINTABLE_STRING || tag === Tag.IA5_STRING) fail(what, 'a string with characters its type does not allow', offset);
  return fail(what, `expected a UTF8String, PrintableString or IA5String, found tag 0x${hex(tag)}`, offset);
}

/** The bytes of a BIT STRING that holds whole octets (keys, signatures). */
export function readBitString(node: DerNode | undefined, what: string): Buffer {
  const { content, offset } = expectTag(node, Tag.BIT_STRING, what);
  if (content.length === 0) fail(what, 'a BIT STRING with no unused-bits octet', offset);
  if (content[0] !== 0) fail(what, `a BIT STRING with ${content[0]} unused bits where whole octets are expected`, offset);
  return content.subarray(1);
}

export function readOctetString(node: DerNode | undefined, what: string): Buffer {
  return expectTag(node, Tag.OCTET_STRING, what).content;
}

export function readBoolean(node: DerNode | undefined, what: string): boolean {
  const { content, offset } = expectTag(node, Tag.BOOLEAN, what);
  if (content.length !== 1 || (content[0] !== 0x00 && content[0] !== 0xff)) fail(what, 'a BOOLEAN that is not one octet 0x00 or 0xff', offset);
  return content[0] === 0xff;
}

export function readNull(node: DerNode | undefined, what: string): null {
  const { content, offset } = expectTag(node, Tag.NULL, what);
  if (content.length !== 0) fail(what, 'a NULL with content octets', offset);
  return null;
}

/** UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ`, the only forms RFC 5280 allows. */
export function readTime(node: DerNode | undefined, what: string): Date {
  if (node === undefined) throw new PkiError('EAI_PKI_DER', `${what} is missing: expected a time`);
  const text = node.content.toString('latin1');
  const m = node.tag === Tag.UTC_TIME ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/u.exec(text) : node.tag === Tag.GENERALIZED_TIME ? /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/u.exec(text) : null;
  if (m === null) return fail(what, `expected a UTCTime YYMMDDHHMMSSZ or GeneralizedTime YYYYMMDDHHMMSSZ, found tag 0x${hex(node.tag)} '${text.slice(0, 20)}'`, node.offset);
  const [y, mo, d, h, mi, s] = m.slice(1).map(Number) as [number, number, number, number, number, number];
  const year = node.tag === Tag.UTC_TIME ? (y < 50 ? 2000 + y : 1900 + y) : y;
  const date = new Date(Date.UTC(year, mo - 1, d, h, mi, s));
  if (date.getUTCMonth() !== mo - 1 || date.getUTCDate() !== d || date.getUTCHours() !== h || date.getUTCMinutes() !== mi || date.getUTCSeconds() !== s) fail(what, `'${text}' is not a real date and time`, node.offset);
  return date;
}

// ---------------------------------------------------------------------------------------------
// PEM (RFC 7468)

export function toPem(label: string, der: Uint8Array): string {
  const lines = Buffer.from(der).toString('base64').match(/.{1,64}/gu) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

/** The DER inside the first PEM block whose label is one of `labels`; text around the blocks is ignored (RFC 7468 2). */
export function fromPem(text: string, labels: readonly string[]): Buffer {
  const found: string[] = [];
  for (const m of text.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)-----END \1-----/gu)) {
    const [, label = '', body = ''] = m;
    if (!labels.includes(label)) {
      found.push(`'${label}'`);
      continue;
    }
    const base64 = body.replace(/\s+/gu, '');
    if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/u.test(base64)) throw new PkiError('EAI_PKI_PEM', `the ${label} PEM block's body is not base64`);
    return Buffer.from(base64, 'base64');
  }
  throw new PkiError('EAI_PKI_PEM', `expected a PEM block '-----BEGIN ${labels[0]}-----', found ${found.length === 0 ? 'none' : found.join(', ')}`);
}

// ---------------------------------------------------------------------------------------------

function encodeLength(n: number): Buffer {
  if (n < 0x80) return Buffer.of(n);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

function base128(value: bigint): Buffer {
  const out = [Number(value & 0x7fn)];
  for (let v = value >> 7n; v > 0n; v >>= 7n) out.unshift(Number(v & 0x7fn) | 0x80);
  return Buffer.from(out);
}

function decodeAt(bytes: Buffer, start: number, end: number, depth: number, what: string): DerNode {
  if (depth > MAX_DEPTH) fail(what, `values nested deeper than ${MAX_DEPTH} levels`, start);
  if (start >= end) fail(what, 'truncated: expected an identifier octet', start);
  const tag = bytes[start] ?? 0;
  const constructed = (tag & 0x20) !== 0;
  const number = tag & 0x1f;
  if (number === 0x1f) fail(what, 'a high-tag-number identifier, which no certificate or CSR field uses', start);
  if ((tag & 0xc0) === 0) {
    if (number === 0) fail(what, 'an end-of-contents marker (indefinite length is not DER)', start);
    const mustConstruct = number === 0x10 || number === 0x11;
    if (constructed !== mustConstruct) fail(what, `universal type ${number} ${constructed ? 'in constructed form (DER requires primitive)' : 'in primitive form (SEQUENCE and SET are constructed)'}`, start);
  }
  let pos = start + 1;
  if (pos >= end) fail(what, 'truncated: expected a length octet', pos);
  const first = bytes[pos++] ?? 0;
  let length = first;
  if (first === 0x80) fail(what, 'an indefinite length, which DER forbids', pos - 1);
  if (first > 0x80) {
    const count = first & 0x7f;
    if (count > 4) fail(what, `a length of ${count} octets; nothing here is that large`, pos - 1);
    if (pos + count > end) fail(what, 'truncated inside a length field', pos);
    if (bytes[pos] === 0) fail(what, 'a length with a leading zero octet (not minimal)', pos - 1);
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + (bytes[pos++] ?? 0);
    if (length < 0x80) fail(what, `length ${length} written in long form (DER requires the short form below 128)`, start + 1);
  }
  if (length > end - pos) fail(what, `truncated: a value of ${length} octets with only ${end - pos} left`, start);
  const contentEnd = pos + length;
  const children: DerNode[] = [];
  if (constructed) {
    for (let at = pos; at < contentEnd; ) {
      const child = decodeAt(bytes, at, contentEnd, depth + 1, what);
      children.push(child);
      at += child.raw.length;
    }
  }
  return { tag, constructed, offset: start, raw: bytes.subarray(start, contentEnd), content: bytes.subarray(pos, contentEnd), children };
}

function isPrintable(text: string): boolean {
  return /^[A-Za-z0-9 '()+,\-./:=?]*$/u.test(text);
}

function hex(n: number): string {
  return n.toString(16).padStart(2, '0');
}

function fail(what: string, problem: string, offset: number): never {
  throw new PkiError('EAI_PKI_DER', `${what} is not valid DER: ${problem} (at byte ${offset})`, { details: { offset } });
}
