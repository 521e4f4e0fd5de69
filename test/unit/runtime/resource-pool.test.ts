import { describe, expect, it } from 'vitest';
import { PlacementError } from '../../../drivers/errors.js';
import type { DeviceInfo } from '../../../drivers/hal/types.js';
import { ResourceError, ResourcePool } from '../../../runtime/resource-pool.js';

const GiB = 1024 ** 3;
const jetson: DeviceInfo = { id: 'jetson:gpu0', kind: 'jetson', name: 'Orin NX', memoryBytes: 8 * GiB, formats: ['onnx'], status: { state: 'ready' } };
const cpu: DeviceInfo = { id: 'cpu:0', kind: 'cpu', name: 'cpu', memoryBytes: 16 * GiB, formats: ['onnx'], status: { state: 'ready' } };
const tpu: DeviceInfo = { id: 'edgetpu:usb-2-1', kind: 'edgetpu', name: 'Coral', formats: ['tflite-edgetpu'], status: { state: 'unavailable', reason: 'libedgetpu.so.1 not found', fix: 'install libedgetpu1-std' } };

describe('ResourcePool', () => {
  it('getDevice follows the preference and skips unavailable devices', () => {
    const pool = new ResourcePool([tpu, jetson, cpu]);
    expect(pool.getDevice(['edgetpu', 'jetson', 'cpu']).id).toBe('jetson:gpu0');
    expect(pool.getDevice().id).toBe('jetson:gpu0');
    expect(pool.getDevice(['cpu:0']).id).toBe('cpu:0');
  });

  it('getDevice explains why nothing is ready', () => {
    const pool = new ResourcePool([tpu]);
    const e = (() => {
      try {
        pool.getDevice(['edgetpu']);
      } catch (x) {
        return x as PlacementError;
      }
      return undefined;
    })();
    expect(e).toBeInstanceOf(PlacementError);
    expect(e?.code).toBe('EAI_HAL_NO_DEVICE');
    expect(e?.message).toContain('libedgetpu.so.1 not found (fix: install libedgetpu1-std)');
  });

  it('register adds a declared device and refuses duplicates and unknown kinds', () => {
    const pool = new ResourcePool([cpu]);
    pool.register({ ...jetson, id: 'jetson:peer-1' });
    expect(pool.devices.map((d) => d.id)).toEqual(['cpu:0', 'jetson:peer-1']);
    expect(() => pool.register(cpu)).toThrow(ResourceError);
    expect(() => pool.register({ ...cpu, id: 'x', kind: 'tpu' as DeviceInfo['kind'] })).toThrow(/unknown kind 'tpu'/u);
  });

  it('reserve accounts memory and refuses what does not fit, saying who holds it', () => {
    const pool = new ResourcePool([jetson]);
    const a = pool.reserve('jetson:gpu0', { owner: 'detector', memoryBytes: 5 * GiB, priority: 3 });
    expect(pool.usage('jetson:gpu0')).toMatchObject({ reservedBytes: 5 * GiB, freeBytes: 3 * GiB });
    let error: ResourceError | undefined;
    try {
      pool.reserve('jetson:gpu0', { owner: 'segmenter', memoryBytes: 4 * GiB });
    } catch (e) {
      error = e as ResourceError;
    }
    expect(error?.code).toBe('EAI_POOL_NO_MEMORY');
    expect(error?.message).toContain('detector 5120.0 MiB');
    pool.release(a);
    pool.release(a);
    expect(pool.usage('jetson:gpu0').freeBytes).toBe(8 * GiB);
    expect(pool.reserve('jetson:gpu0', { owner: 'segmenter', memoryBytes: 4 * GiB }).priority).toBe(1);
  });

  it('unregister is refused while reserved', () => {
    const pool = new ResourcePool([cpu]);
    const r = pool.reserve('cpu:0', { owner: 'vad' });
    expect(() => pool.unregister('cpu:0')).toThrow(/reserved by vad/u);
    pool.release(r);
    pool.unregister('cpu:0');
    expect(pool.devices).toEqual([]);
  });

  it('reserve on an unknown device or with negative memory fails clearly', () => {
    const pool = new ResourcePool([cpu]);
    expect(() => pool.reserve('cuda:0', { owner: 'x' })).toThrow(/No device 'cuda:0'/u);
    expect(() => pool.reserve('cpu:0', { owner: 'x', memoryBytes: -1 })).toThrow(/non-negative/u);
  });

  it('resize grows a reservation when the owner learns more, and refuses what does not fit', () => {
    const pool = new ResourcePool([jetson]);
    pool.reserve('jetson:gpu0', { owner: 'planner', memoryBytes: 6 * GiB });
    const r = pool.reserve('jetson:gpu0', { owner: 'detector', memoryBytes: 1 * GiB });
    expect(pool.resize(r, 2 * GiB).memoryBytes).toBe(2 * GiB);
    expect(pool.usage('jetson:gpu0').freeBytes).toBe(0);
    expect(() => pool.resize(r, 3 * GiB)).toThrow(expect.objectContaining({ code: 'EAI_POOL_NO_MEMORY' }));
    expect(pool.usage('jetson:gpu0').reservedBytes).toBe(8 * GiB);
    pool.release(r);
    expect(() => pool.resize(r, 1)).toThrow(expect.objectContaining({ code: 'EAI_POOL_RELEASED' }));
  });

  it('admits a declared rate the device can give and refuses one it cannot, saying by how much', () => {
    const pool = new ResourcePool([cpu]);
    const a = pool.reserve('cpu:0', { owner: 'obstacles', priority: 4, rateHz: 30, costMs: () => 10 });
    expect(pool.load('cpu:0')).toBeCloseTo(0.3, 6);
    let error: Error | undefined;
    try {
      pool.reserve('cpu:0', { owner: 'scene', priority: 1, rateHz: 100, costMs: () => 10 });
    } catch (e) {
      error = e as Error;
    }
    // Entitled: obstacles capped at its 30/s (30 %), scene gets the remaining 70 % = 70/s.
    expect(error).toMatchObject({ code: 'EAI_SCHED_ADMISSION' });
    expect(error?.message).toMatch(/^scene needs 100\/s × 10\.0 ms = 100(\.0)? % of cpu:0, but at priority 1 it is entitled to 70(\.0)?\/s \(70(\.0)? %\): short by 30(\.0)?\/s \(30 %\)/u);
    expect(pool.usage('cpu:0').reservations.map((r) => r.owner)).toEqual(['obstacles']);
    const b = pool.reserve('cpu:0', { owner: 'scene', priority: 1, rateHz: 60, costMs: () => 10 });
    expect(pool.shares('cpu:0').map((x) => [x.owner, x.entitledRateHz])).toEqual([
      ['obstacles', 30],
      ['scene', 60],
    ]);
    pool.release(a);
    pool.release(b);
    expect(pool.load('cpu:0')).toBe(0);
  });
});
