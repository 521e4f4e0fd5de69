import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { jetpackForL4t, jetsonProbe, parseL4tRelease } from '../../../../drivers/devices/jetson.js';
import { SysRoot } from '../../../../drivers/hal/sysroot.js';
import { SYSROOTS, tempRoot } from '../../../support/sysroots.js';


async function probeFixture(name: string) {
  return jetsonProbe.probe(await SysRoot.open(path.join(SYSROOTS, name)));
}

describe('jetsonProbe on recorded machines', () => {
  it('finds the Orin NX 16GB on JetPack 6.0, ready, with 2 DLA cores', async () => {
    expect(await probeFixture('jetson-orin-nx-jp6')).toEqual([{
      id: 'jetson:gpu0',
      kind: 'jetson',
      name: 'NVIDIA Jetson Orin NX 16GB',
      memoryBytes: 15655436 * 1024,
      formats: ['onnx', 'tfjs-graph', 'tfjs-layers'],
      status: { state: 'ready' },
      details: {
        soc: 'tegra234',
        module: 'Jetson Orin NX 16GB',
        modulePart: 'p3767-0000',
        board: 'NVIDIA Jetson Orin NX Engineering Reference Developer Kit',
        l4t: '36.3.0',
        jetpack: '6.0',
        gpuArchitecture: 'Ampere',
        cudaArch: '8.7',
        sharedMemory: true,
        dlaCores: 2,
        dlaVersion: 'NVDLA v2',
        index: 0,
        gpuDeviceNode: '/dev/nvgpu/igpu0/ctrl',
        cudaLibrary: '/usr/lib/aarch64-linux-gnu/nvidia/libcuda.so.1',
      },
    }]);
  });

  it('finds the Xavier NX on JetPack 5.1.3 through the JetPack 5 device node and library folder', async () => {
    expect(await probeFixture('jetson-xavier-nx-jp5')).toEqual([{
      id: 'jetson:gpu0',
      kind: 'jetson',
      name: 'NVIDIA Jetson Xavier NX 8GB (developer kit module)',
      memoryBytes: 7765372 * 1024,
      formats: ['onnx', 'tfjs-graph', 'tfjs-layers'],
      status: { state: 'ready' },
      details: {
        soc: 'tegra194',
        module: 'Jetson Xavier NX 8GB (developer kit module)',
        modulePart: 'p3668-0000',
        board: 'NVIDIA Jetson Xavier NX Developer Kit',
        l4t: '35.5.0',
        jetpack: '5.1.3',
        gpuArchitecture: 'Volta',
        cudaArch: '7.2',
        sharedMemory: true,
        dlaCores: 2,
        dlaVersion: 'NVDLA v1',
        index: 0,
        gpuDeviceNode: '/dev/nvhost-ctrl-gpu',
        cudaLibrary: '/usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1',
      },
    }]);
  });

  it('finds the Nano 4GB on JetPack 4.6.1 (L4T R32.7.1) through nvhost-ctrl-gpu and the tegra library folder', async () => {
    expect(await probeFixture('jetson-nano-jp4')).toEqual([{
      id: 'jetson:gpu0',
      kind: 'jetson',
      name: 'NVIDIA Jetson Nano 4GB (developer kit module)',
      memoryBytes: 4059316 * 1024,
      formats: ['onnx', 'tfjs-graph', 'tfjs-layers'],
      status: { state: 'ready' },
      details: {
        soc: 'tegra210',
        module: 'Jetson Nano 4GB (developer kit module)',
        modulePart: 'p3448-0000',
        board: 'NVIDIA Jetson Nano Developer Kit',
        l4t: '32.7.1',
        jetpack: '4.6.1',
        gpuArchitecture: 'Maxwell',
        cudaArch: '5.3',
        sharedMemory: true,
        dlaCores: 0,
        index: 0,
        gpuDeviceNode: '/dev/nvhost-ctrl-gpu',
        cudaLibrary: '/usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1',
      },
    }]);
  });

  it('reports nothing on the x86 RTX 4090 machine', async () => {
    expect(await probeFixture('x86-rtx4090')).toEqual([]);
  });
});

