import { describe, expect, it, vi } from 'vitest';
import { cudaProbe, NVIDIA_SMI_TELEMETRY_QUERY, parseNvidiaSmiTelemetry } from '../../../../drivers/devices/cuda.js';
import type { DeviceInfo, DeviceTelemetry } from '../../../../drivers/hal/types.js';
import { fixtureRoot, tempRoot } from '../../../support/sysroots.js';

const MIB = 1024 * 1024;
const KEY = ['nvidia-smi', ...NVIDIA_SMI_TELEMETRY_QUERY].join(' ');

function gpu(address: string, extra: Partial<DeviceInfo> = {}): DeviceInfo {
  return {
    id: `cuda:${address}`,
    kind: 'cuda',
    name: 'NVIDIA GPU',
    formats: ['onnx'],
    status: { state: 'ready' },
    details: { pciAddress: address, driverVersion: '550.54.14' },
    ...extra,
  };
}

async function read(sysName: string): Promise<DeviceTelemetry | undefined> {
  const sys = await fixtureRoot(sysName);
  const [device] = await cudaProbe.probe(sys);
  return device === undefined ? undefined : cudaProbe.telemetry?.(sys, device);
}

describe('nvidia-smi telemetry query', () => {
  it('is one exact command line, the key recorded outputs replay under', () => {
    expect(KEY).toBe(
      'nvidia-smi --query-gpu=pci.bus_id,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw,clocks.sm,clocks.mem,fan.speed,pstate --format=csv,noheader,nounits',
    );
  });

  it('parses the line an H200 printed (no fan: [N/A]) and a GeForce line, by PCI address', () => {
    expect(parseNvidiaSmiTelemetry('00000000:00:06.0, 0, 0, 143771, 37, 79.94, 345, 3201, [N/A], P0\n00000000:01:00.0, 3, 1187, 24564, 41, 31.27, 210, 405, 0, P8\n')).toEqual([
      { pciAddress: '0000:00:06.0', utilizationPercent: 0, memoryUsedMiB: 0, memoryTotalMiB: 143771, temperatureC: 37, powerW: 79.94, smClockMHz: 345, memClockMHz: 3201, pstate: 'P0' },
      { pciAddress: '0000:01:00.0', utilizationPercent: 3, memoryUsedMiB: 1187, memoryTotalMiB: 24564, temperatureC: 41, powerW: 31.27, smClockMHz: 210, memClockMHz: 405, fanPercent: 0, pstate: 'P8' },
    ]);
  });

  it('drops [Not Supported] and [N/A] cells and lines that are not GPU rows', () => {
    const out = 'No devices were found\n\n00000000:3B:00.0, [N/A], 512, 16384, 55, [Not Supported], 1380, 877, 40, [N/A]\n00000000:3B:00.0, 1, 2\n';
    expect(parseNvidiaSmiTelemetry(out)).toEqual([
      { pciAddress: '0000:3b:00.0', memoryUsedMiB: 512, memoryTotalMiB: 16384, temperatureC: 55, smClockMHz: 1380, memClockMHz: 877, fanPercent: 40 },
    ]);
  });
});

describe('cudaProbe.telemetry', () => {
  it('reads the H200 (line from an H200 VM of the captured machine\'s kind)', async () => {
    const reading = await read('x86-h200-server');
    expect(reading).toEqual({
      deviceId: 'cuda:0000:00:06.0',
      time: reading?.time,
      utilisation: 0,
      memoryUsedBytes: 0,
      memoryTotalBytes: 143771 * MIB,
      temperatureC: 37,
      powerW: 79.94,
      clocksMHz: { sm: 345, mem: 3201 },
      extra: { pstate: 'P0' },
    });
    expect(Math.abs((reading?.time ?? 0) - Date.now())).toBeLessThan(5000);
  });

  it('reads the RTX 4090, fan included', async () => {
    expect(await read('x86-rtx4090')).toMatchObject({
      deviceId: 'cuda:0000:01:00.0',
      utilisation: 0.03,
      memoryUsedBytes: 1187 * MIB,
      memoryTotalBytes: 24564 * MIB,
      temperatureC: 41,
      powerW: 31.27,
      clocksMHz: { sm: 210, mem: 405 },
      extra: { fanPercent: 0, pstate: 'P8' },
    });
  });

  it('without nvidia-smi: a reading that says telemetry needs it and which package has it', async () => {
    const reading = await cudaProbe.telemetry?.(await tempRoot({ '/etc/hostname': 'gpu\n' }), gpu('0000:01:00.0'));
    expect(Object.keys(reading ?? {}).sort()).toEqual(['deviceId', 'extra', 'time']);
    expect(reading?.extra?.['note']).toMatch(/^telemetry needs nvidia-smi \(NVML\), which is not installed: the NVIDIA driver exposes no hwmon sensors.*apt install nvidia-utils-550/u);
  });

  it('says why when nvidia-smi fails or does not list the GPU', async () => {
    const failing = await tempRoot({ '/.commands.json': JSON.stringify({ [KEY]: { stdout: "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", exitCode: 9 } }) });
    expect((await cudaProbe.telemetry?.(failing, gpu('0000:01:00.0')))?.extra).toEqual({ note: "nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." });
    const other = await tempRoot({ '/.commands.json': JSON.stringify({ [KEY]: '00000000:02:00.0, 1, 1, 2, 30, 20.5, 300, 400, 30, P8\n' }) });
    const unbound = gpu('0000:01:00.0', { status: { state: 'unavailable', reason: 'no NVIDIA driver bound (vfio-pci is bound)', fix: 'x' } });
    expect((await cudaProbe.telemetry?.(other, unbound))?.extra).toEqual({ note: 'nvidia-smi does not list 0000:01:00.0: NVML reports only GPUs the nvidia driver serves (no NVIDIA driver bound (vfio-pci is bound))' });
  });

  it('does not run nvidia-smi for a GPU another driver holds', async () => {
    const sys = await tempRoot({ '/.commands.json': '{}' });
    const command = vi.spyOn(sys, 'command');
    const vfio = gpu('0000:01:00.0', {
      status: { state: 'unavailable', reason: 'no NVIDIA driver bound (vfio-pci is bound: the GPU is reserved for passthrough to a virtual machine)', fix: 'x' },
      details: { pciAddress: '0000:01:00.0', kernelDriver: 'vfio-pci' },
    });
    expect((await cudaProbe.telemetry?.(sys, vfio))?.extra).toEqual({ note: 'no telemetry: no NVIDIA driver bound (vfio-pci is bound: the GPU is reserved for passthrough to a virtual machine)' });
    expect(command).not.toHaveBeenCalled();
  });

  it('runs nvidia-smi once for all GPUs read in the same round', async () => {
    const sys = await tempRoot({
      '/.commands.json': JSON.stringify({ [KEY]: '00000000:01:00.0, 10, 100, 24564, 50, 100.5, 2000, 10000, 30, P2\n00000000:02:00.0, 90, 200, 24564, 70, 400.25, 2500, 10500, 80, P0\n' }),
    });
    const command = vi.spyOn(sys, 'command');
    const [a, b] = await Promise.all([cudaProbe.telemetry?.(sys, gpu('0000:01:00.0')), cudaProbe.telemetry?.(sys, gpu('0000:02:00.0'))]);
    expect(command).toHaveBeenCalledTimes(1);
    expect([a?.utilisation, a?.powerW, b?.utilisation, b?.powerW, b?.temperatureC]).toEqual([0.1, 100.5, 0.9, 400.25, 70]);
  });
});
