import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TensorError } from '../../../../drivers/errors.js';
import { decodeNpy, encodeNpy, readNpy, writeNpy } from '../../../../drivers/tensor/npy.js';
import { DTYPES, Tensor, bytesPerElement, halfToFloat, shapeSize, type DType } from '../../../../drivers/tensor/tensor.js';

const FIXTURES = fileURLToPath(new URL('../../../fixtures/npy/', import.meta.url));

interface Expected {
  dtype: DType;
  descr: string;
  shape: number[];
  fortran_order: boolean;
  version: [number, number];
  values: (string | number | boolean)[];
  numpy_canonical: boolean;
}

const expected = JSON.parse(readFileSync(path.join(FIXTURES, 'expected.json'), 'utf8')) as { numpy: string; files: Record<string, Expected> };

/** What dtype.str NumPy reports on a little-endian host for each aios dtype. */
const NUMPY_DESCR: Record<DType, string> = {
  float32: '<f4', float16: '<f2', float64: '<f8', int8: '|i1', uint8: '|u1', int16: '<i2',
  uint16: '<u2', int32: '<i4', uint32: '<u4', int64: '<i8', uint64: '<u8', bool: '|b1',
};

/** The first python3 that can import numpy, or why none could. */
const python = findNumpy();

describe('decodeNpy on files written by NumPy', () => {
  const names = Object.keys(expected.files);

  it('has a fixture for every dtype, and the edge cases', () => {
    const dtypes = new Set(names.map((n) => expected.files[n]?.dtype));
    for (const d of DTYPES) expect(dtypes.has(d), d).toBe(true);
    const all = Object.values(expected.files);
    expect(all.some((e) => e.shape.length === 0)).toBe(true);
    expect(all.some((e) => e.shape.includes(0))).toBe(true);
    expect(all.some((e) => e.descr.startsWith('>'))).toBe(true);
    expect(all.some((e) => e.fortran_order)).toBe(true);
    expect(all.some((e) => e.version[0] === 2)).toBe(true);
    expect(all.some((e) => e.version[0] === 3)).toBe(true);
  });

  it.each(names)('%s matches expected.json', async (name) => {
    const e = expected.files[name]!;
    const bytes = await readFile(path.join(FIXTURES, name));
    expect(bytes[6]).toBe(e.version[0]); // the fixture really is the version it claims
    const t = await readNpy(path.join(FIXTURES, name));
    expect(t.dtype).toBe(e.dtype);
    expect(t.shape).toEqual(e.shape);
    expect(t.size).toBe(e.values.length);
    for (let i = 0; i < e.values.length; i++) expectElement(t, i, e.values[i]!);
  });

  it.each(names.filter((n) => expected.files[n]!.numpy_canonical))('encodeNpy(decodeNpy(%s)) is the same bytes', async (name) => {
    const bytes = new Uint8Array(await readFile(path.join(FIXTURES, name)));
    const again = encodeNpy(decodeNpy(bytes, name));
    expect(Buffer.from(again).equals(Buffer.from(bytes))).toBe(true);
  });

  it('re-encodes big-endian, Fortran-order, 2.0 and 3.0 files as the canonical little-endian 1.0 file', () => {
    const names = ['big-endian-f4.npy', 'fortran-i4.npy', 'version-2.npy', 'version-3.npy'];
    for (const name of names) {
      const t = decodeNpy(readFileSync(path.join(FIXTURES, name)), name);
      const out = encodeNpy(t);
      expect(out[6]).toBe(1);
      const back = decodeNpy(out);
      expect(back.shape).toEqual(t.shape);
      expect(Buffer.from(back.bytes()).equals(Buffer.from(t.bytes()))).toBe(true);
    }
  });

  it('views the input bytes when the data is aligned, copies when it is not', () => {
    const file = readFileSync(path.join(FIXTURES, 'float32.npy'));
    const aligned = new Uint8Array(file.byteLength);
    aligned.set(file);
    const t = decodeNpy(aligned);
    expect(t.data.buffer).toBe(aligned.buffer);
    expect(t.data.byteOffset).toBe(128);

    const shifted = new Uint8Array(file.byteLength + 1);
    shifted.set(file, 1);
    const u = decodeNpy(shifted.subarray(1));
    expect(u.data.buffer).not.toBe(shifted.buffer);
    expect(Buffer.from(u.bytes()).equals(Buffer.from(t.bytes()))).toBe(true);

    // Byte-swapped data can never be a view.
    const be = readFileSync(path.join(FIXTURES, 'big-endian-f4.npy'));
    expect(decodeNpy(be).data.buffer).not.toBe(be.buffer);
  });

  it('never writes to the input, even a Node Buffer sharing a pool (slice() there is a view)', () => {
    for (const name of ['big-endian-i8.npy', 'fortran-big-endian-i2.npy', 'fortran-i4.npy']) {
      const pool = Buffer.alloc(4096, 0x11);
      const file = readFileSync(path.join(FIXTURES, name));
      file.copy(pool, 520);
      const input = pool.subarray(520, 520 + file.byteLength);
      const before = Buffer.from(pool);
      const t = decodeNpy(input, name);
      expect(pool.equals(before)).toBe(true);
      expect(t.data.buffer).not.toBe(pool.buffer);
      expectElement(t, 0, expected.files[name]!.values[0]!);
    }
  });

  it('ignores bytes after the data', () => {
    const file = readFileSync(path.join(FIXTURES, 'int16.npy'));
    const padded = new Uint8Array(file.byteLength + 13).fill(0xee);
    padded.set(file);
    const t = decodeNpy(padded);
    expect(t.size).toBe(24);
    expect(Buffer.from(t.bytes()).equals(file.subarray(128))).toBe(true);
  });
});

