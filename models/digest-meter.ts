import { createHash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';

/** A stream stage that passes bytes through unchanged while counting them and taking their SHA-256. */
export class DigestMeter extends Transform {
  readonly #hash = createHash('sha256');
  #size = 0;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#hash.update(chunk);
    this.#size += chunk.length;
    callback(null, chunk);
  }

  /** Bytes seen and their hex SHA-256; call once, after the stream ended. */
  result(): { size: number; sha256: string } {
    return { size: this.#size, sha256: this.#hash.digest('hex') };
  }
}
