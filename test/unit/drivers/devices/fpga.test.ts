import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { fpgaProbe } from '../../../../drivers/devices/fpga.js';
import { SysRoot } from '../../../../drivers/hal/sysroot.js';
import { SYSROOTS, tempRoot } from '../../../support/sysroots.js';

const GIB = 1024 ** 3;

async function probeFixture(name: string) {
  return fpgaProbe.probe(await SysRoot.open(path.join(SYSROOTS, name)));
}


/**
 * sysfs of one Alveo card: management function .0 and user function .1, each with an optional
 * driver; `userId` undefined leaves the user function out, as on a card running its golden image.
 */
function alveoSysfs(mgmtId: string, userId: string | undefined, drivers: { mgmt?: string; user?: string }, vbnv?: string) {
  const entries: Record<string, string | { link: string }> = {};
  const functions = [['0', mgmtId, drivers.mgmt], ...(userId === undefined ? [] : [['1', userId, drivers.user]])] as const;
  for (const [fn, id, driver] of functions) {
    const base = `/sys/bus/pci/devices/0000:5e:00.${fn}`;
    entries[`${base}/vendor`] = '0x10ee\n';
    entries[`${base}/device`] = `0x${id}\n`;
    entries[`${base}/class`] = '0x120000\n';
    if (driver !== undefined) {
      entries[`/sys/bus/pci/drivers/${driver}/bind`] = '';
      entries[`${base}/driver`] = { link: `../../drivers/${driver}` };
    }
    if (vbnv !== undefined) entries[`${base}/rom.${fn === '0' ? 'm' : 'u'}.7/VBNV`] = `${vbnv}\n`;
  }
  return entries;
}

const XRT_INSTALLED = { '/opt/xilinx/xrt/lib/libxrt_coreutil.so.2': '' };

describe('fpgaProbe on recorded machines', () => {
  it('finds the Alveo U50 as one device on its user function, with shell, HBM size, render node and XRT version', async () => {
    expect(await probeFixture('x86-alveo-u50')).toEqual([{
      id: 'fpga:0000:3b:00.1',
      kind: 'fpga',
      name: 'Alveo U50',
      memoryBytes: 8 * GIB,
      formats: ['xclbin'],
      status: { state: 'ready' },
      details: {
        bus: 'pci',
        pciAddress: '0000:3b:00.1',
        mgmtAddress: '0000:3b:00.0',
        driver: 'xocl',
        vbnv: 'xilinx_u50_gen3x16_xdma_201920_3',
        shell: 'xilinx_u50_gen3x16_xdma_201920_3',
        fpgaPart: 'xcu50-fsvh2104-2L-e',
        hbmBytes: 8 * GIB,
        ddrBytes: 0,
        renderNode: '/dev/dri/renderD128',
        xrtVersion: '2.14.354',
        driverVersion: '2.14.354',
      },
    }]);
  });

  it('finds the KV260 fabric through its ZynqMP FPGA manager, ready with zocl, sized by the CMA pool', async () => {
    expect(await probeFixture('kria-kv260')).toEqual([{
      id: 'fpga:fpga0',
      kind: 'fpga',
      name: 'Kria KV260 Vision AI Starter Kit (K26 SOM, Zynq UltraScale+)',
      memoryBytes: 1032192 * 1024,
      formats: ['xclbin'],
      status: { state: 'ready' },
      details: {
        bus: 'platform',
        fpgaManager: 'Xilinx ZynqMP FPGA Manager',
        fpgaManagerState: 'operating',
        board: 'ZynqMP KV260 revB',
        zoclLoaded: true,
        renderNode: '/dev/dri/renderD128',
        // No version.json on the Ubuntu package: read from the recorded `xbutil --version`.
        xrtVersion: '2.13.0',
      },
    }]);
  });

  it.each(['x86-server', 'rpi5-coral-usb', 'x86-coral-m2'])('reports nothing on %s', async (name) => {
    expect(await probeFixture(name)).toEqual([]);
  });
});

