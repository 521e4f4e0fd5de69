/**
 * Throughput of a real pipeline against its bottleneck stage alone, in the same run.
 *
 * Pipeline: `synthetic` colour bars 640×480 rgb24 at the sensor's highest rate → `image.resize`
 * 128×128 → `image.normalize` (x / 127.5 - 1) → `infer` BlazeFace front 128 (cpu, 1 thread) →
 * `callback` sink that counts. Every queue is `block`, so nothing is dropped and the source is
 * paced by the slowest stage. Baseline: the bottleneck at its own best, the model through
 * InferenceService with the same options on the same normalised input, kept as busy as the
 * `infer` stage keeps it (the same number of runs in flight, default 2), for the same total time
 * (half before the pipeline runs, half after, so drift of the machine hits both sides alike).
 * For context it also times the whole chain as plain sequential calls (resize, normalize, infer,
 * no overlap) and the pipeline without `infer` (the pre-processing's own rate). The model runs
 * on its own thread (InferenceService picks that for runs over 1 ms), which is what lets
 * inference overlap with the image stages on the pipeline's thread.
 *
 * Goal (issue 4): pipeline frames/s ≥ 0.9 × the bottleneck stage's frames/s.
 * Run: node dist/bench/pipeline-throughput.js [--seconds N] [--warmup N] [--worker auto|always|never] [--json]
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createBuiltinHal } from '../drivers/builtin.js';
import type { Feeds } from '../drivers/hal/types.js';
import { SyntheticSensor } from '../drivers/sensors/synthetic.js';
import type { ImageFrame } from '../drivers/sensors/types.js';
import { Tensor } from '../drivers/tensor/tensor.js';
import { InferenceService } from '../runtime/inference/inference-service.js';
import type { NodeStatsSnapshot } from '../runtime/pipeline/node-stats.js';
import { normalizeInto } from '../runtime/pipeline/nodes/stages/image-normalize.js';
import { resizeInto } from '../runtime/pipeline/nodes/stages/image-resize.js';
import { Pipeline } from '../runtime/pipeline/pipeline.js';
import type { NormalizeOptions } from '../runtime/pipeline/transform-worker.js';
import { ResourcePool } from '../runtime/resource-pool.js';
import { round } from './stats.js';

const args = process.argv.slice(2);
const arg = (name: string, fallback: number): number => Number(args[args.indexOf(name) + 1] ?? NaN) || fallback;
/** Measured seconds of each side (the pipeline after its warm-up; the baseline in two halves). */
const seconds = arg('--seconds', 10);
const warmup = arg('--warmup', 2);
const json = args.includes('--json');
/** `worker` param of the image stages: auto (the default: 128×128 outputs stay in this thread), always, never. */
const worker = (['auto', 'always', 'never'] as const).find((w) => w === args[args.indexOf('--worker') + 1]) ?? 'auto';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const MODEL = 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx';
const SRC = { width: 640, height: 480 } as const;
const SIDE = 128;
/** BlazeFace wants x / 127.5 - 1 in NHWC, as in examples/pipelines/face-detection.yaml. */
const NORMALIZE: NormalizeOptions = { scale: 1 / 127.5, offset: -1, mean: [0], std: [1], layout: 'NHWC' };
const THREADS = 1;
const QUEUE = { size: 4, full: 'block' } as const;
const PRE_FRAMES = 3000;
/** Runs the `infer` stage keeps in flight by default; the baseline keeps as many. */
const IN_FLIGHT = 2;

/** The pipeline; without `detect` (and with `count` frames) for the pre-processing-only run. */
function pipelineConfig(detect: boolean, count?: number): Record<string, unknown> {
  return {
    name: 'throughput',
    sources: {
      // 100 kHz is the sensor's ceiling: it is never reached, so the block queue sets the pace.
      camera: { use: 'synthetic', params: { pattern: 'color-bars', rate: 100_000, width: SRC.width, height: SRC.height, format: 'rgb24', ...(count === undefined ? {} : { count }) } },
    },
    stages: {
      resize: { use: 'image.resize', params: { width: SIDE, height: SIDE, worker }, queue: QUEUE },
      normalize: { use: 'image.normalize', params: { scale: NORMALIZE.scale, offset: NORMALIZE.offset, worker }, queue: QUEUE },
      ...(detect ? { detect: { use: 'infer', params: { model: MODEL, devices: ['cpu'], threads: THREADS, inFlight: IN_FLIGHT }, queue: QUEUE } } : {}),
    },
    sinks: { count: { use: 'callback', queue: QUEUE } },
    flows: ['camera -> resize', 'resize -> normalize', ...(detect ? ['normalize -> detect', 'detect -> count'] : ['normalize -> count'])],
  };
}

