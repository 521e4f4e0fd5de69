import { describe, expect, it } from 'vitest';
import { edgetpuProbe, readEdgetpuTelemetry } from '../../../../drivers/devices/edgetpu.js';
import type { SysRoot } from '../../../../drivers/hal/sysroot.js';
import type { DeviceInfo } from '../../../../drivers/hal/types.js';
import { fixtureRoot, tempRoot } from '../../../support/sysroots.js';

const THRESHOLDS = { tripPoint0C: 84.8, tripPoint1C: 89.8, tripPoint2C: 94.8, hwTempWarn1C: 99.8, hwTempWarn2C: 109.8 };

function pciTpu(address: string): DeviceInfo {
  return { id: `edgetpu:pci-${address}`, kind: 'edgetpu', name: 'Coral M.2 / PCIe Accelerator', formats: ['tflite-edgetpu'], status: { state: 'ready' }, details: { bus: 'pci', pciAddress: address } };
}

/** An apex node as gasket creates it, with the driver's defaults and the given temperature and poll interval. */
function apexRoot(tempMilli: number, pollMs: number): Promise<SysRoot> {
  const dir = '/sys/devices/pci0000:00/0000:00:1c.0/0000:02:00.0/apex/apex_0';
  return tempRoot({
    [`${dir}/temp`]: `${tempMilli}\n`,
    [`${dir}/temp_poll_interval`]: `${pollMs}\n`,
    [`${dir}/trip_point0_temp`]: '84800\n',
    [`${dir}/trip_point1_temp`]: '89800\n',
    [`${dir}/trip_point2_temp`]: '94800\n',
    [`${dir}/hw_temp_warn1`]: '99800\n',
    [`${dir}/hw_temp_warn2`]: '109800\n',
    '/sys/class/apex/apex_0': { link: `../../..${dir}` },
  });
}

describe('Edge TPU telemetry', () => {
  it('reads the M.2 module: die temperature and the apex driver\'s thresholds, not throttling', async () => {
    const sys = await fixtureRoot('x86-coral-m2');
    const [tpu] = await edgetpuProbe.probe(sys);
    const reading = await edgetpuProbe.telemetry?.(sys, tpu ?? pciTpu('0000:01:00.0'));
    expect(reading).toEqual({
      deviceId: 'edgetpu:pci-0000:01:00.0',
      time: reading?.time,
      temperatureC: 49.8,
      extra: { thresholds: THRESHOLDS, tempPollIntervalMs: 0, throttling: false },
    });
  });

  it('past trip point 0 with polling on, the driver throttles', async () => {
    const reading = await readEdgetpuTelemetry(await apexRoot(86050, 5000), pciTpu('0000:02:00.0'));
    expect(reading.temperatureC).toBe(86.05);
    expect(reading.extra).toEqual({ thresholds: THRESHOLDS, tempPollIntervalMs: 5000, throttling: true });
  });

  it('past trip point 0 with polling off (the gasket default), nothing throttles, and the reading warns', async () => {
    const reading = await readEdgetpuTelemetry(await apexRoot(84800, 0), pciTpu('0000:02:00.0'));
    expect(reading.extra?.['throttling']).toBe(false);
    expect(reading.extra?.['warning']).toMatch(/^at or above trip point 0 \(84\.8 °C\) but the apex driver is not polling the temperature \(temp_poll_interval 0\)/u);
  });

  it('USB sticks expose nothing: both Raspberry Pi sticks get a note instead', async () => {
    const sys = await fixtureRoot('rpi5-coral-usb');
    const sticks = await edgetpuProbe.probe(sys);
    expect(sticks).toHaveLength(2);
    for (const stick of sticks) {
      const reading = await edgetpuProbe.telemetry?.(sys, stick);
      expect(Object.keys(reading ?? {}).sort()).toEqual(['deviceId', 'extra', 'time']);
      expect(reading?.extra?.['note']).toMatch(/^the Coral USB Accelerator reports no temperature, load or power to the host/u);
    }
  });

  it('a PCIe module without the apex driver has no temperature, and says how to get one', async () => {
    const sys = await tempRoot({ '/sys/bus/pci/devices/0000:02:00.0/vendor': '0x1ac1\n' });
    const reading = await readEdgetpuTelemetry(sys, pciTpu('0000:02:00.0'));
    expect(reading.temperatureC).toBeUndefined();
    expect(reading.extra?.['note']).toMatch(/^no apex node for 0000:02:00\.0, so no temperature: the apex driver is not bound \(install the gasket-dkms package/u);
  });
});
