import { availableParallelism } from 'node:os';
import { Type } from '@sinclair/typebox';
import { PIXEL_CHANNELS, type ImageFrame, type PixelFormat } from '../../../../drivers/sensors/types.js';
import type { NodeContext } from '../../definition.js';
import { PortTypeMismatch } from '../../definition.js';
import { FramePool, isShared, sharedBytes } from '../../frame-pool.js';
import { describe, type PortType } from '../../port-types.js';
import { TransformWorkers } from '../../transform-worker.js';
import { StageError, summarize } from './stage-error.js';

/**
 * What the image stages (image-resize.ts, image-crop.ts, image-convert.ts, image-normalize.ts)
 * share: input checks at validation and at run time, and the
 * choice between running a kernel in the pipeline's thread or on the transform worker threads.
 *
 * Frames the image stages emit are new buffers in shared memory ({@link newFrame}), never reused
 * by the stage: they belong to whoever receives them (the executor may give one frame to several
 * consumers), nobody may write to them, and the next stage can hand them to a worker thread
 * without a copy. Input frames are only read, never kept past `process`.
 */

/** The `worker` param every heavy image stage takes. */
export const WorkerParam = Type.Union([Type.Literal('auto'), Type.Literal('always'), Type.Literal('never')], {
  default: 'auto',
  description: "run the transform on worker threads over shared memory: 'auto' when the output has more than workerMinPixels pixels, 'always', or 'never' (in the pipeline's thread)",
});
export type WorkerMode = 'auto' | 'always' | 'never';

/** The `workerMinPixels` param: where 'auto' starts using workers. */
export const WorkerMinPixelsParam = Type.Integer({ minimum: 0, default: 100_000, description: "output pixels above which worker: auto moves the transform to worker threads" });

/** `ctx.services.extra` key under which an application may share one TransformWorkers among all image stages. */
export const TRANSFORM_WORKERS_SERVICE = 'transformWorkers';

/** The `in` port's type when it is an image (or unknown); throws a PortTypeMismatch otherwise. */
export function imageInput(inputs: Readonly<Record<string, PortType>>, use: string): Extract<PortType, { kind: 'image' }> {
  const t = inputs['in'];
  if (t === undefined || t.kind === 'any') return { kind: 'image', width: null, height: null, format: null };
  if (t.kind !== 'image') throw new PortTypeMismatch('in', `${use} takes images, not ${describe(t)}`);
  return t;
}

/** The message value as an image frame, checked; a StageError saying what arrived otherwise. */
export function expectFrame(value: unknown, use: string): ImageFrame {
  const f = value as Partial<ImageFrame> | null;
  if (typeof f !== 'object' || f === null || !(f.data instanceof Uint8Array) || typeof f.width !== 'number' || typeof f.height !== 'number' || typeof f.format !== 'string' || !(f.format in PIXEL_CHANNELS)) {
    throw new StageError('EAI_STAGE_INPUT', `${use} takes image frames ({ width, height, format, data: Uint8Array }), got ${summarize(value)}.`);
  }
  const need = f.width * f.height * PIXEL_CHANNELS[f.format as PixelFormat];
  if (f.data.length !== need) throw new StageError('EAI_STAGE_INPUT', `${use}: a ${f.width}×${f.height} ${f.format} frame needs ${need} bytes, its data has ${f.data.length}.`);
  return f as ImageFrame;
}

/** A zero-filled frame in fresh shared memory, owned by its receivers (see the file comment). */
export function newFrame(width: number, height: number, format: PixelFormat): ImageFrame {
  return { width, height, format, data: sharedBytes(width * height * PIXEL_CHANNELS[format]) };
}

/**
 * Per-stage state for the worker path: the stage's worker threads (its own, started on first
 * use, or the application's shared ones) and a pool for copying inputs that are not in shared
 * memory. `process` of one stage never overlaps itself, so this needs no locking.
 */
export interface Transforms {
  readonly mode: WorkerMode;
  readonly minPixels: number;
  workers: TransformWorkers | undefined;
  starting: Promise<TransformWorkers> | undefined;
  readonly owned: boolean;
  readonly pool: FramePool;
}

/** The worker-path state of an image stage, from its `worker` / `workerMinPixels` params (starts no thread). */
export function startTransforms(ctx: NodeContext<{ worker: WorkerMode; workerMinPixels: number }>): Transforms {
  const shared = ctx.services.extra[TRANSFORM_WORKERS_SERVICE];
  const workers = shared instanceof TransformWorkers ? shared : undefined;
  return { mode: ctx.params.worker, minPixels: ctx.params.workerMinPixels, workers, starting: undefined, owned: workers === undefined, pool: new FramePool({ maxBytes: 32 * 1024 * 1024 }) };
}

/** Whether a transform producing `pixels` output pixels goes to the worker threads. */
export function offThread(t: Transforms, pixels: number): boolean {
  return t.mode === 'always' || (t.mode === 'auto' && pixels > t.minPixels);
}

/**
 * Runs `job` on the worker threads with `frame` in shared memory: frames already there go as
 * they are; others are copied once into a lease of the stage's pool, released when the job ends.
 */
export async function onWorkers(t: Transforms, frame: ImageFrame, job: (workers: TransformWorkers, src: ImageFrame) => Promise<void>): Promise<void> {
  const workers = await ensureWorkers(t);
  if (isShared(frame.data)) return job(workers, frame);
  const lease = t.pool.acquire(frame.data.byteLength);
  try {
    lease.data.set(frame.data);
    await job(workers, { ...frame, data: lease.data });
  } finally {
    lease.release();
  }
}

/** Releases what `startTransforms` and the first worker job took; closes the threads only if the stage started them. */
export async function stopTransforms(t: Transforms | undefined): Promise<void> {
  if (t === undefined) return;
  const workers = t.workers ?? (await t.starting?.catch(() => undefined));
  workers?.detach(t.pool);
  t.pool.close();
  if (t.owned) await workers?.close();
}

async function ensureWorkers(t: Transforms): Promise<TransformWorkers> {
  if (t.workers === undefined) {
    // Started on first use: a stage that only ever sees small frames never starts threads.
    t.starting ??= TransformWorkers.start({ threads: Math.max(1, Math.min(2, availableParallelism() - 1)) });
    try {
      t.workers = await t.starting;
    } finally {
      t.starting = undefined;
    }
  }
  t.workers.attach(t.pool); // idempotent; shared workers learn this stage's pool here
  return t.workers;
}
