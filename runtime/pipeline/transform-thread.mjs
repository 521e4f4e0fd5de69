// @ts-check
// One transform worker thread, started by TransformWorkers (transform-worker.ts). It runs the
// image kernels on frames in shared memory: the main thread posts a pool's SharedArrayBuffers once
// ('slot'), then jobs that name a frame by pool, slot, byte offset and length (or, for a frame
// outside any pool, carry the SharedArrayBuffer handle itself, which shares and never copies).
//
// Plain JavaScript on purpose: it runs unchanged from the source tree (tests under vitest, which
// cannot hand a worker TypeScript) and from a build (transform-worker.ts finds it there). The
// kernels are image-kernels.mjs, the compiled form of image-kernels.ts, so both threads run the
// same code. The message contract is typed in transform-worker.ts; keep the two in step.
// Jobs are answered in the order they arrive, one reply each.
import { parentPort } from 'node:worker_threads';
import { convertPixels, normalizePixels, normalizeTable, resizeBilinear, resizeNearest } from './image-kernels.mjs';

if (parentPort === null) throw new Error('transform-thread.mjs runs as a worker thread, started by TransformWorkers');
const port = parentPort;

/** `${pool}:${slot}` -> SharedArrayBuffer, as posted by 'slot' messages. */
const slots = new Map();

port.on('message', (message) => {
  switch (message.kind) {
    case 'slot':
      slots.set(`${message.pool}:${message.slot}`, message.buffer);
      return;
    case 'drop':
      for (const key of [...slots.keys()]) if (key.startsWith(`${message.pool}:`)) slots.delete(key);
      return;
    case 'echo':
      // Transfer benchmark: touch the first and last byte so the memory is really reached.
      try {
        const bytes = view(message.region);
        if (bytes.length > 0) bytes[0] = (bytes[bytes.length - 1] ?? 0) ^ 1;
        port.postMessage({ kind: 'done', id: message.id });
      } catch (error) {
        port.postMessage({ kind: 'failed', id: message.id, message: String(error instanceof Error ? error.message : error) });
      }
      return;
    case 'job':
      try {
        run(message.job);
        port.postMessage({ kind: 'done', id: message.id });
      } catch (error) {
        port.postMessage({ kind: 'failed', id: message.id, message: String(error instanceof Error ? error.message : error) });
      }
      return;
    default:
      port.postMessage({ kind: 'failed', id: message.id ?? -1, message: `unknown message kind '${String(message.kind)}'` });
  }
});

function run(job) {
  switch (job.op) {
    case 'resize': {
      const resize = job.interpolation === 'nearest' ? resizeNearest : resizeBilinear;
      resize(view(job.src), job.sw, job.sh, view(job.dst), job.dw, job.dh, job.channels, job.rowStart, job.rowEnd);
      return;
    }
    case 'convert':
      convertPixels(view(job.src), job.from, view(job.dst), job.to, job.start, job.end);
      return;
    case 'normalize': {
      const table = normalizeTable(job.channels, job.scale, job.offset, job.mean, job.std);
      const dst = view(job.dst);
      const floats = new Float32Array(dst.buffer, dst.byteOffset, dst.byteLength / 4);
      normalizePixels(view(job.src), job.width, job.height, job.channels, floats, job.layout, table, job.rowStart, job.rowEnd);
      return;
    }
    default:
      throw new Error(`unknown transform '${String(job.op)}'`);
  }
}

/** The bytes a region names: a registered pool slot, or a SharedArrayBuffer posted with the job. */
function view(region) {
  const buffer = region.buffer ?? slots.get(`${region.pool}:${region.slot}`);
  if (buffer === undefined) throw new Error(`slot ${region.slot} of frame pool ${region.pool} was never posted to this worker`);
  return new Uint8Array(buffer, region.byteOffset, region.byteLength);
}

// Imports resolved and the handler installed: the pool may send work.
port.postMessage({ kind: 'ready' });
