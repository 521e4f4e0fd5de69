// One onnxruntime session on its own thread (see session-thread.ts). Plain JavaScript so that it
// runs unchanged from the source tree (tests) and from dist/ (the build copies it).
//
// Messages in:  { op: 'run', id, feeds: { name: { type, dims, data } } } | { op: 'release' }
// Messages out: { op: 'ready', inputs, outputs } once loaded | { op: 'failed', message } if not;
//               { op: 'result', id, outputs } | { op: 'error', id, message } per run;
//               { op: 'released' }.
import { workerData, parentPort } from 'node:worker_threads';

const { entry, modelPath, sessionOptions } = workerData;

function meta(m) {
  return { name: m.name, isTensor: m.isTensor, type: m.type, shape: m.shape };
}

let ort;
let session;
try {
  const mod = await import(entry);
  ort = mod.default ?? mod;
  ort.env.logLevel = 'error';
  session = await ort.InferenceSession.create(modelPath, sessionOptions);
  parentPort.postMessage({ op: 'ready', inputs: session.inputMetadata.map(meta), outputs: session.outputMetadata.map(meta) });
} catch (error) {
  parentPort.postMessage({ op: 'failed', message: error instanceof Error ? error.message : String(error) });
  process.exit(0);
}

let running = 0;
let releasing = false;

// Release only once the runs already sent have answered: they were accepted, so they finish.
async function releaseWhenIdle() {
  if (!releasing || running > 0) return;
  releasing = false;
  await session.release();
  parentPort.postMessage({ op: 'released' });
  parentPort.close();
}

parentPort.on('message', async (message) => {
  if (message.op === 'release') {
    releasing = true;
    await releaseWhenIdle();
    return;
  }
  const { id, feeds } = message;
  running++;
  try {
    const ortFeeds = {};
    for (const [name, f] of Object.entries(feeds)) {
      // The binding refuses memory shared between threads; a frame from a SharedArrayBuffer
      // pool is copied once here, off the caller's thread.
      const data = f.data.buffer instanceof SharedArrayBuffer ? f.data.slice() : f.data;
      ortFeeds[name] = new ort.Tensor(f.type, data, f.dims);
    }
    const results = await session.run(ortFeeds);
    const outputs = {};
    const transfer = [];
    for (const [name, value] of Object.entries(results)) {
      let data = value.data;
      // Hand the output's memory over instead of copying it when the array owns all of its buffer.
      if (data.byteOffset !== 0 || data.byteLength !== data.buffer.byteLength) data = data.slice();
      outputs[name] = { type: value.type, dims: value.dims, data };
      transfer.push(data.buffer);
    }
    try {
      parentPort.postMessage({ op: 'result', id, outputs }, transfer);
    } catch {
      // Memory onnxruntime allocated outside V8 cannot be detached; structured clone copies it.
      parentPort.postMessage({ op: 'result', id, outputs });
    }
  } catch (error) {
    parentPort.postMessage({ op: 'error', id, message: error instanceof Error ? error.message : String(error) });
  } finally {
    running--;
    await releaseWhenIdle();
  }
});