describe('jetsonProbe on partial and foreign boards', () => {
  const makeRoot = (files: Record<string, string>): Promise<SysRoot> => tempRoot(files, 'aios-jetson-');

  const ORIN_NANO = {
    'proc/device-tree/model': 'NVIDIA Jetson Orin Nano Developer Kit\0',
    'proc/device-tree/compatible': 'nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234\0',
    'proc/meminfo': 'MemTotal:        7802804 kB\nMemFree:         6000000 kB\n',
  };

  it('still finds a Jetson without /etc/nv_tegra_release, with l4t and jetpack unknown', async () => {
    const [gpu] = await jetsonProbe.probe(await makeRoot({ ...ORIN_NANO, 'dev/nvgpu/igpu0/ctrl': '', 'usr/lib/aarch64-linux-gnu/libcuda.so.1': '' }));
    expect(gpu?.id).toBe('jetson:gpu0');
    expect(gpu?.memoryBytes).toBe(7802804 * 1024);
    expect(gpu?.details?.['l4t']).toBeUndefined();
    expect(gpu?.details?.['jetpack']).toBeUndefined();
    expect(gpu?.status).toEqual({ state: 'ready' });
  });

  it('gives the Orin Nano no DLA cores (fused off on p3767-0003/0004/0005)', async () => {
    const [gpu] = await jetsonProbe.probe(await makeRoot(ORIN_NANO));
    expect(gpu?.details?.['module']).toBe('Jetson Orin Nano 8GB (developer kit module)');
    expect(gpu?.details?.['dlaCores']).toBe(0);
    expect(gpu?.details?.['dlaVersion']).toBeUndefined();
    expect(gpu?.details?.['cudaArch']).toBe('8.7');
  });

  it('names libcuda.so.1 and nvidia-l4t-cuda when the GPU node is there but the library is not', async () => {
    const [gpu] = await jetsonProbe.probe(await makeRoot({ ...ORIN_NANO, 'dev/nvgpu/igpu0/ctrl': '' }));
    expect(gpu?.status.state).toBe('unavailable');
    if (gpu?.status.state !== 'unavailable') return;
    expect(gpu.status.reason).toContain('libcuda.so.1 not found');
    expect(gpu.status.fix).toContain('nvidia-l4t-cuda');
    expect(gpu.status.fix).toContain('nvidia-jetpack');
  });

  it('says the nvgpu driver is missing when no GPU device node exists', async () => {
    const [gpu] = await jetsonProbe.probe(await makeRoot({ ...ORIN_NANO, 'usr/lib/aarch64-linux-gnu/libcuda.so.1': '' }));
    expect(gpu?.status.state === 'unavailable' && gpu.status.reason).toContain('/dev/nvhost-ctrl-gpu');
    expect(gpu?.status.state === 'unavailable' && gpu.status.fix).toContain('--runtime nvidia');
  });

  it('maps a Nano (tegra210) on JetPack 4.6.4', async () => {
    const [gpu] = await jetsonProbe.probe(await makeRoot({
      'proc/device-tree/model': 'NVIDIA Jetson Nano Developer Kit\0',
      'proc/device-tree/compatible': 'nvidia,p3449-0000-b00+p3448-0000-b00\0nvidia,jetson-nano\0nvidia,tegra210\0',
      'etc/nv_tegra_release': '# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref, EABI: aarch64, DATE: Fri Jun  9 04:25:08 UTC 2023\n',
    }));
    expect(gpu?.details?.['soc']).toBe('tegra210');
    expect(gpu?.details?.['l4t']).toBe('32.7.4');
    expect(gpu?.details?.['jetpack']).toBe('4.6.4');
    expect(gpu?.details?.['cudaArch']).toBe('5.3');
    expect(gpu?.details?.['dlaCores']).toBe(0);
    expect(gpu?.details?.['module']).toBe('Jetson Nano 4GB (developer kit module)');
    expect(gpu?.details?.['modulePart']).toBe('p3448-0000');
  });

  it('returns [] for a Raspberry Pi 4 and a Kria KV260 device tree', async () => {
    expect(await jetsonProbe.probe(await makeRoot({
      'proc/device-tree/model': 'Raspberry Pi 4 Model B Rev 1.4\0',
      'proc/device-tree/compatible': 'raspberrypi,4-model-b\0brcm,bcm2711\0',
    }))).toEqual([]);
    expect(await jetsonProbe.probe(await makeRoot({
      'proc/device-tree/model': 'ZynqMP KV260 revB\0',
      'proc/device-tree/compatible': 'xlnx,zynqmp-sk-kv260-revB\0xlnx,zynqmp-sk-kv260\0xlnx,zynqmp\0',
    }))).toEqual([]);
  });

  it('returns [] when there is no device tree at all', async () => {
    expect(await jetsonProbe.probe(await makeRoot({ 'proc/cpuinfo': 'processor\t: 0\n' }))).toEqual([]);
  });
});

describe('L4T and JetPack versions', () => {
  it('parses the first line of nv_tegra_release', () => {
    expect(parseL4tRelease('# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6 17:34:21 UTC 2024\n# KERNEL_VARIANT: oot\n')).toBe('36.3.0');
    expect(parseL4tRelease('# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64')).toBe('35.4.1');
    expect(parseL4tRelease('not a release file')).toBeUndefined();
  });

  it('maps L4T releases to JetPack, and only the series for releases the table does not know', () => {
    expect(jetpackForL4t('36.2.0')).toBe('6.0 DP');
    expect(jetpackForL4t('36.3.0')).toBe('6.0');
    expect(jetpackForL4t('36.4.0')).toBe('6.1');
    expect(jetpackForL4t('36.4.3')).toBe('6.2');
    expect(jetpackForL4t('35.1.0')).toBe('5.0.2');
    expect(jetpackForL4t('35.2.1')).toBe('5.1');
    expect(jetpackForL4t('32.7.1')).toBe('4.6.1');
    expect(jetpackForL4t('36.4.7')).toBe('6.x');
    expect(jetpackForL4t('99.0.0')).toBeUndefined();
  });
});
