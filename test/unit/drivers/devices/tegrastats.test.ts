import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { lastTegrastatsLine, parseTegrastats } from '../../../../drivers/devices/tegrastats.js';

const FIXTURES = new URL('../../../fixtures/tegrastats/', import.meta.url);
const lines = (file: string): string[] => readFileSync(new URL(file, FIXTURES), 'utf8').split('\n').filter((l) => l.trim() !== '');
const first = (file: string): string => lines(file)[0] ?? '';

describe('parseTegrastats on JetPack 4 lines', () => {
  it('reads a Jetson Nano line completely: RAM, SWAP, IRAM, cores, GPU, EMC, APE, temperatures, POM rails', () => {
    expect(parseTegrastats(first('jp4-nano.txt'))).toEqual({
      ram: { usedMB: 717, totalMB: 3964, largestFreeBlock: { count: 140, sizeKB: 4096 } },
      swap: { usedMB: 0, totalMB: 1982, cachedMB: 0 },
      iram: { usedKB: 0, totalKB: 252, largestFreeBlockKB: 252 },
      cpus: [
        { loadPercent: 18, freqMHz: 102 },
        { loadPercent: 2, freqMHz: 102 },
        { loadPercent: 0, freqMHz: 102 },
        { loadPercent: 0, freqMHz: 102 },
      ],
      emc: { loadPercent: 2, freqMHz: 204 },
      gpu: { loadPercent: 0, freqMHz: 76 },
      engines: { APE: { on: true, freqMHz: 25 } },
      temperaturesC: { PLL: 26, CPU: 29.5, iwlwifi: 33, PMIC: 100, GPU: 29, AO: 38.5, thermal: 29.5 },
      rails: {
        POM_5V_IN: { currentW: 1.057, averageW: 1.057 },
        POM_5V_GPU: { currentW: 0, averageW: 0 },
        POM_5V_CPU: { currentW: 0.126, averageW: 0.126 },
      },
      totalPower: { source: 'POM_5V_IN', currentW: 1.057, averageW: 1.057 },
      unparsed: [],
    });
  });

  it('keeps the running average apart from the current value', () => {
    const second = parseTegrastats(lines('jp4-nano.txt')[1] ?? '');
    expect(second.rails['POM_5V_IN']).toEqual({ currentW: 1.015, averageW: 1.036 });
    expect(second.cpus.map((c) => c.loadPercent)).toEqual([5, 0, 0, 0]);
  });

  it('gives offline TX2 cores null load and clock, and GR3D without a clock only a load', () => {
    const r = parseTegrastats(first('jp4-tx2-cores-off.txt'));
    expect(r.cpus).toEqual([
      { loadPercent: 3, freqMHz: 345 },
      { loadPercent: null, freqMHz: null },
      { loadPercent: null, freqMHz: null },
      { loadPercent: 0, freqMHz: 345 },
      { loadPercent: 1, freqMHz: 345 },
      { loadPercent: 1, freqMHz: 345 },
    ]);
    expect(r.gpu).toEqual({ loadPercent: 0 });
    expect(r.emc).toEqual({ loadPercent: 0 });
    expect(r.temperaturesC).toEqual({ PLL: 50.5, MCPU: 50.5, PMIC: 50, GPU: 50, BCPU: 50.5, thermal: 50.3 });
    expect(r.rails).toEqual({});
    expect(r.totalPower).toBeUndefined();
    expect(r.unparsed).toEqual([]);
  });

  it('reads AGX Xavier rails named like fields (GPU, CPU, SOC) and sums them for want of an input rail', () => {
    const r = parseTegrastats(first('jp4-agx-xavier.txt'));
    expect(r.cpus).toHaveLength(8);
    expect(r.rails).toEqual({
      GPU: { currentW: 0.463, averageW: 0.463 },
      CPU: { currentW: 0.618, averageW: 0.618 },
      SOC: { currentW: 2.936, averageW: 2.936 },
      CV: { currentW: 0, averageW: 0 },
      VDDRQ: { currentW: 0.309, averageW: 0.309 },
      SYS5V: { currentW: 3.306, averageW: 3.306 },
    });
    expect(r.totalPower).toEqual({ source: 'sum of rails', currentW: 7.632, averageW: 7.632 });
    expect(r.temperaturesC['GPU']).toBe(30.5);
    expect(r.unparsed).toEqual([]);
  });

  it('reads the MTS field and the Xavier NX VDD_IN rail of JetPack 4', () => {
    const r = parseTegrastats(first('jp4-xavier-nx.txt'));
    expect(r.mts).toEqual({ foregroundPercent: 0, backgroundPercent: 0 });
    expect(r.gpu).toEqual({ loadPercent: 62, freqMHz: 306 });
    expect(r.cpus[5]).toEqual({ loadPercent: 8, freqMHz: 1267 });
    expect(r.totalPower).toEqual({ source: 'VDD_IN', currentW: 4.067, averageW: 4.067 });
    expect(r.unparsed).toEqual([]);
  });

  it('reads a TX1 line with IRAM but no SWAP', () => {
    const r = parseTegrastats(first('jp4-tx1.txt'));
    expect(r.swap).toBeUndefined();
    expect(r.iram).toEqual({ usedKB: 0, totalKB: 252, largestFreeBlockKB: 252 });
    expect(r.rails['VDD_CPU']).toEqual({ currentW: 0.076, averageW: 0.178 });
    expect(r.unparsed).toEqual([]);
  });
});

