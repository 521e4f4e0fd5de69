/**
 * What does dynamic batching buy at saturation? Silero VAD v4 on the CPU (onnxruntime, 1 intra-op
 * thread, inline executor) fed real speech frames (each with its own LSTM state) by many
 * concurrent submitters that resubmit as soon as they are answered, so work is always waiting.
 * The same model is driven directly (`model.run`, no Batcher), through a Batcher with maxBatch 1
 * (the baseline: one request per run), and through Batchers with maxBatch 8, 16 and 32. The
 * configurations take turns in short windows, round after round, so that CPU frequency, cache and
 * other load hit them alike. Prints requests/s, per-request latency (submit to answer) p50/p99,
 * the mean batch, and each configuration's throughput relative to batch 1 and to direct runs.
 *
 * Goal (issue 5, item 3): >= 1.5x requests/s over unbatched runs (judged against the faster of
 * direct and Batcher maxBatch 1, so the Batcher's own cost per request counts against it).
 * Run: npx tsc -p tsconfig.json && node dist/bench/batching.js [--seconds S] [--rounds N] [--submitters N] [--delay MS] [--json]
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createOnnxruntimeEngine } from '../drivers/engines/onnxruntime.js';
import type { DeviceInfo, Feeds, LoadedModel, Outputs } from '../drivers/hal/types.js';
import { readNpy } from '../drivers/tensor/npy.js';
import { Tensor } from '../drivers/tensor/tensor.js';
import { Batcher } from '../runtime/inference/batcher.js';
import { batchLayout } from '../runtime/inference/batching.js';
import { round } from './stats.js';

const args = process.argv.slice(2);
const flag = (name: string, fallback: number): number => {
  const i = args.indexOf(name);
  const v = i >= 0 ? Number(args[i + 1]) : Number.NaN;
  return Number.isFinite(v) && v > 0 ? v : fallback;
};
const seconds = flag('--seconds', 1);
const rounds = flag('--rounds', 3);
const submitters = flag('--submitters', 96);
const delayMs = flag('--delay', 2);
const threads = 1;

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const cpu: DeviceInfo = { id: 'cpu', kind: 'cpu', name: 'cpu', formats: ['onnx'], status: { state: 'ready' } };
const model = await createOnnxruntimeEngine().load({ path: path.join(root, 'models/zoo/silero-vad-v4/silero_vad.onnx'), format: 'onnx' }, cpu, { threads, executor: 'inline' });
const layout = batchLayout(model.inputs, model.outputs, 'silero_vad.onnx');
const requests = await speechRequests(model);

interface Config {
  readonly label: string;
  readonly maxBatch: number | null; // null: model.run directly, no Batcher
  submit?: (feeds: Feeds) => Promise<Outputs>;
  batcher?: Batcher;
  answered: number;
  ms: number;
  latencies: number[];
}

const configs: Config[] = [null, 1, 8, 16, 32].map((maxBatch) => ({ label: maxBatch === null ? 'direct (no Batcher)' : `Batcher maxBatch ${maxBatch}`, maxBatch, answered: 0, ms: 0, latencies: [] }));

// Warm-up: every batch size once, so no window pays onnxruntime's first-shape allocations.
for (const c of configs) await window(c, 0.2, false);
for (let r = 0; r < rounds; r++) {
  // Rotate the order each round so no configuration always runs first (or last).
  for (let i = 0; i < configs.length; i++) await window(configs[(i + r) % configs.length] as Config, seconds, true);
}
await model.dispose();

const base = configs.find((c) => c.maxBatch === 1) as Config;
const direct = configs.find((c) => c.maxBatch === null) as Config;
const rps = (c: Config): number => (c.answered * 1000) / c.ms;
const GOAL = 1.5;
const results = configs.map((c) => {
  const stats = c.batcher?.stats();
  const sorted = [...c.latencies].sort((a, b) => a - b);
  // The goal is judged against the faster of the two unbatched ways (direct, in practice).
  const ratio = rps(c) / Math.max(rps(base), rps(direct));
  return {
    config: c.label,
    maxBatch: c.maxBatch,
    requestsPerSecond: round(rps(c), 0),
    ratioToBatch1: round(rps(c) / rps(base), 2),
    ratioToDirect: round(rps(c) / rps(direct), 2),
    latencyP50Ms: round(at(sorted, 0.5)),
    latencyP99Ms: round(at(sorted, 0.99)),
    meanBatch: stats === undefined ? 1 : round(stats.meanBatch, 2),
    ...(c.maxBatch !== null && c.maxBatch > 1 ? { goal: GOAL, met: ratio >= GOAL } : {}),
  };
});

if (args.includes('--json')) {
  process.stdout.write(`${JSON.stringify({ model: 'silero-vad-v4', threads, submitters, maxDelayMs: delayMs, seconds, rounds, node: process.version, results }, null, 2)}\n`);
} else {
  console.log(`Silero VAD v4 on CPU (onnxruntime, ${threads} thread, inline), ${submitters} concurrent submitters, maxDelayMs ${delayMs}, ${rounds} rounds x ${seconds} s per configuration, node ${process.version}`);
  for (const r of results) {
    const goal = r.goal === undefined ? '' : `  (goal >= ${GOAL.toFixed(1)}x: ${r.met === true ? 'met' : 'NOT met'})`;
    console.log(`${r.config.padEnd(22)} ${String(r.requestsPerSecond).padStart(7)} req/s  x${r.ratioToBatch1.toFixed(2)} of batch 1, x${r.ratioToDirect.toFixed(2)} of direct  mean batch ${r.meanBatch.toFixed(1).padStart(4)}  latency p50 ${r.latencyP50Ms.toFixed(3)} ms  p99 ${r.latencyP99Ms.toFixed(3)} ms${goal}`);
  }
}

/**
 * Keeps `submitters` requests outstanding for `s` seconds: each submitter resubmits the moment it
 * is answered. Counts what was answered inside the window (and its latencies when `record`).
 */
