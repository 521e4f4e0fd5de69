import { describe, expect, it } from 'vitest';
import { cpuProbe } from '../../../../drivers/devices/cpu.js';
import { averagePowerW, busyFraction, parseProcStat, readCpuTelemetry } from '../../../../drivers/devices/cpu-telemetry.js';
import type { DeviceInfo } from '../../../../drivers/hal/types.js';
import { fixtureRoot, tempRoot } from '../../../support/sysroots.js';

const CPU: DeviceInfo = { id: 'cpu:0', kind: 'cpu', name: 'test CPU', formats: ['onnx'], status: { state: 'ready' } };
const KIB = 1024;

describe('/proc/stat and the rate maths', () => {
  it('parses the aggregate and per-CPU lines, leaving guest time out of the total (it is already in user)', () => {
    const stat = parseProcStat('cpu  100 5 50 800 20 3 7 15 40 2\ncpu3 10 0 5 80 2 0 1 2\nintr 1 2 3\nctxt 99\ncpu7 1 2 3\n');
    expect(stat.get('cpu')).toEqual({ total: 1000, idle: 820 });
    expect(stat.get('cpu3')).toEqual({ total: 100, idle: 82 });
    // A short line (older kernels print fewer fields): the missing ones count as 0.
    expect(stat.get('cpu7')).toEqual({ total: 6, idle: 0 });
    expect([...stat.keys()]).toEqual(['cpu', 'cpu3', 'cpu7']);
  });

  it('busy fraction is the share of new jiffies not spent idle or in I/O wait', () => {
    expect(busyFraction({ total: 11000, idle: 9100 }, { total: 10000, idle: 8500 })).toBe(0.4);
    // No previous reading, or counters that did not advance (same jiffy, or a different boot): since boot.
    expect(busyFraction({ total: 10000, idle: 8500 })).toBe(0.15);
    expect(busyFraction({ total: 10000, idle: 8500 }, { total: 10000, idle: 8500 })).toBe(0.15);
    expect(busyFraction({ total: 500, idle: 400 }, { total: 10000, idle: 8500 })).toBe(0.2);
    expect(busyFraction({ total: 0, idle: 0 })).toBeUndefined();
  });

  it('power from an energy counter, across a wrap at max_energy_range_uj', () => {
    expect(averagePowerW(1_131_000_000, 1_000_000_000, 2000)).toBe(65.5);
    expect(averagePowerW(1_000_000, 262_143_000_000, 2000, 262_143_328_850)).toBe(0.664425);
    expect(averagePowerW(1_000_000, 262_143_000_000, 2000)).toBeUndefined();
    expect(averagePowerW(2_000_000, 1_000_000, 0)).toBeUndefined();
  });
});

