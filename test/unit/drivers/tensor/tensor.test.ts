import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { TensorError } from '../../../../drivers/errors.js';
import { DTYPES, Tensor, bytesPerElement, floatToHalf, halfToFloat, isDType, shapeSize, type DType } from '../../../../drivers/tensor/tensor.js';

/** Runs `f` and returns what it threw, so a test can check the class, code and message together. */
function thrown(f: () => unknown): TensorError {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(TensorError);
    return err as TensorError;
  }
  throw new Error('expected a TensorError, nothing was thrown');
}

describe('Tensor constructor', () => {
  it('accepts the typed array each dtype names', () => {
    const t = new Tensor('float32', [2, 2], new Float32Array(4));
    expect(t.dtype).toBe('float32');
    expect(t.size).toBe(4);
    expect(t.rank).toBe(2);
    expect(new Tensor('float16', [1], new Uint16Array(1)).dtype).toBe('float16');
    expect(new Tensor('bool', [1], new Uint8Array(1)).dtype).toBe('bool');
    expect(new Tensor('uint64', [1], new BigUint64Array(1)).dtype).toBe('uint64');
  });

  it.each([
    ['float32', new Float64Array(4)],
    ['int8', new Uint8Array(4)],
    ['int64', new BigUint64Array(4)],
    ['float16', new Float32Array(4)],
  ] as const)('rejects a %s tensor over the wrong typed array', (dtype, data) => {
    const err = thrown(() => new Tensor(dtype as DType, [4], data as never));
    expect(err.code).toBe('EAI_TENSOR_DTYPE');
    expect(err.message).toContain(dtype);
  });

  it('rejects an unknown dtype', () => {
    expect(thrown(() => new Tensor('complex64' as DType, [1], new Float32Array(1) as never)).code).toBe('EAI_TENSOR_DTYPE');
  });

  it('rejects a size mismatch, saying both sizes', () => {
    const err = thrown(() => new Tensor('float32', [2, 3], new Float32Array(5)));
    expect(err.code).toBe('EAI_TENSOR_SIZE');
    expect(err.message).toMatch(/6 elements.*5/);
  });

  it.each([[[-1]], [[2.5]], [[Number.NaN]], [[2, -3]], [[Infinity]]])('rejects the shape %j', (shape) => {
    expect(thrown(() => new Tensor('float32', shape, new Float32Array(0))).code).toBe('EAI_TENSOR_SHAPE');
  });

  it('copies and freezes the shape', () => {
    const shape = [2, 3];
    const t = new Tensor('int32', shape, new Int32Array(6));
    shape[0] = 99;
    expect(t.shape).toEqual([2, 3]);
    expect(Object.isFrozen(t.shape)).toBe(true);
  });
});

describe('Tensor.zeros', () => {
  it.each(DTYPES)('%s: zero-filled, the right typed array, own buffer', (dtype) => {
    const t = Tensor.zeros(dtype, [2, 3]);
    expect(t.size).toBe(6);
    expect(t.data.BYTES_PER_ELEMENT).toBe(bytesPerElement(dtype));
    expect(Array.from(t.bytes()).every((b) => b === 0)).toBe(true);
    expect(t.data.byteOffset).toBe(0);
  });

  it('a scalar holds one element, a 0-length axis none', () => {
    expect(Tensor.zeros('float64', []).size).toBe(1);
    expect(Tensor.zeros('float64', []).rank).toBe(0);
    expect(Tensor.zeros('float64', [3, 0, 2]).size).toBe(0);
  });

  it('rejects a negative dimension with EAI_TENSOR_SHAPE', () => {
    expect(thrown(() => Tensor.zeros('float32', [-1])).code).toBe('EAI_TENSOR_SHAPE');
  });
});

describe('Tensor.fromBytes', () => {
  it('views the buffer without copying', () => {
    const buffer = new ArrayBuffer(16);
    const t = Tensor.fromBytes('int32', [2], buffer, 8);
    new Int32Array(buffer)[2] = 42;
    expect(t.data[0]).toBe(42);
    expect(t.data.buffer).toBe(buffer);
  });

  it('rejects an offset not aligned to the element size, saying to copy', () => {
    const err = thrown(() => Tensor.fromBytes('float32', [1], new ArrayBuffer(16), 2));
    expect(err.code).toBe('EAI_TENSOR_ALIGNMENT');
    expect(err.message).toMatch(/copy/);
    expect(thrown(() => Tensor.fromBytes('float64', [1], new ArrayBuffer(16), 4)).code).toBe('EAI_TENSOR_ALIGNMENT');
    // One-byte types are aligned everywhere.
    expect(Tensor.fromBytes('uint8', [1], new ArrayBuffer(16), 3).size).toBe(1);
  });

  it('rejects a buffer too small for the shape', () => {
    const err = thrown(() => Tensor.fromBytes('float32', [2, 2], new ArrayBuffer(16), 4));
    expect(err.code).toBe('EAI_TENSOR_SIZE');
    expect(err.message).toMatch(/needs 16 bytes at offset 4/);
  });
});

