import { AiosError } from '../../drivers/errors.js';

/**
 * The JSON Canonicalization Scheme (JCS, RFC 8785): the one byte string that aios signs for a
 * JSON value (trust roots, and anything else signed as JSON). Outside tools produce the same
 * bytes: Python `rfc8785.dumps`, Go `github.com/gowebpki/jcs`, Java/C#/JS from
 * github.com/cyberphone/json-canonicalization.
 *
 * The rules, as RFC 8785 states them:
 * - no whitespace; object members sorted by their names compared as arrays of UTF-16 code units
 *   (not by locale, not by code point), recursively; array order kept;
 * - strings as ECMAScript `JSON.stringify` writes them: `"` and `\` escaped, `\b \f \n \r \t`,
 *   other controls below U+0020 as `\u00xx` (lowercase hex), everything else (including `/`,
 *   U+007F and non-ASCII) written as itself, in UTF-8;
 * - numbers as ECMAScript writes a double (`Number.prototype.toString`): `4.50` → `4.5`,
 *   `1E30` → `1e+30`, `-0` → `0`;
 * - input must be I-JSON (RFC 7493): no NaN or Infinity, no lone surrogates in strings; duplicate
 *   member names cannot occur in a JS object.
 *
 * Why JCS rather than the OLPC "canonical JSON" TUF's Python tools use: JCS is an RFC with
 * published test vectors and implementations in several languages, and it is defined for every
 * JSON value. For the documents aios signs (integers, ASCII member names, strings without
 * control characters) the two produce the same bytes, so securesystemslib's
 * `encode_canonical` also reproduces what a trust root is signed over.
 */

/** A value that has no canonical JSON form: NaN, a bigint, a Map, a lone surrogate, a cycle. */
export class CanonicalJsonError extends AiosError {}

/** The canonical JSON text of `value` (RFC 8785). Throws `CanonicalJsonError` for non-JSON values. */
export function canonicalize(value: unknown): string {
  const parts: string[] = [];
  write(value, parts, [], new Set());
  return parts.join('');
}

/** The canonical JSON of `value` as UTF-8 bytes: what gets signed and hashed. */
export function canonicalBytes(value: unknown): Buffer {
  return Buffer.from(canonicalize(value), 'utf8');
}

function write(value: unknown, out: string[], path: string[], open: Set<object>): void {
  switch (typeof value) {
    case 'string':
      out.push(string(value, path));
      return;
    case 'number':
      if (!Number.isFinite(value)) fail(path, `${value} is not a JSON number`);
      // ECMAScript's number-to-string is exactly the serialisation RFC 8785 section 3.2.2.3 asks for.
      out.push(JSON.stringify(value));
      return;
    case 'boolean':
      out.push(value ? 'true' : 'false');
      return;
    case 'object':
      break;
    default:
      fail(path, `a ${typeof value} is not a JSON value`);
  }
  if (value === null) {
    out.push('null');
    return;
  }
  if (open.has(value)) fail(path, 'the value contains itself (a cycle)');
  open.add(value);
  if (Array.isArray(value)) {
    out.push('[');
    for (let i = 0; i < value.length; i++) {
      if (i > 0) out.push(',');
      // `in` rather than reading the element: a hole in a sparse array is not a JSON value either.
      if (!(i in value)) fail([...path, String(i)], 'an array hole is not a JSON value');
      write(value[i], out, [...path, String(i)], open);
    }
    out.push(']');
  } else {
    const proto: unknown = Object.getPrototypeOf(value);
    // Buffers, Dates, Maps, class instances: their JSON form is a choice JSON.stringify makes
    // through toJSON or silently drops; a signer should say what it means instead.
    if (proto !== Object.prototype && proto !== null) fail(path, `a ${(value as object).constructor?.name ?? 'non-plain object'} is not a plain JSON object`);
    const record = value as Record<string, unknown>;
    // Default sort compares UTF-16 code units, which is the order RFC 8785 section 3.2.3 asks for.
    const names = Object.keys(record).sort();
    out.push('{');
    names.forEach((name, i) => {
      if (i > 0) out.push(',');
      out.push(string(name, path), ':');
      write(record[name], out, [...path, name], open);
    });
    out.push('}');
  }
  open.delete(value);
}

function string(s: string, path: string[]): string {
  // I-JSON: a lone surrogate has no UTF-8 encoding, so two parties could not agree on its bytes.
  if (hasLoneSurrogate(s)) fail(path, `the string '${s.slice(0, 40)}' holds a lone UTF-16 surrogate, which is not valid Unicode`);
  return JSON.stringify(s);
}

function hasLoneSurrogate(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const next = s.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) i++;
      else return true;
    } else if (c >= 0xdc00 && c <= 0xdfff) {
      return true;
    }
  }
  return false;
}

function fail(path: string[], what: string): never {
  const where = path.length === 0 ? 'the value' : `'${path.join('.')}'`;
  throw new CanonicalJsonError('EAI_CANONICAL_JSON_VALUE', `${where} has no canonical JSON form: ${what}; sign only plain objects, arrays, strings, finite numbers, booleans and null.`, { details: { path: path.join('.') } });
}
