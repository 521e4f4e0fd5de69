import { describe, expect, it } from 'vitest';
import { fpgaProbe } from '../../../../drivers/devices/fpga.js';
import { iioTemperatureC, readFpgaTelemetry } from '../../../../drivers/devices/fpga-telemetry.js';
import type { DeviceInfo, DeviceTelemetry } from '../../../../drivers/hal/types.js';
import { fixtureRoot, tempRoot } from '../../../support/sysroots.js';

const KIB = 1024;

async function readFixture(name: string): Promise<DeviceTelemetry | undefined> {
  const sys = await fixtureRoot(name);
  const [device] = await fpgaProbe.probe(sys);
  return device === undefined ? undefined : fpgaProbe.telemetry?.(sys, device);
}

function alveo(user: string, mgmt?: string): DeviceInfo {
  return { id: `fpga:${user}`, kind: 'fpga', name: 'Alveo', formats: ['xclbin'], status: { state: 'ready' }, details: { bus: 'pci', pciAddress: user, ...(mgmt === undefined ? {} : { mgmtAddress: mgmt }) } };
}

const KRIA: DeviceInfo = { id: 'fpga:fpga0', kind: 'fpga', name: 'Kria', formats: ['xclbin'], status: { state: 'ready' }, details: { bus: 'platform' } };

describe('Alveo telemetry (XRT XMC sensors)', () => {
  it('reads the U50: FPGA and HBM temperature, board power as xbutil reports it, the supply rails', async () => {
    const reading = await readFixture('x86-alveo-u50');
    expect(reading).toEqual({
      deviceId: 'fpga:0000:3b:00.1',
      time: reading?.time,
      temperatureC: 38,
      powerW: 18.316784,
      extra: {
        sensors: '/sys/bus/pci/devices/0000:3b:00.1/xmc.u.1025',
        // se98_temp2 and the fan read 0 on a U50: sensors the card does not have.
        temperaturesC: { fpga: 38, hbm: 36, boardTopFront: 33, boardTopRear: 31 },
        rails: {
          '12v_pex': { volts: 12.12, amps: 1.45 },
          '3v3_pex': { volts: 3.316, amps: 0.224 },
          vccint: { volts: 0.851, amps: 6.72 },
        },
      },
    });
  });

  it('falls back to the management function\'s XMC, and sums the input rails where xmc_power is missing (older XRT)', async () => {
    const xmc = '/sys/bus/pci/devices/0000:65:00.0/xmc.m.25600';
    const sys = await tempRoot({
      '/sys/bus/pci/devices/0000:65:00.1/vendor': '0x10ee\n',
      [`${xmc}/xmc_fpga_temp`]: '61\n',
      [`${xmc}/xmc_hbm_temp`]: '0\n',
      [`${xmc}/xmc_12v_pex_vol`]: '12000\n',
      [`${xmc}/xmc_12v_pex_curr`]: '3500\n',
      [`${xmc}/xmc_12v_aux_vol`]: '12100\n',
      [`${xmc}/xmc_12v_aux_curr`]: '2000\n',
      [`${xmc}/xmc_3v3_pex_vol`]: '3300\n',
      [`${xmc}/xmc_3v3_pex_curr`]: '500\n',
      [`${xmc}/xmc_fan_rpm`]: '2730\n',
    });
    const reading = await readFpgaTelemetry(sys, alveo('0000:65:00.1', '0000:65:00.0'));
    expect(reading.temperatureC).toBe(61);
    expect(reading.powerW).toBe(67.85); // 12 V × 3.5 A + 12.1 V × 2 A + 3.3 V × 0.5 A = 42 + 24.2 + 1.65
    expect(reading.extra).toMatchObject({ sensors: xmc, temperaturesC: { fpga: 61 }, fanRpm: 2730 });
  });

  it('a card without XMC sensors gets a note that says where it looked', async () => {
    const reading = await readFpgaTelemetry(await tempRoot({ '/etc/hostname': 'x\n' }), alveo('0000:3b:00.1', '0000:3b:00.0'));
    expect(reading.temperatureC).toBeUndefined();
    expect(reading.extra?.['note']).toMatch(/^no XMC sensors under 0000:3b:00\.1\/xmc\.\* or 0000:3b:00\.0\/xmc\.\*/u);
  });
});

describe('Zynq UltraScale+ telemetry (AMS, INA260, CMA)', () => {
  it('reads the KV260: PS, remote (FPD) and PL temperatures, SOM power, CMA in use', async () => {
    const reading = await readFixture('kria-kv260');
    expect(reading).toEqual({
      deviceId: 'fpga:fpga0',
      time: reading?.time,
      memoryUsedBytes: (1032192 - 1022884) * KIB,
      memoryTotalBytes: 1032192 * KIB,
      temperatureC: 44.5,
      powerW: 4.81,
      extra: {
        temperaturesC: { ps_temp: 44.5, remote_temp: 43.901, pl_temp: 42.697 },
        sensors: '/sys/bus/iio/devices/iio:device0',
        powerSensor: 'hwmon ina260_u14 (board input: PS, PL and DDR together)',
      },
    });
  });

  it('reads the upstream xilinx-ams naming (numbered channels, shared scale and offset)', async () => {
    const dir = '/sys/bus/iio/devices/iio:device1';
    const sys = await tempRoot({
      '/sys/bus/iio/devices/iio:device0/name': 'ina260-u14\n',
      [`${dir}/name`]: 'xilinx-ams\n',
      [`${dir}/in_temp0_raw`]: '41784\n',
      [`${dir}/in_temp13_raw`]: '41552\n',
      [`${dir}/in_temp_offset`]: '-36058\n',
      [`${dir}/in_temp_scale`]: '7.771514892\n',
    });
    const reading = await readFpgaTelemetry(sys, KRIA);
    expect(reading.temperatureC).toBe(44.5);
    expect(reading.extra).toEqual({ temperaturesC: { temp0: 44.5, temp13: 42.697 }, sensors: dir });
  });

  it('a board without the AMS driver says so', async () => {
    const reading = await readFpgaTelemetry(await tempRoot({ '/etc/hostname': 'x\n' }), KRIA);
    expect(reading.extra?.['note']).toMatch(/^no AMS system monitor in \/sys\/bus\/iio\/devices/u);
  });

  it('converts IIO temperature channels as (raw + offset) × scale / 1000', () => {
    expect(iioTemperatureC(41784, -36058, 7.771514892)).toBeCloseTo(44.49969, 5);
    expect(iioTemperatureC(25000)).toBe(25);
  });
});
