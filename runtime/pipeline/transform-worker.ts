import { existsSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { ImageFrame } from '../../drivers/sensors/types.js';
import { FrameError, FramePool, isShared } from './frame-pool.js';
import { channelsOf } from './image-kernels.js';

/** Resampling filter of a resize. */
export type Interpolation = 'nearest' | 'bilinear';

/** How image.normalize maps bytes to floats: `(v * scale + offset - mean[c]) / std[c]`. */
export interface NormalizeOptions {
  readonly layout: 'NHWC' | 'NCHW';
  readonly scale: number;
  readonly offset: number;
  /** One value for every channel, or one per channel. */
  readonly mean: readonly number[];
  readonly std: readonly number[];
}

export interface TransformWorkersOptions {
  /** Worker threads; default one less than the cores, at least 1, at most 4. */
  readonly threads?: number;
  /** The worker script; default `transform-thread.mjs` as {@link resolveTransformScript} finds it. */
  readonly script?: string;
}

/**
 * A small pool of worker threads that run the image kernels (resize, convert, normalize) on frames
 * in shared memory. A frame is split into bands of rows, one per thread, and only offsets and
 * sizes are posted: slots of an attached `FramePool` by number (the buffers went to each thread
 * once), other `SharedArrayBuffer`s as handles (structured clone shares them; nothing is copied).
 * Frames whose bytes are not shared are refused (`EAI_FRAME_NOT_SHARED`): copy them into a pool
 * lease first.
 *
 * Calls may overlap (several stages can share one pool): jobs queue per thread and each resolves
 * when all its bands are written. The caller owns `src` and `dst` and must keep them unchanged and
 * alive until the promise settles. A thread that dies fails its pending jobs with
 * `EAI_TRANSFORM_WORKER_FAILED` and is replaced. Idle threads do not keep the process alive;
 * `close()` ends them.
 */
export class TransformWorkers {
  private readonly threadsList: Thread[] = [];
  private readonly pools = new Map<number, { readonly pool: FramePool; readonly stop: () => void }>();
  private nextId = 1;
  private closed = false;

  private constructor(private readonly script: string) {}

  /** Starts the threads and resolves once each has loaded the kernels. */
  static async start(options: TransformWorkersOptions = {}): Promise<TransformWorkers> {
    const threads = options.threads ?? Math.max(1, Math.min(4, availableParallelism() - 1));
    if (!Number.isInteger(threads) || threads < 1) throw new FrameError('EAI_TRANSFORM_THREADS', `A transform pool needs a whole number of threads ≥ 1, got ${threads}.`);
    const workers = new TransformWorkers(options.script ?? resolveTransformScript());
    try {
      await Promise.all(Array.from({ length: threads }, () => workers.spawn()));
    } catch (error) {
      await workers.close();
      throw error;
    }
    return workers;
  }

  get threads(): number {
    return this.threadsList.length;
  }

  /** Posts the pool's buffers to every thread now and as the pool grows; jobs then name slots. */
  attach(pool: FramePool): void {
    if (this.pools.has(pool.id)) return;
    const stop = pool.onSlot((slot, buffer) => {
      for (const t of this.threadsList) t.worker.postMessage({ kind: 'slot', pool: pool.id, slot, buffer });
    });
    this.pools.set(pool.id, { pool, stop });
  }

  /** Forgets the pool's buffers in every thread (call before dropping the pool). */
  detach(pool: FramePool): void {
    const entry = this.pools.get(pool.id);
    if (entry === undefined) return;
    entry.stop();
    this.pools.delete(pool.id);
    for (const t of this.threadsList) t.worker.postMessage({ kind: 'drop', pool: pool.id });
  }

  /** Resizes `src` into `dst` (whose size says the target); same pixel format on both. */
  resize(src: ImageFrame, dst: ImageFrame, interpolation: Interpolation): Promise<void> {
    const channels = channelsOf(src.format);
    const base = { op: 'resize', src: this.region(src.data), dst: this.region(dst.data), sw: src.width, sh: src.height, dw: dst.width, dh: dst.height, channels, interpolation };
    return this.split(dst.height, (rowStart, rowEnd) => ({ ...base, rowStart, rowEnd }));
  }

  /** Converts `src` into `dst`'s pixel format; same size on both. */
  convert(src: ImageFrame, dst: ImageFrame): Promise<void> {
    const base = { op: 'convert', src: this.region(src.data), dst: this.region(dst.data), from: src.format, to: dst.format };
    const width = src.width;
    return this.split(src.height, (rowStart, rowEnd) => ({ ...base, start: rowStart * width, end: rowEnd * width }));
  }

  /** Writes `src` as floats into `dst` (`width * height * channels` of them, shared memory). */
  normalize(src: ImageFrame, dst: Float32Array, options: NormalizeOptions): Promise<void> {
    const base = { op: 'normalize', src: this.region(src.data), dst: this.region(dst), width: src.width, height: src.height, channels: channelsOf(src.format), layout: options.layout, scale: options.scale, offset: options.offset, mean: [...options.mean], std: [...options.std] };
    return this.split(src.height, (rowStart, rowEnd) => ({ ...base, rowStart, rowEnd }));
  }

  /**
   * Posts `data` to one thread, which touches its first and last byte and answers: the round trip
   * of one frame, for measuring what sharing saves. Shared bytes travel as a reference (pool slots
   * as numbers); other bytes are copied by postMessage.
   */
  ping(data: Uint8Array): Promise<void> {
    const region = isShared(data) ? this.region(data) : { buffer: data.buffer, byteOffset: data.byteOffset, byteLength: data.byteLength };
    return this.post({ kind: 'echo', region }, this.idlest());
  }

  /** Ends every thread; pending jobs fail with `EAI_TRANSFORM_CLOSED`. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const { stop } of this.pools.values()) stop();
    const threads = this.threadsList.splice(0);
    for (const t of threads) failAll(t, new FrameError('EAI_TRANSFORM_CLOSED', 'The transform workers were closed while this job was running.'));
    await Promise.all(threads.map((t) => t.worker.terminate()));
  }

  /** A job split into row bands across the threads (small frames stay in one band). */
  private split(rows: number, band: (rowStart: number, rowEnd: number) => Record<string, unknown>): Promise<void> {
    if (this.closed) return Promise.reject(new FrameError('EAI_TRANSFORM_CLOSED', 'The transform workers are closed; start new ones.'));
    if (this.threadsList.length === 0) return Promise.reject(noThreads());
    const count = Math.max(1, Math.min(this.threadsList.length, Math.floor(rows / MIN_BAND_ROWS)));
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < count; i++) {
      const rowStart = Math.floor((rows * i) / count);
      const rowEnd = Math.floor((rows * (i + 1)) / count);
      jobs.push(this.post({ kind: 'job', job: band(rowStart, rowEnd) }, this.idlest()));
    }
    return Promise.all(jobs).then(() => undefined);
  }

  private region(view: ArrayBufferView): Region {
    const buffer = view.buffer;
    if (!(buffer instanceof SharedArrayBuffer)) {
      throw new FrameError('EAI_FRAME_NOT_SHARED', `A worker thread can only use frames in shared memory; this ${view.constructor.name} is on an ArrayBuffer. Copy it into a FramePool lease (or allocate it with sharedBytes) first.`);
    }
    for (const { pool } of this.pools.values()) {
      const slot = pool.locate(buffer);
      if (slot !== undefined) return { pool: pool.id, slot, byteOffset: view.byteOffset, byteLength: view.byteLength };
    }
    return { buffer, byteOffset: view.byteOffset, byteLength: view.byteLength };
  }

  private idlest(): Thread {
    let best = this.threadsList[0];
    if (best === undefined) throw this.closed ? new FrameError('EAI_TRANSFORM_CLOSED', 'The transform workers are closed; start new ones.') : noThreads();
    for (const t of this.threadsList) if (t.pending.size < best.pending.size) best = t;
    return best;
  }

  private post(message: Record<string, unknown>, thread: Thread): Promise<void> {
    const id = this.nextId++;
    return new Promise<void>((resolve, reject) => {
      if (thread.pending.size === 0) thread.worker.ref();
      thread.pending.set(id, { resolve, reject });
      thread.worker.postMessage({ ...message, id });
    });
  }

  /** Starts one thread; resolves when it reports ready, rejects if it fails first. */
  private spawn(): Promise<void> {
    const worker = new Worker(this.script);
    const thread: Thread = { worker, pending: new Map(), ready: false };
    this.threadsList.push(thread);
    for (const { pool } of this.pools.values()) pool.onSlot((slot, buffer) => worker.postMessage({ kind: 'slot', pool: pool.id, slot, buffer }))();
    let lastError: unknown;
    return new Promise<void>((resolve, reject) => {
      worker.on('message', (m: Reply) => {
        if (m.kind === 'ready') {
          thread.ready = true;
          if (thread.pending.size === 0) worker.unref();
          resolve();
          return;
        }
        const p = thread.pending.get(m.id);
        if (p === undefined) return;
        thread.pending.delete(m.id);
        if (thread.pending.size === 0) worker.unref();
        if (m.kind === 'done') p.resolve();
        else p.reject(new FrameError('EAI_TRANSFORM_WORKER_FAILED', `A transform worker thread failed on a frame: ${m.message}`));
      });
      worker.on('error', (error) => {
        lastError = error;
      });
      worker.on('exit', (code) => {
        const why = lastError instanceof Error ? lastError.message : `exit code ${code}`;
        const failure = new FrameError('EAI_TRANSFORM_WORKER_FAILED', `A transform worker thread (${this.script}) stopped: ${why}. Its jobs failed; a new thread takes the next ones.`, { cause: lastError });
        reject(failure);
        failAll(thread, failure);
        const index = this.threadsList.indexOf(thread);
        if (index < 0 || this.closed) return;
        this.threadsList.splice(index, 1);
        // Replace a thread that was working so the pool keeps its size; one that could not even
        // start (a broken script) is not retried, or this would loop.
        if (thread.ready) this.spawn().catch(() => undefined);
      });
    });
  }
}