describe('encodeNpy', () => {
  it('pads the header so the data starts at a multiple of 64, ending in a newline', () => {
    for (const shape of [[], [0], [1], [7], [2, 3], [123456789, 0], [1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3]]) {
      const out = encodeNpy(Tensor.zeros('float32', shape));
      const headerLength = new DataView(out.buffer).getUint16(8, true);
      expect((10 + headerLength) % 64).toBe(0);
      expect(out[10 + headerLength - 1]).toBe(0x0a);
      expect(out.byteLength).toBe(10 + headerLength + 4 * shapeSize(shape));
    }
  });

  it('writes the header text NumPy writes', () => {
    const text = (t: Tensor): string => Buffer.from(encodeNpy(t)).subarray(10, 10 + 117).toString('latin1');
    expect(text(Tensor.zeros('float32', [1, 128, 128, 3]))).toBe(`{'descr': '<f4', 'fortran_order': False, 'shape': (1, 128, 128, 3), }${' '.repeat(20)}`.padEnd(117, ' '));
    expect(text(Tensor.zeros('uint8', [5]))).toMatch(/^\{'descr': '\|u1', 'fortran_order': False, 'shape': \(5,\), \} +$/);
    expect(text(Tensor.zeros('bool', []))).toMatch(/^\{'descr': '\|b1', 'fortran_order': False, 'shape': \(\), \} +$/);
  });

  it('writes only the tensor\'s own bytes when its data is a view into a larger buffer', () => {
    const parent = new Tensor('int32', [3, 2], Int32Array.of(1, 2, 3, 4, 5, 6));
    const back = decodeNpy(encodeNpy(parent.view(1)));
    expect(Array.from(back.data as Int32Array)).toEqual([3, 4]);
  });

  it('switches to format 2.0 only when the header passes 65535 bytes', () => {
    const t = Tensor.zeros('int8', new Array<number>(22000).fill(1));
    const out = encodeNpy(t);
    expect(out[6]).toBe(2);
    expect((12 + new DataView(out.buffer).getUint32(8, true)) % 64).toBe(0);
    expect(decodeNpy(out).shape).toEqual(t.shape);
    expect(encodeNpy(Tensor.zeros('int8', new Array<number>(20000).fill(1)))[6]).toBe(1);
  });
});

