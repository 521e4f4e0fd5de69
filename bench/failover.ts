/**
 * Failover gap: how long a stream of requests goes without results when the preferred device
 * fails, and whether any request is lost.
 *
 * BlazeFace front 128 through InferenceService with devices [accelerator, cpu]: the accelerator
 * is a fault-injection engine (drivers/engines/fault-injection.ts) whose runs are real
 * onnxruntime runs, so both devices answer for real. Requests are sent at a steady rate (default
 * every 5 ms, well under the model's capacity); after a warm-up the accelerator fails in one of
 * the ways devices fail, and the stream goes on. Measured: the gap, the longest time between two
 * consecutive answers around the failure (the normal spacing is the send interval), the answers
 * lost (must be 0) and the latency p99 of requests sent during the failover.
 *
 * Scenarios:
 * - `unplugged`: runs fail with EAI_HAL_DEVICE_LOST. The gap is detection (one failed run) plus
 *   loading the model on the CPU and warming it up.
 * - `hung`: runs never return; `timeoutMs` 100. The gap adds the timeout.
 * - `unplugged, warm standby`: as `unplugged`, but the CPU replica was already loaded (as a
 *   peer-first service keeps it): the gap is detection alone.
 * Run: node dist/bench/failover.js [--interval MS] [--json]
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createFaultInjectingEngine, type Faults } from '../drivers/engines/fault-injection.js';
import { createOnnxruntimeEngine } from '../drivers/engines/onnxruntime.js';
import { HalRegistry } from '../drivers/hal/registry.js';
import type { DeviceInfo } from '../drivers/hal/types.js';
import { readNpy } from '../drivers/tensor/npy.js';
import { InferenceService } from '../runtime/inference/inference-service.js';
import { ResourcePool } from '../runtime/resource-pool.js';

const args = process.argv.slice(2);
const arg = (name: string, fallback: number): number => Number(args[args.indexOf(name) + 1] ?? NaN) || fallback;
const intervalMs = arg('--interval', 5);
const json = args.includes('--json');
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const MODEL = path.join(root, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx');
const ACCEL: DeviceInfo = { id: 'cuda:bench', kind: 'cuda', name: 'failing accelerator', formats: ['onnx'], status: { state: 'ready' } };
const CPU: DeviceInfo = { id: 'cpu:0', kind: 'cpu', name: 'cpu', formats: ['onnx'], status: { state: 'ready' } };
const feeds = { 'input:0': await readNpy(path.join(root, 'test/fixtures/inputs/blazeface128-face.npy')) };

interface Scenario {
  readonly name: string;
  readonly fault: Faults;
  readonly timeoutMs?: number;
  readonly warmStandby?: boolean;
}
const SCENARIOS: readonly Scenario[] = [
  { name: 'unplugged', fault: { lost: true } },
  { name: 'hung (timeout 100 ms)', fault: { hang: true }, timeoutMs: 100 },
  { name: 'unplugged, warm standby', fault: { lost: true }, warmStandby: true },
];

const results = [];
for (const scenario of SCENARIOS) results.push(await run(scenario));

if (json) process.stdout.write(`${JSON.stringify({ node: process.version, intervalMs, results }, null, 2)}\n`);
else {
  console.log(`failover gap, BlazeFace front 128, one request every ${intervalMs} ms, devices [accelerator, cpu], node ${process.version}`);
  for (const r of results) console.log(`${r.scenario.padEnd(26)} gap ${r.gapMs.toFixed(1).padStart(7)} ms   lost ${r.lost}/${r.sent}   p99 during failover ${r.failoverP99Ms.toFixed(1)} ms   normal spacing p50 ${r.normalSpacingMs.toFixed(1)} ms`);
}

async function run(scenario: Scenario): Promise<{ scenario: string; gapMs: number; lost: number; sent: number; failoverP99Ms: number; normalSpacingMs: number }> {
  const faults = new Map<string, Faults>();
  const engine = createFaultInjectingEngine(createOnnxruntimeEngine(), faults);
  const pool = new ResourcePool([ACCEL, CPU]);
  const service = new InferenceService(MODEL, { pool, hal: new HalRegistry().register(engine), devices: [ACCEL.id, CPU.id], threads: 1, name: 'bench', retry: { initialMs: 60_000 }, ...(scenario.timeoutMs === undefined ? {} : { timeoutMs: scenario.timeoutMs }) });
  await service.start();
  if (scenario.warmStandby === true) {
    // Load the CPU replica the way a failover would, then give the accelerator back the stream.
    faults.set(ACCEL.id, { failRuns: true });
    await service.infer(feeds);
    faults.delete(ACCEL.id);
  }
  const answers: { sent: number; done: number }[] = [];
  const pending: Promise<void>[] = [];
  let lost = 0;
  const t0 = performance.now();
  const failAt = t0 + 1500;
  const endAt = t0 + 3500;
  let failed = false;
  while (performance.now() < endAt) {
    if (!failed && performance.now() >= failAt) {
      faults.set(ACCEL.id, scenario.fault);
      failed = true;
    }
    const sent = performance.now();
    pending.push(service.infer(feeds).then(
      () => void answers.push({ sent, done: performance.now() }),
      () => void lost++,
    ));
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  await Promise.all(pending);
  await service.stop();
  const done = answers.map((a) => a.done).sort((a, b) => a - b);
  let gap = 0;
  for (let i = 1; i < done.length; i++) if ((done[i] as number) > failAt - 50) gap = Math.max(gap, (done[i] as number) - (done[i - 1] as number));
  const normal = done.filter((d) => d < failAt).map((d, i, xs) => (i === 0 ? 0 : d - (xs[i - 1] as number))).slice(1).sort((a, b) => a - b);
  const during = answers.filter((a) => a.sent >= failAt && a.sent < failAt + 1000).map((a) => a.done - a.sent).sort((a, b) => a - b);
  return {
    scenario: scenario.name,
    gapMs: gap,
    lost,
    sent: pending.length,
    failoverP99Ms: during[Math.min(during.length - 1, Math.floor(0.99 * during.length))] ?? 0,
    normalSpacingMs: normal[normal.length >> 1] ?? 0,
  };
}