// The bottleneck's input: one frame of the same source, resized and normalised by the same kernels.
const frame = await firstFrame();
const small: ImageFrame = { width: SIDE, height: SIDE, format: 'rgb24', data: new Uint8Array(SIDE * SIDE * 3) };
resizeInto(frame, small, 'bilinear');
const input = new Tensor('float32', [1, SIDE, SIDE, 3], new Float32Array(SIDE * SIDE * 3));
normalizeInto(small, input.data, NORMALIZE);
const feeds: Feeds = { 'input:0': input };

const hal = createBuiltinHal();
const service = new InferenceService(path.join(root, MODEL), { hal, pool: await ResourcePool.discover(hal), devices: ['cpu'], threads: THREADS });
await service.start();
for (let i = 0; i < 50; i++) await service.infer(feeds);

const before = await backToBack(seconds / 2);
const pipe = await runPipeline();
const after = await backToBack(seconds / 2);
const serial = await serialChain(seconds / 2);
const pre = await preprocessOnly(PRE_FRAMES);
const executorSeen = service.stats().executor;
await service.stop();

const executor = executorSeen;
const bottleneckFps = (before.frames + after.frames) / (before.seconds + after.seconds);
const ratio = pipe.fps / bottleneckFps;
const result = {
  node: process.version,
  source: `synthetic color-bars ${SRC.width}x${SRC.height} rgb24`,
  model: MODEL,
  threads: THREADS,
  executor,
  inFlight: IN_FLIGHT,
  queue: QUEUE,
  seconds,
  pipelineFrames: pipe.frames,
  pipelineFps: round(pipe.fps, 1),
  bottleneckFps: round(bottleneckFps, 1),
  bottleneckBeforeFps: round(before.frames / before.seconds, 1),
  bottleneckAfterFps: round(after.frames / after.seconds, 1),
  serialChainFps: round(serial.frames / serial.seconds, 1),
  preprocessPipelineFps: round(pre.fps, 1),
  ratio: round(ratio, 3),
  goal: 0.9,
  met: ratio >= 0.9,
  pipelineLatencyMs: pipe.latency,
  /** Median time inside each node's process() (ms), from pipeline.stats(); with block queues it includes waiting for room downstream. */
  serviceP50Ms: Object.fromEntries(pipe.nodes.map((n) => [n.node, round(n.serviceMs.p50, 3)])),
  dropped: pipe.nodes.reduce((sum, n) => sum + n.dropped, 0),
};

