/**
 * Latency of every zoo model on every (device, engine, backend) this machine can run it on, in
 * one table, with the CPU baseline measured in the same run: what an accelerator buys you here.
 * Run: make bench   (or: node dist/bench/engines.js [--rounds N] [--json])
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createBuiltinHal } from '../drivers/builtin.js';
import { detectModel } from '../drivers/hal/model-format.js';
import { HalRegistry } from '../drivers/hal/registry.js';
import type { Feeds, TensorSpec } from '../drivers/hal/types.js';
import { Tensor } from '../drivers/tensor/tensor.js';
import { InferenceService } from '../runtime/inference/inference-service.js';
import { ResourcePool } from '../runtime/resource-pool.js';
import { round } from './stats.js';

interface Case {
  readonly label: string;
  readonly file: string;
  /** Inputs the model needs beyond random data in its declared shape. */
  readonly feeds?: (specs: readonly TensorSpec[]) => Feeds;
}

const zoo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../models/zoo');
const CASES: readonly Case[] = [
  { label: 'BlazeFace back 256 (ONNX)', file: 'blazeface-back-256/face_detection_back_256x256_barracuda.onnx' },
  { label: 'BlazeFace front 128 (ONNX)', file: 'blazeface-front-128/face_detection_front_128x128_barracuda.onnx' },
  {
    label: 'Silero VAD v4 frame (ONNX)',
    file: 'silero-vad-v4/silero_vad.onnx',
    feeds: () => ({ input: random('float32', [1, 512]), sr: new Tensor('int64', [], BigInt64Array.of(16000n)), h: Tensor.zeros('float32', [2, 1, 64]), c: Tensor.zeros('float32', [2, 1, 64]) }),
  },
  { label: 'BlazeFace (TF.js graph)', file: 'human-blazeface' },
  { label: 'BlazeFace short range (TFLite)', file: 'blazeface-short-range-tflite/face_detection_short_range.tflite' },
];

const args = process.argv.slice(2);
const rounds = Number(args[args.indexOf('--rounds') + 1] ?? 0) || 200;
const hal = createBuiltinHal();
const pool = await ResourcePool.discover(hal);
const rows: { model: string; device: string; engine: string; backend: string; medianMs: number; p90Ms: number; vsCpu: number | null }[] = [];

for (const c of CASES) {
  let model;
  try {
    model = await detectModel(path.join(zoo, c.file));
  } catch {
    continue; // not in this checkout's zoo
  }
  let cpuMedian: number | undefined;
  // The CPU goes first so that every accelerator row has its baseline.
  const devices = pool.devices.filter((d) => d.status.state === 'ready' && d.formats.includes(model.format)).sort((a, b) => Number(b.kind === 'cpu') - Number(a.kind === 'cpu'));
  for (const device of devices) {
    for (const engine of hal.engines.filter((e) => e.formats.includes(model.format))) {
      if (!(await engine.supports(device)).ok) continue;
      const service = new InferenceService(model, { pool, hal: new HalRegistry().register(engine), devices: [device.id], threads: 1 });
      try {
        await service.start();
      } catch (error) {
        console.error(`skip ${c.label} on ${device.id} with ${engine.name}: ${error instanceof Error ? error.message.split('\n')[0] : String(error)}`);
        continue;
      }
      const feeds = c.feeds?.(service.inputs) ?? Object.fromEntries(service.inputs.map((s) => [s.name, random(s.dtype, s.shape.map((d) => d ?? 1))]));
      for (let i = 0; i < Math.max(10, rounds / 10); i++) await service.infer(feeds);
      const times: number[] = [];
      for (let i = 0; i < rounds; i++) {
        const t0 = performance.now();
        await service.infer(feeds);
        times.push(performance.now() - t0);
      }
      times.sort((a, b) => a - b);
      const median = times[times.length >> 1] ?? 0;
      if (device.kind === 'cpu' && cpuMedian === undefined) cpuMedian = median;
      rows.push({ model: c.label, device: device.id, engine: engine.name, backend: service.backend, medianMs: round(median), p90Ms: round(times[Math.floor(times.length * 0.9)] ?? 0), vsCpu: cpuMedian === undefined ? null : round(cpuMedian / median, 2) });
      await service.stop();
    }
  }
}

if (args.includes('--json')) {
  process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
} else {
  console.log(`Latency per model, engine and backend, ${rounds} runs each after warm-up, 1 intra-op thread on CPU; node ${process.version}`);
  console.log(['model'.padEnd(32), 'device'.padEnd(20), 'engine'.padEnd(12), 'backend'.padEnd(10), 'median ms'.padStart(10), 'p90 ms'.padStart(9), 'speed-up vs cpu'.padStart(16)].join(' '));
  for (const r of rows) {
    console.log([r.model.padEnd(32), r.device.padEnd(20), r.engine.padEnd(12), r.backend.padEnd(10), r.medianMs.toFixed(3).padStart(10), r.p90Ms.toFixed(3).padStart(9), (r.vsCpu === null ? '-' : `${r.vsCpu.toFixed(2)}x`).padStart(16)].join(' '));
  }
}

function random(dtype: Tensor['dtype'], shape: number[]): Tensor {
  const t = Tensor.zeros(dtype, shape);
  if (t.data instanceof Float32Array) for (let i = 0; i < t.data.length; i++) t.data[i] = Math.random() * 2 - 1;
  else if (t.data instanceof Uint8Array || t.data instanceof Int8Array) for (let i = 0; i < t.data.length; i++) t.data[i] = Math.floor(Math.random() * 100);
  return t;
}