describe('parseTegrastats on JetPack 5, 6 and 7 lines', () => {
  it('reads a JetPack 5 Orin NX line: mW rails, VIC_FREQ clock, four cores off', () => {
    const r = parseTegrastats(first('jp5-orin-nx-16gb.txt'));
    expect(r.cpus.filter((c) => c.loadPercent === null)).toHaveLength(4);
    expect(r.gpu).toEqual({ loadPercent: 0, freqMHz: 611 });
    expect(r.engines).toEqual({ VIC: { on: true, freqMHz: 729 }, APE: { on: true, freqMHz: 174 } });
    expect(r.temperaturesC).toEqual({ CV0: 45.812, CPU: 47.937, SOC2: 46.093, SOC0: 46.968, CV1: 46.406, GPU: 45.875, tj: 48.875, SOC1: 48.875, CV2: 45.75 });
    expect(r.rails).toEqual({
      VDD_IN: { currentW: 5.299, averageW: 5.299 },
      VDD_CPU_GPU_CV: { currentW: 0.773, averageW: 0.773 },
      VDD_SOC: { currentW: 1.424, averageW: 1.424 },
    });
    expect(r.totalPower?.currentW).toBe(5.299);
    expect(r.unparsed).toEqual([]);
  });

  it('reads a JetPack 6 Orin NX line with the timestamp, video engines at work and the per-GPC GPU clock', () => {
    const r = parseTegrastats(first('jp6-orin-nx-8gb.txt'));
    expect(r.timestamp).toBe('05-15-2025 18:30:28');
    expect(r.ram).toEqual({ usedMB: 6982, totalMB: 7620, largestFreeBlock: { count: 5, sizeKB: 1024 } });
    expect(r.swap).toEqual({ usedMB: 2640, totalMB: 16384, cachedMB: 202 });
    expect(r.cpus[5]).toEqual({ loadPercent: 93, freqMHz: 247 });
    expect(r.gpu).toEqual({ loadPercent: 84, freqMHz: 713, gpcFreqMHz: [713] });
    expect(r.emc).toEqual({ loadPercent: 18, freqMHz: 3199 });
    expect(r.engines).toEqual({
      NVENC: { on: true, loadPercent: 1, freqMHz: 115 },
      NVDEC: { on: true, loadPercent: 40, freqMHz: 115 },
      NVJPG: { on: false },
      NVJPG1: { on: false },
      VIC: { on: true, loadPercent: 31, freqMHz: 115 },
      OFA: { on: false },
      NVDLA0: { on: false },
      PVA0: { on: false },
      APE: { on: true, freqMHz: 174 },
    });
    expect(r.temperaturesC['tj']).toBe(65.562);
    expect(r.totalPower).toEqual({ source: 'VDD_IN', currentW: 17.946, averageW: 15.71 });
    expect(r.unparsed).toEqual([]);
  });

  it('reads a JetPack 6 AGX Orin line whatever its spacing, with two GPCs and no input rail', () => {
    const r = parseTegrastats(first('jp6-agx-orin.txt'));
    expect(r.cpus).toHaveLength(12);
    expect(r.gpu).toEqual({ loadPercent: 0, freqMHz: 305, gpcFreqMHz: [305, 305] });
    expect(r.engines['NVDLA1']).toEqual({ on: false });
    expect(r.totalPower).toEqual({ source: 'sum of rails', currentW: 12.377, averageW: 12.377 });
    expect(r.unparsed).toEqual([]);
  });

  it('reads JetPack 7 triples: temperature cur/max and rail cur/avg/max', () => {
    const r = parseTegrastats(first('jp7-agx-orin.txt'));
    expect(r.timestamp).toBe('07-25-2026 09:08:28');
    expect(r.swap).toBeUndefined();
    expect(r.gpu).toEqual({ loadPercent: 12, freqMHz: 1300, gpcFreqMHz: [1300, 1300] });
    expect(r.temperaturesC).toEqual({ cpu: 52.968, soc2: 48.406, soc0: 49.531, gpu: 47.625 });
    expect(r.rails['VDD_GPU_SOC']).toEqual({ currentW: 5.139, averageW: 5.139, maxW: 5.139 });
    expect(r.engines['NVENC0']).toEqual({ on: false });
    expect(r.unparsed).toEqual([]);
  });

  it('treats -256C as a powered-off sensor, drops NC rails and merges GR3D2_FREQ as a second GPC', () => {
    // Field forms from public JetPack 5 AGX Orin captures and rbonghi/jetson_stats#362.
    const r = parseTegrastats('GR3D_FREQ 0%@114 GR3D2_FREQ 3%@114 CV0@-256C GPU@-256C tj@42.593C VDD_GPU_SOC 2399mW/2399mW NC 0mW/0mW VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW');
    expect(r.gpu).toEqual({ loadPercent: 3, freqMHz: 114, gpcFreqMHz: [114, 114] });
    expect(r.temperaturesC).toEqual({ CV0: null, GPU: null, tj: 42.593 });
    expect(Object.keys(r.rails)).toEqual(['VDD_GPU_SOC', 'VDDQ_VDD2_1V8AO']);
    expect(r.totalPower?.currentW).toBe(2.7);
    expect(r.unparsed).toEqual([]);
  });

  it('keeps unknown tokens, in order, and still reads the rest', () => {
    const r = parseTegrastats('RAM 1/2MB frobnicate 7 [x] CPU [1%@2,bogus] tj@40C');
    expect(r.ram).toEqual({ usedMB: 1, totalMB: 2 });
    expect(r.unparsed).toEqual(['frobnicate', '7', '[x]', 'CPU', '[1%@2,bogus]']);
    expect(r.temperaturesC).toEqual({ tj: 40 });
  });
});

