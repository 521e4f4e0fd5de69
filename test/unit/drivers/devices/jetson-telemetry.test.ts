import { readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createBuiltinHal } from '../../../../drivers/builtin.js';
import { jetsonProbe, readJetsonTelemetry, TEGRASTATS_ONE_SHOT } from '../../../../drivers/devices/jetson.js';
import { lastTegrastatsLine } from '../../../../drivers/devices/tegrastats.js';
import type { SysRoot } from '../../../../drivers/hal/sysroot.js';
import type { DeviceInfo, DeviceTelemetry } from '../../../../drivers/hal/types.js';
import { fixtureRoot, tempRoot, type RootEntries } from '../../../support/sysroots.js';

const NOW = Date.UTC(2026, 10, 25, 10, 0, 0);
const KIB = 1024;
const TEGRASTATS_KEY = [TEGRASTATS_ONE_SHOT.file, ...TEGRASTATS_ONE_SHOT.args].join(' ');
const tegrastatsLines = (file: string): string[] =>
  readFileSync(new URL(`../../../fixtures/tegrastats/${file}`, import.meta.url), 'utf8').split('\n').filter((l) => l.trim() !== '');

/** A stand-in device record: telemetry needs only its id. */
const GPU: DeviceInfo = { id: 'jetson:gpu0', kind: 'jetson', name: 'NVIDIA Jetson', formats: ['onnx'], status: { state: 'ready' } };

async function reading(sys: SysRoot, previous?: DeviceTelemetry): Promise<DeviceTelemetry> {
  return readJetsonTelemetry(sys, GPU, previous);
}

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['Date'] });
  vi.setSystemTime(NOW);
});
afterEach(() => vi.useRealTimers());

describe('Jetson telemetry from sysfs on recorded machines', () => {
  it('Orin NX 16GB, JetPack 6: GPU load and clock, INA3221 hwmon rails, thermal zones, mode 15W', async () => {
    expect(await reading(await fixtureRoot('jetson-orin-nx-jp6'))).toEqual({
      deviceId: 'jetson:gpu0',
      time: NOW,
      utilisation: 0.117,
      temperatureC: 46.312,
      powerW: 5.168256,
      clocksMHz: { gpu: 306 },
      memoryUsedBytes: (15655436 - 13906432) * KIB,
      memoryTotalBytes: 15655436 * KIB,
      extra: {
        source: 'sysfs',
        rails: {
          VDD_IN: { powerW: 5.168256, voltageV: 5.008, currentA: 1.032 },
          VDD_CPU_GPU_CV: { powerW: 0.56, voltageV: 5, currentA: 0.112 },
          VDD_SOC: { powerW: 1.44, voltageV: 5, currentA: 0.288 },
        },
        thermalZones: {
          'cpu-thermal': 47.968,
          'gpu-thermal': 46.312,
          'cv0-thermal': null,
          'cv1-thermal': null,
          'cv2-thermal': null,
          'soc0-thermal': 46.562,
          'soc1-thermal': 45.656,
          'soc2-thermal': 45.843,
          'tj-thermal': 47.968,
        },
        powerMode: { id: 2, name: '15W' },
        jetsonClocks: 'off',
        gpuFreqRangeMHz: { min: 306, max: 612 },
      },
      counters: { inputEnergyUJ: 0 },
    });
  });

  it('Xavier NX, JetPack 5: the gv11b devfreq node and GPU-therm zone, rail 7 (sum of shunt voltages) left out', async () => {
    const r = await reading(await fixtureRoot('jetson-xavier-nx-jp5'));
    expect(r.utilisation).toBe(0.042);
    expect(r.temperatureC).toBe(43);
    expect(r.clocksMHz).toEqual({ gpu: 114.75 });
    expect(r.powerW).toBe(4.066392);
    expect(Object.keys(r.extra?.['rails'] as object)).toEqual(['VDD_IN', 'VDD_CPU_GPU_CV', 'VDD_SOC']);
    expect(r.extra?.['powerMode']).toEqual({ id: 2, name: 'MODE_15W_6CORE' });
    expect(r.extra?.['thermalZones']).toEqual({ 'CPU-therm': 43.5, 'GPU-therm': 43, 'AUX-therm': 41.5, 'AO-therm': 41.5, 'PMIC-Die': 100, 'thermal-fan-est': 42.55 });
    expect(r.extra?.['gpuFreqRangeMHz']).toEqual({ min: 114.75, max: 1109.25 });
  });

  it('Nano, JetPack 4: the ina3221x IIO rails in mW, POM_5V_IN as input power, without running tegrastats', async () => {
    const r = await reading(await fixtureRoot('jetson-nano-jp4'));
    expect(r.extra?.['source']).toBe('sysfs');
    expect(r.utilisation).toBe(0.086);
    expect(r.temperatureC).toBe(31);
    expect(r.powerW).toBe(1.912);
    expect(r.extra?.['rails']).toEqual({
      POM_5V_IN: { powerW: 1.912, voltageV: 5.032, currentA: 0.38 },
      POM_5V_GPU: { powerW: 0, voltageV: 5.024, currentA: 0 },
      POM_5V_CPU: { powerW: 0.241, voltageV: 5.024, currentA: 0.048 },
    });
    expect(r.extra?.['powerMode']).toEqual({ id: 0, name: 'MAXN' });
    expect(r.memoryTotalBytes).toBe(4059316 * KIB);
  });

  it('names the rails as the Nano\'s own tegrastats capture does (the fixture is consistent)', async () => {
    const sys = await fixtureRoot('jetson-nano-jp4');
    const recorded = await sys.command(TEGRASTATS_ONE_SHOT.file, TEGRASTATS_ONE_SHOT.args);
    const stats = lastTegrastatsLine(recorded?.stdout ?? '');
    expect(Object.keys((await reading(sys)).extra?.['rails'] as object)).toEqual(Object.keys(stats?.rails ?? {}));
    expect(stats?.totalPower?.source).toBe('POM_5V_IN');
  });

  it('is what the HAL registry returns for the Jetson it discovered', async () => {
    const sys = await fixtureRoot('jetson-orin-nx-jp6');
    const hal = createBuiltinHal();
    const devices = await hal.discover(sys);
    const jetson = (await hal.telemetry(sys, devices)).find((t) => t.deviceId === 'jetson:gpu0');
    expect(jetson?.utilisation).toBe(0.117);
    expect(jetson?.powerW).toBe(5.168256);
    expect(jetsonProbe.telemetry).toBe(readJetsonTelemetry);
  });
});

