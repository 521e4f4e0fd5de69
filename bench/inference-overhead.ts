/**
 * What does aios add on top of onnxruntime? InferenceService.infer against raw onnxruntime-node
 * `session.run` on the same model file, the same thread settings and the same input buffers,
 * interleaved call by call (order rotating each round) so that CPU frequency, cache and other
 * load hit every side alike. Prints the ratio of medians per model.
 *
 * Two services per model: `inline` runs on the calling thread exactly as raw onnxruntime does,
 * so its ratio is what aios itself adds (placement, input checks, the device scheduler, the cost
 * model, stats) and is the one held to the goal; `auto` is what a user gets by default: models
 * that take over 1 ms run on their own thread (the caller's event loop stays free; each run pays
 * a hand-over), smaller ones inline. Its ratio is printed for context.
 *
 * Goals (issue 2, kept by issue 5): <= 1.03x on BlazeFace (about 5 ms), <= 1.10x on a tiny
 * model (about 0.1 ms).
 * Run: make bench   (or: node dist/bench/inference-overhead.js [--rounds N] [--json])
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { createBuiltinHal } from '../drivers/builtin.js';
import type { Feeds } from '../drivers/hal/types.js';
import { Tensor } from '../drivers/tensor/tensor.js';
import { InferenceService } from '../runtime/inference/inference-service.js';
import { ResourcePool } from '../runtime/resource-pool.js';
import { median, round } from './stats.js';

interface Case {
  readonly label: string;
  readonly file: string;
  readonly goal: number;
  readonly feeds: () => Feeds;
}

const zoo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../models/zoo');
const CASES: readonly Case[] = [
  { label: 'BlazeFace back 256 (~5 ms)', file: 'blazeface-back-256/face_detection_back_256x256_barracuda.onnx', goal: 1.03, feeds: () => ({ 'input:0': random([1, 256, 256, 3]) }) },
  { label: 'BlazeFace front 128 (~1 ms)', file: 'blazeface-front-128/face_detection_front_128x128_barracuda.onnx', goal: 1.05, feeds: () => ({ 'input:0': random([1, 128, 128, 3]) }) },
  {
    label: 'Silero VAD v4 frame (~0.1 ms)',
    file: 'silero-vad-v4/silero_vad.onnx',
    goal: 1.1,
    feeds: () => ({ input: random([1, 512]), sr: new Tensor('int64', [], BigInt64Array.of(16000n)), h: Tensor.zeros('float32', [2, 1, 64]), c: Tensor.zeros('float32', [2, 1, 64]) }),
  },
];

const args = process.argv.slice(2);
const rounds = Number(args[args.indexOf('--rounds') + 1] ?? 0) || 400;
const threads = 1;
ort.env.logLevel = 'error';

const results = [];
const hal = createBuiltinHal();
const pool = await ResourcePool.discover(hal);
for (const c of CASES) {
  const file = path.join(zoo, c.file);
  const feeds = c.feeds();
  const raw = await ort.InferenceSession.create(file, { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all', logSeverityLevel: 3 });
  const rawFeeds: Record<string, ort.Tensor> = {};
  for (const [name, t] of Object.entries(feeds)) rawFeeds[name] = new ort.Tensor(t.dtype, t.data as ort.Tensor.DataType, t.shape as number[]);
  const inline = new InferenceService(file, { pool, hal, devices: ['cpu'], threads, graphOptimization: 'all', executor: 'inline', warmupFeeds: feeds, name: `${c.label} inline` });
  const auto = new InferenceService(file, { pool, hal, devices: ['cpu'], threads, graphOptimization: 'all', warmupFeeds: feeds, name: `${c.label} auto` });
  await inline.start();
  await auto.start();

  const sides = [() => raw.run(rawFeeds), () => inline.infer(feeds), () => auto.infer(feeds)];
  const warm = Math.max(20, rounds / 10);
  for (let i = 0; i < warm; i++) for (const side of sides) await side();
  const times: number[][] = [[], [], []];
  for (let i = 0; i < rounds; i++) {
    // Rotate which side goes first so none always runs on a warmer cache.
    for (let k = 0; k < sides.length; k++) {
      const j = (i + k) % sides.length;
      (times[j] as number[]).push(await time(sides[j] as () => Promise<unknown>));
    }
  }
  const executor = auto.stats().executor;
  await inline.stop();
  await auto.stop();
  await raw.release();
  const [mRaw, mInline, mAuto] = times.map(median) as [number, number, number];
  results.push({ model: c.label, rounds, threads, rawMedianMs: round(mRaw), aiosMedianMs: round(mInline), ratio: round(mInline / mRaw, 4), goal: c.goal, met: mInline / mRaw <= c.goal, autoExecutor: executor, autoMedianMs: round(mAuto), autoRatio: round(mAuto / mRaw, 4) });
}

if (args.includes('--json')) {
  process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
} else {
  console.log(`InferenceService.infer vs onnxruntime-node session.run, ${rounds} interleaved rounds, ${threads} intra-op thread, node ${process.version}`);
  for (const r of results) {
    console.log(`${r.model.padEnd(32)} raw ${r.rawMedianMs.toFixed(3).padStart(8)} ms  aios inline ${r.aiosMedianMs.toFixed(3).padStart(8)} ms  ratio ${r.ratio.toFixed(3)}x  (goal <= ${r.goal.toFixed(2)}x: ${r.met ? 'met' : 'NOT met'})   default (${r.autoExecutor}) ${r.autoMedianMs.toFixed(3).padStart(8)} ms  ${r.autoRatio.toFixed(3)}x`);
  }
}

async function time(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}



function random(shape: number[]): Tensor<'float32'> {
  const t = Tensor.zeros('float32', shape);
  for (let i = 0; i < t.data.length; i++) t.data[i] = Math.random() * 2 - 1;
  return t;
}
