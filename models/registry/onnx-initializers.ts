/**
 * Lists an ONNX model's initializers (its weight tensors) without loading the model: a small
 * protobuf wire-format reader walks ModelProto.graph (field 7) → GraphProto.initializer (field 5,
 * TensorProto) and hashes each tensor's data where it lies, reading the file through a window of
 * at most 64 KiB, so a multi-gigabyte model costs one streaming read and a few bytes per tensor.
 *
 * TensorProto fields read: dims (1, packed or not), data_type (2), name (8), and the data:
 * raw_data (9), float_data (4), int32_data (5), string_data (6), int64_data (7), double_data
 * (10), uint64_data (11), or external data (13 external_data entries, 14 data_location), whose
 * bytes live in another file of the bundle: for those the reference itself is hashed. Data is
 * compared by the SHA-256 of its bytes as encoded in the file (raw_data: the tensor's bytes).
 */
import { createHash, type Hash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { RegistryError } from './errors.js';

/** Positioned reads of a file or blob: what the reader needs (`IReadable` in mcap's terms). */
export interface ByteSource {
  readonly size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
}

/** One initializer as found in the file. */
export interface OnnxInitializer {
  readonly name: string;
  readonly dims: readonly number[];
  /** TensorProto.DataType (1 float, 7 int64, 10 float16, ...). */
  readonly dataType: number;
  /** Bytes of data as stored (for external data: 0). */
  readonly bytes: number;
  /** SHA-256 of the data bytes (for external data: of the reference). */
  readonly sha256: string;
  /** Where each piece of the data lies in the file: [offset, length] (empty for external data). */
  readonly ranges: readonly (readonly [number, number])[];
  readonly external: boolean;
}

const WINDOW = 64 * 1024;
const DATA_FIELDS = new Set([4, 5, 6, 7, 9, 10, 11]);

/** A ByteSource over a file, open for the duration of `use`. */
export async function withFileSource<T>(file: string, use: (source: ByteSource) => Promise<T>): Promise<T> {
  const handle = await open(file, 'r');
  try {
    const { size } = await handle.stat();
    return await use({
      size,
      read: async (offset, length) => {
        const buf = Buffer.allocUnsafe(length);
        const { bytesRead } = await handle.read(buf, 0, length, offset);
        return buf.subarray(0, bytesRead);
      },
    });
  } finally {
    await handle.close();
  }
}

/** Every initializer of the model in `source`, in file order. EAI_REGISTRY_ONNX_INVALID when it is not a readable ONNX model. */
export async function readInitializers(source: ByteSource): Promise<OnnxInitializer[]> {
  const top = new WireReader(source, 0, source.size);
  const out: OnnxInitializer[] = [];
  while (!top.done()) {
    const { field, wire } = await top.tag();
    if (field === 7 && wire === 2) {
      const len = await top.length();
      const graph = top.sub(len);
      while (!graph.done()) {
        const t = await graph.tag();
        if (t.field === 5 && t.wire === 2) out.push(await readTensor(graph.sub(await graph.length())));
        else await graph.skip(t.wire);
      }
    } else {
      await top.skip(wire);
    }
  }
  return out;
}

async function readTensor(r: WireReader): Promise<OnnxInitializer> {
  const dims: number[] = [];
  let dataType = 0;
  let name = '';
  let bytes = 0;
  let external = false;
  const ranges: [number, number][] = [];
  const hash = createHash('sha256');
  while (!r.done()) {
    const { field, wire } = await r.tag();
    if (field === 1 && wire === 0) dims.push(await r.varint());
    else if (field === 1 && wire === 2) {
      const packed = r.sub(await r.length());
      while (!packed.done()) dims.push(await packed.varint());
    } else if (field === 2 && wire === 0) dataType = await r.varint();
    else if (field === 8 && wire === 2) name = (await r.bytes(await r.length())).toString('utf8');
    else if (DATA_FIELDS.has(field)) {
      // The encoded bytes of the data field: for raw_data the tensor itself, for packed typed
      // fields their packed payload, for a non-packed element its varint or fixed bytes.
      const start = r.position;
      if (wire === 2) {
        const len = await r.length();
        const at = r.position;
        await r.hashInto(hash, len);
        ranges.push([at, len]);
        bytes += len;
      } else {
        await r.skip(wire);
        const len = r.position - start - 1;
        ranges.push([r.position - len, len]);
        bytes += len;
        hash.update(await r.peekBack(len));
      }
    } else if ((field === 13 && wire === 2) || (field === 14 && wire === 0)) {
      external ||= field === 13;
      const start = r.position;
      await r.skip(wire);
      hash.update(`ext${field}:`);
      hash.update(await r.peekBack(r.position - start));
    } else await r.skip(wire);
  }
  return { name, dims, dataType, bytes: external ? 0 : bytes, sha256: hash.digest('hex'), ranges: external ? [] : ranges, external };
}

/** A protobuf wire-format cursor over [start, end) of a ByteSource, buffering a small window. */
class WireReader {
  #pos: number;
  readonly #end: number;
  readonly #src: ByteSource;
  readonly #window: { start: number; buf: Uint8Array };

  constructor(src: ByteSource, start: number, end: number, window?: { start: number; buf: Uint8Array }) {
    this.#src = src;
    this.#pos = start;
    this.#end = end;
    this.#window = window ?? { start: 0, buf: new Uint8Array(0) };
  }

  get position(): number {
    return this.#pos;
  }

  done(): boolean {
    return this.#pos >= this.#end;
  }

  /** A reader of the next `len` bytes (sharing the window); this one moves past them. */
  sub(len: number): WireReader {
    if (this.#pos + len > this.#end) throw invalid(`a field of ${len} bytes at byte ${this.#pos} runs past its message`);
    const r = new WireReader(this.#src, this.#pos, this.#pos + len, this.#window);
    this.#pos += len;
    return r;
  }

  async tag(): Promise<{ field: number; wire: number }> {
    const at = this.#pos;
    const v = await this.varint();
    const field = Math.floor(v / 8);
    if (field === 0) throw invalid(`field number 0 at byte ${at}`);
    return { field, wire: v % 8 };
  }

  /** A varint as a number (exact up to 2^53; larger values only matter here as skipped lengths). */
  async varint(): Promise<number> {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      const b = await this.#byte();
      result += (b & 0x7f) * scale;
      if ((b & 0x80) === 0) return result;
      scale *= 128;
    }
    throw invalid(`a varint longer than 10 bytes at byte ${this.#pos}`);
  }

  async length(): Promise<number> {
    const len = await this.varint();
    if (this.#pos + len > this.#end) throw invalid(`a length of ${len} at byte ${this.#pos} runs past its message (ends at ${this.#end})`);
    return len;
  }

  async skip(wire: number): Promise<void> {
    if (wire === 0) await this.varint();
    else if (wire === 1) this.#advance(8);
    else if (wire === 5) this.#advance(4);
    else if (wire === 2) this.#advance(await this.length());
    else throw invalid(`wire type ${wire} (groups are not used by ONNX) at byte ${this.#pos}`);
  }

  /** `len` bytes copied out (for small fields: names). */
  async bytes(len: number): Promise<Buffer> {
    const out = Buffer.from(await this.#at(this.#pos, len));
    this.#advance(len);
    return out;
  }

  /** The `len` bytes just read. */
  async peekBack(len: number): Promise<Uint8Array> {
    return this.#at(this.#pos - len, len);
  }

  /** Hashes the next `len` bytes in windows, without holding them. */
  async hashInto(hash: Hash, len: number): Promise<void> {
    let left = len;
    while (left > 0) {
      const n = Math.min(left, WINDOW);
      hash.update(await this.#at(this.#pos, n));
      this.#advance(n);
      left -= n;
    }
  }

  #advance(n: number): void {
    if (this.#pos + n > this.#end) throw invalid(`a field at byte ${this.#pos} runs past its message`);
    this.#pos += n;
  }

  async #byte(): Promise<number> {
    if (this.#pos >= this.#end) throw invalid(`the message ends inside a field at byte ${this.#pos}`);
    const b = (await this.#at(this.#pos, 1))[0] as number;
    this.#pos++;
    return b;
  }

  /** Bytes [offset, offset+len) through the shared window (len ≤ WINDOW, or read directly). */
  async #at(offset: number, len: number): Promise<Uint8Array> {
    const w = this.#window;
    if (offset >= w.start && offset + len <= w.start + w.buf.length) return w.buf.subarray(offset - w.start, offset - w.start + len);
    if (len > WINDOW) return this.#read(offset, len);
    w.buf = await this.#read(offset, Math.min(WINDOW, this.#src.size - offset));
    w.start = offset;
    if (w.buf.length < len) throw invalid(`the file ends at byte ${offset + w.buf.length}, inside a field`);
    return w.buf.subarray(0, len);
  }

  async #read(offset: number, len: number): Promise<Uint8Array> {
    const buf = await this.#src.read(offset, len);
    if (buf.length < len) throw invalid(`the file ends at byte ${offset + buf.length}, inside a field`);
    return buf;
  }
}

function invalid(what: string): RegistryError {
  return new RegistryError('EAI_REGISTRY_ONNX_INVALID', `the file is not a readable ONNX model: ${what}. Its initializers cannot be compared (the file diff still stands).`, { details: { what } });
}
