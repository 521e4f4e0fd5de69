import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { EDGETPU_SRAM_BYTES, edgetpuProbe } from '../../../../drivers/devices/edgetpu.js';
import { SysRoot } from '../../../../drivers/hal/sysroot.js';
import { SYSROOTS, tempRoot } from '../../../support/sysroots.js';

const FORMATS = ['tflite-edgetpu', 'tflite'];

async function probeFixture(name: string) {
  return edgetpuProbe.probe(await SysRoot.open(path.join(SYSROOTS, name)));
}


const CORAL_USB_SYSFS = {
  '/sys/bus/usb/devices/1-1/idVendor': '18d1\n',
  '/sys/bus/usb/devices/1-1/idProduct': '9302\n',
  '/sys/bus/usb/devices/1-1/busnum': '1\n',
  '/sys/bus/usb/devices/1-1/devnum': '4\n',
  '/sys/bus/usb/devices/1-1/speed': '5000\n',
};

const CORAL_PCI_SYSFS = {
  '/sys/bus/pci/devices/0000:02:00.0/vendor': '0x1ac1\n',
  '/sys/bus/pci/devices/0000:02:00.0/device': '0x089a\n',
  '/sys/bus/pci/devices/0000:02:00.0/class': '0x0880ff\n',
  '/usr/lib/x86_64-linux-gnu/libedgetpu.so.1': '',
};

describe('edgetpuProbe on recorded machines', () => {
  it('finds both USB sticks on the Raspberry Pi 5: one with firmware, one still the bootloader on a USB 2 link', async () => {
    expect(await probeFixture('rpi5-coral-usb')).toEqual([
      {
        id: 'edgetpu:usb-2-1',
        kind: 'edgetpu',
        name: 'Coral USB Accelerator',
        memoryBytes: 8 * 1024 * 1024,
        formats: FORMATS,
        status: { state: 'ready' },
        details: {
          bus: 'usb',
          port: '2-1',
          usbId: '18d1:9302',
          devicePath: '/dev/bus/usb/002/003',
          firmwareLoaded: true,
          usbSpeedMbps: 5000,
          library: '/usr/lib/aarch64-linux-gnu/libedgetpu.so.1',
        },
      },
      {
        id: 'edgetpu:usb-3-1',
        kind: 'edgetpu',
        name: 'Coral USB Accelerator',
        memoryBytes: 8 * 1024 * 1024,
        formats: FORMATS,
        status: { state: 'ready' },
        details: {
          bus: 'usb',
          port: '3-1',
          usbId: '1a6e:089a',
          devicePath: '/dev/bus/usb/003/002',
          firmwareLoaded: false,
          usbSpeedMbps: 480,
          warning: 'running at 480 Mbit/s (USB 2): plug the accelerator into a USB 3 port for full speed',
          library: '/usr/lib/aarch64-linux-gnu/libedgetpu.so.1',
        },
      },
    ]);
  });

  it('finds the M.2 module of the x86 mini PC with its apex node, driver version and die temperature', async () => {
    expect(await probeFixture('x86-coral-m2')).toEqual([{
      id: 'edgetpu:pci-0000:01:00.0',
      kind: 'edgetpu',
      name: 'Coral M.2 / PCIe Accelerator',
      memoryBytes: EDGETPU_SRAM_BYTES,
      formats: FORMATS,
      status: { state: 'ready' },
      details: {
        bus: 'pci',
        pciAddress: '0000:01:00.0',
        driver: 'apex',
        driverVersion: '1.2',
        devicePath: '/dev/apex_0',
        temperatureC: 49.8,
        library: '/usr/lib/x86_64-linux-gnu/libedgetpu.so.1',
      },
    }]);
  });

  it.each(['x86-server', 'kria-kv260', 'x86-alveo-u50'])('reports nothing on %s', async (name) => {
    expect(await probeFixture(name)).toEqual([]);
  });
});

