import { TensorError } from '../errors.js';

/**
 * The element types a Tensor can hold. `float16` is stored as raw IEEE-754 half bits in a
 * Uint16Array (what onnxruntime and NumPy both use on the wire); `bool` as one byte per element.
 */
export type DType = 'float32' | 'float16' | 'float64' | 'int8' | 'uint8' | 'int16' | 'uint16' | 'int32' | 'uint32' | 'int64' | 'uint64' | 'bool';

export const DTYPES: readonly DType[] = ['float32', 'float16', 'float64', 'int8', 'uint8', 'int16', 'uint16', 'int32', 'uint32', 'int64', 'uint64', 'bool'];

export interface DTypeArrays {
  float32: Float32Array;
  float16: Uint16Array;
  float64: Float64Array;
  int8: Int8Array;
  uint8: Uint8Array;
  int16: Int16Array;
  uint16: Uint16Array;
  int32: Int32Array;
  uint32: Uint32Array;
  int64: BigInt64Array;
  uint64: BigUint64Array;
  bool: Uint8Array;
}

export type TensorData = DTypeArrays[DType];

type ArrayCtor = { new (buffer: ArrayBufferLike, byteOffset: number, length: number): TensorData; new (length: number): TensorData; readonly BYTES_PER_ELEMENT: number };

const CTORS: Record<DType, ArrayCtor> = {
  float32: Float32Array as unknown as ArrayCtor,
  float16: Uint16Array as unknown as ArrayCtor,
  float64: Float64Array as unknown as ArrayCtor,
  int8: Int8Array as unknown as ArrayCtor,
  uint8: Uint8Array as unknown as ArrayCtor,
  int16: Int16Array as unknown as ArrayCtor,
  uint16: Uint16Array as unknown as ArrayCtor,
  int32: Int32Array as unknown as ArrayCtor,
  uint32: Uint32Array as unknown as ArrayCtor,
  int64: BigInt64Array as unknown as ArrayCtor,
  uint64: BigUint64Array as unknown as ArrayCtor,
  bool: Uint8Array as unknown as ArrayCtor,
};

/** Bytes one element of `dtype` takes. */
export function bytesPerElement(dtype: DType): number {
  return CTORS[dtype].BYTES_PER_ELEMENT;
}

export function isDType(value: string): value is DType {
  return (DTYPES as readonly string[]).includes(value);
}