/**
 * The worker script `transform-thread.mjs`. It is plain JavaScript, so it runs unchanged from the
 * source tree (under vitest, which cannot hand TypeScript to a worker thread) and from a build;
 * `tsc` does not copy `.mjs` files, so from `dist/runtime/pipeline/` this falls back to the same
 * file in the package's source tree (`<root>/runtime/pipeline/transform-thread.mjs`, the root being
 * the folder whose package.json says `"name": "aios"`), as the xrt engine does for its child.
 * A build that ships without sources copies `transform-thread.mjs` and `image-kernels.mjs` beside
 * `transform-worker.js`, which is looked at first.
 */
export function resolveTransformScript(from: string = import.meta.url): string {
  const here = path.dirname(fileURLToPath(from));
  const beside = path.join(here, SCRIPT);
  if (existsSync(beside)) return beside;
  for (let dir = here; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'runtime', 'pipeline', SCRIPT);
    if (isAiosRoot(dir) && existsSync(candidate)) return candidate;
    if (path.dirname(dir) === dir) break;
  }
  throw new FrameError('EAI_TRANSFORM_SCRIPT_NOT_FOUND', `The transform worker script ${SCRIPT} was not found beside ${here} nor in the aios source tree. Reinstall aios; a build that ships only dist/ must copy runtime/pipeline/${SCRIPT} and image-kernels.mjs to dist/runtime/pipeline/.`);
}

