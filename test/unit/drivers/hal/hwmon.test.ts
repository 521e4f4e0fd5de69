import { describe, expect, it } from 'vitest';
import { hottest, readHwmon, readHwmonChip, readThermalZones, sensorOf } from '../../../../drivers/hal/hwmon.js';
import { fixtureRoot, tempRoot } from '../../../support/sysroots.js';

describe('readHwmon on recorded machines', () => {
  it('reads both sockets\' coretemp chips of the Xeon server, labels and millidegrees turned into °C', async () => {
    const chips = await readHwmon(await fixtureRoot('x86-server'));
    expect(chips.map((c) => [c.path, c.name])).toEqual([
      ['/sys/class/hwmon/hwmon0', 'coretemp'],
      ['/sys/class/hwmon/hwmon1', 'coretemp'],
    ]);
    expect(chips[1]?.sensors).toEqual([
      { type: 'temp', index: 1, label: 'Package id 1', raw: 44000, value: 44 },
      { type: 'temp', index: 2, label: 'Core 0', raw: 42000, value: 42 },
      { type: 'temp', index: 3, label: 'Core 1', raw: 41000, value: 41 },
      { type: 'temp', index: 4, label: 'Core 2', raw: 43000, value: 43 },
      { type: 'temp', index: 5, label: 'Core 3', raw: 40000, value: 40 },
    ]);
    expect(hottest(chips, 'coretemp', /^Package id \d+$/u)).toBe(44);
    expect(hottest(chips, 'coretemp', /^Core /u)).toBe(43);
    expect(hottest(chips, 'k10temp')).toBeUndefined();
  });

  it('reads the KV260 carrier\'s INA260 through iio-hwmon: volts, amps and watts', async () => {
    const [ina] = await readHwmon(await fixtureRoot('kria-kv260'));
    expect(ina?.name).toBe('ina260_u14');
    expect(ina?.sensors).toEqual([
      { type: 'curr', index: 1, raw: 954, value: 0.954 },
      { type: 'in', index: 1, raw: 5043, value: 5.043 },
      { type: 'power', index: 1, raw: 4810000, value: 4.81 },
    ]);
    expect(ina === undefined ? undefined : sensorOf(ina, 'power')?.value).toBe(4.81);
  });

  it('reads the Raspberry Pi 5 cpu_thermal chip (no label) and its thermal zone', async () => {
    const sys = await fixtureRoot('rpi5-coral-usb');
    expect(await readHwmon(sys)).toEqual([
      { path: '/sys/class/hwmon/hwmon0', name: 'cpu_thermal', sensors: [{ type: 'temp', index: 1, raw: 51850, value: 51.85 }] },
    ]);
    expect(await readThermalZones(sys)).toEqual([{ zone: 'thermal_zone0', type: 'cpu-thermal', temperatureC: 51.85 }]);
  });

  it('reads thermal zones in zone order (the N100 box has no hwmon chips)', async () => {
    const sys = await fixtureRoot('x86-coral-m2');
    expect(await readHwmon(sys)).toEqual([]);
    expect(await readThermalZones(sys)).toEqual([
      { zone: 'thermal_zone0', type: 'acpitz', temperatureC: 27.8 },
      { zone: 'thermal_zone1', type: 'x86_pkg_temp', temperatureC: 45 },
    ]);
  });
});

describe('readHwmon edge cases', () => {
  it('orders hwmon10 after hwmon2, follows the device link, prefers _input over _average, skips unreadable values', async () => {
    const sys = await tempRoot({
      '/sys/class/hwmon/hwmon2/name': 'k10temp\n',
      '/sys/class/hwmon/hwmon2/temp1_label': 'Tctl\n',
      '/sys/class/hwmon/hwmon2/temp1_input': '61250\n',
      '/sys/class/hwmon/hwmon2/temp3_label': 'Tccd1\n',
      '/sys/class/hwmon/hwmon2/temp3_input': '\n',
      '/sys/class/hwmon/hwmon2/device': { link: '../../../devices/pci0000:00/0000:00:18.3' },
      '/sys/class/hwmon/hwmon10/name': 'amdgpu\n',
      '/sys/class/hwmon/hwmon10/power1_average': '35000000\n',
      '/sys/class/hwmon/hwmon10/power2_average': '9000000\n',
      '/sys/class/hwmon/hwmon10/power2_input': '12000000\n',
      '/sys/class/hwmon/hwmon10/energy1_input': '123456789\n',
      '/sys/class/hwmon/hwmon10/fan1_input': '1210\n',
      '/sys/class/hwmon/hwmon10/temp1_crit': '100000\n',
      '/sys/class/hwmon/hwmon3/temp1_input': '40000\n',
    });
    const chips = await readHwmon(sys);
    expect(chips.map((c) => c.path)).toEqual(['/sys/class/hwmon/hwmon2', '/sys/class/hwmon/hwmon10']);
    expect(chips[0]).toEqual({ path: '/sys/class/hwmon/hwmon2', name: 'k10temp', device: '0000:00:18.3', sensors: [{ type: 'temp', index: 1, label: 'Tctl', raw: 61250, value: 61.25 }] });
    expect(chips[1]?.sensors).toEqual([
      { type: 'energy', index: 1, raw: 123456789, value: 123.456789 },
      { type: 'fan', index: 1, raw: 1210, value: 1210 },
      { type: 'power', index: 1, raw: 35000000, value: 35 },
      { type: 'power', index: 2, raw: 12000000, value: 12 },
    ]);
  });

  it('reads chips of the old layout, with name and attributes in device/', async () => {
    const sys = await tempRoot({
      '/sys/class/hwmon/hwmon0/device/name': 'w83627ehf\n',
      '/sys/class/hwmon/hwmon0/device/temp2_input': '38500\n',
      '/sys/class/hwmon/hwmon0/device/in0_input': '1104\n',
    });
    expect(await readHwmonChip(sys, '/sys/class/hwmon/hwmon0')).toEqual({
      path: '/sys/class/hwmon/hwmon0',
      name: 'w83627ehf',
      sensors: [
        { type: 'in', index: 0, raw: 1104, value: 1.104 },
        { type: 'temp', index: 2, raw: 38500, value: 38.5 },
      ],
    });
  });

  it('reads a device\'s own hwmon folder, and nothing at all from an empty root', async () => {
    const sys = await tempRoot({
      '/sys/bus/pci/devices/0000:3b:00.0/hwmon/hwmon3/name': 'xclmgmt_sysmon\n',
      '/sys/bus/pci/devices/0000:3b:00.0/hwmon/hwmon3/temp1_input': '41000\n',
    });
    const [chip] = await readHwmon(sys, '/sys/bus/pci/devices/0000:3b:00.0/hwmon');
    expect(chip?.name).toBe('xclmgmt_sysmon');
    expect(hottest(chip === undefined ? [] : [chip], /^xclmgmt/u)).toBe(41);
    const empty = await tempRoot({ '/etc/os-release': '' });
    expect(await readHwmon(empty)).toEqual([]);
    expect(await readThermalZones(empty)).toEqual([]);
  });
});