describe('round trips (property)', () => {
  it('decodeNpy(encodeNpy(t)) is t for any dtype, shape and values', () => {
    fc.assert(
      fc.property(arbTensor(), fc.nat({ max: 7 }), fc.nat({ max: 16 }), (t, offset, trailing) => {
        const file = encodeNpy(t);
        // Place the file at an arbitrary offset with junk after it: the copy path and the view path.
        const host = new Uint8Array(offset + file.byteLength + trailing).fill(0xa5);
        host.set(file, offset);
        // A Buffer, as readFile returns: its slice() is a view, which decodeNpy must not rely on.
        const back = decodeNpy(Buffer.from(host.buffer, offset, file.byteLength + trailing));
        expect(back.dtype).toBe(t.dtype);
        expect(back.shape).toEqual(t.shape);
        expect(Buffer.from(back.bytes()).equals(Buffer.from(t.bytes()))).toBe(true);
      }),
      { numRuns: 300 },
    );
  });

  it('Fortran-order and big-endian files decode to the same C-order little-endian tensor', () => {
    fc.assert(
      fc.property(arbTensor(), fc.boolean(), fc.boolean(), fc.nat({ max: 7 }), (t, fortran, big, offset) => {
        const file = handWritten(t, fortran, big);
        const host = Buffer.alloc(offset + file.byteLength);
        host.set(file, offset);
        const before = Buffer.from(host);
        const back = decodeNpy(host.subarray(offset));
        expect(host.equals(before)).toBe(true);
        expect(back.shape).toEqual(t.shape);
        expect(Buffer.from(back.bytes()).equals(Buffer.from(t.bytes()))).toBe(true);
      }),
      { numRuns: 300 },
    );
  });
});