describe('readCpuTelemetry on recorded machines', () => {
  it('reads the two-socket Xeon: load since boot, per-core load, memory, clocks, hottest package, RAPL counters', async () => {
    const reading = await readCpuTelemetry(await fixtureRoot('x86-server'), CPU, undefined, 1_000_000);
    expect(reading).toEqual({
      deviceId: 'cpu:0',
      time: 1_000_000,
      utilisation: 0.0898,
      memoryUsedBytes: (1055802368 - 1036541944) * KIB,
      memoryTotalBytes: 1055802368 * KIB,
      temperatureC: 44,
      clocksMHz: { cpu0: 2100, cpu1: 2100, cpu2: 3800, cpu3: 2100, cpu4: 800, cpu5: 2100, cpu6: 3646, cpu7: 2100 },
      extra: {
        cores: { cpu0: 0.0874, cpu1: 0.0881, cpu2: 0.0888, cpu3: 0.0895, cpu4: 0.0902, cpu5: 0.0909, cpu6: 0.0916, cpu7: 0.0923 },
        temperatureSensor: 'hwmon coretemp Package id',
        powerSensor: 'RAPL intel-rapl:0 (package-0) + intel-rapl:1 (package-1)',
      },
      counters: expect.objectContaining({
        'cpu.total': 138240364,
        'cpu.idle': 125820056,
        'cpu7.total': 17280091,
        'rapl:intel-rapl:0': 123456789012,
        'rapl:intel-rapl:1': 98765432109,
      }) as unknown,
    });
    expect(Object.keys(reading.counters ?? {})).toHaveLength(2 * 9 + 2);
  });

  it('a second reading of a static capture: load stays the since-boot value, power is 0 W (the counters did not move)', async () => {
    const sys = await fixtureRoot('x86-server');
    const first = await readCpuTelemetry(sys, CPU, undefined, 1_000_000);
    const second = await readCpuTelemetry(sys, CPU, first, 1_002_000);
    expect(second.utilisation).toBe(0.0898);
    expect(second.powerW).toBe(0);
  });

  it('reads the Raspberry Pi 5: cpu_thermal hwmon, one shared clock policy', async () => {
    const reading = await readCpuTelemetry(await fixtureRoot('rpi5-coral-usb'), CPU, undefined, 5);
    expect(reading).toMatchObject({
      utilisation: 0.0672,
      memoryUsedBytes: (8245296 - 7530272) * KIB,
      memoryTotalBytes: 8245296 * KIB,
      temperatureC: 51.85,
      clocksMHz: { cpu0: 1500, cpu1: 1500, cpu2: 1500, cpu3: 1500 },
      extra: { temperatureSensor: 'hwmon cpu_thermal', cores: { cpu0: 0.0623, cpu1: 0.0655, cpu2: 0.0688, cpu3: 0.072 } },
    });
    expect(reading.powerW).toBeUndefined();
  });

  it('falls back to the x86_pkg_temp thermal zone where no hwmon chip is loaded (the N100 box)', async () => {
    const reading = await readCpuTelemetry(await fixtureRoot('x86-coral-m2'), CPU, undefined, 5);
    expect(reading.temperatureC).toBe(45);
    expect(reading.extra?.['temperatureSensor']).toBe('thermal zone x86_pkg_temp');
    expect(reading.utilisation).toBe(0.044);
  });

  it('is wired into cpuProbe, and a VM without hwmon, cpufreq or RAPL still gets load and memory', async () => {
    const sys = await fixtureRoot('x86-rtx4090');
    const [device] = await cpuProbe.probe(sys);
    const reading = await cpuProbe.telemetry?.(sys, device ?? CPU);
    expect(reading).toMatchObject({ deviceId: 'cpu:0', utilisation: 0.0662, memoryUsedBytes: (65568852 - 61934212) * KIB, memoryTotalBytes: 65568852 * KIB });
    expect(reading?.temperatureC).toBeUndefined();
    expect(reading?.clocksMHz).toBeUndefined();
    expect(Math.abs((reading?.time ?? 0) - Date.now())).toBeLessThan(5000);
  });
});

