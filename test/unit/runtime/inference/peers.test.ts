import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { DeviceInfo, Feeds, Outputs } from '../../../../drivers/hal/types.js';
import { readNpy } from '../../../../drivers/tensor/npy.js';
import { Tensor } from '../../../../drivers/tensor/tensor.js';
import { ensemble, splitAcross } from '../../../../runtime/inference/aggregate.js';
import { batchLayout } from '../../../../runtime/inference/batching.js';
import { InferenceService } from '../../../../runtime/inference/inference-service.js';
import { ResourcePool } from '../../../../runtime/resource-pool.js';
import { LoopbackTransport } from '../../../support/loopback-transport.js';
import { until } from '../../../support/wait.js';

const repo = path.resolve(import.meta.dirname, '../../../..');
const BLAZEFACE = path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx');
const SILERO = path.join(repo, 'models/zoo/silero-vad-v4/silero_vad.onnx');
const FACE = path.join(repo, 'test/fixtures/inputs/blazeface128-face.npy');
const cpu = (): DeviceInfo => ({ id: 'cpu:0', kind: 'cpu', name: 'test cpu', formats: ['onnx'], status: { state: 'ready' } });

const started: InferenceService[] = [];
afterEach(async () => {
  for (const s of started.splice(0)) await s.stop();
});

async function service(model: string, options: ConstructorParameters<typeof InferenceService>[1] = {}): Promise<InferenceService> {
  const s = new InferenceService(model, { pool: new ResourcePool([cpu()]), threads: 1, ...options });
  started.push(s);
  await s.start();
  return s;
}

/** An edge server: a real InferenceService answering peers' requests through the transport. */
async function edgeServer(transport: LoopbackTransport, target: string, peer: string, model = BLAZEFACE): Promise<() => Promise<void>> {
  const server = await service(model, { name: `${peer} server` });
  return transport.serve(target, path.basename(model), async ({ feeds }) => {
    const t0 = performance.now();
    const outputs = await server.infer(feeds);
    return { outputs, device: server.device.id, runMs: performance.now() - t0 };
  }, peer);
}

function same(a: Outputs, b: Outputs): void {
  expect(Object.keys(a).sort()).toEqual(Object.keys(b).sort());
  for (const [name, t] of Object.entries(a)) expect(Array.from((b[name] as Tensor).data as Float32Array)).toEqual(Array.from(t.data as Float32Array));
}

describe('InferenceService offloading to peers', () => {
  it('sends requests to the edge server first and keeps the local device loaded as a standby', async () => {
    const transport = new LoopbackTransport();
    await edgeServer(transport, 'edge', 'edge-1');
    const robot = await service(BLAZEFACE, { devices: ['peer:edge', 'cpu'], peers: { transport, targets: [{ target: 'edge', timeoutMs: 2000 }] }, name: 'robot' });
    const feeds = { 'input:0': await readNpy(FACE) };
    const remote = await robot.infer(feeds);
    expect(robot.target).toBe('peer:edge');
    expect(transport.sent.at(-1)).toEqual({ target: 'edge', peer: 'edge-1' });
    same(remote, await (await service(BLAZEFACE)).infer(feeds));
    const stats = robot.stats();
    expect(stats).toMatchObject({ device: 'peer:edge', engine: 'peer', backend: 'remote' });
    expect(stats.replicas.map((r) => [r.device, r.state])).toEqual([
      ['peer:edge', 'up'],
      ['cpu:0', 'up'],
    ]);
    expect(robot.device.id).toBe('cpu:0'); // the standby's device
  });

  it('fails over to local execution when the edge server stops answering, and goes back once it does', async () => {
    const transport = new LoopbackTransport();
    const unserve = await edgeServer(transport, 'edge', 'edge-1');
    const robot = await service(BLAZEFACE, { devices: ['peer:edge', 'cpu'], peers: { transport, targets: [{ target: 'edge', timeoutMs: 200 }] }, retry: { initialMs: 100, maxMs: 100 }, name: 'robot' });
    const feeds = { 'input:0': await readNpy(FACE) };
    await robot.infer(feeds);
    await unserve();
    const t0 = performance.now();
    const out = await robot.infer(feeds); // times out on the edge (200 ms), answered locally
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(Object.keys(out)).toHaveLength(4);
    expect(robot.stats()).toMatchObject({ device: 'cpu:0', failovers: 1 });
    expect(robot.stats().replicas[0]).toMatchObject({ state: 'down', reason: expect.stringContaining('no answer from edge') });

    await edgeServer(transport, 'edge', 'edge-2');
    await until(() => robot.stats().replicas[0]?.state === 'up', 3000);
    await robot.infer(feeds);
    expect(transport.sent.at(-1)).toEqual({ target: 'edge', peer: 'edge-2' });
  });

  it('tries the next peer when one is unreachable', async () => {
    const transport = new LoopbackTransport();
    await edgeServer(transport, 'edge-b', 'b-1');
    transport.unreachable.add('edge-a');
    const robot = await service(BLAZEFACE, { devices: ['peer:edge-a', 'peer:edge-b', 'cpu'], peers: { transport, targets: [{ target: 'edge-a' }, { target: 'edge-b' }] }, name: 'robot' });
    await robot.infer({ 'input:0': await readNpy(FACE) });
    expect(robot.target).toBe('peer:edge-b');
    expect(robot.stats().replicas.map((r) => r.state)).toEqual(['down', 'up', 'up']);
  });

  it('refuses a peer name that is not a target, and a peers-only service without a signature it cannot learn', async () => {
    const transport = new LoopbackTransport();
    await expect(service(BLAZEFACE, { devices: ['peer:nowhere', 'cpu'], peers: { transport, targets: [{ target: 'edge' }] } })).rejects.toMatchObject({ code: 'EAI_SERVICE_BAD_PEER', message: expect.stringContaining("'peer:nowhere'") });
  });
});

