import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cudaProbe, normalisePciAddress, NVIDIA_SMI_QUERY, parseDriverVersion, parseGpuInformation, parseNvidiaSmi } from '../../../../drivers/devices/cuda.js';
import { SysRoot } from '../../../../drivers/hal/sysroot.js';
import { SYSROOTS, tempRoot } from '../../../support/sysroots.js';

const SMI_KEY = ['nvidia-smi', ...NVIDIA_SMI_QUERY].join(' ');
const MIB = 1024 * 1024;

async function probeFixture(name: string) {
  return cudaProbe.probe(await SysRoot.open(path.join(SYSROOTS, name)));
}

describe('cudaProbe on recorded machines', () => {
  it('finds the RTX 4090 of the x86 desktop, ready, with what nvidia-smi and procfs report', async () => {
    const devices = await probeFixture('x86-rtx4090');
    expect(devices).toEqual([{
      id: 'cuda:0000:01:00.0',
      kind: 'cuda',
      name: 'NVIDIA GeForce RTX 4090',
      memoryBytes: 24564 * MIB,
      formats: ['onnx', 'tfjs-graph', 'tfjs-layers'],
      status: { state: 'ready' },
      details: {
        pciAddress: '0000:01:00.0',
        pciId: '10de:2684',
        kernelDriver: 'nvidia',
        index: 0,
        driverVersion: '550.54.14',
        computeCapability: '8.9',
        uuid: 'GPU-2f6e1d3a-7b4c-59e8-a0d1-6c3b8e9f4a27',
        vbios: '95.02.18.80.5f',
        deviceMinor: 0,
        cudaLibrary: '/usr/lib/x86_64-linux-gnu/libcuda.so.1',
      },
    }]);
  });

  it('skips the Intel iGPU and the 4090 HDMI audio function on the same machine', async () => {
    const ids = (await probeFixture('x86-rtx4090')).map((d) => d.id);
    expect(ids).not.toContain('cuda:0000:00:02.0');
    expect(ids).not.toContain('cuda:0000:01:00.1');
  });

  it('reads the H200 server (3D controller class 0x0302, 8-digit smi domain)', async () => {
    const [h200, ...rest] = await probeFixture('x86-h200-server');
    expect(rest).toEqual([]);
    expect(h200?.id).toBe('cuda:0000:00:06.0');
    expect(h200?.name).toBe('NVIDIA H200');
    expect(h200?.memoryBytes).toBe(143771 * MIB);
    expect(h200?.status).toEqual({ state: 'ready' });
    expect(h200?.details?.['computeCapability']).toBe('9.0');
  });

  it('reports nothing on either Jetson: their GPU is integrated, and Orin PCIe root ports are bridges', async () => {
    expect(await probeFixture('jetson-orin-nx-jp6')).toEqual([]);
    expect(await probeFixture('jetson-xavier-nx-jp5')).toEqual([]);
  });
});