async function window(c: Config, s: number, record: boolean): Promise<void> {
  c.batcher ??= c.maxBatch === null ? undefined : new Batcher({ maxBatch: c.maxBatch, maxDelayMs: c.maxBatch === 1 ? 0 : delayMs, layout, run: (feeds) => model.run(feeds) });
  const batcher = c.batcher;
  const submit = batcher === undefined ? (feeds: Feeds): Promise<Outputs> => model.run(feeds) : (feeds: Feeds): Promise<Outputs> => batcher.submit(feeds);
  const t0 = performance.now();
  const end = t0 + s * 1000;
  let answered = 0;
  const loop = async (id: number): Promise<void> => {
    for (let n = id; performance.now() < end; n += submitters) {
      const start = performance.now();
      await submit(requests[n % requests.length] as Feeds);
      const done = performance.now();
      if (done <= end) {
        answered++;
        if (record) c.latencies.push(done - start);
      }
    }
  };
  await Promise.all(Array.from({ length: submitters }, (_, id) => loop(id)));
  if (record) {
    c.answered += answered;
    c.ms += end - t0;
  }
}

/** Every 512-sample frame of the speech fixture, with the LSTM state the stream has there. */
async function speechRequests(m: LoadedModel): Promise<Feeds[]> {
  const audio = (await readNpy(path.join(root, 'test/fixtures/inputs/vad-speech.npy'))).data as Float32Array;
  const sr = new Tensor('int64', [], BigInt64Array.of(16000n));
  let h = Tensor.zeros('float32', [2, 1, 64]);
  let c = Tensor.zeros('float32', [2, 1, 64]);
  const out: Feeds[] = [];
  for (let i = 0; i + 512 <= audio.length; i += 512) {
    const feeds = { input: new Tensor('float32', [1, 512], audio.slice(i, i + 512)), sr, h, c };
    out.push(feeds);
    const r = await m.run(feeds);
    h = r['hn'] as Tensor<'float32'>;
    c = r['cn'] as Tensor<'float32'>;
  }
  return out;
}

function at(sorted: readonly number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
}
