import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type * as Ort from 'onnxruntime-node';
import { DeviceUnavailableError, ModelError } from '../../errors.js';

/** What a session reports about one input or output, as onnxruntime's metadata has it. */
export interface ValueMeta {
  readonly name: string;
  readonly isTensor: boolean;
  readonly type: string;
  readonly shape: readonly (number | string)[];
}

/** One tensor crossing the thread boundary: onnxruntime's type name, dims and data. */
export interface WireTensor {
  readonly type: string;
  readonly dims: readonly number[];
  readonly data: ArrayBufferView;
}

type WorkerReply =
  | { op: 'ready'; inputs: ValueMeta[]; outputs: ValueMeta[] }
  | { op: 'failed'; message: string }
  | { op: 'result'; id: number; outputs: Record<string, WireTensor> }
  | { op: 'error'; id: number; message: string }
  | { op: 'released' };

interface Pending {
  resolve(outputs: Record<string, WireTensor>): void;
  reject(error: Error): void;
}

/**
 * An onnxruntime session living on its own worker thread. onnxruntime-node's `session.run` runs
 * the whole inference on the calling JavaScript thread (its promise only defers the call), so a
 * 5 ms model stalls everything else the process does for 5 ms: other pipeline stages, sensor
 * sockets, MQTT keep-alives. On a thread, the caller's event loop stays free and inference
 * overlaps with the rest of the pipeline. The price is one message round trip per run (tens of
 * µs), which is why tiny models may stay on the caller's thread (`LoadOptions.executor`).
 *
 * Inputs are copied to the thread by structured clone (SharedArrayBuffer-backed frames are shared,
 * not copied); outputs come back by transfer, without a copy.
 */
export class SessionThread {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private failure: Error | undefined;
  private releasing: Promise<void> | undefined;

  private constructor(
    private readonly worker: Worker,
    readonly inputMetadata: readonly ValueMeta[],
    readonly outputMetadata: readonly ValueMeta[],
    private readonly modelPath: string,
  ) {
    worker.on('message', (reply: WorkerReply) => this.onReply(reply));
    worker.on('error', (error) => this.fail(new DeviceUnavailableError('EAI_ENGINE_THREAD_DIED', `the onnxruntime thread running ${modelPath} failed: ${error.message}`, 'load the model again; if it keeps failing, run it on the caller thread (executor: inline) and report the error')));
    worker.on('exit', (code) => {
      if (this.releasing === undefined) this.fail(new DeviceUnavailableError('EAI_ENGINE_THREAD_DIED', `the onnxruntime thread running ${modelPath} exited (code ${code})`, 'load the model again'));
    });
  }

  /** Starts a thread and creates the session in it; rejects with onnxruntime's own message when it cannot. */
  static async open(entry: string, modelPath: string, sessionOptions: Ort.InferenceSession.SessionOptions): Promise<SessionThread> {
    const worker = new Worker(workerScript(), { workerData: { entry, modelPath, sessionOptions } });
    const ready = await new Promise<{ inputs: ValueMeta[]; outputs: ValueMeta[] }>((resolve, reject) => {
      const onError = (error: Error): void => reject(error);
      worker.once('error', onError);
      worker.once('message', (reply: WorkerReply) => {
        worker.off('error', onError);
        if (reply.op === 'ready') resolve(reply);
        else reject(new Error(reply.op === 'failed' ? reply.message : `unexpected reply '${reply.op}' while loading`));
      });
    });
    return new SessionThread(worker, ready.inputs, ready.outputs, modelPath);
  }

  run(feeds: Record<string, WireTensor>): Promise<Record<string, WireTensor>> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.releasing !== undefined) return Promise.reject(new ModelError('EAI_MODEL_DISPOSED', `${this.modelPath} was unloaded; load it again before running it.`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ op: 'run', id, feeds });
    });
  }

  /** Releases the session once the runs already sent have finished, then ends the thread. */
  release(): Promise<void> {
    this.releasing ??= (async () => {
      if (this.failure === undefined) {
        const released = new Promise<void>((resolve) => {
          const onReply = (reply: WorkerReply): void => {
            if (reply.op === 'released') resolve();
          };
          this.worker.on('message', onReply);
          this.worker.once('exit', () => resolve());
        });
        this.worker.postMessage({ op: 'release' });
        await released;
      }
      await this.worker.terminate();
    })();
    return this.releasing;
  }

  private onReply(reply: WorkerReply): void {
    if (reply.op !== 'result' && reply.op !== 'error') return;
    const pending = this.pending.get(reply.id);
    if (pending === undefined) return;
    this.pending.delete(reply.id);
    if (reply.op === 'result') pending.resolve(reply.outputs);
    else pending.reject(new Error(reply.message));
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const p of this.pending.values()) p.reject(error);
    this.pending.clear();
  }
}

/** `session-worker.mjs`, beside this module in dist/ (the build copies it) or in the source tree. */
function workerScript(): URL {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.join(here, 'session-worker.mjs'), path.resolve(here, '..', '..', '..', '..', 'drivers', 'engines', 'onnxruntime', 'session-worker.mjs')];
  const found = candidates.find((c) => existsSync(c));
  if (found === undefined) {
    throw new DeviceUnavailableError('EAI_ENGINE_THREAD_DIED', `the onnxruntime thread script session-worker.mjs was not found beside ${here}`, 'reinstall aios; a build that ships only dist/ must copy drivers/engines/onnxruntime/session-worker.mjs beside session-thread.js');
  }
  return new URL(`file://${found}`);
}
