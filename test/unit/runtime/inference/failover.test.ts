import path from 'node:path';
import { rmSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { edgetpuProbe } from '../../../../drivers/devices/edgetpu.js';
import { createOnnxruntimeEngine } from '../../../../drivers/engines/onnxruntime.js';
import { HalRegistry } from '../../../../drivers/hal/registry.js';
import type { DeviceInfo, DeviceProbe, Outputs } from '../../../../drivers/hal/types.js';
import { readNpy } from '../../../../drivers/tensor/npy.js';
import type { Tensor } from '../../../../drivers/tensor/tensor.js';
import { InferenceService } from '../../../../runtime/inference/inference-service.js';
import { ResourcePool } from '../../../../runtime/resource-pool.js';
import { createFaultInjectingEngine, type FaultLog, type Faults } from '../../../../drivers/engines/fault-injection.js';
import { tempRoot } from '../../../support/sysroots.js';
import { until } from '../../../support/wait.js';

const repo = path.resolve(import.meta.dirname, '../../../..');
const BLAZEFACE = path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx');
const FACE = path.join(repo, 'test/fixtures/inputs/blazeface128-face.npy');
const NOFACE = path.join(repo, 'test/fixtures/inputs/blazeface128-noface.npy');

// Two accelerators that the fault-injecting engine runs on the CPU (real onnxruntime, real answers).
const device = (id: string, kind: DeviceInfo['kind']): DeviceInfo => ({ id, kind, name: id, formats: ['onnx'], status: { state: 'ready' } });
const TPU = device('edgetpu:usb-1-1', 'edgetpu');
const GPU = device('cuda:0000:01:00.0', 'cuda');
const CPU = device('cpu:0', 'cpu');

const services: InferenceService[] = [];
afterEach(async () => {
  for (const s of services.splice(0)) await s.stop();
});

function setup(devices: DeviceInfo[], options: { timeoutMs?: number } = {}): { service: InferenceService; faults: Map<string, Faults>; log: FaultLog; pool: ResourcePool } {
  const faults = new Map<string, Faults>();
  const engine = createFaultInjectingEngine(createOnnxruntimeEngine(), faults);
  const pool = new ResourcePool(devices);
  const service = new InferenceService(BLAZEFACE, { pool, hal: new HalRegistry().register(engine), devices: devices.map((d) => d.id), threads: 1, name: 'faces', retry: { initialMs: 50, maxMs: 200 }, ...options });
  services.push(service);
  return { service, faults, log: engine.log, pool };
}

/** The highest face score over BlazeFace's two score outputs: ~0.95 on the face photo, ~0.12 without. */
function best(out: Outputs): number {
  let max = Number.NEGATIVE_INFINITY;
  for (const name of ['Identity:0', 'Identity_1:0']) for (const v of (out[name] as Tensor<'float32'>).data) max = Math.max(max, 1 / (1 + Math.exp(-v)));
  return max;
}

describe('InferenceService failover', () => {
  it('moves every request off a device that is unplugged mid-stream: none lost, none answered twice', async () => {
    const { service, faults, log } = setup([TPU, CPU]);
    await service.start();
    expect(service.device.id).toBe(TPU.id);
    const face = await readNpy(FACE);
    const noface = await readNpy(NOFACE);
    const total = 120;
    let answered = 0;
    const results = Array.from({ length: total }, (_, i) =>
      service.infer({ 'input:0': i % 2 === 0 ? face : noface }).then((out) => {
        answered++;
        if (answered === 20) faults.set(TPU.id, { lost: true });
        return out;
      }),
    );
    const outputs = await Promise.all(results);
    expect(outputs).toHaveLength(total);
    outputs.forEach((out, i) => (i % 2 === 0 ? expect(best(out)).toBeGreaterThan(0.9) : expect(best(out)).toBeLessThan(0.3)));
    const tpuRuns = log.runs.get(TPU.id) ?? 0;
    const cpuRuns = log.runs.get(CPU.id) ?? 0;
    // Warm-up runs (5 per load) are counted too; every request was answered by exactly one device.
    expect(tpuRuns + cpuRuns - 5 * ((log.loads.get(TPU.id) ?? 0) + (log.loads.get(CPU.id) ?? 0))).toBe(total);
    expect(tpuRuns).toBeGreaterThan(5);
    const stats = service.stats();
    expect(stats.failovers).toBe(1);
    expect(stats.device).toBe(CPU.id);
    expect(stats.replicas.find((r) => r.device === TPU.id)).toMatchObject({ state: 'down', reason: expect.stringContaining(TPU.id) });
    expect(stats.errors).toBe(0);
    expect(stats.requests).toBe(total);
  });

  it('brings the preferred device back when it recovers, and unloads the stand-in', async () => {
    const { service, faults, log } = setup([TPU, CPU]);
    await service.start();
    const face = await readNpy(FACE);
    faults.set(TPU.id, { lost: true });
    expect(best(await service.infer({ 'input:0': face }))).toBeGreaterThan(0.9);
    expect(service.device.id).toBe(CPU.id);
    faults.delete(TPU.id);
    await until(() => service.stats().replicas[0]?.state === 'up', 5000);
    expect(service.device.id).toBe(TPU.id);
    expect(service.stats().replicas[1]?.state).toBe('idle');
    const before = log.runs.get(TPU.id) ?? 0;
    expect(best(await service.infer({ 'input:0': face }))).toBeGreaterThan(0.9);
    expect(log.runs.get(TPU.id)).toBe(before + 1);
  });

  it('treats a run that hangs past the timeout as a failed device and answers from the next one', async () => {
    const { service, faults } = setup([GPU, CPU], { timeoutMs: 300 });
    await service.start();
    faults.set(GPU.id, { hang: true });
    const face = await readNpy(FACE);
    const t0 = performance.now();
    const outs = await Promise.all([1, 2, 3, 4].map(() => service.infer({ 'input:0': face })));
    const ms = performance.now() - t0;
    for (const out of outs) expect(best(out)).toBeGreaterThan(0.9);
    expect(ms).toBeLessThan(5000); // the timeout (300 ms), the CPU load and warm-up, not forever
    expect(service.stats()).toMatchObject({ device: CPU.id, failovers: 1 });
    expect(service.stats().replicas[0]?.reason).toContain('did not finish');
  });

  it('keeps a device through one failed run, but not through three in a row', async () => {
    const { service, faults } = setup([GPU, CPU]);
    await service.start();
    const face = await readNpy(FACE);
    faults.set(GPU.id, { failRuns: true });
    // Each failed run is retried on the CPU, so the caller still gets an answer.
    expect(best(await service.infer({ 'input:0': face }))).toBeGreaterThan(0.9);
    expect(service.stats().replicas[0]?.state).toBe('up');
    await service.infer({ 'input:0': face });
    await service.infer({ 'input:0': face });
    expect(service.stats().replicas[0]?.state).toBe('down');
    expect(service.stats().failovers).toBe(1);
  });

  it('fails requests with a clear error when every device is down, and never hangs', async () => {
    const { service, faults } = setup([GPU, CPU]);
    await service.start();
    faults.set(GPU.id, { lost: true });
    faults.set(CPU.id, { lost: true });
    const face = await readNpy(FACE);
    await expect(service.infer({ 'input:0': face })).rejects.toMatchObject({ code: 'EAI_SERVICE_NO_DEVICE', message: expect.stringContaining('no device can run faces') });
    expect(service.stats().errors).toBe(1);
  });

  it('fails over when the probe no longer finds the device (a Coral USB stick pulled out)', async () => {
    const sys = await tempRoot({
      '/sys/bus/usb/devices/1-1/idVendor': '18d1\n',
      '/sys/bus/usb/devices/1-1/idProduct': '9302\n',
      '/sys/bus/usb/devices/1-1/busnum': '1\n',
      '/sys/bus/usb/devices/1-1/devnum': '4\n',
      '/usr/lib/x86_64-linux-gnu/libedgetpu.so.1': '',
    });
    // The real Edge TPU probe on a throwaway sysfs; its stick "runs ONNX" through the test engine.
    const probe: DeviceProbe = { kind: 'edgetpu', probe: async (s) => (await edgetpuProbe.probe(s)).map((d) => ({ ...d, formats: ['onnx'] })) };
    const cpuProbe: DeviceProbe = { kind: 'cpu', probe: async () => [CPU] };
    const faults = new Map<string, Faults>();
    const hal = new HalRegistry().register(probe, 10).register(cpuProbe).register(createFaultInjectingEngine(createOnnxruntimeEngine(), faults));
    const pool = await ResourcePool.discover(hal, sys.root);
    const stick = pool.devices.find((d) => d.kind === 'edgetpu');
    expect(stick?.id).toBe('edgetpu:usb-1-1');
    const service = new InferenceService(BLAZEFACE, { pool, hal, devices: ['edgetpu', 'cpu'], threads: 1, name: 'faces', retry: { initialMs: 50, maxMs: 100 } });
    services.push(service);
    await service.start();
    expect(service.device.id).toBe('edgetpu:usb-1-1');

    rmSync(path.join(sys.root, 'sys/bus/usb/devices/1-1'), { recursive: true });
    const change = await pool.refresh();
    expect(change.lost.map((d) => d.id)).toEqual(['edgetpu:usb-1-1']);
    expect(pool.device('edgetpu:usb-1-1')?.status).toMatchObject({ state: 'unavailable', reason: 'no longer found by the edgetpu probe' });
    expect(service.stats().replicas[0]).toMatchObject({ state: 'down', reason: 'no longer found by the edgetpu probe' });
    expect(best(await service.infer({ 'input:0': await readNpy(FACE) }))).toBeGreaterThan(0.9);
    expect(service.device.id).toBe('cpu:0');
  });

  it('places on the least loaded of the devices a preference ranks equal', async () => {
    const stickA = device('edgetpu:usb-1-1', 'edgetpu');
    const stickB = device('edgetpu:usb-1-2', 'edgetpu');
    const { pool } = setup([stickA, stickB, CPU]);
    // Another task already needs 60 % of stick A.
    pool.reserve(stickA.id, { owner: 'tracker', rateHz: 60, costMs: () => 10 });
    const placed = new InferenceService(BLAZEFACE, { pool, hal: new HalRegistry().register(createFaultInjectingEngine(createOnnxruntimeEngine(), new Map())), devices: ['edgetpu', 'cpu'], threads: 1, name: 'faces' });
    services.push(placed);
    await placed.start();
    expect(placed.device.id).toBe(stickB.id);
    expect(placed.stats().replicas.map((r) => r.device)).toEqual([stickB.id, stickA.id, CPU.id]);
    // Its reservation holds the weights and the model's input and output buffers.
    const held = pool.usage(stickB.id).reservations[0];
    expect(held?.memoryBytes).toBeGreaterThan(128 * 128 * 3 * 4);
  });
});
