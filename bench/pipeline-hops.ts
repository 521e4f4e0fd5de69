/**
 * Per-hop overhead of the pipeline executor: one message at a time through a chain of N no-op
 * stages, against the same chain as direct async function calls, in the same run. Reports the
 * per-hop p50/p99 difference. Goal (issue 4): <= 50 µs p99 per hop (Holoscan: 10-17 µs in C++).
 * Run: node dist/bench/pipeline-hops.js [--hops N] [--messages N] [--json]
 */
import { Type } from '@sinclair/typebox';
import { defineNode } from '../runtime/pipeline/definition.js';
import { NodeKinds } from '../runtime/pipeline/node-kinds.js';
import { Pipeline } from '../runtime/pipeline/pipeline.js';

const args = process.argv.slice(2);
const arg = (name: string, fallback: number): number => Number(args[args.indexOf(name) + 1] ?? NaN) || fallback;
const hops = arg('--hops', 10);
const messages = arg('--messages', 2000);

/** Emits one message, waits until the sink has it, then the next: latency without queueing. */
let delivered: (() => void) | undefined;
const source = defineNode({
  use: 'bench.source',
  role: 'source',
  description: 'one message at a time',
  params: Type.Object({}),
  inputs: [],
  outputs: ['out'],
  async run(ctx) {
    for (let i = 0; i < messages + 200 && !ctx.signal.aborted; i++) {
      const got = new Promise<void>((resolve) => (delivered = resolve));
      await ctx.emit('out', i, { sensorTimeNs: BigInt(i), arrivalMs: performance.now(), origin: ctx.name, seq: i });
      await got;
    }
  },
});
const noop = defineNode({ use: 'bench.noop', role: 'stage', description: 'passes messages on', params: Type.Object({}), inputs: ['in'], outputs: ['out'], process: (_p, m, ctx) => ctx.emit('out', m.value, m) });
const latencies: number[] = [];
const sink = defineNode({
  use: 'bench.sink',
  role: 'sink',
  description: 'records end-to-end latency',
  params: Type.Object({}),
  inputs: ['in'],
  outputs: [],
  process(_p, m) {
    if ((m.value as number) >= 200) latencies.push(performance.now() - m.arrivalMs);
    delivered?.();
  },
});

const stages: Record<string, { use: string }> = {};
const flows: string[] = [];
let previous = 'src';
for (let i = 0; i < hops; i++) {
  stages[`s${i}`] = { use: 'bench.noop' };
  flows.push(`${previous} -> s${i}`);
  previous = `s${i}`;
}
flows.push(`${previous} -> out`);
const pipeline = await Pipeline.fromConfig({ name: 'hops', sources: { src: { use: 'bench.source' } }, stages, sinks: { out: { use: 'bench.sink' } }, flows }, { kinds: new NodeKinds().register(source, noop, sink), statsIntervalMs: 0 });
const done = pipeline.finished();
await pipeline.start();
await done;
await pipeline.stop();

// Baseline: the same chain as awaited function calls.
const direct: number[] = [];
const chain = async (v: number, depth: number): Promise<number> => (depth === 0 ? v : chain(v, depth - 1));
for (let i = 0; i < messages + 200; i++) {
  const t0 = performance.now();
  await chain(i, hops + 1);
  if (i >= 200) direct.push(performance.now() - t0);
}

const q = (xs: number[], p: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))] ?? 0;
const result = {
  hops,
  messages,
  pipelineP50Us: q(latencies, 0.5) * 1000,
  pipelineP99Us: q(latencies, 0.99) * 1000,
  directP50Us: q(direct, 0.5) * 1000,
  directP99Us: q(direct, 0.99) * 1000,
  perHopP50Us: ((q(latencies, 0.5) - q(direct, 0.5)) * 1000) / (hops + 1),
  perHopP99Us: ((q(latencies, 0.99) - q(direct, 0.99)) * 1000) / (hops + 1),
};
if (args.includes('--json')) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
else {
  console.log(`pipeline of ${hops} no-op stages (+ sink), ${messages} messages one at a time, node ${process.version}`);
  console.log(`end to end  pipeline p50 ${result.pipelineP50Us.toFixed(1)} µs  p99 ${result.pipelineP99Us.toFixed(1)} µs | direct calls p50 ${result.directP50Us.toFixed(1)} µs  p99 ${result.directP99Us.toFixed(1)} µs`);
  console.log(`per hop     p50 ${result.perHopP50Us.toFixed(1)} µs  p99 ${result.perHopP99Us.toFixed(1)} µs  (goal <= 50 µs p99: ${result.perHopP99Us <= 50 ? 'met' : 'NOT met'})`);
}
