/**
 * Face presence with BlazeFace through the public API: pick the best device, start an
 * InferenceService, score each image. Run: node dist/examples/face-score.js MODEL IMAGE.npy...
 *
 * BlazeFace's first two outputs are raw logits for its 512 + 384 anchors; the image's face score
 * is the sigmoid of the largest one.
 */
import { InferenceService, ResourcePool, createBuiltinHal, readNpy } from '../index.js';

const [model, ...images] = process.argv.slice(2);
if (model === undefined || images.length === 0) {
  console.error('usage: node dist/examples/face-score.js MODEL.onnx IMAGE.npy...');
  process.exit(2);
}

const hal = createBuiltinHal();
const pool = await ResourcePool.discover(hal);
const device = pool.getDevice(['jetson', 'cuda', 'cpu']);
const faces = new InferenceService(model, { pool, hal, devices: [device.id, 'cpu'] });
await faces.start();
console.log(`BlazeFace on ${faces.device.id} (${faces.engine}/${faces.backend})`);
for (const image of images) {
  const out = await faces.infer({ 'input:0': await readNpy(image) });
  let best = Number.NEGATIVE_INFINITY;
  for (const name of ['Identity:0', 'Identity_1:0']) {
    for (const logit of out[name]?.data as Float32Array) best = Math.max(best, logit);
  }
  const score = 1 / (1 + Math.exp(-best));
  console.log(`${image}: face score ${score.toFixed(3)} ${score > 0.5 ? '(face)' : '(no face)'}`);
}
const { latencyMs } = faces.stats();
console.log(`latency p50 ${latencyMs.p50.toFixed(2)} ms over ${latencyMs.count} runs`);
await faces.stop();