if (json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
else {
  console.log(`${result.source} -> image.resize ${SIDE}x${SIDE} -> image.normalize -> infer BlazeFace front 128 (cpu, ${THREADS} thread) -> callback, block queues of ${QUEUE.size}, ${seconds} s each side, node ${process.version}`);
  console.log(`pipeline             ${result.pipelineFps.toFixed(1).padStart(7)} frames/s  (${pipe.frames} frames, dropped ${result.dropped}, end-to-end p50 ${pipe.latency.p50.toFixed(2)} ms p99 ${pipe.latency.p99.toFixed(2)} ms)`);
  console.log(`bottleneck alone     ${result.bottleneckFps.toFixed(1).padStart(7)} frames/s  (InferenceService.infer, ${IN_FLIGHT} in flight, ${executor} executor: ${result.bottleneckBeforeFps} before, ${result.bottleneckAfterFps} after)`);
  console.log(`serial chain         ${result.serialChainFps.toFixed(1).padStart(7)} frames/s  (resize + normalize + infer as plain calls, no overlap; for context)`);
  console.log(`pre-processing only  ${result.preprocessPipelineFps.toFixed(1).padStart(7)} frames/s  (the same pipeline without infer, ${PRE_FRAMES} frames)`);
  console.log(`stage p50 (+ wait)   ${Object.entries(result.serviceP50Ms).map(([k, v]) => `${k} ${v.toFixed(3)} ms`).join(', ')}`);
  console.log(`ratio                ${ratio.toFixed(3)}x  (goal >= 0.9x: ${result.met ? 'met' : 'NOT met'})`);
}

/** One colour-bars frame from the sensor the pipeline's source uses (copied out of its ring). */
async function firstFrame(): Promise<ImageFrame> {
  const sensor = new SyntheticSensor({ pattern: 'color-bars', width: SRC.width, height: SRC.height, format: 'rgb24', count: 1 });
  for await (const m of sensor.messages(new AbortController().signal)) {
    const f = m.value as ImageFrame;
    return { ...f, data: f.data.slice() };
  }
  throw new Error('the synthetic sensor produced no frame');
}

/** The bottleneck alone: the model kept busy on one input, IN_FLIGHT runs at a time, for `secs` seconds. */
async function backToBack(secs: number): Promise<{ frames: number; seconds: number }> {
  const t0 = performance.now();
  const until = t0 + secs * 1000;
  let frames = 0;
  const lane = async (): Promise<void> => {
    while (performance.now() < until) {
      await service.infer(feeds);
      frames++;
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, lane));
  return { frames, seconds: (performance.now() - t0) / 1000 };
}

/** The stages as sequential calls on one thread: what the pipeline's overlap is worth. */
async function serialChain(secs: number): Promise<{ frames: number; seconds: number }> {
  const t0 = performance.now();
  const until = t0 + secs * 1000;
  let frames = 0;
  while (performance.now() < until) {
    const out: ImageFrame = { width: SIDE, height: SIDE, format: 'rgb24', data: new Uint8Array(SIDE * SIDE * 3) };
    resizeInto(frame, out, 'bilinear');
    const data = new Float32Array(SIDE * SIDE * 3);
    normalizeInto(out, data, NORMALIZE);
    await service.infer({ 'input:0': new Tensor('float32', [1, SIDE, SIDE, 3], data) });
    frames++;
  }
  return { frames, seconds: (performance.now() - t0) / 1000 };
}

/** Runs the pipeline for `warmup` + `seconds` s; counts frames reaching the sink in the last `seconds`. */
async function runPipeline(): Promise<{ frames: number; fps: number; latency: { p50: number; p99: number }; nodes: NodeStatsSnapshot[] }> {
  const pipeline = await Pipeline.fromConfig(pipelineConfig(true), { baseDir: root, statsIntervalMs: 0 });
  let count = 0;
  const latencies: number[] = [];
  let measuring = false;
  pipeline.on('result', (_sink: string, m: { arrivalMs: number }) => {
    count++;
    if (measuring) latencies.push(performance.now() - m.arrivalMs);
  });
  pipeline.on('warning', (w: { node: string; message: string }) => console.error(`warning from ${w.node}: ${w.message}`));
  await pipeline.start();
  await sleep(warmup * 1000);
  const c0 = count;
  const t0 = performance.now();
  measuring = true;
  await sleep(seconds * 1000);
  const frames = count - c0;
  const elapsed = (performance.now() - t0) / 1000;
  measuring = false;
  const nodes = pipeline.stats().nodes.slice();
  await pipeline.stop();
  const sorted = latencies.sort((a, b) => a - b);
  const q = (p: number): number => round(sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0, 3);
  return { frames, fps: frames / elapsed, latency: { p50: q(0.5), p99: q(0.99) }, nodes };
}

/**
 * The pipeline without `infer`, for `frames` frames, timed to its end. By count, not by clock:
 * with no stage that waits on anything, the chain runs on promise jobs alone and a timer would
 * not fire until the source ends.
 */
async function preprocessOnly(frames: number): Promise<{ fps: number }> {
  const pipeline = await Pipeline.fromConfig(pipelineConfig(false, frames), { baseDir: root, statsIntervalMs: 0 });
  let count = 0;
  pipeline.on('result', () => count++);
  const done = pipeline.finished();
  const t0 = performance.now();
  await pipeline.start();
  await done;
  const fps = count / ((performance.now() - t0) / 1000);
  await pipeline.stop();
  return { fps };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