describe('fpgaProbe when something is missing', () => {
  it('says XRT is not installed, and how to install it, for an Alveo card on a host without XRT', async () => {
    const [card, ...rest] = await fpgaProbe.probe(await tempRoot(alveoSysfs('5020', '5021', {})));
    expect(rest).toEqual([]);
    expect(card?.id).toBe('fpga:0000:5e:00.1');
    expect(card?.name).toBe('Alveo U50');
    expect(card?.status).toEqual({
      state: 'unavailable',
      reason: 'XRT not installed (libxrt_coreutil.so.2 not found)',
      fix: 'install the xrt package from Xilinx/AMD for your distribution and source /opt/xilinx/xrt/setup.sh',
    });
  });

  it('says xocl is not bound when XRT is installed but the user function has no driver', async () => {
    const [card] = await fpgaProbe.probe(await tempRoot({ ...alveoSysfs('500c', '500d', { mgmt: 'xclmgmt' }), ...XRT_INSTALLED }));
    expect(card?.name).toBe('Alveo U280');
    expect(card?.memoryBytes).toBe(40 * GIB);
    expect(card?.details).toMatchObject({ hbmBytes: 8 * GIB, ddrBytes: 32 * GIB, mgmtAddress: '0000:5e:00.0' });
    expect(card?.status).toMatchObject({ state: 'unavailable', reason: 'the xocl driver is not bound to user function 0000:5e:00.1' });
    expect(card?.status).toHaveProperty('fix', expect.stringContaining('lsmod | grep xocl') as unknown);
  });

  it('names the card from its VBNV when the device id is not in the table, and refuses the golden image', async () => {
    // The golden image exposes only the management function, with a recovery-mode device id.
    const [card, ...rest] = await fpgaProbe.probe(await tempRoot({
      ...alveoSysfs('7777', undefined, { mgmt: 'xclmgmt' }, 'xilinx_u55c_GOLDEN_3'),
      ...XRT_INSTALLED,
    }));
    expect(rest).toEqual([]);
    expect(card?.id).toBe('fpga:0000:5e:00.0');
    expect(card?.name).toBe('Alveo U55C');
    expect(card?.memoryBytes).toBe(16 * GIB);
    expect(card?.status).toMatchObject({ state: 'unavailable', reason: 'the card runs its golden (recovery) image xilinx_u55c_GOLDEN_3' });
    expect(card?.status).toHaveProperty('fix', expect.stringContaining('xbmgmt program --base --device 0000:5e:00.0') as unknown);
  });

  it('leaves out other Xilinx PCIe functions that XRT does not drive', async () => {
    expect(await fpgaProbe.probe(await tempRoot({
      '/sys/bus/pci/devices/0000:07:00.0/vendor': '0x10ee\n',
      '/sys/bus/pci/devices/0000:07:00.0/device': '0x9038\n',
      '/sys/bus/pci/devices/0000:07:00.0/class': '0x058000\n',
      ...XRT_INSTALLED,
    }))).toEqual([]);
  });

  it('points a Kria board without zocl at xrt-dkms and the accelerated-app firmware', async () => {
    const [fabric] = await fpgaProbe.probe(await tempRoot({
      '/proc/device-tree/model': 'ZynqMP KV260 revB\0',
      '/proc/device-tree/compatible': 'xlnx,zynqmp-sk-kv260-revB\0xlnx,zynqmp-sk-kv260\0xlnx,zynqmp\0',
      '/sys/class/fpga_manager/fpga0/name': 'Xilinx ZynqMP FPGA Manager\n',
      '/sys/class/fpga_manager/fpga0/state': 'unknown\n',
      '/usr/lib/aarch64-linux-gnu/libxrt_coreutil.so.2': '',
    }));
    expect(fabric?.status).toMatchObject({ state: 'unavailable', reason: 'the zocl driver (XRT for embedded platforms) is not loaded' });
    expect(fabric?.status).toHaveProperty('fix', expect.stringContaining('sudo apt install xrt-dkms') as unknown);
    expect(fabric?.status).toHaveProperty('fix', expect.stringContaining('xlnx-firmware-kv260-') as unknown);
    expect(fabric?.details).toMatchObject({ fpgaManagerState: 'unknown', zoclLoaded: false });
    expect(fabric?.details).not.toHaveProperty('xrtVersion');
    expect(fabric).not.toHaveProperty('memoryBytes');
  });

  it('says XRT is not installed on a bare PetaLinux-style SoC, naming the board from the device tree', async () => {
    const [fabric] = await fpgaProbe.probe(await tempRoot({
      '/proc/device-tree/model': 'ZynqMP ZCU104 RevC\0',
      '/proc/device-tree/compatible': 'xlnx,zynqmp-zcu104-revC\0xlnx,zynqmp-zcu104\0xlnx,zynqmp\0',
      '/sys/class/fpga_manager/fpga0/name': 'Xilinx ZynqMP FPGA Manager\n',
      '/sys/class/fpga_manager/fpga0/state': 'operating\n',
    }));
    expect(fabric?.name).toBe('ZynqMP ZCU104 RevC FPGA');
    expect(fabric?.status).toMatchObject({ state: 'unavailable', reason: 'XRT not installed (libxrt_coreutil.so.2 not found)' });
    expect(fabric?.status).toHaveProperty('fix', expect.stringContaining('PetaLinux') as unknown);
  });

  it('reports nothing on a machine without FPGA hardware, even with XRT installed', async () => {
    expect(await fpgaProbe.probe(await tempRoot({ ...XRT_INSTALLED, '/proc/meminfo': 'MemTotal:        8000000 kB\n' }))).toEqual([]);
  });
});
