import { TpmError } from './errors.js';

/**
 * Reading and writing the TPM 2.0 wire format (TPM 2.0 Library Part 2: big-endian integers,
 * TPM2B_* = a 16-bit size and that many bytes). Every read checks the bytes are there first, so a
 * truncated or lying structure ends in `EAI_TPM_MALFORMED` naming the structure, the field and the
 * byte offset, never in a RangeError or a read past the end.
 *
 * The event log of the PC Client firmware profile is little-endian; `TpmReader` takes the byte
 * order at construction so one reader serves both.
 */
export class TpmReader {
  private offset = 0;
  private readonly view: DataView;

  /**
   * @param bytes the input; never copied, never modified. Slices returned by `bytes()` are copies,
   *   so a caller may keep them after the input buffer is reused.
   * @param structure what is being read, for error messages ("TPMS_ATTEST").
   */
  constructor(
    private readonly input: Uint8Array,
    readonly structure: string,
    private readonly littleEndian = false,
  ) {
    this.view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  }

  get position(): number {
    return this.offset;
  }

  get remaining(): number {
    return this.input.byteLength - this.offset;
  }

  u8(field: string): number {
    this.need(1, field);
    return this.view.getUint8(this.offset++);
  }

  u16(field: string): number {
    this.need(2, field);
    const v = this.view.getUint16(this.offset, this.littleEndian);
    this.offset += 2;
    return v;
  }

  u32(field: string): number {
    this.need(4, field);
    const v = this.view.getUint32(this.offset, this.littleEndian);
    this.offset += 4;
    return v;
  }

  u64(field: string): bigint {
    this.need(8, field);
    const v = this.view.getBigUint64(this.offset, this.littleEndian);
    this.offset += 8;
    return v;
  }

  /** `n` bytes, copied. */
  bytes(n: number, field: string): Buffer {
    this.need(n, field);
    const out = Buffer.from(this.input.subarray(this.offset, this.offset + n));
    this.offset += n;
    return out;
  }

  /** A copy of the bytes from `start` to the current position (a structure just read, whole). */
  span(start: number): Buffer {
    return Buffer.from(this.input.subarray(start, this.offset));
  }

  /** A TPM2B: a 16-bit size then that many bytes; `max` is the largest size the type allows. */
  sized(field: string, max = 0xffff): Buffer {
    const size = this.u16(`${field}.size`);
    if (size > max) this.fail(`${field}.size is ${size}, more than the ${max} bytes the type allows`, this.offset - 2);
    return this.bytes(size, field);
  }

  /** Throws unless every byte was read: trailing bytes mean the structure is not what we think. */
  end(): void {
    if (this.remaining !== 0) this.fail(`${this.remaining} unexpected trailing byte(s)`, this.offset);
  }

  /** Throws `EAI_TPM_MALFORMED` for this structure at `at` (default: the current offset). */
  fail(problem: string, at = this.offset): never {
    throw new TpmError('EAI_TPM_MALFORMED', `malformed ${this.structure}: ${problem} (at byte ${at} of ${this.input.byteLength})`, {
      details: { structure: this.structure, offset: at, length: this.input.byteLength },
    });
  }

  private need(n: number, field: string): void {
    if (n > this.remaining) {
      this.fail(`${field} needs ${n} byte(s), only ${this.remaining} left: the input is truncated or a size field is wrong`);
    }
  }
}

/** Big-endian u16. */
export function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
}

/** Big-endian u32. */
export function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}

/** A TPM2B: the 16-bit size, then the bytes. */
export function sized(bytes: Uint8Array): Buffer {
  if (bytes.byteLength > 0xffff) throw new TpmError('EAI_TPM_ARGUMENT', `a TPM2B holds at most 65535 bytes, got ${bytes.byteLength}`);
  return Buffer.concat([u16(bytes.byteLength), bytes]);
}