/** Number of elements in a shape; `[]` is a scalar of one element. */
export function shapeSize(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * An n-dimensional array: a dtype, a shape (row-major / C order) and a typed array holding the
 * elements. The typed array may be a view into a larger buffer (a shared frame, a decoded file),
 * so a Tensor never assumes it owns `data.buffer` past `data.byteOffset + data.byteLength`.
 *
 * Tensors are immutable in shape and dtype; `reshape` and `view` share the same memory.
 */
export class Tensor<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly data: DTypeArrays[D];

  constructor(dtype: D, shape: readonly number[], data: DTypeArrays[D]) {
    checkDType(dtype);
    checkShape(shape);
    const ctor = CTORS[dtype];
    if (!(data instanceof (ctor as unknown as typeof Uint8Array))) {
      const got = typeof data === 'object' && data !== null ? (data as object).constructor.name : String(data);
      throw new TensorError('EAI_TENSOR_DTYPE', `A ${dtype} tensor needs a ${ctor.name}, got ${got}.`);
    }
    const size = shapeSize(shape);
    if (data.length !== size) {
      throw new TensorError('EAI_TENSOR_SIZE', `Shape [${shape.join(', ')}] holds ${size} elements but the data has ${data.length}.`);
    }
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.data = data;
  }

  /** A zero-filled tensor. */
  static zeros<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D> {
    checkDType(dtype);
    checkShape(shape);
    return new Tensor(dtype, shape, new CTORS[dtype](shapeSize(shape)) as DTypeArrays[D]);
  }

  /**
   * A tensor over existing bytes without copying. `byteOffset` must be aligned to the element
   * size (typed arrays require it); callers holding unaligned bytes should copy first.
   */
  static fromBytes<D extends DType>(dtype: D, shape: readonly number[], buffer: ArrayBufferLike, byteOffset = 0): Tensor<D> {
    checkDType(dtype);
    checkShape(shape);
    const ctor = CTORS[dtype];
    if (!Number.isInteger(byteOffset) || byteOffset < 0) {
      throw new TensorError('EAI_TENSOR_ALIGNMENT', `Byte offset ${byteOffset} must be a non-negative integer.`);
    }
    if (byteOffset % ctor.BYTES_PER_ELEMENT !== 0) {
      throw new TensorError('EAI_TENSOR_ALIGNMENT', `Byte offset ${byteOffset} is not a multiple of ${ctor.BYTES_PER_ELEMENT} (the size of ${dtype}); copy the bytes to an aligned buffer first.`);
    }
    const size = shapeSize(shape);
    if (byteOffset + size * ctor.BYTES_PER_ELEMENT > buffer.byteLength) {
      throw new TensorError('EAI_TENSOR_SIZE', `Shape [${shape.join(', ')}] of ${dtype} needs ${size * ctor.BYTES_PER_ELEMENT} bytes at offset ${byteOffset}, but the buffer holds ${buffer.byteLength}.`);
    }
    return new Tensor(dtype, shape, new ctor(buffer, byteOffset, size) as DTypeArrays[D]);
  }

  get size(): number {
    return this.data.length;
  }

  get rank(): number {
    return this.shape.length;
  }

  /** The elements' bytes, sharing memory with `data`. */
  bytes(): Uint8Array {
    return new Uint8Array(this.data.buffer, this.data.byteOffset, this.data.byteLength);
  }

  /** Same memory, new shape; one dimension may be -1 and is inferred. */
  reshape(shape: readonly number[]): Tensor<D> {
    const inferred = shape.filter((d) => d === -1).length;
    if (inferred > 1) throw new TensorError('EAI_TENSOR_SHAPE', `reshape: at most one dimension may be -1, got [${shape.join(', ')}].`);
    let resolved = [...shape];
    if (inferred === 1) {
      const known = shapeSize(shape.filter((d) => d !== -1));
      if (known === 0 || this.size % known !== 0) {
        throw new TensorError('EAI_TENSOR_SHAPE', `reshape: cannot infer -1 in [${shape.join(', ')}] for ${this.size} elements.`);
      }
      resolved = shape.map((d) => (d === -1 ? this.size / known : d));
    }
    if (shapeSize(resolved) !== this.size) {
      throw new TensorError('EAI_TENSOR_SHAPE', `reshape: [${this.shape.join(', ')}] has ${this.size} elements, [${resolved.join(', ')}] needs ${shapeSize(resolved)}.`);
    }
    return new Tensor(this.dtype, resolved, this.data);
  }

  /**
   * The `index`-th slice along the first axis, sharing memory (C order makes every leading-axis
   * slice contiguous): `batch.view(2)` is the third item of a batch.
   */
  view(index: number): Tensor<D> {
    const [outer, ...inner] = this.shape;
    if (outer === undefined) throw new TensorError('EAI_TENSOR_SHAPE', 'view: a scalar has no leading axis to index.');
    if (!Number.isInteger(index) || index < 0 || index >= outer) {
      throw new TensorError('EAI_TENSOR_INDEX', `view: index ${index} is outside [0, ${outer}).`);
    }
    const stride = shapeSize(inner);
    return new Tensor(this.dtype, inner, this.data.subarray(index * stride, (index + 1) * stride) as DTypeArrays[D]);
  }

  /** A copy that owns its own buffer. */
  clone(): Tensor<D> {
    return new Tensor(this.dtype, this.shape, this.data.slice() as DTypeArrays[D]);
  }

  /** Elements as JS numbers (float16 decoded, int64 converted; precision beyond 2^53 is lost). */
  toNumbers(): number[] {
    if (this.dtype === 'float16') return Array.from(this.data as Uint16Array, halfToFloat);
    if (this.dtype === 'int64' || this.dtype === 'uint64') return Array.from(this.data as BigInt64Array, (v) => Number(v));
    return Array.from(this.data as Float32Array);
  }
}

function checkDType(dtype: string): void {
  if (!isDType(dtype)) throw new TensorError('EAI_TENSOR_DTYPE', `Unknown dtype '${String(dtype)}'. Use one of: ${DTYPES.join(', ')}.`);
}

function checkShape(shape: readonly number[]): void {
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) {
      throw new TensorError('EAI_TENSOR_SHAPE', `Invalid shape [${shape.join(', ')}]: every dimension must be a non-negative integer.`);
    }
  }
}

/** IEEE-754 binary16 bits to a JS number. */
export function halfToFloat(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 0x1f) return fraction ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/**
 * A JS number to IEEE-754 binary16 bits, rounding to nearest even straight from the float64
 * value (going through float32 first would round twice and be off by one ulp at ties).
 */
export function floatToHalf(value: number): number {
  if (Number.isNaN(value)) return 0x7e00;
  const sign = value < 0 || Object.is(value, -0) ? 0x8000 : 0;
  const a = Math.abs(value);
  // 65520 is halfway between the largest half (65504) and 2^16; ties go to even, i.e. infinity.
  if (a >= 65520) return sign | 0x7c00;
  if (a < 2 ** -14) return sign | roundHalfEven(a * 2 ** 24); // subnormal: units of 2^-24 (exact)
  let e = Math.floor(Math.log2(a));
  // log2 can be off by one near powers of two; fix it exactly.
  if (2 ** e > a) e--;
  else if (2 ** (e + 1) <= a) e++;
  const mantissa = roundHalfEven((a / 2 ** e) * 1024); // in [1024, 2048]; 2048 carries into the exponent
  return sign | (((e + 15) << 10) + mantissa - 1024);
}

function roundHalfEven(x: number): number {
  const floor = Math.floor(x);
  const rest = x - floor;
  if (rest > 0.5) return floor + 1;
  if (rest < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}