describe('ensemble and split across runners', () => {
  it('averages (or takes the max of) the members, and tolerates a failed member down to the quorum', async () => {
    const constant = (v: number) => ({ infer: async (): Promise<Outputs> => ({ y: new Tensor('float32', [2], Float32Array.of(v, -v)) }) });
    const broken = { infer: async (): Promise<Outputs> => Promise.reject(new Error('peer gone')) };
    const mean = await ensemble([constant(1), constant(3)], {}, 'mean');
    expect(Array.from(mean.outputs['y']?.data as Float32Array)).toEqual([2, -2]);
    const max = await ensemble([constant(1), constant(3)], {}, 'max');
    expect(Array.from(max.outputs['y']?.data as Float32Array)).toEqual([3, -1]);
    const partial = await ensemble([constant(1), broken, constant(3)], {}, 'mean', { quorum: 2 });
    expect(partial.answered).toBe(2);
    expect(partial.failures[0]?.message).toBe('peer gone');
    await expect(ensemble([constant(1), broken], {}, 'mean')).rejects.toMatchObject({ code: 'EAI_AGGREGATE_QUORUM' });
  });

  it('splits a batch of real speech frames across three runners and puts the answers back in order, retrying a failed part elsewhere', async () => {
    const vad = await service(SILERO, { executor: 'inline' });
    const layout = batchLayout(vad.inputs, vad.outputs, 'silero_vad.onnx');
    const audio = (await readNpy(path.join(repo, 'test/fixtures/inputs/vad-speech.npy'))).data as Float32Array;
    const rows = 6;
    const input = new Tensor('float32', [rows, 512], audio.slice(16_000, 16_000 + rows * 512));
    const feeds: Feeds = { input, sr: new Tensor('int64', [], BigInt64Array.of(16000n)), h: Tensor.zeros('float32', [2, rows, 64]), c: Tensor.zeros('float32', [2, rows, 64]) };
    const whole = await vad.infer(feeds);
    let calls = 0;
    const flaky = { infer: async (f: Feeds): Promise<Outputs> => (++calls === 1 ? Promise.reject(new Error('timed out')) : vad.infer(f)) };
    const parts = await splitAcross([vad, flaky, vad], feeds, layout);
    // Two rows per part: MLAS takes the same path for any batch of two or more, so the bits match.
    same(whole, parts);
    expect(parts['output']?.shape).toEqual([rows, 1]);
    expect(parts['hn']?.shape).toEqual([2, rows, 64]);
  });
});