describe('header dialects NumPy would also read', () => {
  const data = Float32Array.of(1, 2, 3, 4, 5, 6);
  const cases: [string, string][] = [
    ['double quotes, other key order, no trailing comma', `{"shape": (2, 3), "fortran_order": False, "descr": "<f4"}`],
    ['newlines and tabs inside', `{\n\t'descr' : '<f4' ,\n 'fortran_order':False,'shape':(2,3,)}`],
    ['Python 2 long ints', `{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }`],
    ["'=' native order", `{'descr': '=f4', 'fortran_order': False, 'shape': (2, 3), }`],
    ['no order prefix', `{'descr': 'f4', 'fortran_order': False, 'shape': (2, 3), }`],
  ];
  it.each(cases)('%s', (_, header) => {
    const t = decodeNpy(npyFile(header, new Uint8Array(data.buffer)));
    expect(t.dtype).toBe('float32');
    expect(t.shape).toEqual([2, 3]);
    expect(Array.from(t.data as Float32Array)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it.each(['|u1', '<u1', '>u1', '=u1', 'u1'])('one-byte descr %s is uint8 whatever the order mark', (descr) => {
    const t = decodeNpy(npyFile(`{'descr': '${descr}', 'fortran_order': False, 'shape': (2,), }`, Uint8Array.of(7, 250)));
    expect(t.dtype).toBe('uint8');
    expect(Array.from(t.data as Uint8Array)).toEqual([7, 250]);
  });

  it('reads a header padded to 16 bytes, as NumPy < 1.14 wrote', () => {
    const header = `{'descr': '<i2', 'fortran_order': False, 'shape': (3,), }`;
    const t = decodeNpy(npyFile(header, new Uint8Array(Int16Array.of(-1, 0, 1).buffer), 16));
    expect(Array.from(t.data as Int16Array)).toEqual([-1, 0, 1]);
  });
});

describe('malformed input', () => {
  const ok = (header: string, data = new Uint8Array(24)): Uint8Array => npyFile(header, data);
  const cases: [string, () => Uint8Array, string, RegExp][] = [
    ['an empty file', () => new Uint8Array(0), 'EAI_NPY_MAGIC', /empty file/],
    ['a PNG', () => Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0), 'EAI_NPY_MAGIC', /89 50 4e 47/],
    ['an .npz (zip) archive', () => Uint8Array.of(0x50, 0x4b, 3, 4, 0, 0, 0, 0), 'EAI_NPY_MAGIC', /npz/],
    ['format version 4.0', () => withVersion(ok(`{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }`), 4), 'EAI_NPY_MAGIC', /version 4\.0/],
    ['the magic alone', () => Uint8Array.of(0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0), 'EAI_NPY_HEADER', /header length/],
    ['a header cut short', () => ok(`{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }`).subarray(0, 40), 'EAI_NPY_HEADER', /declares \d+ bytes but only 30 follow/],
    ['a header that is a list', () => ok(`[1, 2, 3]`), 'EAI_NPY_HEADER', /not a dict/],
    ['a header that is not a literal', () => ok(`{'descr': np.float32}`), 'EAI_NPY_HEADER', /not a Python literal/],
    ['an unterminated dict', () => ok(`{'descr': '<f4', 'fortran_order': False,`), 'EAI_NPY_HEADER', /not a Python literal/],
    ['a missing key', () => ok(`{'descr': '<f4', 'shape': (6,), }`), 'EAI_NPY_HEADER', /descr, shape\]/],
    ['an extra key', () => ok(`{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'x': 1}`), 'EAI_NPY_HEADER', /keys/],
    ['a shape that is a list', () => ok(`{'descr': '<f4', 'fortran_order': False, 'shape': [6], }`), 'EAI_NPY_HEADER', /tuple of integers, found \[6\]/],
    ['a shape that is a bare int', () => ok(`{'descr': '<f4', 'fortran_order': False, 'shape': (6), }`), 'EAI_NPY_HEADER', /found 6\b/],
    ['a negative dimension', () => ok(`{'descr': '<f4', 'fortran_order': False, 'shape': (-6,), }`), 'EAI_NPY_HEADER', /negative/],
    ['a float dimension', () => ok(`{'descr': '<f4', 'fortran_order': False, 'shape': (6.0,), }`), 'EAI_NPY_HEADER', /plain integers/],
    ['fortran_order 0', () => ok(`{'descr': '<f4', 'fortran_order': 0, 'shape': (6,), }`), 'EAI_NPY_HEADER', /True or False, found 0/],
    ['a bad UTF-8 3.0 header', () => withVersion(npyFile(`{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }\xff`, new Uint8Array(24)), 3), 'EAI_NPY_HEADER', /UTF-8/],
    ['an object array', () => ok(`{'descr': '|O', 'fortran_order': False, 'shape': (3,), }`), 'EAI_NPY_DTYPE', /object array/],
    ['a structured array', () => ok(`{'descr': [('x', '<f4'), ('y', '<i4')], 'fortran_order': False, 'shape': (3,), }`), 'EAI_NPY_DTYPE', /structured dtype \(fields x, y\)/],
    ['a unicode string array', () => ok(`{'descr': '<U5', 'fortran_order': False, 'shape': (1,), }`), 'EAI_NPY_DTYPE', /strings/],
    ['a bytes string array', () => ok(`{'descr': '|S3', 'fortran_order': False, 'shape': (1,), }`), 'EAI_NPY_DTYPE', /strings/],
    ['complex64', () => ok(`{'descr': '<c8', 'fortran_order': False, 'shape': (3,), }`), 'EAI_NPY_DTYPE', /complex/],
    ['datetime64', () => ok(`{'descr': '<M8[ns]', 'fortran_order': False, 'shape': (3,), }`), 'EAI_NPY_DTYPE', /'<M8\[ns\]' is a datetime/],
    ['float128', () => ok(`{'descr': '<f16', 'fortran_order': False, 'shape': (1,), }`), 'EAI_NPY_DTYPE', /'<f16' is not supported/],
    ['a descr that is a number', () => ok(`{'descr': 4, 'fortran_order': False, 'shape': (1,), }`), 'EAI_NPY_DTYPE', /not a dtype string/],
    ['data shorter than the shape', () => ok(`{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`, new Uint8Array(20)), 'EAI_NPY_TRUNCATED', /needs 24 bytes after the 128-byte header, but only 20 are there/],
    ['a shape too big for any file', () => ok(`{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }`), 'EAI_NPY_TRUNCATED', /needs 633825300114114700748351602688 bytes/],
  ];

  it.each(cases)('%s', (_, make, code, message) => {
    let thrown: unknown;
    try {
      decodeNpy(make(), 'inputs/frame.npy');
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(TensorError);
    const err = thrown as TensorError;
    expect(err.code).toBe(code);
    expect(err.message).toMatch(message);
    expect(err.message).toContain('inputs/frame.npy');
    expect(err.details['source']).toBe('inputs/frame.npy');
  });

  it('reports the expected and actual byte counts in details', () => {
    const file = npyFile(`{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }`, new Uint8Array(31));
    expect(() => decodeNpy(file)).toThrow(expect.objectContaining({ code: 'EAI_NPY_TRUNCATED', details: expect.objectContaining({ expectedBytes: 32, actualBytes: 31 }) }));
  });

  it('names the bytes generically without a source', () => {
    expect(() => decodeNpy(new Uint8Array(3))).toThrow(/<npy bytes>/);
  });
});

describe('readNpy / writeNpy', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'aios-npy-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('a missing file is EAI_NPY_NOT_FOUND naming the path', async () => {
    const missing = path.join(dir, 'nope.npy');
    await expect(readNpy(missing)).rejects.toMatchObject({ code: 'EAI_NPY_NOT_FOUND', message: expect.stringContaining(missing), details: { path: missing } });
    await expect(readNpy(missing)).rejects.toBeInstanceOf(TensorError);
  });

  it('errors in a file name the file', async () => {
    const bad = path.join(dir, 'bad.npy');
    await writeFile(bad, 'hello world');
    await expect(readNpy(bad)).rejects.toMatchObject({ code: 'EAI_NPY_MAGIC', message: expect.stringContaining(bad) });
  });

  it('writes a file readNpy reads back, leaving no temporary file', async () => {
    const t = new Tensor('float16', [2, 2], Uint16Array.of(0x3c00, 0xc000, 0x7bff, 0x0001));
    const file = path.join(dir, 'half.npy');
    await writeNpy(file, t);
    await writeNpy(file, t); // overwriting is fine
    const back = await readNpy(file);
    expect(Array.from(back.data as Uint16Array)).toEqual([0x3c00, 0xc000, 0x7bff, 0x0001]);
    expect((await readdir(dir)).filter((n) => n.endsWith('.tmp'))).toEqual([]);
  });

  it('a write into a missing folder fails with ENOENT and leaves nothing behind', async () => {
    await expect(writeNpy(path.join(dir, 'no-such-dir', 'x.npy'), Tensor.zeros('int8', [1]))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe.skipIf(typeof python !== 'string')('NumPy reads what encodeNpy writes', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'aios-npy-numpy-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('loads every dtype with the same dtype, shape, sum and bytes, and np.save gives our exact file', async () => {
    const fixed = DTYPES.map((dtype) => sample(dtype, [2, 3, 4]));
    const random = fc.sample(arbTensor(), { numRuns: 60, seed: 42 });
    // Empty tensors whose header lengths sweep across the 64-byte boundary, where NumPy's
    // growth-axis spaces decide whether the header takes one more 64-byte block.
    const sweep: Tensor[] = [];
    for (let rank = 1; rank <= 16; rank++) {
      for (let digits = 1; digits <= 7; digits++) {
        sweep.push(Tensor.zeros('int16', [Number('9'.repeat(digits)), ...new Array<number>(rank - 1).fill(1), 0]));
        // NumPy refuses a shape whose non-zero dimensions multiply past 2^63, even beside a 0.
        sweep.push(Tensor.zeros('uint8', [0, 10 ** (digits - 1), ...new Array<number>(rank - 1).fill(1)]));
      }
    }
    const tensors = [...fixed, ...random, ...sweep, Tensor.zeros('float32', []), Tensor.zeros('uint64', [3, 0, 2]), Tensor.zeros('bool', [1000, 1])];
    const files: string[] = [];
    for (const [i, t] of tensors.entries()) {
      const file = path.join(dir, `t${i}.npy`);
      await writeNpy(file, t);
      files.push(file);
    }
    const script = [
      'import io, json, sys',
      'import numpy as np',
      'np.seterr(all="ignore")  # NaN and inf in random floats make the sums warn',
      'out = []',
      'for p in sys.argv[1:]:',
      '    a = np.load(p, allow_pickle=False)',
      '    s = int(a.astype(object).sum()) if a.dtype.kind in "iub" else float(a.astype(np.float64).sum())',
      '    b = io.BytesIO(); np.save(b, a)',
      '    out.append({"dtype": a.dtype.str, "shape": list(a.shape), "sum": str(s), "data": a.tobytes().hex(), "resaved": b.getvalue().hex()})',
      'print(json.dumps(out))',
    ].join('\n');
    const run = spawnSync(python as string, ['-c', script, ...files], { encoding: 'utf8', maxBuffer: 64 << 20 });
    expect(run.status, run.stderr).toBe(0);
    const loaded = JSON.parse(run.stdout) as { dtype: string; shape: number[]; sum: string; data: string; resaved: string }[];
    expect(loaded).toHaveLength(tensors.length);
    for (const [i, t] of tensors.entries()) {
      const got = loaded[i]!;
      expect(got.dtype).toBe(NUMPY_DESCR[t.dtype]);
      expect(got.shape).toEqual(t.shape);
      expect(got.data).toBe(Buffer.from(t.bytes()).toString('hex'));
      expect(got.resaved).toBe(Buffer.from(await readFile(files[i]!)).toString('hex'));
      if (i < fixed.length) expect(got.sum).toBe(exactSum(t));
    }
  });
});

if (typeof python !== 'string') {
  console.warn(`npy.test.ts: skipping the NumPy interoperability test: ${python.reason}`);
}

// ---------------------------------------------------------------------------------------------

function expectElement(t: Tensor, i: number, want: string | number | boolean): void {
  const label = `element ${i} of ${t.dtype}`;
  const raw = t.data[i];
  if (t.dtype === 'float16' || t.dtype === 'float32' || t.dtype === 'float64') {
    const got = t.dtype === 'float16' ? halfToFloat(raw as number) : (raw as number);
    if (want === 'nan') expect(Number.isNaN(got), label).toBe(true);
    else expect(Object.is(got, want === 'inf' ? Infinity : want === '-inf' ? -Infinity : Number(want)), `${label}: ${got} vs ${want}`).toBe(true);
  } else if (t.dtype === 'int64' || t.dtype === 'uint64') {
    expect(raw, label).toBe(BigInt(want as string));
  } else if (t.dtype === 'bool') {
    expect(raw, label).toBe(want ? 1 : 0);
  } else {
    expect(raw, label).toBe(want);
  }
}

/** A .npy file with `header` as its text, padded as NumPy pads it (to `align`). */
function npyFile(header: string, data: Uint8Array, align = 64): Uint8Array {
  const hlen = header.length + 1;
  const padded = hlen + (align - ((10 + hlen) % align));
  const out = new Uint8Array(10 + padded + data.byteLength);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  new DataView(out.buffer).setUint16(8, padded, true);
  out.set(Buffer.from(header, 'latin1'), 10);
  out.fill(0x20, 10 + header.length, 10 + padded - 1);
  out[10 + padded - 1] = 0x0a;
  out.set(data, 10 + padded);
  return out;
}

/** Turns a 1.0 file into a `major`.0 file with the same header text (u32 header length). */
function withVersion(file: Uint8Array, major: number): Uint8Array {
  const headerLength = new DataView(file.buffer, file.byteOffset).getUint16(8, true);
  const out = new Uint8Array(file.byteLength + 2);
  out.set(file.subarray(0, 8));
  out[6] = major;
  new DataView(out.buffer).setUint32(8, headerLength, true);
  out.set(file.subarray(10), 12);
  return out;
}

/**
 * The same tensor written the way NumPy writes a Fortran-ordered and/or big-endian array:
 * header flags changed in place (same lengths) and the data reordered and swapped by an
 * independent element-by-element walk.
 */
function handWritten(t: Tensor, fortran: boolean, big: boolean): Uint8Array {
  const file = encodeNpy(t);
  const headerEnd = 10 + new DataView(file.buffer).getUint16(8, true);
  let text = Buffer.from(file.subarray(10, headerEnd)).toString('latin1');
  if (fortran) text = text.replace("'fortran_order': False", "'fortran_order': True ");
  if (big) text = text.replace("'descr': '<", "'descr': '>");
  file.set(Buffer.from(text, 'latin1'), 10);

  const size = bytesPerElement(t.dtype);
  const src = t.bytes();
  const data = file.subarray(headerEnd);
  const rank = t.shape.length;
  for (let c = 0; c < t.size; c++) {
    // Unravel the C index, then ravel it in Fortran order.
    let rest = c;
    let f = 0;
    const idx: number[] = new Array<number>(rank).fill(0);
    for (let k = rank - 1; k >= 0; k--) {
      idx[k] = rest % t.shape[k]!;
      rest = Math.floor(rest / t.shape[k]!);
    }
    for (let k = rank - 1; k >= 0; k--) f = f * t.shape[k]! + idx[k]!;
    const to = fortran ? f : c;
    for (let b = 0; b < size; b++) data[to * size + b] = src[c * size + (big && size > 1 ? size - 1 - b : b)]!;
  }
  return file;
}

function arbTensor(): fc.Arbitrary<Tensor> {
  return fc
    .record({ dtype: fc.constantFrom(...DTYPES), shape: fc.array(fc.nat({ max: 5 }), { maxLength: 4 }) })
    .chain(({ dtype, shape }) => {
      const n = shapeSize(shape) * bytesPerElement(dtype);
      // Random bytes reach every value, NaN payloads included; bool must stay 0/1.
      const bytes = dtype === 'bool' ? fc.uint8Array({ min: 0, max: 1, minLength: n, maxLength: n }) : fc.uint8Array({ minLength: n, maxLength: n });
      return bytes.map((b) => Tensor.fromBytes(dtype, shape, b.slice().buffer));
    });
}

function sample(dtype: DType, shape: number[]): Tensor {
  const n = shapeSize(shape);
  const t = Tensor.zeros(dtype, shape);
  for (let i = 0; i < n; i++) {
    const v = i - (dtype.startsWith('u') || dtype === 'bool' ? 0 : 7);
    if (dtype === 'int64' || dtype === 'uint64') (t.data as BigInt64Array)[i] = BigInt(v) * (dtype === 'int64' ? 1n << 40n : 1n << 50n);
    else if (dtype === 'float16') (t.data as Uint16Array)[i] = floatToHalfExact(v);
    else if (dtype === 'bool') (t.data as Uint8Array)[i] = v % 2;
    else (t.data as Float64Array)[i] = v;
  }
  return t;
}

/** Small integers only: exact half bits without depending on floatToHalf under test elsewhere. */
function floatToHalfExact(v: number): number {
  if (v === 0) return 0;
  const sign = v < 0 ? 0x8000 : 0;
  const a = Math.abs(v);
  const e = Math.floor(Math.log2(a));
  return sign | ((e + 15) << 10) | Math.round((a / 2 ** e - 1) * 1024);
}

function exactSum(t: Tensor): string {
  if (t.dtype === 'int64' || t.dtype === 'uint64') return String((Array.from(t.data as BigInt64Array) as bigint[]).reduce((a, b) => a + b, 0n));
  const sum = t.toNumbers().reduce((a, b) => a + b, 0);
  return t.dtype.startsWith('float') ? (Number.isInteger(sum) ? `${sum}.0` : String(sum)) : String(sum);
}

function findNumpy(): string | { reason: string } {
  const reasons: string[] = [];
  for (const candidate of ['python3', '/usr/bin/python3']) {
    const r = spawnSync(candidate, ['-c', 'import numpy; print(numpy.__version__)'], { encoding: 'utf8' });
    if (r.status === 0) return candidate;
    reasons.push(`${candidate}: ${r.error?.message ?? r.stderr.trim().split('\n').pop() ?? `exit ${r.status}`}`);
  }
  return { reason: `no python3 with numpy (${reasons.join('; ')})` };
}