describe('reshape', () => {
  const t = new Tensor('int16', [2, 3, 4], Int16Array.from({ length: 24 }, (_, i) => i));

  it('infers one -1 and shares memory', () => {
    const r = t.reshape([4, -1]);
    expect(r.shape).toEqual([4, 6]);
    expect(r.data).toBe(t.data);
    expect(t.reshape([-1]).shape).toEqual([24]);
    expect(t.reshape([2, -1, 3]).shape).toEqual([2, 4, 3]);
    expect(Tensor.zeros('float32', []).reshape([-1]).shape).toEqual([1]);
    expect(Tensor.zeros('float32', [1]).reshape([]).shape).toEqual([]);
  });

  it.each([
    [[-1, -1], /at most one/],
    [[5, -1], /cannot infer/],
    [[5, 5], /needs 25/],
  ])('rejects %j', (shape, message) => {
    const err = thrown(() => t.reshape(shape));
    expect(err.code).toBe('EAI_TENSOR_SHAPE');
    expect(err.message).toMatch(message);
  });
});

describe('view and clone', () => {
  it('view(i) is the i-th slice along the first axis, sharing memory both ways', () => {
    const parent = new Tensor('float32', [3, 2], Float32Array.of(0, 1, 2, 3, 4, 5));
    const v = parent.view(1);
    expect(v.shape).toEqual([2]);
    expect(Array.from(v.data)).toEqual([2, 3]);
    v.data[0] = 42; // written through the view...
    expect(parent.data[2]).toBe(42); // ...seen in the parent
    parent.data[3] = -1;
    expect(v.data[1]).toBe(-1);
    expect(Array.from(v.bytes())).toEqual(Array.from(new Uint8Array(Float32Array.of(42, -1).buffer)));
  });

  it('view of a 1-d tensor is a scalar', () => {
    const v = new Tensor('int8', [3], Int8Array.of(7, 8, 9)).view(2);
    expect(v.shape).toEqual([]);
    expect(v.size).toBe(1);
    expect(v.data[0]).toBe(9);
  });

  it('rejects a scalar and an index out of range', () => {
    expect(thrown(() => Tensor.zeros('float32', []).view(0)).code).toBe('EAI_TENSOR_SHAPE');
    for (const i of [-1, 3, 1.5]) expect(thrown(() => Tensor.zeros('float32', [3, 2]).view(i)).code).toBe('EAI_TENSOR_INDEX');
  });

  it('clone owns a fresh buffer', () => {
    const parent = new Tensor('int32', [2, 2], Int32Array.of(1, 2, 3, 4));
    const c = parent.view(1).clone();
    expect(c.data.buffer).not.toBe(parent.data.buffer);
    expect(c.data.byteOffset).toBe(0);
    c.data[0] = 100;
    expect(parent.data[2]).toBe(3);
    expect(Array.from(c.data)).toEqual([100, 4]);
  });
});

describe('helpers', () => {
  it('shapeSize, bytesPerElement, isDType', () => {
    expect(shapeSize([])).toBe(1);
    expect(shapeSize([2, 0, 5])).toBe(0);
    expect(shapeSize([2, 3, 4])).toBe(24);
    expect(DTYPES.map(bytesPerElement)).toEqual([4, 2, 8, 1, 1, 2, 2, 4, 4, 8, 8, 1]);
    expect(isDType('float16')).toBe(true);
    expect(isDType('float128')).toBe(false);
  });

  it('toNumbers decodes float16 and converts int64', () => {
    expect(new Tensor('float16', [2], Uint16Array.of(0x3c00, 0xc000)).toNumbers()).toEqual([1, -2]);
    expect(new Tensor('int64', [2], BigInt64Array.of(-5n, 1n << 40n)).toNumbers()).toEqual([-5, 2 ** 40]);
    expect(new Tensor('uint64', [1], BigUint64Array.of(1n << 63n)).toNumbers()).toEqual([2 ** 63]);
  });
});