describe('cudaProbe on broken and partial machines', () => {
  /** A root with one NVIDIA GPU at 0000:01:00.0; `driver` names the sysfs driver link, if any. */
  async function gpuRoot(options: { driver?: string; procInfo?: string; libcuda?: boolean; smi?: { stdout: string; exitCode: number }; version?: string; extra?: Record<string, string> }): Promise<SysRoot> {
    const files: Record<string, string | { link: string }> = {
      'sys/bus/pci/devices/0000:01:00.0/vendor': '0x10de\n',
      'sys/bus/pci/devices/0000:01:00.0/device': '0x2684\n',
      'sys/bus/pci/devices/0000:01:00.0/class': '0x030000\n',
      ...options.extra,
    };
    if (options.procInfo !== undefined) files['proc/driver/nvidia/gpus/0000:01:00.0/information'] = options.procInfo;
    if (options.version !== undefined) files['proc/driver/nvidia/version'] = options.version;
    if (options.libcuda === true) files['usr/lib/x86_64-linux-gnu/libcuda.so.1'] = '';
    if (options.smi !== undefined) files['.commands.json'] = JSON.stringify({ [SMI_KEY]: options.smi });
    if (options.driver !== undefined) files['sys/bus/pci/devices/0000:01:00.0/driver'] = { link: `../../drivers/${options.driver}` };
    return tempRoot(files, 'aios-cuda-');
  }

  const INFO = 'Model: \t\t NVIDIA GeForce RTX 4090\nIRQ:   \t\t 185\nGPU UUID: \t GPU-0000\nVideo BIOS: \t ??.??.??.??.??\nBus Type: \t PCIe\nDMA Size: \t 47 bits\nDMA Mask: \t 0x7fffffffffff\nBus Location: \t 0000:01:00.0\nDevice Minor: \t 0\nGPU Excluded:\t No\n';
  const VERSION = 'NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\nGCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04) \n';

  it('says which driver holds a GPU bound to nouveau, and how to install the NVIDIA one', async () => {
    const [gpu] = await cudaProbe.probe(await gpuRoot({ driver: 'nouveau', libcuda: true }));
    expect(gpu?.id).toBe('cuda:0000:01:00.0');
    expect(gpu?.name).toBe('NVIDIA GPU [10de:2684]');
    expect(gpu?.memoryBytes).toBeUndefined();
    expect(gpu?.details?.['kernelDriver']).toBe('nouveau');
    expect(gpu?.status).toEqual({
      state: 'unavailable',
      reason: 'no NVIDIA driver bound (nouveau is bound)',
      fix: 'install the NVIDIA driver (Debian: apt install nvidia-driver; Ubuntu: ubuntu-drivers install), then reboot',
    });
  });

  it('says no driver at all is bound when sysfs has no driver link', async () => {
    const [gpu] = await cudaProbe.probe(await gpuRoot({}));
    expect(gpu?.status.state).toBe('unavailable');
    expect(gpu?.status.state === 'unavailable' && gpu.status.reason).toBe('no NVIDIA driver bound (no driver is bound)');
  });

  it('explains a GPU held by vfio-pci for passthrough', async () => {
    const [gpu] = await cudaProbe.probe(await gpuRoot({ driver: 'vfio-pci' }));
    expect(gpu?.status.state === 'unavailable' && gpu.status.reason).toContain('vfio-pci is bound');
  });

  it('names libcuda.so.1 and the packages when the driver is loaded but the library is missing', async () => {
    const [gpu] = await cudaProbe.probe(await gpuRoot({ driver: 'nvidia', procInfo: INFO, version: VERSION }));
    expect(gpu?.name).toBe('NVIDIA GeForce RTX 4090');
    expect(gpu?.details?.['driverVersion']).toBe('550.54.14');
    expect(gpu?.details?.['vbios']).toBeUndefined();
    expect(gpu?.details?.['cudaLibrary']).toBeUndefined();
    expect(gpu?.status.state).toBe('unavailable');
    if (gpu?.status.state !== 'unavailable') return;
    expect(gpu.status.reason).toContain('libcuda.so.1 not found');
    expect(gpu.status.reason).toContain('550.54.14');
    expect(gpu.status.fix).toContain('libcuda1');
    expect(gpu.status.fix).toContain('libnvidia-compute-550');
  });

  it('counts a GPU as driven when only the procfs entry shows it (a container without the driver link)', async () => {
    const [gpu] = await cudaProbe.probe(await gpuRoot({ procInfo: INFO, libcuda: true, version: VERSION }));
    expect(gpu?.status).toEqual({ state: 'ready' });
    expect(gpu?.details?.['kernelDriver']).toBe('nvidia');
    expect(gpu?.details?.['index']).toBe(0);
  });

  it('falls back to procfs when nvidia-smi fails, and leaves memory unknown', async () => {
    const smi = { stdout: "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", exitCode: 9 };
    const [gpu] = await cudaProbe.probe(await gpuRoot({ driver: 'nvidia', procInfo: INFO, libcuda: true, version: VERSION, smi }));
    expect(gpu?.name).toBe('NVIDIA GeForce RTX 4090');
    expect(gpu?.memoryBytes).toBeUndefined();
    expect(gpu?.details?.['uuid']).toBe('GPU-0000');
    expect(gpu?.details?.['computeCapability']).toBeUndefined();
    expect(gpu?.status).toEqual({ state: 'ready' });
  });

  it('reports a GPU the driver was told to exclude', async () => {
    const [gpu] = await cudaProbe.probe(await gpuRoot({ driver: 'nvidia', procInfo: INFO.replace('GPU Excluded:\t No', 'GPU Excluded:\t Yes'), libcuda: true }));
    expect(gpu?.status.state === 'unavailable' && gpu.status.reason).toContain('NVreg_ExcludedGpus');
  });

  it('returns [] on a machine without NVIDIA hardware', async () => {
    const root = await tempRoot({ 'sys/bus/pci/devices/0000:00:02.0/vendor': '0x8086\n', 'sys/bus/pci/devices/0000:00:02.0/class': '0x030000\n' });
    expect(await cudaProbe.probe(root)).toEqual([]);
  });

  it('is not fooled by a Jetson device tree with the JetPack 6 display driver loaded', async () => {
    const root = await tempRoot({
      'proc/device-tree/model': 'NVIDIA Jetson Orin NX Engineering Reference Developer Kit\0',
      'proc/device-tree/compatible': 'nvidia,p3768-0000+p3767-0000\0nvidia,p3767-0000\0nvidia,tegra234\0',
      'proc/driver/nvidia/version': 'NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  540.3.0  Release Build\n',
    });
    expect(await cudaProbe.probe(root)).toEqual([]);
  });
});