describe('lastTegrastatsLine', () => {
  it('takes the last complete line of a multi-line capture and skips noise after it', () => {
    const out = `${lines('jp4-nano.txt').join('\n')}\nNVPM WARN: something\n`;
    expect(lastTegrastatsLine(out)?.rails['POM_5V_IN']).toEqual({ currentW: 1.057, averageW: 1.043 });
    expect(lastTegrastatsLine('')).toBeUndefined();
    expect(lastTegrastatsLine('tegrastats: command not found\n')).toBeUndefined();
  });
});

describe('parseTegrastats never throws', () => {
  const TOKENS = ['RAM', 'SWAP', 'IRAM', 'CPU', 'GR3D_FREQ', 'GR3D2_FREQ', 'EMC_FREQ', 'MTS', 'fg', 'bg', 'NC', 'VDD_IN', 'off', '0%', '5%@[1,2]', '@[3]', '12/34MB', '(lfb', '2x4MB)', '(cached', '0MB)',
    '0/252kB(lfb', '252kB)', '[1%@2,off]', '[', ']', 'cpu@-256C', 'x@1C/2C', '10mW/20mW/30mW', '1/2', '@', '%', '__proto__@1C', 'constructor', '01-02-2024', '10:00:00'];

  it('on arbitrary strings, returning arrays and records', () => {
    fc.assert(fc.property(fc.string({ maxLength: 300 }), (s) => {
      const r = parseTegrastats(s);
      expect(Array.isArray(r.unparsed)).toBe(true);
      expect(Array.isArray(r.cpus)).toBe(true);
    }), { numRuns: 2000 });
  });

  it('on shuffled real field fragments, accounting for every token', () => {
    fc.assert(fc.property(fc.array(fc.constantFrom(...TOKENS), { maxLength: 40 }), (parts) => {
      const r = parseTegrastats(parts.join(' '));
      expect(r.unparsed.length).toBeLessThanOrEqual(parts.length);
      expect(Object.getPrototypeOf(r.temperaturesC)).toBe(Object.prototype);
      for (const w of Object.values(r.rails)) expect(Number.isFinite(w.currentW)).toBe(true);
    }), { numRuns: 2000 });
  });
});