describe('Jetson telemetry on partial boards', () => {
  const root = (entries: RootEntries): Promise<SysRoot> => tempRoot(entries, 'aios-jetson-tm-');

  it('integrates input energy from the previous reading (trapezoid, µJ)', async () => {
    const sys = await fixtureRoot('jetson-orin-nx-jp6');
    const previous: DeviceTelemetry = { deviceId: 'jetson:gpu0', time: NOW - 2000, powerW: 5, counters: { inputEnergyUJ: 1000 } };
    const r = await reading(sys, previous);
    // 1000 µJ before, plus (5 W + 5.168256 W) / 2 over 2 s.
    expect(r.counters).toEqual({ inputEnergyUJ: 10_169_256 });
    // A previous reading without power (or from the future) adds nothing rather than a wrong figure.
    expect((await reading(sys, { deviceId: 'jetson:gpu0', time: NOW - 1000, counters: { inputEnergyUJ: 7 } })).counters).toEqual({ inputEnergyUJ: 7 });
    expect((await reading(sys, { ...previous, time: NOW + 5000 })).counters).toEqual({ inputEnergyUJ: 1000 });
  });

  it('says jetson_clocks is on when the GPU and cpu0 clocks are pinned to their maximum', async () => {
    const pinned = (cpuMin: string): RootEntries => ({
      'sys/class/devfreq/17000000.gpu/min_freq': '918000000\n',
      'sys/class/devfreq/17000000.gpu/max_freq': '918000000\n',
      'sys/class/devfreq/17000000.gpu/cur_freq': '918000000\n',
      'sys/devices/system/cpu/cpu0/cpufreq/scaling_min_freq': cpuMin,
      'sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq': '1984000\n',
    });
    expect((await reading(await root(pinned('1984000\n')))).extra?.['jetsonClocks']).toBe('on');
    expect((await reading(await root(pinned('729600\n')))).extra?.['jetsonClocks']).toBe('off');
  });

  it('falls back from a powered-off GPU zone to the junction temperature, and drops NC channels', async () => {
    const hwmon = 'sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3';
    const r = await reading(await root({
      'sys/class/thermal/thermal_zone0/type': 'gpu-thermal\n',
      'sys/class/thermal/thermal_zone0/temp': '-256000\n',
      'sys/class/thermal/thermal_zone1/type': 'tj-thermal\n',
      'sys/class/thermal/thermal_zone1/temp': '52500\n',
      'sys/class/thermal/thermal_zone10/type': 'tj-thermal\n',
      'sys/class/thermal/thermal_zone10/temp': '99000\n',
      // AGX Orin: no VDD_IN rail, so input power is the sum of what the monitor reports.
      [`${hwmon}/in1_label`]: 'VDD_GPU_SOC\n', [`${hwmon}/in1_input`]: '19072\n', [`${hwmon}/curr1_input`]: '128\n',
      [`${hwmon}/in2_label`]: 'VDD_CPU_CV\n', [`${hwmon}/in2_input`]: '19064\n', [`${hwmon}/curr2_input`]: '24\n',
      [`${hwmon}/in3_label`]: 'NC\n', [`${hwmon}/in3_input`]: '0\n', [`${hwmon}/curr3_input`]: '0\n',
    }));
    expect(r.temperatureC).toBe(52.5);
    expect(r.extra?.['thermalZones']).toEqual({ 'gpu-thermal': null, 'tj-thermal': 52.5 });
    expect(Object.keys(r.extra?.['rails'] as object)).toEqual(['VDD_GPU_SOC', 'VDD_CPU_CV']);
    expect(r.powerW).toBeCloseTo(2.441216 + 0.457536, 9);
  });

  it('reads the GPU load where older releases link it when there is no devfreq node', async () => {
    const r = await reading(await root({ 'sys/devices/platform/gpu.0/load': '500\n' }));
    expect(r.utilisation).toBe(0.5);
    expect(r.clocksMHz).toBeUndefined();
    expect(r.extra?.['source']).toBe('sysfs');
  });

  it('runs the tegrastats one-shot only when sysfs shows nothing, and reads its last line', async () => {
    const [, second] = tegrastatsLines('jp4-nano.txt');
    const r = await reading(await root({
      '.commands.json': JSON.stringify({ [TEGRASTATS_KEY]: { stdout: `${tegrastatsLines('jp4-nano.txt')[0]}\n${second}\n`, exitCode: 124 } }),
      'proc/meminfo': 'MemTotal:        4059316 kB\nMemAvailable:    3325124 kB\n',
    }));
    expect(TEGRASTATS_KEY).toBe('timeout 2 tegrastats --interval 1000');
    expect(r).toEqual({
      deviceId: 'jetson:gpu0',
      time: NOW,
      utilisation: 0,
      temperatureC: 29,
      powerW: 1.015,
      clocksMHz: { gpu: 76, emc: 204, cpu0: 102, cpu1: 102, cpu2: 102, cpu3: 102 },
      memoryUsedBytes: (4059316 - 3325124) * KIB,
      memoryTotalBytes: 4059316 * KIB,
      extra: {
        source: 'tegrastats',
        rails: {
          POM_5V_IN: { powerW: 1.015, averageW: 1.036 },
          POM_5V_GPU: { powerW: 0, averageW: 0 },
          POM_5V_CPU: { powerW: 0.126, averageW: 0.126 },
        },
        thermalZones: { PLL: 26, CPU: 29, iwlwifi: 33, PMIC: 100, GPU: 29, AO: 38, thermal: 29.5 },
        jetsonClocks: 'unknown',
        engines: { APE: { on: true, freqMHz: 25 } },
        cpus: [
          { loadPercent: 5, freqMHz: 102 },
          { loadPercent: 0, freqMHz: 102 },
          { loadPercent: 0, freqMHz: 102 },
          { loadPercent: 0, freqMHz: 102 },
        ],
        emcLoadPercent: 2,
      },
      counters: { inputEnergyUJ: 0 },
    });
  });

  it('takes memory from tegrastats, and the video engines, when a JetPack 6 container has neither sysfs nor meminfo', async () => {
    const r = await reading(await root({ '.commands.json': JSON.stringify({ [TEGRASTATS_KEY]: tegrastatsLines('jp6-orin-nx-8gb.txt')[0] }) }));
    expect(r.utilisation).toBe(0.84);
    expect(r.temperatureC).toBe(63.5);
    expect(r.powerW).toBe(17.946);
    expect(r.memoryTotalBytes).toBe(7620 * 1024 * 1024);
    expect((r.extra?.['engines'] as Record<string, unknown>)['NVDEC']).toEqual({ on: true, loadPercent: 40, freqMHz: 115 });
    expect(r.clocksMHz?.['emc']).toBe(3199);
    expect(r.clocksMHz?.['cpu5']).toBe(247);
  });

  it('reports only memory, source "none", when neither sysfs nor tegrastats answers', async () => {
    const r = await reading(await root({ 'proc/meminfo': 'MemTotal:        8000000 kB\nMemAvailable:    6000000 kB\n' }));
    expect(r).toEqual({
      deviceId: 'jetson:gpu0',
      time: NOW,
      memoryUsedBytes: 2000000 * KIB,
      memoryTotalBytes: 8000000 * KIB,
      extra: { source: 'none', rails: {}, thermalZones: {}, jetsonClocks: 'unknown' },
    });
  });
});
