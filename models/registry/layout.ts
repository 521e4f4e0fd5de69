/**
 * How the registry keeps a bundle byte for byte while sharing model files between versions: a
 * bundle is cut into its model files' bodies (each stored as its own content-addressed blob) and
 * everything else — the tar headers, the envelope, padding, the end-of-archive blocks and any
 * record padding after them — concatenated into one small "skeleton" blob. `gaps[i]` is the
 * number of skeleton bytes that come before file body i (and the last gap those after the last
 * body), so export is: gap 0, body 0, gap 1, body 1, …, gap n. Re-creating the tar from the
 * manifest instead would lose whatever another tar writer put in its headers (uid, uname, GNU
 * magic, trailing records), and storing the whole bundle as one blob would lose the sharing.
 *
 * The splitter sits between the bundle's bytes and the verifier and sees exactly the bytes the
 * verifier checks, so what is stored is what was verified (no second read that could differ).
 * It only follows the ustar block structure; judging the archive is left to the verifier.
 */
import { createHash } from 'node:crypto';
import { BLOCK_SIZE, decodeHeader, REUSES_BUFFERS } from '../bundle/tar.js';

export interface BundleLayout {
  /** Skeleton bytes before each file body, and after the last (length: files + 1). */
  readonly gaps: readonly number[];
  readonly skeleton: Buffer;
  /** SHA-256 and size of the whole bundle. */
  readonly sha256: string;
  readonly size: number;
}

/** Splits a bundle's bytes as they pass through to the verifier; `result()` once the verifier finished. */
export class LayoutSplitter {
  readonly #skeleton: Buffer[] = [];
  readonly #gaps: number[] = [];
  readonly #hash = createHash('sha256');
  #gap = 0;
  #size = 0;
  #header: Buffer[] = [];
  #headerLen = 0;
  #mode: 'header' | 'skeleton' | 'body' | 'trailer' = 'header';
  #left = 0;
  #pad = 0;
  #entries = 0;
  #broken = false;

  /** The source to hand the verifier: the same bytes, and the same buffer-reuse promise. */
  wrap(source: AsyncIterable<unknown>): AsyncIterable<Buffer> {
    const reuses = (source as { [REUSES_BUFFERS]?: unknown })[REUSES_BUFFERS] === true;
    const self = this;
    const wrapped = {
      async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
        for await (const raw of source) {
          const chunk = Buffer.isBuffer(raw) ? raw : Buffer.from(raw as Uint8Array);
          self.#feed(chunk);
          yield chunk;
        }
      },
    };
    return reuses ? Object.assign(wrapped, { [REUSES_BUFFERS]: true as const }) : wrapped;
  }

  /** The layout, or undefined when the bytes were not a plain ustar archive (the verifier refuses those anyway). */
  result(): BundleLayout | undefined {
    if (this.#broken || this.#mode !== 'trailer') return undefined;
    return { gaps: [...this.#gaps, this.#gap], skeleton: Buffer.concat(this.#skeleton), sha256: this.#hash.digest('hex'), size: this.#size };
  }

  #feed(chunk: Buffer): void {
    this.#hash.update(chunk);
    this.#size += chunk.length;
    let at = 0;
    while (at < chunk.length && !this.#broken) {
      if (this.#mode === 'trailer') {
        this.#keep(chunk.subarray(at));
        return;
      }
      if (this.#mode === 'header') {
        const n = Math.min(BLOCK_SIZE - this.#headerLen, chunk.length - at);
        this.#header.push(Buffer.from(chunk.subarray(at, at + n)));
        this.#headerLen += n;
        at += n;
        if (this.#headerLen === BLOCK_SIZE) this.#onHeader(Buffer.concat(this.#header));
        continue;
      }
      const n = Math.min(this.#left, chunk.length - at);
      if (this.#mode === 'skeleton') this.#keep(chunk.subarray(at, at + n));
      at += n;
      this.#left -= n;
      if (this.#left === 0) {
        if (this.#mode === 'body') {
          this.#gaps.push(this.#gap);
          this.#gap = 0;
        }
        if (this.#pad > 0) {
          this.#mode = 'skeleton';
          this.#left = this.#pad;
          this.#pad = 0;
        } else this.#mode = 'header';
      }
    }
  }

  #onHeader(block: Buffer): void {
    this.#header = [];
    this.#headerLen = 0;
    this.#keep(block);
    let h;
    try {
      h = decodeHeader(block, this.#size);
    } catch {
      this.#broken = true;
      return;
    }
    if (h === null) {
      this.#mode = 'trailer';
      return;
    }
    const first = this.#entries++ === 0;
    const pad = (BLOCK_SIZE - (h.size % BLOCK_SIZE)) % BLOCK_SIZE;
    if (h.size === 0) {
      if (!first) {
        this.#gaps.push(this.#gap);
        this.#gap = 0;
      }
      this.#mode = 'header';
      return;
    }
    // The first entry is the envelope: kept in the skeleton. Every later one is a model file body.
    this.#mode = first ? 'skeleton' : 'body';
    this.#left = h.size;
    this.#pad = pad;
  }

  #keep(bytes: Buffer): void {
    if (bytes.length === 0) return;
    this.#skeleton.push(Buffer.from(bytes));
    this.#gap += bytes.length;
  }
}
