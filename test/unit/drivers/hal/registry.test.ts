import { describe, expect, it } from 'vitest';
import { PlacementError } from '../../../../drivers/errors.js';
import { HalRegistry, orderDevices } from '../../../../drivers/hal/registry.js';
import { SysRoot } from '../../../../drivers/hal/sysroot.js';
import type { DeviceInfo, DeviceProbe, Engine, LoadedModel, ModelFormat, Support } from '../../../../drivers/hal/types.js';

const ready = { state: 'ready' } as const;

function device(id: string, kind: DeviceInfo['kind'], formats: ModelFormat[], status: DeviceInfo['status'] = ready): DeviceInfo {
  return { id, kind, name: id, formats, status };
}

function probe(kind: DeviceInfo['kind'], devices: DeviceInfo[] | Error): DeviceProbe {
  return {
    kind,
    async probe() {
      if (devices instanceof Error) throw devices;
      return devices;
    },
  };
}

function engine(name: string, formats: ModelFormat[], support: (d: DeviceInfo) => Support): Engine {
  return {
    name,
    formats,
    async supports(d) {
      return support(d);
    },
    async load(): Promise<LoadedModel> {
      throw new Error('not used');
    },
  };
}

const gpu = device('cuda:0000:01:00.0', 'cuda', ['onnx']);
const cpu = device('cpu:0', 'cpu', ['onnx', 'tflite']);
const tpu = device('edgetpu:usb-1-1', 'edgetpu', ['tflite-edgetpu', 'tflite'], { state: 'unavailable', reason: 'libedgetpu.so.1 not found', fix: 'install libedgetpu1-std' });
const onnx = { path: 'm.onnx', format: 'onnx' as const };

describe('HalRegistry.discover', () => {
  it('lists devices in probe priority order', async () => {
    const hal = new HalRegistry().register(probe('cpu', [cpu]), 0).register(probe('cuda', [gpu]), 40);
    const devices = await hal.discover(await SysRoot.open('/'));
    expect(devices.map((d) => d.id)).toEqual(['cuda:0000:01:00.0', 'cpu:0']);
  });

  it('turns a failing probe into one unavailable entry and keeps the others', async () => {
    const hal = new HalRegistry().register(probe('cpu', [cpu])).register(probe('fpga', new Error('unexpected sysfs layout')), 20);
    const devices = await hal.discover(await SysRoot.open('/'));
    expect(devices).toHaveLength(2);
    expect(devices[0]).toMatchObject({ id: 'fpga:probe-error', kind: 'fpga', status: { state: 'unavailable' } });
    expect(devices[0]?.status.state === 'unavailable' && devices[0].status.reason).toContain('unexpected sysfs layout');
    expect(devices[1]?.id).toBe('cpu:0');
  });

  it('refuses two probes of one kind or two engines of one name', () => {
    const hal = new HalRegistry().register(probe('cpu', [])).register(engine('ort', ['onnx'], () => ({ ok: true })));
    expect(() => hal.register(probe('cpu', []))).toThrow(/already registered/u);
    expect(() => hal.register(engine('ort', ['onnx'], () => ({ ok: true })))).toThrow(/already registered/u);
  });
});

describe('HalRegistry.place', () => {
  const noCuda: Support = { ok: false, reason: 'libonnxruntime_providers_cuda.so not found', fix: 'install the CUDA provider' };
  const hal = new HalRegistry().register(engine('ort', ['onnx'], (d) => (d.kind === 'cpu' ? { ok: true } : noCuda)), 10);

  it('takes the first device in preference order that an engine supports', async () => {
    const placed = await hal.place(onnx, [gpu, cpu], ['cuda', 'cpu']);
    expect(placed.device.id).toBe('cpu:0');
    expect(placed.engine.name).toBe('ort');
  });

  it('accepts device ids as well as kinds', async () => {
    const ok = new HalRegistry().register(engine('ort', ['onnx'], () => ({ ok: true })));
    expect((await ok.place(onnx, [cpu, gpu], ['cuda:0000:01:00.0'])).device.id).toBe('cuda:0000:01:00.0');
  });

  it('lists every refused candidate with reason and fix when nothing fits', async () => {
    const error = await hal.place(onnx, [gpu, tpu, cpu], ['cuda', 'edgetpu']).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PlacementError);
    const e = error as PlacementError;
    expect(e.code).toBe('EAI_HAL_NO_DEVICE');
    expect(e.message).toContain('cuda:0000:01:00.0 with ort: libonnxruntime_providers_cuda.so not found (fix: install the CUDA provider)');
    expect(e.message).toContain('edgetpu:usb-1-1: libedgetpu.so.1 not found (fix: install libedgetpu1-std)');
    expect(e.details['refusals']).toHaveLength(2);
  });

  it('says a device kind cannot run a format', async () => {
    const e = (await hal.place({ path: 'm.xclbin', format: 'xclbin' }, [cpu]).catch((x: unknown) => x)) as PlacementError;
    expect(e.code).toBe('EAI_HAL_NO_ENGINE');
    const lenient = new HalRegistry().register(engine('xrt', ['xclbin'], () => ({ ok: true })));
    const e2 = (await lenient.place({ path: 'm.xclbin', format: 'xclbin' }, [cpu]).catch((x: unknown) => x)) as PlacementError;
    expect(e2.message).toContain('cpu devices do not run xclbin models');
  });

  it('rejects an unknown device kind or id instead of falling back silently', () => {
    expect(() => orderDevices([cpu], ['tpu'])).toThrow(PlacementError);
    try {
      orderDevices([cpu], ['tpu']);
    } catch (e) {
      expect((e as PlacementError).code).toBe('EAI_HAL_UNKNOWN_DEVICE');
      expect((e as PlacementError).message).toContain('cpu:0');
    }
  });

  it('a known kind with no device present is simply skipped', () => {
    expect(orderDevices([cpu], ['jetson', 'cpu']).map((d) => d.id)).toEqual(['cpu:0']);
  });
});