describe('edgetpuProbe when something is missing', () => {
  it('says which library is missing and which package provides it when libedgetpu is not installed', async () => {
    const [stick, ...rest] = await edgetpuProbe.probe(await tempRoot(CORAL_USB_SYSFS));
    expect(rest).toEqual([]);
    expect(stick?.id).toBe('edgetpu:usb-1-1');
    expect(stick?.status).toEqual({
      state: 'unavailable',
      reason: 'libedgetpu.so.1 not found',
      fix: expect.stringMatching(/libedgetpu1-std \(Coral apt repository.*\) or libedgetpu1-max/u) as unknown,
    });
    expect(stick?.details).not.toHaveProperty('library');
  });

  it('finds libedgetpu in a folder named by /etc/ld.so.conf.d, as the dynamic loader would', async () => {
    const [stick] = await edgetpuProbe.probe(await tempRoot({
      ...CORAL_USB_SYSFS,
      '/etc/ld.so.conf.d/coral.conf': '# Coral runtime\n/opt/coral/lib\n',
      '/opt/coral/lib/libedgetpu.so.1': '',
    }));
    expect(stick?.status).toEqual({ state: 'ready' });
    expect(stick?.details?.['library']).toBe('/opt/coral/lib/libedgetpu.so.1');
  });

  it('points at gasket-dkms when the apex driver is bound but /dev/apex_0 is missing', async () => {
    const [tpu] = await edgetpuProbe.probe(await tempRoot({
      ...CORAL_PCI_SYSFS,
      '/sys/bus/pci/drivers/apex/bind': '',
      '/sys/bus/pci/devices/0000:02:00.0/driver': { link: '../../drivers/apex' },
      '/sys/bus/pci/devices/0000:02:00.0/apex/apex_0/temp': '50800\n',
    }));
    expect(tpu?.status).toEqual({
      state: 'unavailable',
      reason: '/dev/apex_0 not found for 0000:02:00.0',
      fix: 'install the gasket-dkms package (Coral apt repository) and reboot; check `lsmod | grep apex`',
    });
    expect(tpu?.details?.['temperatureC']).toBe(50.8);
  });

  it('points at gasket-dkms when no driver is bound to the module (fresh install, Secure Boot refusing the DKMS module)', async () => {
    const [tpu] = await edgetpuProbe.probe(await tempRoot(CORAL_PCI_SYSFS));
    expect(tpu?.id).toBe('edgetpu:pci-0000:02:00.0');
    expect(tpu?.status).toMatchObject({ state: 'unavailable', reason: 'the apex driver is not bound to 0000:02:00.0' });
    expect(tpu?.status).toHaveProperty('fix', expect.stringContaining('gasket-dkms') as unknown);
    expect(tpu?.details).not.toHaveProperty('devicePath');
  });

  it('matches /sys/class/apex nodes to their PCI function through the `device` link', async () => {
    const [tpu] = await edgetpuProbe.probe(await tempRoot({
      ...CORAL_PCI_SYSFS,
      '/sys/bus/pci/drivers/apex/bind': '',
      '/sys/bus/pci/devices/0000:02:00.0/driver': { link: '../../drivers/apex' },
      '/sys/class/apex/apex_3/device': { link: '../../../bus/pci/devices/0000:02:00.0' },
      '/sys/class/apex/apex_3/temp': 'not a number\n',
      '/dev/apex_3': '',
    }));
    expect(tpu?.status).toEqual({ state: 'ready' });
    expect(tpu?.details?.['devicePath']).toBe('/dev/apex_3');
    expect(tpu?.details).not.toHaveProperty('temperatureC');
  });

  it('reports nothing on a machine without Coral hardware, even with libedgetpu installed', async () => {
    expect(await edgetpuProbe.probe(await tempRoot({
      '/usr/lib/x86_64-linux-gnu/libedgetpu.so.1': '',
      '/sys/bus/usb/devices/1-2/idVendor': '046d\n',
      '/sys/bus/usb/devices/1-2/idProduct': 'c52b\n',
    }))).toEqual([]);
  });
});
