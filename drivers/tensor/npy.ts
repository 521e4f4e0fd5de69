import { randomUUID } from 'node:crypto';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { TensorError } from '../errors.js';
import { Tensor, bytesPerElement, shapeSize, type DType } from './tensor.js';

/**
 * NumPy `.npy` files: the tensor format of the CLI (`aios run --input x.npy`, `--output y.npy`).
 *
 * Layout (numpy/lib/format.py): the magic `\x93NUMPY`, a major and a minor version byte, the
 * header length (u16 little-endian for 1.0, u32 for 2.0 and 3.0), then the header: a Python dict
 * literal such as `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`, latin1 for 1.0
 * and 2.0, UTF-8 for 3.0, padded with spaces and a final `\n` so that the data starts at a
 * multiple of 64 bytes (NumPy >= 1.14; older files used 16, and readers must not care).
 */

/** Where decodeNpy says the bytes came from when the caller gives no `source`. */
const DEFAULT_SOURCE = '<npy bytes>';
const MAGIC = Uint8Array.of(0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59); // \x93NUMPY
/** NumPy pads the header so the data starts at a multiple of this (format.py ARRAY_ALIGN). */
const ARRAY_ALIGN = 64;
/**
 * Since NumPy 1.24 the header carries spare spaces so the growth axis can be rewritten in
 * place (format.py GROWTH_AXIS_MAX_DIGITS); we add the same so our files match np.save byte
 * for byte.
 */
const GROWTH_AXIS_MAX_DIGITS = 21;
const V1_MAX_HEADER = 0xffff;

/** The descr kind+size pairs aios reads, and the dtype each one becomes. */
const DESCR_TO_DTYPE: Readonly<Record<string, DType>> = {
  f2: 'float16', f4: 'float32', f8: 'float64',
  i1: 'int8', i2: 'int16', i4: 'int32', i8: 'int64',
  u1: 'uint8', u2: 'uint16', u4: 'uint32', u8: 'uint64',
  b1: 'bool',
};

const DTYPE_TO_DESCR: Readonly<Record<DType, string>> = {
  float16: 'f2', float32: 'f4', float64: 'f8',
  int8: 'i1', int16: 'i2', int32: 'i4', int64: 'i8',
  uint8: 'u1', uint16: 'u2', uint32: 'u4', uint64: 'u8',
  bool: 'b1',
};

const HOST_LITTLE_ENDIAN = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;

/**
 * Decodes a whole `.npy` file held in memory.
 *
 * The returned tensor is in C order and host byte order whatever the file used: Fortran-order
 * data is transposed and big-endian data is byte-swapped, both into a new buffer. Otherwise the
 * tensor's data is a view into `bytes` (zero-copy) when the data offset is aligned for the dtype,
 * so the caller must not reuse `bytes` while the tensor is alive (or must `clone()` it); when
 * the offset is misaligned the data is copied. Bytes after the data are ignored.
 *
 * @param source names the bytes in error messages (a path, `stdin`, a URL).
 * @throws TensorError `EAI_NPY_MAGIC` (not a .npy file, or a version other than 1.0/2.0/3.0),
 *   `EAI_NPY_HEADER` (header cut short or not the dict NumPy writes), `EAI_NPY_DTYPE` (a dtype
 *   aios has no tensor type for: object, structured, string, complex, datetime...),
 *   `EAI_NPY_TRUNCATED` (fewer data bytes than the shape needs).
 */
export function decodeNpy(bytes: Uint8Array, source: string = DEFAULT_SOURCE): Tensor {
  const { headerText, dataOffset } = readPreamble(bytes, source);
  const header = parseHeader(headerText, source);
  const { dtype, swap } = parseDescr(header.descr, source);
  const itemsize = bytesPerElement(dtype);
  const size = shapeSize(header.shape);

  const needed = BigInt(itemsize) * header.shape.reduce((n, d) => n * BigInt(d), 1n);
  const available = bytes.byteLength - dataOffset;
  if (needed > BigInt(available)) {
    throw new TensorError(
      'EAI_NPY_TRUNCATED',
      `${source}: the data is truncated: shape ${pyShape(header.shape)} of ${dtype} needs ${needed} bytes after the ${dataOffset}-byte header, but only ${available} are there. The file was cut short; copy it again or re-save it with numpy.save().`,
      { details: { source, dtype, shape: header.shape, expectedBytes: Number(needed), actualBytes: available } },
    );
  }

  const start = bytes.byteOffset + dataOffset;
  const byteLength = size * itemsize;
  const reorder = header.fortranOrder && header.shape.length > 1 && size > 0;
  if (!swap && !reorder && start % itemsize === 0) return Tensor.fromBytes(dtype, header.shape, bytes.buffer, start);

  // A copy at offset 0 of a fresh buffer, so every path below is aligned and owns its bytes.
  // Not bytes.slice(): on a Node Buffer (what readFile gives) slice() is a view, and the swap
  // below would then scribble on the caller's bytes.
  let data = new Uint8Array(bytes.subarray(dataOffset, dataOffset + byteLength));
  if (swap) swapBytesInPlace(data, itemsize);
  if (reorder) data = fortranToC(data, header.shape, itemsize);
  return Tensor.fromBytes(dtype, header.shape, data.buffer, 0);
}