describe('float16 conversion', () => {
  const known: [number, number][] = [
    [0x0000, 0],
    [0x3c00, 1],
    [0xc000, -2],
    [0x7bff, 65504],
    [0xfbff, -65504],
    [0x0001, 2 ** -24], // smallest subnormal
    [0x03ff, 2 ** -14 - 2 ** -24], // largest subnormal
    [0x0400, 2 ** -14], // smallest normal
    [0x3555, 0.333251953125],
    [0x3800, 0.5],
    [0x7c00, Infinity],
    [0xfc00, -Infinity],
  ];

  it.each(known)('bits %i <-> %d', (bits, value) => {
    expect(halfToFloat(bits)).toBe(value);
    expect(floatToHalf(value)).toBe(bits);
  });

  it('keeps the sign of zero', () => {
    expect(Object.is(halfToFloat(0x8000), -0)).toBe(true);
    expect(floatToHalf(-0)).toBe(0x8000);
  });

  it('NaN both ways', () => {
    for (const bits of [0x7e00, 0x7c01, 0xfe00, 0x7fff]) expect(Number.isNaN(halfToFloat(bits))).toBe(true);
    const nan = floatToHalf(Number.NaN);
    expect(nan & 0x7c00).toBe(0x7c00);
    expect(nan & 0x3ff).not.toBe(0);
  });

  it('every one of the 65536 bit patterns except NaNs survives halfToFloat then floatToHalf', () => {
    const bad: number[] = [];
    for (let bits = 0; bits < 0x10000; bits++) {
      const isNaN = (bits & 0x7c00) === 0x7c00 && (bits & 0x3ff) !== 0;
      if (isNaN) continue;
      if (floatToHalf(halfToFloat(bits)) !== bits) bad.push(bits);
    }
    expect(bad).toEqual([]);
  });

  it('rounds to nearest, ties to even, overflowing to infinity and underflowing to zero', () => {
    expect(floatToHalf(1 + 2 ** -11)).toBe(0x3c00); // tie: 0x3c00 is even
    expect(floatToHalf(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie: 0x3c02 is even
    expect(floatToHalf(65519)).toBe(0x7bff);
    expect(floatToHalf(65520)).toBe(0x7c00); // the midpoint to 2^16 rounds up, to inf
    expect(floatToHalf(-1e6)).toBe(0xfc00);
    expect(floatToHalf(2 ** -25)).toBe(0x0000); // tie between 0 and the smallest subnormal
    expect(floatToHalf(1.5 * 2 ** -25)).toBe(0x0001);
    expect(floatToHalf(3 * 2 ** -25)).toBe(0x0002); // tie between 1 and 2 subnormal steps
    expect(floatToHalf(-1e-10)).toBe(0x8000);
    expect(floatToHalf(2 ** -14 - 2 ** -25)).toBe(0x0400); // rounds up out of the subnormals
  });

  it('matches an exact nearest-even search for any float32 value', () => {
    fc.assert(
      fc.property(fc.float({ noNaN: true }), (x) => {
        expect(floatToHalf(x)).toBe(nearestHalf(x));
      }),
      { numRuns: 5000 },
    );
  });

  // Rounding through float32 first would land this double exactly on a half-way point and then
  // round down to even: a double rounding.
  it('rounds a float64 just above a tie up (no double rounding through float32)', () => {
    expect(floatToHalf(1 + 2 ** -11 + 2 ** -40)).toBe(0x3c01);
  });
});

/** Sorted finite non-negative halves (bits 0x0000..0x7bff are monotonic in value). */
const POSITIVE_HALVES = Array.from({ length: 0x7c00 }, (_, bits) => halfToFloat(bits));

/**
 * The correctly rounded half bits of `x` by search over every half value, independent of the
 * bit arithmetic in floatToHalf: nearest wins, a tie goes to the even bit pattern, and anything
 * at or past 65520 (half-way from 65504 to 2^16) is infinity.
 */
function nearestHalf(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00;
  let lo = 0;
  let hi = POSITIVE_HALVES.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (POSITIVE_HALVES[mid]! <= a) lo = mid;
    else hi = mid;
  }
  const below = a - POSITIVE_HALVES[lo]!;
  const above = POSITIVE_HALVES[hi]! - a;
  if (below < above) return sign | lo;
  if (above < below) return sign | hi;
  return sign | (lo % 2 === 0 ? lo : hi);
}