/** Mean round-trip time of one frame to a worker thread and back, per way of passing it. */
export interface TransferCost {
  readonly bytes: number;
  readonly rounds: number;
  /** A slot of an attached FramePool: only numbers are posted. */
  readonly pooledUs: number;
  /** A fresh SharedArrayBuffer: its handle is posted (shared, not copied). */
  readonly sharedUs: number;
  /** An ordinary ArrayBuffer: postMessage copies the bytes (structured clone). */
  readonly copiedUs: number;
}

/**
 * Measures what posting a frame to a worker costs, zero-copy against copying, on one thread of a
 * fresh pool (closed afterwards). For the benchmark; `rounds` after 10 warm-up rounds each.
 */
export async function measureTransfer(options: { readonly bytes: number; readonly rounds?: number; readonly script?: string }): Promise<TransferCost> {
  const rounds = options.rounds ?? 200;
  const workers = await TransformWorkers.start({ threads: 1, ...(options.script === undefined ? {} : { script: options.script }) });
  const pool = new FramePool({ maxBytes: Math.max(options.bytes, 1) * 2 });
  try {
    workers.attach(pool);
    const lease = pool.acquire(options.bytes);
    const shared = new Uint8Array(new SharedArrayBuffer(options.bytes));
    const plain = new Uint8Array(options.bytes);
    const time = async (data: Uint8Array): Promise<number> => {
      for (let i = 0; i < 10; i++) await workers.ping(data);
      const t0 = performance.now();
      for (let i = 0; i < rounds; i++) await workers.ping(data);
      return ((performance.now() - t0) * 1000) / rounds;
    };
    const pooledUs = await time(lease.data);
    const sharedUs = await time(shared);
    const copiedUs = await time(plain);
    lease.release();
    return { bytes: options.bytes, rounds, pooledUs, sharedUs, copiedUs };
  } finally {
    workers.detach(pool);
    pool.close();
    await workers.close();
  }
}

const SCRIPT = 'transform-thread.mjs';
/** Bands thinner than this cost more in messages than they save in parallel work. */
const MIN_BAND_ROWS = 32;

/** Where a job's bytes are, as the worker resolves it (transform-thread.mjs `view`). */
type Region = { readonly pool: number; readonly slot: number; readonly byteOffset: number; readonly byteLength: number } | { readonly buffer: ArrayBufferLike; readonly byteOffset: number; readonly byteLength: number };

type Reply = { readonly kind: 'ready' } | { readonly kind: 'done'; readonly id: number } | { readonly kind: 'failed'; readonly id: number; readonly message: string };

interface Thread {
  readonly worker: Worker;
  /** Reported ready: its script loaded. */
  ready: boolean;
  readonly pending: Map<number, { resolve(): void; reject(error: unknown): void }>;
}

function noThreads(): FrameError {
  return new FrameError('EAI_TRANSFORM_WORKER_FAILED', 'No transform worker thread is running: they died and their replacements could not start. Close these workers and start new ones, or use worker: never.');
}

function failAll(thread: Thread, error: FrameError): void {
  for (const p of thread.pending.values()) p.reject(error);
  thread.pending.clear();
}

function isAiosRoot(dir: string): boolean {
  try {
    return (JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: unknown }).name === 'aios';
  } catch {
    return false;
  }
}