/**
 * Encodes a tensor as a `.npy` file: format 1.0 (2.0 only when the header would pass 65535
 * bytes), C order, host byte order, with exactly the header text and padding `numpy.save`
 * (NumPy >= 1.24) writes for the same array, so the bytes match NumPy's own file. The result
 * is a new buffer; the tensor is not retained.
 */
export function encodeNpy(t: Tensor): Uint8Array {
  const itemsize = bytesPerElement(t.dtype);
  const order = itemsize === 1 ? '|' : HOST_LITTLE_ENDIAN ? '<' : '>';
  const descr = order + DTYPE_TO_DESCR[t.dtype];
  let text = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${pyShape(t.shape)}, }`;
  const first = t.shape[0];
  if (first !== undefined) text += ' '.repeat(Math.max(0, GROWTH_AXIS_MAX_DIGITS - String(first).length));

  // Same arithmetic as format.py _wrap_header: the '\n' counts in the header, and a header
  // that already ends on the boundary still gets a full 64 spaces.
  let prefix = 10;
  let padded = paddedHeaderLength(prefix, text.length);
  if (padded > V1_MAX_HEADER) {
    prefix = 12;
    padded = paddedHeaderLength(prefix, text.length);
  }
  const data = t.bytes();
  const out = new Uint8Array(prefix + padded + data.byteLength);
  out.set(MAGIC, 0);
  out[6] = prefix === 10 ? 1 : 2;
  out[7] = 0;
  const view = new DataView(out.buffer);
  if (prefix === 10) view.setUint16(8, padded, true);
  else view.setUint32(8, padded, true);
  // The header is ASCII (descr codes, digits, punctuation), so one char is one byte.
  for (let i = 0; i < text.length; i++) out[prefix + i] = text.charCodeAt(i);
  out.fill(0x20, prefix + text.length, prefix + padded - 1);
  out[prefix + padded - 1] = 0x0a;
  out.set(data, prefix + padded);
  return out;
}

/**
 * Reads and decodes a `.npy` file. The tensor views the file's buffer when it can (see
 * decodeNpy); nothing else holds that buffer.
 *
 * @throws TensorError `EAI_NPY_NOT_FOUND` when nothing exists at `path`, and decodeNpy's codes
 *   naming `path`; other filesystem errors (a directory, no permission) propagate as Node's own.
 */
export async function readNpy(path: string): Promise<Tensor> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) {
      throw new TensorError('EAI_NPY_NOT_FOUND', `No .npy file at ${path}: check the path (a relative path is taken from ${process.cwd()}).`, {
        cause: err,
        details: { path },
      });
    }
    throw err;
  }
  return decodeNpy(bytes, path);
}

/**
 * Writes `t` to `path` as encodeNpy does. The file is written beside `path` under a temporary
 * name and renamed into place, so a reader never sees half a file and a failed write leaves any
 * previous file intact. Concurrent writes to the same path are safe: the last rename wins.
 */
export async function writeNpy(path: string, t: Tensor): Promise<void> {
  const tmp = `${path}.${randomUUID()}.tmp`;
  try {
    await writeFile(tmp, encodeNpy(t));
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

interface NpyHeader {
  readonly descr: PyValue;
  readonly fortranOrder: boolean;
  readonly shape: readonly number[];
}

function paddedHeaderLength(prefix: number, textLength: number): number {
  const hlen = textLength + 1;
  return hlen + (ARRAY_ALIGN - ((prefix + hlen) % ARRAY_ALIGN));
}

/** Python's repr of a shape tuple: `()`, `(3,)`, `(2, 3)`. */
function pyShape(shape: readonly number[]): string {
  if (shape.length === 1) return `(${shape[0]},)`;
  return `(${shape.join(', ')})`;
}

function readPreamble(bytes: Uint8Array, source: string): { headerText: string; dataOffset: number } {
  const magicOk = bytes.byteLength >= 8 && MAGIC.every((b, i) => bytes[i] === b);
  if (!magicOk) {
    const found = Array.from(bytes.subarray(0, 8), (b) => b.toString(16).padStart(2, '0')).join(' ');
    throw new TensorError(
      'EAI_NPY_MAGIC',
      `${source}: not a NumPy .npy file: expected it to start with the bytes 93 4e 55 4d 50 59 ('\\x93NUMPY') and a version, found ${found === '' ? 'an empty file' : found}. Pass a file written by numpy.save() (an .npz archive must be unzipped first).`,
      { details: { source } },
    );
  }
  const major = bytes[6] ?? 0;
  const minor = bytes[7] ?? 0;
  if (minor !== 0 || major < 1 || major > 3) {
    throw new TensorError(
      'EAI_NPY_MAGIC',
      `${source}: .npy format version ${major}.${minor} is not supported; aios reads 1.0, 2.0 and 3.0. Re-save the array with numpy.save(), which picks the oldest version that can hold it.`,
      { details: { source, version: [major, minor] } },
    );
  }
  const prefix = major === 1 ? 10 : 12;
  if (bytes.byteLength < prefix) {
    throw headerError(source, `the file ends inside the header length field (${bytes.byteLength} bytes in all)`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  if (prefix + headerLength > bytes.byteLength) {
    throw headerError(source, `the header is truncated: it declares ${headerLength} bytes but only ${bytes.byteLength - prefix} follow`);
  }
  const raw = bytes.subarray(prefix, prefix + headerLength);
  let headerText: string;
  if (major === 3) {
    try {
      headerText = new TextDecoder('utf-8', { fatal: true }).decode(raw);
    } catch (err) {
      throw headerError(source, 'the version 3.0 header is not valid UTF-8', err);
    }
  } else {
    headerText = latin1(raw);
  }
  return { headerText, dataOffset: prefix + headerLength };
}

function parseHeader(text: string, source: string): NpyHeader {
  let value: PyValue;
  try {
    value = new PyLiteralParser(text).parseAll();
  } catch (err) {
    if (!(err instanceof SyntaxError)) throw err;
    throw headerError(source, `the header is not a Python literal (${err.message}): ${snippet(text)}`);
  }
  if (!(value instanceof Map)) {
    throw headerError(source, `the header is not a dict: ${snippet(text)}`);
  }
  const keys = [...value.keys()].map(String).sort();
  if (keys.join() !== 'descr,fortran_order,shape') {
    throw headerError(source, `the header has keys [${keys.join(', ')}], expected exactly descr, fortran_order and shape`);
  }
  const shape = value.get('shape');
  if (!(shape instanceof PyTuple) || !shape.items.every((d) => typeof d === 'number')) {
    throw headerError(source, `'shape' must be a tuple of integers, found ${describe(shape)}`);
  }
  const dims = shape.items as readonly number[];
  for (const d of dims) {
    if (d < 0 || !Number.isSafeInteger(d)) throw headerError(source, `'shape' ${pyShape(dims)} has a dimension that is negative or too large`);
  }
  const fortranOrder = value.get('fortran_order');
  if (typeof fortranOrder !== 'boolean') {
    throw headerError(source, `'fortran_order' must be True or False, found ${describe(fortranOrder)}`);
  }
  return { descr: value.get('descr') ?? null, fortranOrder, shape: dims };
}

function parseDescr(descr: PyValue, source: string): { dtype: DType; swap: boolean } {
  const supported = 'float16/32/64, int8/16/32/64, uint8/16/32/64 and bool';
  const fail = (what: string, fix: string): TensorError =>
    new TensorError('EAI_NPY_DTYPE', `${source}: ${what}; aios reads ${supported}. ${fix}`, { details: { source, descr: describe(descr) } });

  if (Array.isArray(descr)) {
    const names = descr.map((f) => (f instanceof PyTuple && typeof f.items[0] === 'string' ? f.items[0] : '?'));
    throw fail(`the array has a structured dtype (fields ${names.join(', ')})`, 'Save each field as its own array: np.save(path, a[name]).');
  }
  if (typeof descr !== 'string') throw fail(`'descr' ${describe(descr)} is not a dtype string`, 'Re-save the array with numpy.save().');
  // Order mark, kind letter, item size, and the unit datetimes carry ('<M8[ns]').
  const m = /^([<>=|]?)([a-zA-Z])(\d*)(\[\w+\])?$/.exec(descr);
  const order = m?.[1] ?? '';
  const kind = m?.[2] ?? '';
  const dtype = m?.[4] === undefined ? DESCR_TO_DTYPE[kind + (m?.[3] ?? '')] : undefined;
  if (dtype === undefined) {
    const cast = 'Convert it first, e.g. np.save(path, a.astype(np.float32)).';
    if (kind === 'O') throw fail(`dtype '${descr}' is an object array (pickled Python objects), which aios will not unpickle`, cast);
    if (kind === 'U' || kind === 'S' || kind === 'a') throw fail(`dtype '${descr}' holds strings, not numbers`, 'Encode the strings as numbers (token ids, codes) and save those.');
    if (kind === 'V') throw fail(`dtype '${descr}' is raw void/structured records`, 'Save each field as its own array.');
    if (kind === 'c') throw fail(`dtype '${descr}' is complex`, 'Save the real and imaginary parts separately: a.real, a.imag.');
    if (kind === 'M' || kind === 'm') throw fail(`dtype '${descr}' is a datetime/timedelta`, "Save it as integers: a.astype('int64').");
    throw fail(`dtype '${descr}' is not supported`, cast);
  }
  // '<' and '>' are explicit; '=', '|' and no prefix mean the writer's native order, which
  // NumPy resolves to the reading host's order, and so do we. One-byte types have no order.
  const little = order === '<' || (order !== '>' && HOST_LITTLE_ENDIAN);
  return { dtype, swap: bytesPerElement(dtype) > 1 && little !== HOST_LITTLE_ENDIAN };
}

function headerError(source: string, what: string, cause?: unknown): TensorError {
  return new TensorError(
    'EAI_NPY_HEADER',
    `${source}: bad .npy header: ${what}. Re-save the array with numpy.save(); a header must be a dict like {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }.`,
    { cause, details: { source } },
  );
}

function latin1(raw: Uint8Array): string {
  // TextDecoder('latin1') is really windows-1252 (WHATWG), which maps 0x80-0x9f differently.
  let s = '';
  for (let i = 0; i < raw.length; i += 8192) s += String.fromCharCode(...raw.subarray(i, i + 8192));
  return s;
}

function snippet(text: string): string {
  const t = text.trim();
  return JSON.stringify(t.length > 80 ? `${t.slice(0, 80)}...` : t);
}

function describe(v: PyValue | undefined): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'None';
  if (typeof v === 'string') return `'${v}'`;
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  if (typeof v === 'number') return String(v);
  if (v instanceof PyTuple) return `(${v.items.map(describe).join(', ')}${v.items.length === 1 ? ',' : ''})`;
  if (Array.isArray(v)) return `[${v.map(describe).join(', ')}]`;
  return 'a dict';
}

function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}

/** Reverses the bytes of every `itemsize`-byte element (big-endian file to little-endian host). */
function swapBytesInPlace(b: Uint8Array, itemsize: number): void {
  for (let i = 0; i + itemsize <= b.length; i += itemsize) {
    for (let lo = i, hi = i + itemsize - 1; lo < hi; lo++, hi--) {
      const t = b[lo] ?? 0;
      b[lo] = b[hi] ?? 0;
      b[hi] = t;
    }
  }
}

/**
 * Fortran-order (first axis fastest) element bytes to C order (last axis fastest). `src` must
 * start on an element-aligned offset (the caller passes a fresh copy).
 */
function fortranToC(src: Uint8Array<ArrayBuffer>, shape: readonly number[], itemsize: number): Uint8Array<ArrayBuffer> {
  const rank = shape.length;
  const count = shapeSize(shape);
  const out = new Uint8Array(count * itemsize);
  // Move whole elements as one or two machine words rather than byte by byte.
  const words = itemsize === 8 ? 2 : 1;
  const Word = itemsize === 1 ? Uint8Array : itemsize === 2 ? Uint16Array : Uint32Array;
  const from = new Word(src.buffer, src.byteOffset, count * words);
  const to = new Word(out.buffer, 0, count * words);

  const fstride: number[] = [];
  for (let k = 0, s = 1; k < rank; k++) {
    fstride.push(s);
    s *= shape[k] ?? 1;
  }
  const index = new Array<number>(rank).fill(0);
  let at = 0; // element offset in `src` of the C-order element `i`
  for (let i = 0; i < count; i++) {
    to[i * words] = from[at * words] ?? 0;
    if (words === 2) to[i * words + 1] = from[at * words + 1] ?? 0;
    // Odometer over the C-order index, last axis fastest, keeping `at` in step.
    for (let k = rank - 1; k >= 0; k--) {
      const stride = fstride[k] ?? 0;
      const dim = shape[k] ?? 1;
      const next = (index[k] ?? 0) + 1;
      if (next < dim) {
        index[k] = next;
        at += stride;
        break;
      }
      index[k] = 0;
      at -= stride * (dim - 1);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// A parser for the Python literals a .npy header can hold: what ast.literal_eval would accept
// from NumPy's writers (dicts, tuples, lists, strings, ints, True/False/None), and the Python 2
// `3L` int suffix NumPy still reads. Anything else is a SyntaxError, reported as EAI_NPY_HEADER.

/** A Python tuple, kept apart from a list: NumPy requires `shape` to be a tuple. */
class PyTuple {
  constructor(readonly items: readonly PyValue[]) {}
}

type PyValue = string | number | boolean | null | PyTuple | PyValue[] | Map<PyValue, PyValue>;

class PyLiteralParser {
  private pos = 0;

  constructor(private readonly text: string) {}

  parseAll(): PyValue {
    const v = this.value();
    this.skipSpace();
    if (this.pos < this.text.length) this.fail('unexpected text after the literal');
    return v;
  }

  private value(): PyValue {
    this.skipSpace();
    const c = this.text[this.pos];
    if (c === '{') return this.dict();
    if (c === '(') return this.sequence(')');
    if (c === '[') return this.sequence(']');
    if (c === "'" || c === '"') return this.string(c);
    if (c !== undefined && /[-+0-9]/.test(c)) return this.int();
    const word = /^[A-Za-z_]\w*/.exec(this.text.slice(this.pos))?.[0];
    this.pos += word?.length ?? 0;
    if (word === 'True') return true;
    if (word === 'False') return false;
    if (word === 'None') return null;
    return this.fail(word === undefined ? `unexpected ${c === undefined ? 'end' : `'${c}'`}` : `unknown name '${word}'`);
  }

  private dict(): Map<PyValue, PyValue> {
    const out = new Map<PyValue, PyValue>();
    this.pos++; // '{'
    for (;;) {
      if (this.eat('}')) return out;
      const key = this.value();
      if (!this.eat(':')) this.fail("expected ':' after a dict key");
      out.set(key, this.value()); // a repeated key keeps the last value, as in Python
      if (!this.eat(',')) {
        if (!this.eat('}')) this.fail("expected ',' or '}' in a dict");
        return out;
      }
    }
  }

  /** `(...)` is a tuple only with a comma or when empty; `(3)` is just 3, as in Python. */
  private sequence(close: ')' | ']'): PyValue {
    this.pos++;
    const items: PyValue[] = [];
    let comma = false;
    for (;;) {
      if (this.eat(close)) break;
      items.push(this.value());
      comma = this.eat(',');
      if (!comma) {
        if (!this.eat(close)) this.fail(`expected ',' or '${close}'`);
        break;
      }
    }
    if (close === ']') return items;
    if (items.length === 1 && !comma) return items[0] ?? null;
    return new PyTuple(items);
  }

  private string(quote: string): string {
    let out = '';
    for (this.pos++; this.pos < this.text.length; this.pos++) {
      const c = this.text[this.pos];
      if (c === quote) {
        this.pos++;
        return out;
      }
      if (c === '\\') {
        this.pos++;
        const e = this.text[this.pos];
        out += e === 'n' ? '\n' : e === 't' ? '\t' : (e ?? '');
      } else if (c === '\n') {
        break;
      } else {
        out += c;
      }
    }
    return this.fail('unterminated string');
  }

  private int(): number {
    const m = /^[-+]?\d+[lL]?/.exec(this.text.slice(this.pos));
    if (m === null) return this.fail('expected a number');
    this.pos += m[0].length;
    if (/^[.eEjJxXoObB_]/.test(this.text.slice(this.pos))) this.fail('only plain integers are allowed');
    return Number(m[0].replace(/[lL]$/, ''));
  }

  private eat(c: string): boolean {
    this.skipSpace();
    if (this.text[this.pos] !== c) return false;
    this.pos++;
    return true;
  }

  private skipSpace(): void {
    while (this.pos < this.text.length && /\s/.test(this.text[this.pos] ?? '')) this.pos++;
  }

  private fail(what: string): never {
    throw new SyntaxError(`${what} at character ${this.pos}`);
  }
}
