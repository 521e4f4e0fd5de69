/**
 * Content-addressed blobs: every blob lives at `blobs/sha256/<first two hex digits>/<digest>`,
 * named by the SHA-256 of its bytes, so two model versions that share a file share one blob.
 *
 * A blob is written to `tmp/` (a private file), hashed as it is written, fsynced, and renamed
 * into place only when its digest is what the caller expected (or, without an expectation, under
 * the digest it turned out to have); the folder is then fsynced. A crash leaves at most a temp
 * file (removed by `gc`) and never a blob under a name its bytes do not have. Writing a blob that
 * exists already is a no-op (its bytes are the same by construction).
 *
 * `stage` splits a write in two for callers that must decide later whether to keep it (the
 * registry keeps a pushed bundle's files only once the whole bundle verified).
 *
 * Concurrency: puts may overlap (each has its own temp file; the rename is atomic and two
 * writers of one digest write the same bytes). `gc` must not overlap a push that has staged but
 * not yet recorded its blobs: the registry runs it under its own lock.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fs } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { syncDir } from '../atomic-write.js';
import { RegistryError, registryIo } from './errors.js';
import { DigestMeter } from '../digest-meter.js';

const DIGEST = /^[0-9a-f]{64}$/u;

/** A blob written to the temp folder, not yet visible under its digest. */
export interface StagedBlob {
  readonly digest: string;
  readonly size: number;
  /** Renames it into place (a no-op when the blob exists); idempotent. */
  commit(): Promise<void>;
  /** Removes the temp file; idempotent, never throws. */
  discard(): Promise<void>;
}

export interface GcResult {
  readonly removed: readonly string[];
  readonly bytes: number;
  /** Leftover temp files from interrupted writes that were removed. */
  readonly temps: number;
}

export class BlobStore {
  readonly root: string;

  private constructor(root: string) {
    this.root = root;
  }

  /** Opens (making it if needed) the blob store under `root`. */
  static async open(root: string): Promise<BlobStore> {
    try {
      await fs.mkdir(path.join(root, 'blobs', 'sha256'), { recursive: true, mode: 0o755 });
      await fs.mkdir(path.join(root, 'tmp'), { recursive: true, mode: 0o700 });
    } catch (cause) {
      throw registryIo(`make the blob store at ${root}`, cause);
    }
    return new BlobStore(root);
  }

  /** Where the blob `digest` lives (whether or not it exists). */
  pathOf(digest: string): string {
    checkDigest(digest);
    return path.join(this.root, 'blobs', 'sha256', digest.slice(0, 2), digest);
  }

  async has(digest: string): Promise<boolean> {
    return fs.stat(this.pathOf(digest)).then((s) => s.isFile(), () => false);
  }

  /** Size of a stored blob; EAI_REGISTRY_BLOB_MISSING when it is not there. */
  async size(digest: string): Promise<number> {
    try {
      return (await fs.stat(this.pathOf(digest))).size;
    } catch (cause) {
      throw missing(digest, cause);
    }
  }

  /**
   * Writes `content` (a stream, bytes, or `{ file }` to copy) as a blob and resolves its digest.
   * With `expect`, bytes whose digest differs are refused with EAI_REGISTRY_BLOB_DIGEST and
   * nothing is kept.
   */
  async put(content: AsyncIterable<Uint8Array> | Uint8Array | { readonly file: string }, expect?: string): Promise<string> {
    const staged = await this.stage(content, expect);
    try {
      await staged.commit();
    } finally {
      await staged.discard();
    }
    return staged.digest;
  }

