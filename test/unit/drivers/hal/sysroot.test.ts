import { mkdir, mkdtemp, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ProbeError } from '../../../../drivers/errors.js';
import { listPci, listUsb } from '../../../../drivers/hal/buses.js';
import { SysRoot } from '../../../../drivers/hal/sysroot.js';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'aios-sysroot-'));
  await mkdir(path.join(root, 'proc/device-tree'), { recursive: true });
  await writeFile(path.join(root, 'proc/device-tree/model'), 'NVIDIA Jetson Orin NX Engineering Reference Developer Kit\0');
  await mkdir(path.join(root, 'etc/ld.so.conf.d'), { recursive: true });
  await writeFile(path.join(root, 'etc/ld.so.conf.d/nvidia-tegra.conf'), '/usr/lib/aarch64-linux-gnu/tegra\n# comment\n');
  await mkdir(path.join(root, 'usr/lib/aarch64-linux-gnu/tegra'), { recursive: true });
  await writeFile(path.join(root, 'usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1'), '');
  const pci = path.join(root, 'sys/bus/pci/devices/0000:01:00.0');
  await mkdir(pci, { recursive: true });
  for (const [k, v] of Object.entries({ vendor: '0x10de', device: '0x2684', class: '0x030000', subsystem_vendor: '0x1043', subsystem_device: '0x889d' })) await writeFile(path.join(pci, k), `${v}\n`);
  await symlink('../../../bus/pci/drivers/nvidia', path.join(pci, 'driver'));
  const other = path.join(root, 'sys/bus/pci/devices/0000:00:1f.3');
  await mkdir(other, { recursive: true });
  await writeFile(path.join(other, 'vendor'), '0x8086\n');
  const usb = path.join(root, 'sys/bus/usb/devices/2-1');
  await mkdir(usb, { recursive: true });
  for (const [k, v] of Object.entries({ idVendor: '18d1', idProduct: '9302', manufacturer: 'Google Inc.', busnum: '2', devnum: '3', speed: '5000' })) await writeFile(path.join(usb, k), `${v}\n`);
  await mkdir(path.join(root, 'sys/bus/usb/devices/2-1:1.0'), { recursive: true });
  await writeFile(path.join(root, '.commands.json'), JSON.stringify({ 'nvidia-smi -L': 'GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-1)\n', 'xbutil examine': { stdout: 'x', exitCode: 3 } }));
});

describe('SysRoot', () => {
  it('open fails with EAI_SYSROOT_NOT_FOUND for a missing folder or a file', async () => {
    await expect(SysRoot.open('/definitely/missing')).rejects.toMatchObject({ code: 'EAI_SYSROOT_NOT_FOUND' });
    await expect(SysRoot.open(path.join(root, '.commands.json'))).rejects.toBeInstanceOf(ProbeError);
  });

  it('reads device-tree strings without their NUL and tolerates missing files', async () => {
    const sys = await SysRoot.open(root);
    expect(sys.isLive).toBe(false);
    expect(await sys.readAttr('/proc/device-tree/model')).toBe('NVIDIA Jetson Orin NX Engineering Reference Developer Kit');
    expect(await sys.readText('/proc/nope')).toBeUndefined();
    expect(await sys.list('/nope')).toEqual([]);
  });

  it('finds libraries in folders named by ld.so.conf.d', async () => {
    const sys = await SysRoot.open(root);
    expect(await sys.findLibrary('libcuda.so.1')).toBe('/usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1');
    expect(await sys.findLibrary('libedgetpu.so.1')).toBeUndefined();
  });

  it('replays recorded commands on fixture roots and never runs them', async () => {
    const sys = await SysRoot.open(root);
    expect(await sys.command('nvidia-smi', ['-L'])).toEqual({ stdout: 'GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-1)\n', exitCode: 0 });
    expect(await sys.command('xbutil', ['examine'])).toEqual({ stdout: 'x', exitCode: 3 });
    expect(await sys.command('ls', ['/'])).toBeUndefined();
  });

  it('runs real commands on the live root and reports a missing tool as undefined', async () => {
    const sys = await SysRoot.open('/');
    expect((await sys.command('uname', ['-s']))?.stdout.trim()).toBe('Linux');
    expect(await sys.command('aios-no-such-tool-xyz')).toBeUndefined();
  });
});

describe('bus listing', () => {
  it('lists PCI functions with their bound driver, filtered by vendor', async () => {
    const sys = await SysRoot.open(root);
    expect(await listPci(sys, '10de')).toEqual([{ address: '0000:01:00.0', vendor: '10de', device: '2684', classCode: '030000', driver: 'nvidia', subsystemVendor: '1043', subsystemDevice: '889d' }]);
    expect((await listPci(sys)).map((f) => f.address)).toEqual(['0000:00:1f.3', '0000:01:00.0']);
  });

  it('lists USB devices but not their interfaces', async () => {
    const sys = await SysRoot.open(root);
    expect(await listUsb(sys)).toEqual([{ port: '2-1', vendor: '18d1', product: '9302', manufacturer: 'Google Inc.', busnum: 2, devnum: 3, speedMbps: 5000 }]);
  });
});