describe('readCpuTelemetry across two readings', () => {
  const stat = (cpu: string, cpu0: string, cpu1: string): string => `cpu  ${cpu}\ncpu0 ${cpu0}\ncpu1 ${cpu1}\nctxt 1\n`;
  const rapl = (e0: string, e1: string): Record<string, string> => ({
    '/sys/class/powercap/intel-rapl:0/name': 'package-0\n',
    '/sys/class/powercap/intel-rapl:0/energy_uj': e0,
    '/sys/class/powercap/intel-rapl:0/max_energy_range_uj': '262143328850\n',
    '/sys/class/powercap/intel-rapl:0:0/name': 'core\n',
    '/sys/class/powercap/intel-rapl:0:0/energy_uj': '5\n',
    '/sys/class/powercap/intel-rapl:1/name': 'package-1\n',
    '/sys/class/powercap/intel-rapl:1/energy_uj': e1,
    '/sys/class/powercap/intel-rapl:1/max_energy_range_uj': '262143328850\n',
  });

  it('turns jiffies and energy into load and watts over the interval, per core and across a counter wrap', async () => {
    const before = await tempRoot({
      '/proc/stat': stat('1000 0 500 8000 500 0 0 0 700 0', '500 0 250 4000 250 0 0 0 700 0', '500 0 250 4000 250 0 0 0 0 0'),
      ...rapl('1000000000\n', '262143000000\n'),
    });
    const after = await tempRoot({
      '/proc/stat': stat('1300 0 600 8550 550 0 0 0 900 0', '700 0 350 4200 250 0 0 0 900 0', '600 0 250 4350 300 0 0 0 0 0'),
      ...rapl('1131000000\n', '1000000\n'),
    });
    const first = await readCpuTelemetry(before, CPU, undefined, 1_000_000);
    expect(first.utilisation).toBe(0.15);
    expect(first.powerW).toBeUndefined();
    const second = await readCpuTelemetry(after, CPU, first, 1_002_000);
    expect(second.utilisation).toBe(0.4);
    expect(second.extra?.['cores']).toEqual({ cpu0: 0.6, cpu1: 0.2 });
    // 131 J in 2 s on package 0; package 1 wrapped: 328 850 µJ before the wrap + 1 000 000 after.
    expect(second.powerW).toBe(66.164);
    expect(second.extra?.['powerSensor']).toBe('RAPL intel-rapl:0 (package-0) + intel-rapl:1 (package-1)');
  });

  it('prefers k10temp Tdie over Tctl on AMD, and says when RAPL energy is not readable', async () => {
    const sys = await tempRoot({
      '/sys/class/hwmon/hwmon0/name': 'k10temp\n',
      '/sys/class/hwmon/hwmon0/temp1_label': 'Tctl\n',
      '/sys/class/hwmon/hwmon0/temp1_input': '77000\n',
      '/sys/class/hwmon/hwmon0/temp2_label': 'Tdie\n',
      '/sys/class/hwmon/hwmon0/temp2_input': '50000\n',
      // energy_uj as a folder stands for a file this user may not read (root-only since CVE-2020-8694).
      '/sys/class/powercap/intel-rapl:0/energy_uj/unreadable': '',
    });
    const reading = await readCpuTelemetry(sys, CPU, undefined, 1);
    expect(reading.temperatureC).toBe(50);
    expect(reading.extra?.['temperatureSensor']).toBe('hwmon k10temp Tdie');
    expect(reading.extra?.['note']).toMatch(/^CPU power needs read access to \/sys\/class\/powercap\/intel-rapl:0\/energy_uj \(root-only/u);
    expect(reading.powerW).toBeUndefined();
  });

  it('reads k10temp Tctl where there is no Tdie, a Jetson\'s CPU-therm zone, and a bare reading from an empty root', async () => {
    const xavier = await tempRoot({
      '/sys/class/thermal/thermal_zone0/type': 'CPU-therm\n',
      '/sys/class/thermal/thermal_zone0/temp': '40500\n',
      '/sys/class/thermal/thermal_zone1/type': 'GPU-therm\n',
      '/sys/class/thermal/thermal_zone1/temp': '39000\n',
    });
    expect((await readCpuTelemetry(xavier, CPU, undefined, 1)).extra).toEqual({ temperatureSensor: 'thermal zone CPU-therm' });
    const amd = await tempRoot({ '/sys/class/hwmon/hwmon1/name': 'k10temp\n', '/sys/class/hwmon/hwmon1/temp1_label': 'Tctl\n', '/sys/class/hwmon/hwmon1/temp1_input': '61250\n' });
    expect((await readCpuTelemetry(amd, CPU, undefined, 1)).temperatureC).toBe(61.25);
    expect(await readCpuTelemetry(await tempRoot({ '/etc/hostname': 'x\n' }), CPU, undefined, 7)).toEqual({ deviceId: 'cpu:0', time: 7, counters: {} });
  });
});