  /** Writes `content` to a temp file, hashing it; see StagedBlob. */
  async stage(content: AsyncIterable<Uint8Array> | Uint8Array | { readonly file: string }, expect?: string): Promise<StagedBlob> {
    if (expect !== undefined) checkDigest(expect);
    const temp = path.join(this.root, 'tmp', `blob-${process.pid}-${randomBytes(6).toString('hex')}`);
    const meter = new DigestMeter();
    const source: AsyncIterable<Uint8Array> | Iterable<Uint8Array> = content instanceof Uint8Array ? [content] : 'file' in content ? createReadStream(content.file) : content;
    const out = createWriteStream(temp, { flags: 'wx', mode: 0o644 });
    try {
      await pipeline(Readable.from(source, { objectMode: false }), meter, out);
      const handle = await fs.open(temp, 'r');
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
    } catch (cause) {
      await fs.rm(temp, { force: true });
      if (cause instanceof RegistryError || (cause instanceof Error && 'code' in cause && typeof cause.code === 'string' && cause.code.startsWith('EAI_'))) throw cause;
      throw registryIo('write a blob', cause);
    }
    const { sha256: digest, size } = meter.result();
    if (expect !== undefined && digest !== expect) {
      await fs.rm(temp, { force: true });
      throw new RegistryError('EAI_REGISTRY_BLOB_DIGEST', `a blob expected to have SHA-256 ${expect} has ${digest}; it was not stored. The source changed while it was read, or is not what it claims to be.`, { details: { expected: expect, actual: digest } });
    }
    let state: 'staged' | 'committed' | 'discarded' = 'staged';
    const final = this.pathOf(digest);
    return {
      digest,
      size,
      commit: async () => {
        if (state !== 'staged') return;
        try {
          if (await this.has(digest)) {
            // Shared with an older version: refresh its time so a concurrent gc's grace period covers it.
            const now = new Date();
            await fs.utimes(final, now, now);
            await fs.rm(temp, { force: true });
          } else {
            await fs.mkdir(path.dirname(final), { recursive: true, mode: 0o755 });
            await fs.rename(temp, final);
            await syncDir(path.dirname(final));
          }
        } catch (cause) {
          throw registryIo(`store blob ${digest}`, cause);
        }
        state = 'committed';
      },
      discard: async () => {
        if (state === 'staged') await fs.rm(temp, { force: true }).catch(() => undefined);
        if (state === 'staged') state = 'discarded';
      },
    };
  }

  /** The blob's bytes as a stream (from `start` for `length` bytes when given); EAI_REGISTRY_BLOB_MISSING when it is not there. */
  async open(digest: string, range: { readonly start?: number; readonly length?: number } = {}): Promise<Readable> {
    const file = this.pathOf(digest);
    if (!(await this.has(digest))) throw missing(digest);
    const start = range.start ?? 0;
    if (range.length === 0) return Readable.from([]);
    return createReadStream(file, { start, ...(range.length === undefined ? {} : { end: start + range.length - 1 }), highWaterMark: 1024 * 1024 });
  }

  /** Reads a whole (small) blob into memory. */
  async read(digest: string): Promise<Buffer> {
    try {
      return await fs.readFile(this.pathOf(digest));
    } catch (cause) {
      throw missing(digest, cause);
    }
  }

  /** Re-hashes a blob; false when its bytes no longer match its name (bit rot, tampering). */
  async check(digest: string): Promise<boolean> {
    const hash = createHash('sha256');
    for await (const chunk of await this.open(digest)) hash.update(chunk as Buffer);
    return hash.digest('hex') === digest;
  }

  /** Every stored digest. */
  async list(): Promise<string[]> {
    const base = path.join(this.root, 'blobs', 'sha256');
    const out: string[] = [];
    for (const prefix of await fs.readdir(base)) {
      for (const name of await fs.readdir(path.join(base, prefix)).catch(() => [] as string[])) if (DIGEST.test(name)) out.push(name);
    }
    return out.sort();
  }

  /**
   * Removes every blob not in `referenced` and every temp file, unless it was written (or, for a
   * blob, re-committed) less than `graceMs` ago (default one hour): a push in another process may
   * have committed blobs it has not recorded yet.
   */
  async gc(referenced: ReadonlySet<string>, options: { readonly graceMs?: number; readonly now?: number } = {}): Promise<GcResult> {
    const removed: string[] = [];
    let bytes = 0;
    const now = options.now ?? Date.now();
    const grace = options.graceMs ?? 3_600_000;
    for (const digest of await this.list()) {
      if (referenced.has(digest)) continue;
      const file = this.pathOf(digest);
      const stat = await fs.stat(file).catch(() => undefined);
      if (stat === undefined || now - stat.mtimeMs < grace) continue;
      bytes += stat.size;
      await fs.rm(file, { force: true });
      removed.push(digest);
    }
    let temps = 0;
    const tmp = path.join(this.root, 'tmp');
    for (const name of await fs.readdir(tmp)) {
      const stat = await fs.stat(path.join(tmp, name)).catch(() => undefined);
      if (stat !== undefined && now - stat.mtimeMs >= grace) {
        await fs.rm(path.join(tmp, name), { force: true, recursive: true });
        temps++;
      }
    }
    return { removed, bytes, temps };
  }
}

function checkDigest(digest: string): void {
  if (!DIGEST.test(digest)) throw new RegistryError('EAI_REGISTRY_BLOB_DIGEST', `'${digest.slice(0, 80)}' is not a SHA-256 digest (64 lowercase hex digits).`, { details: { digest: digest.slice(0, 80) } });
}

function missing(digest: string, cause?: unknown): RegistryError {
  return new RegistryError('EAI_REGISTRY_BLOB_MISSING', `blob ${digest} is not in the registry's blob store: it was removed by hand or the store is damaged. Fix: push the bundle that holds it again.`, { ...(cause === undefined ? {} : { cause }), details: { digest } });
}