describe('cuda parsers', () => {
  it('normalises nvidia-smi bus ids to sysfs addresses', () => {
    expect(normalisePciAddress('00000000:01:00.0')).toBe('0000:01:00.0');
    expect(normalisePciAddress('00000000:3B:00.0')).toBe('0000:3b:00.0');
    expect(normalisePciAddress('00000001:C1:00.1')).toBe('0001:c1:00.1');
    expect(normalisePciAddress('0000:01:00.0')).toBe('0000:01:00.0');
    expect(normalisePciAddress('not a bus id')).toBeUndefined();
  });

  it('parses nvidia-smi rows, dropping [N/A] cells and malformed lines', () => {
    const out = '0, 00000000:19:00.0, NVIDIA H200, 143771, 570.86.15, 9.0, GPU-aaaa\n1, 00000000:3B:00.0, NVIDIA H200, [N/A], 570.86.15, 9.0, [N/A]\nNo devices were found\n';
    expect(parseNvidiaSmi(out)).toEqual([
      { index: 0, pciAddress: '0000:19:00.0', name: 'NVIDIA H200', memoryMiB: 143771, driverVersion: '570.86.15', computeCapability: '9.0', uuid: 'GPU-aaaa' },
      { index: 1, pciAddress: '0000:3b:00.0', name: 'NVIDIA H200', driverVersion: '570.86.15', computeCapability: '9.0' },
    ]);
  });

  it('reads the module version from both the proprietary and the open kernel module banners', () => {
    expect(parseDriverVersion('NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024')).toBe('550.54.14');
    expect(parseDriverVersion('NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  555.58  Release Build  (portage@localhost)')).toBe('555.58');
    // As read on a live H200 host (open module built by Nix).
    expect(parseDriverVersion('NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (nixbld@)  \nGCC version:  gcc version 15.3.0 (GCC) \n')).toBe('580.159.04');
    expect(parseDriverVersion('garbage')).toBeUndefined();
  });

  it('splits the procfs information file on the first colon only', () => {
    const info = parseGpuInformation('Model: \t\t NVIDIA H100 80GB HBM3\nBus Location: \t 0000:62:00.0\n');
    expect(info.get('Model')).toBe('NVIDIA H100 80GB HBM3');
    expect(info.get('Bus Location')).toBe('0000:62:00.0');
  });
});
