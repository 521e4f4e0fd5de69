import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createBuiltinHal } from '../../../../drivers/builtin.js';
import { PlacementError } from '../../../../drivers/errors.js';
import { createOnnxruntimeEngine } from '../../../../drivers/engines/onnxruntime.js';
import { HalRegistry } from '../../../../drivers/hal/registry.js';
import type { DeviceInfo } from '../../../../drivers/hal/types.js';
import { readNpy } from '../../../../drivers/tensor/npy.js';
import { Tensor } from '../../../../drivers/tensor/tensor.js';
import { InferenceService, ServiceError } from '../../../../runtime/inference/inference-service.js';
import { ResourcePool } from '../../../../runtime/resource-pool.js';

const repo = path.resolve(import.meta.dirname, '../../../..');
const BLAZEFACE = path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx');
const MiB = 1024 * 1024;
const cpu = (memoryBytes?: number): DeviceInfo => ({ id: 'cpu:0', kind: 'cpu', name: 'test cpu', formats: ['onnx', 'tfjs-graph', 'tfjs-layers'], status: { state: 'ready' }, ...(memoryBytes === undefined ? {} : { memoryBytes }) });
// An onnxruntime install without the CUDA provider library, whatever this machine has.
const noCudaHal = (): HalRegistry => new HalRegistry().register(createOnnxruntimeEngine({ bindingDir: '/nonexistent/onnxruntime-node/bin' }));
const gpuWithoutProvider: DeviceInfo = { id: 'cuda:0000:01:00.0', kind: 'cuda', name: 'NVIDIA GeForce RTX 4090', memoryBytes: 24 * 1024 * MiB, formats: ['onnx'], status: { state: 'ready' } };

describe('InferenceService', () => {
  it('places, reserves, runs and releases (the seed API)', async () => {
    const pool = new ResourcePool([cpu(16 * 1024 * MiB)]);
    const service = new InferenceService(BLAZEFACE, { pool, devices: ['cpu'], threads: 1, name: 'faces', priority: 5 });
    expect(service.started).toBe(false);
    await service.start();
    expect(service.device.id).toBe('cpu:0');
    expect(service.engine).toBe('onnxruntime');
    expect(service.inputs[0]?.name).toBe('input:0');
    const usage = pool.usage('cpu:0');
    expect(usage.reservations).toHaveLength(1);
    expect(usage.reservations[0]).toMatchObject({ owner: 'faces', priority: 5 });
    expect(usage.reservedBytes).toBeGreaterThan(100_000); // the model file's weights

    const out = await service.infer({ 'input:0': await readNpy(path.join(repo, 'test/fixtures/inputs/blazeface128-face.npy')) });
    expect(Object.keys(out).sort()).toEqual(['Identity:0', 'Identity_1:0', 'Identity_2:0', 'Identity_3:0']);
    await expect(service.infer({ 'input:0': Tensor.zeros('float32', [1, 64, 64, 3]) })).rejects.toMatchObject({ code: 'EAI_MODEL_INPUT_SHAPE' });
    const stats = service.stats();
    expect(stats).toMatchObject({ name: 'faces', device: 'cpu:0', engine: 'onnxruntime', backend: 'cpu', requests: 2, errors: 1 });
    expect(stats.latencyMs.count).toBe(1);
    expect(stats.latencyMs.p50).toBeGreaterThan(0);

    await service.stop();
    expect(pool.usage('cpu:0').reservations).toHaveLength(0);
    await expect(service.infer({})).rejects.toBeInstanceOf(ServiceError);
  });

  it('falls back down the preference list when the GPU provider is missing', async () => {
    const pool = new ResourcePool([gpuWithoutProvider, cpu()]);
    const service = new InferenceService(BLAZEFACE, { pool, hal: noCudaHal(), devices: ['cuda', 'cpu'] });
    await service.start();
    expect(service.device.id).toBe('cpu:0');
    await service.stop();
  });

  it('refuses to start when the model does not fit in the device memory, and holds nothing', async () => {
    const pool = new ResourcePool([cpu(100 * 1024)]); // the model file alone is 442 kB
    const service = new InferenceService(BLAZEFACE, { pool });
    await expect(service.start()).rejects.toMatchObject({ code: 'EAI_POOL_NO_MEMORY' });
    expect(pool.usage('cpu:0').reservations).toHaveLength(0);
  });

  it('reports every refused device when nothing can run the model', async () => {
    const pool = new ResourcePool([gpuWithoutProvider]);
    const e = (await new InferenceService(BLAZEFACE, { pool, hal: noCudaHal(), devices: ['cuda'] }).start().catch((x: unknown) => x)) as PlacementError;
    expect(e).toBeInstanceOf(PlacementError);
    expect(e.message).toMatch(/cuda:0000:01:00.0 with onnxruntime: .*not found/u);
  });

  it('rejects a missing model and double start', async () => {
    await expect(new InferenceService('/nope/model.onnx', { pool: new ResourcePool([cpu()]) }).start()).rejects.toMatchObject({ code: 'EAI_MODEL_NOT_FOUND' });
    const service = new InferenceService(BLAZEFACE, { pool: new ResourcePool([cpu()]), hal: createBuiltinHal() });
    await service.start();
    await expect(service.start()).rejects.toMatchObject({ code: 'EAI_SERVICE_STARTED' });
    await service.stop();
    await service.stop();
  });
});
