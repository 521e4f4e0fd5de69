import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { describeHardware } from '../../../../deploy/agent/hardware.js';
import { processedOf, TelemetrySampler, type DeviceTelemetryReader, type TelemetryProblem } from '../../../../deploy/agent/telemetry.js';
import { wholeNumber } from '../../../../deploy/fleet/wire.js';
import { aios } from '../../../../deploy/proto/gen/aios.js';
import { createBuiltinHal } from '../../../../drivers/builtin.js';
import { SysRoot } from '../../../../drivers/hal/sysroot.js';
import type { DeviceInfo } from '../../../../drivers/hal/types.js';
import type { NodeStatsSnapshot } from '../../../../runtime/pipeline/node-stats.js';
import { Pipeline, type PipelineStats } from '../../../../runtime/pipeline/pipeline.js';
import { fixtureRoot, SYSROOTS, tempRoot } from '../../../support/sysroots.js';
import { testKinds } from '../../../support/test-nodes.js';
import { findBinary } from '../../../support/wait.js';

const PROTOC = findBinary('protoc');
const KIB = 1024;
const T0 = Date.UTC(2026, 10, 26, 12, 0, 0);

const copies: string[] = [];
afterAll(() => {
  for (const dir of copies) rmSync(dir, { recursive: true, force: true });
});

/** A writable copy of a recorded machine, symlinks kept as recorded (relative, inside the copy). */
function copyFixture(name: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), `aios-agent-${name}-`));
  copies.push(dir);
  cpSync(path.join(SYSROOTS, name), dir, { recursive: true, verbatimSymlinks: true });
  return dir;
}

async function machine(sys: SysRoot): Promise<{ devices: DeviceInfo[]; hal: ReturnType<typeof createBuiltinHal> }> {
  const hal = createBuiltinHal({ sys });
  return { devices: await hal.discover(sys), hal };
}

async function samplerFor(sys: SysRoot, pipelines: () => readonly PipelineStats[] = () => [], onProblem?: (p: TelemetryProblem) => void): Promise<TelemetrySampler> {
  const { devices, hal } = await machine(sys);
  return new TelemetrySampler({ sys, devices, hal, pipelines, ...(onProblem === undefined ? {} : { onProblem }) });
}

function problem(sampler: TelemetrySampler, source: string): TelemetryProblem | undefined {
  return sampler.problems.find((p) => p.source === source);
}

/** A node's stats as NodeStats.snapshot() shapes them. */
function nodeStats(node: string, use: string, counts: Partial<Pick<NodeStatsSnapshot, 'in' | 'out' | 'dropped' | 'late' | 'errors' | 'queued'>>, latency: { p50: number; p99: number; count: number } = { p50: 0, p99: 0, count: 0 }): NodeStatsSnapshot {
  const summary = { count: latency.count, p50: latency.p50, p90: latency.p99, p99: latency.p99, max: latency.p99 };
  return { node, use, in: 0, out: 0, dropped: 0, late: 0, errors: 0, queued: 0, ...counts, latencyMs: summary, serviceMs: summary };
}

describe('describeHardware', () => {
  it('a Jetson Orin NX: device-tree model, arm64, 8 cores, MemTotal, the GPU and the CPU as accelerators', async () => {
    const sys = await fixtureRoot('jetson-orin-nx-jp6');
    const { devices } = await machine(sys);
    const hw = await describeHardware(sys, devices);
    expect(hw).toMatchObject({ arch: 'arm64', model: 'NVIDIA Jetson Orin NX Engineering Reference Developer Kit', cpuCores: 8, memoryBytes: 15655436 * KIB });
    expect(hw.accelerators?.map((a) => a.id)).toEqual(['jetson:gpu0', 'cpu:0']);
    expect(hw.accelerators?.[0]).toMatchObject({ kind: 'jetson', name: 'NVIDIA Jetson Orin NX 16GB', memoryBytes: 15655436 * KIB });
    expect(hw.accelerators?.[0]?.properties).toMatchObject({ cudaArch: '8.7', jetpack: '6.0', l4t: '36.3.0', dlaCores: '2', sharedMemory: 'true', status: 'ready', formats: 'onnx,tfjs-graph,tfjs-layers' });
    expect(hw.accelerators?.[1]?.properties).toMatchObject({ arch: 'aarch64', features: 'dotprod,fp16,neon' });
  });

  it('an x86 box with an RTX 4090: x64, 32 logical cores, the GPU with its own memory; no DMI captured, so no model', async () => {
    const sys = await fixtureRoot('x86-rtx4090');
    const hw = await describeHardware(sys, (await machine(sys)).devices);
    expect(hw).toMatchObject({ arch: 'x64', model: '', cpuCores: 32, memoryBytes: 65568852 * KIB });
    expect(hw.accelerators?.[0]).toMatchObject({ id: 'cuda:0000:01:00.0', kind: 'cuda', name: 'NVIDIA GeForce RTX 4090', memoryBytes: 25757220864 });
    expect(hw.accelerators?.[0]?.properties).toMatchObject({ computeCapability: '8.9', driverVersion: '550.54.14', pciAddress: '0000:01:00.0' });
  });

  it('a Raspberry Pi 5 with two Coral USB sticks: the board name, and the USB 2 warning kept as a property', async () => {
    const sys = await fixtureRoot('rpi5-coral-usb');
    const hw = await describeHardware(sys, (await machine(sys)).devices);
    expect(hw).toMatchObject({ arch: 'arm64', model: 'Raspberry Pi 5 Model B Rev 1.0', cpuCores: 4, memoryBytes: 8245296 * KIB });
    expect(hw.accelerators?.map((a) => a.id)).toEqual(['edgetpu:usb-2-1', 'edgetpu:usb-3-1', 'cpu:0']);
    expect(hw.accelerators?.[1]?.properties?.['warning']).toMatch(/USB 2/u);
  });

  it('an unavailable device says why and what to do in its properties', async () => {
    const sys = await tempRoot({ 'proc/meminfo': 'MemTotal:        1000 kB\nMemAvailable:     400 kB\n' });
    const hw = await describeHardware(sys, [{ id: 'edgetpu:usb-1-1', kind: 'edgetpu', name: 'Coral USB Accelerator', formats: ['tflite-edgetpu'], status: { state: 'unavailable', reason: 'libedgetpu.so.1 not found', fix: 'install libedgetpu1-std' } }]);
    expect(hw.memoryBytes).toBe(1000 * KIB);
    expect(hw.accelerators?.[0]?.properties).toEqual({ status: 'unavailable', reason: 'libedgetpu.so.1 not found', fix: 'install libedgetpu1-std', formats: 'tflite-edgetpu' });
  });

  it('x86 machine names come from DMI: vendor + product, the baseboard where the product is a placeholder, Lenovo product_version', async () => {
    const dmi = (fields: Record<string, string>): Promise<SysRoot> => tempRoot(Object.fromEntries(Object.entries(fields).map(([k, v]) => [`sys/class/dmi/id/${k}`, `${v}\n`])));
    expect((await describeHardware(await dmi({ sys_vendor: 'Dell Inc.', product_name: 'PowerEdge R750' }), [])).model).toBe('Dell Inc. PowerEdge R750');
    expect((await describeHardware(await dmi({ sys_vendor: 'To Be Filled By O.E.M.', product_name: 'To Be Filled By O.E.M.', board_vendor: 'ASRock', board_name: 'B650M Pro RS' }), [])).model).toBe('ASRock B650M Pro RS');
    expect((await describeHardware(await dmi({ sys_vendor: 'LENOVO', product_name: '20XW0055US', product_version: 'ThinkPad X1 Carbon Gen 9' }), [])).model).toBe('LENOVO ThinkPad X1 Carbon Gen 9');
    expect((await describeHardware(await dmi({ sys_vendor: 'QEMU', product_name: 'Standard PC (Q35 + ICH9, 2009)' }), [])).model).toBe('QEMU Standard PC (Q35 + ICH9, 2009)');
  });

  it('on the live root the arch is what this Node runs as', async () => {
    const hw = await describeHardware(await SysRoot.open('/'), []);
    expect(hw.arch).toBe(process.arch);
  });

  it('goes into a DeviceBirth that encodes and decodes with the same hardware', async () => {
    const sys = await fixtureRoot('x86-coral-m2');
    const hardware = await describeHardware(sys, (await machine(sys)).devices);
    const bytes = aios.fleet.v1.DeviceBirth.encode({ deviceId: 'robot-7', fleet: 'warehouse', hardware }).finish();
    const back = aios.fleet.v1.DeviceBirth.decode(bytes).hardware;
    expect(wholeNumber(back?.memoryBytes)).toBe(16122356 * KIB);
    expect(back?.accelerators?.map((a) => [a.id, a.name, wholeNumber(a.memoryBytes), a.properties?.['driverVersion']])).toEqual([
      ['edgetpu:pci-0000:01:00.0', 'Coral M.2 / PCIe Accelerator', 8388608, '1.2'],
      ['cpu:0', 'Intel(R) N100', 16122356 * KIB, undefined],
    ]);
  });
});

describe('TelemetrySampler: the machine', () => {
  it('a Jetson Orin NX: memory from meminfo, the hottest live zone (powered-off -256 °C zones ignored), VDD_IN board power, the GPU from the HAL', async () => {
    const sampler = await samplerFor(await fixtureRoot('jetson-orin-nx-jp6'));
    const t = await sampler.sample(T0);
    expect(t.timeUnixMs).toBe(T0);
    expect(t.device).toMatchObject({ memoryTotalBytes: 15655436 * KIB, memoryUsedBytes: (15655436 - 13906432) * KIB, temperatureC: 47.968 });
    // VDD_IN: in1_input 5008 mV × curr1_input 1032 mA.
    expect(t.device?.powerW).toBeCloseTo(5.008 * 1.032, 9);
    expect(t.accelerators?.find((a) => a.id === 'jetson:gpu0')).toMatchObject({ utilizationPercent: expect.closeTo(11.7, 9), temperatureC: 46.312, memoryUsedBytes: (15655436 - 13906432) * KIB });
    // The capture has no /proc/stat and no /proc/uptime: those fields are unknown, and say so.
    expect(t.device?.cpuPercent).toBeNaN();
    expect(t.device?.uptimeS).toBeNaN();
    expect(sampler.problems.map((p) => p.source).sort()).toEqual(['cpu', 'uptime']);
  });

  it('a Jetson Nano: the PMIC-Die zone, a constant 100 °C, is not the hottest; POM_5V_IN is the board power', async () => {
    const t = await (await samplerFor(await fixtureRoot('jetson-nano-jp4'))).sample(T0);
    expect(t.device?.temperatureC).toBe(41.5); // AO-therm
    expect(t.device?.powerW).toBeCloseTo(1.912, 9);
  });

  it('a Kria KV260: board power from the INA260 on the SOM input', async () => {
    const t = await (await samplerFor(await fixtureRoot('kria-kv260'))).sample(T0);
    expect(t.device?.powerW).toBeCloseTo(4.81, 9);
    expect(t.accelerators?.find((a) => a.id === 'fpga:fpga0')).toMatchObject({ temperatureC: 44.5, memoryUsedBytes: 9531392 });
  });

  it('an x86 mini PC with a Coral M.2: the x86_pkg_temp zone, no board power monitor (NaN, not a problem), the TPU temperature', async () => {
    const sampler = await samplerFor(await fixtureRoot('x86-coral-m2'));
    const t = await sampler.sample(T0);
    expect(t.device).toMatchObject({ temperatureC: 45, memoryTotalBytes: 16122356 * KIB, memoryUsedBytes: (16122356 - 14998180) * KIB });
    expect(t.device?.powerW).toBeNaN();
    expect(problem(sampler, 'power')).toBeUndefined();
    const tpu = t.accelerators?.find((a) => a.id === 'edgetpu:pci-0000:01:00.0');
    expect(tpu?.temperatureC).toBe(49.8);
    expect(tpu?.utilizationPercent).toBeNaN(); // the Edge TPU reports no load
  });

  it('an x86 server without thermal zones falls back to the hottest hwmon sensor (coretemp)', async () => {
    const sampler = await samplerFor(await fixtureRoot('x86-server'));
    const t = await sampler.sample(T0);
    expect(t.device?.temperatureC).toBe(44); // coretemp.1 Package id 1
    expect(problem(sampler, 'temperature')).toBeUndefined();
  });

  it('the H200 server: the GPU\'s power and temperature from nvidia-smi as recorded', async () => {
    const t = await (await samplerFor(await fixtureRoot('x86-h200-server'))).sample(T0);
    expect(t.accelerators?.find((a) => a.id === 'cuda:0000:00:06.0')).toMatchObject({ utilizationPercent: 0, temperatureC: 37, powerW: 79.94 });
  });

  it('CPU busy % is over the interval between two /proc/stat readings; the first reading gives the average since boot', async () => {
    const root = copyFixture('x86-coral-m2');
    const sampler = await samplerFor(await SysRoot.open(root));
    // Fixture line: cpu 209800 120 88200 6606870 1022 0 6066 0 -> total 6912078 jiffies, idle+iowait 6607892.
    const first = await sampler.sample(T0);
    expect(first.device?.cpuPercent).toBeCloseTo((100 * (6912078 - 6607892)) / 6912078, 9);
    // 10 s later: user +300, system +100, idle +550, iowait +50 -> 1000 jiffies, 600 of them idle.
    writeFileSync(path.join(root, 'proc/stat'), 'cpu  210100 120 88300 6607420 1072 0 6066 0 0 0\n');
    expect((await sampler.sample(T0 + 10_000)).device?.cpuPercent).toBeCloseTo(40, 9);
    // Idle throughout.
    writeFileSync(path.join(root, 'proc/stat'), 'cpu  210100 120 88300 6608420 1072 0 6066 0 0 0\n');
    expect((await sampler.sample(T0 + 20_000)).device?.cpuPercent).toBe(0);
  });
});

describe('TelemetrySampler: never throws, counts problems', () => {
  it('a machine without /sys/class/thermal (and no hwmon) gives NaN temperature and one recorded problem', async () => {
    const root = copyFixture('x86-coral-m2');
    rmSync(path.join(root, 'sys/class/thermal'), { recursive: true });
    const seen: TelemetryProblem[] = [];
    const sampler = await samplerFor(await SysRoot.open(root), () => [], (p) => seen.push(p));
    const first = await sampler.sample(T0);
    expect(first.device?.temperatureC).toBeNaN();
    expect(first.device?.memoryTotalBytes).toBe(16122356 * KIB); // the rest is still there
    await sampler.sample(T0 + 1000);
    expect(problem(sampler, 'temperature')).toMatchObject({ count: 2, firstUnixMs: T0, lastUnixMs: T0 + 1000, message: expect.stringMatching(/no readable temperature/u) });
    // The agent hears of each problem once, however many samples it spoils.
    expect(seen.filter((p) => p.source === 'temperature')).toHaveLength(1);
  });

  it('an empty root: every machine field unknown, every source a problem, still a record', async () => {
    const sys = await tempRoot({});
    const sampler = new TelemetrySampler({ sys, devices: [], hal: createBuiltinHal({ sys }), pipelines: () => [] });
    const t = await sampler.sample(T0);
    expect(t.device?.cpuPercent).toBeNaN();
    expect(t.device?.temperatureC).toBeNaN();
    expect(t.device?.memoryTotalBytes).toBeUndefined();
    expect(sampler.problems.map((p) => p.source).sort()).toEqual(['cpu', 'memory', 'temperature', 'uptime']);
    expect(aios.fleet.v1.Telemetry.verify(t)).toBeNull();
  });

  it('one device whose telemetry fails is a problem for that device only; a HAL that throws leaves the accelerator list empty', async () => {
    const sys = await fixtureRoot('x86-rtx4090');
    const { devices, hal } = await machine(sys);
    const failingGpu: DeviceTelemetryReader = {
      async telemetry(s, d, previous) {
        return (await hal.telemetry(s, d, previous)).map((r) => (r.deviceId.startsWith('cuda:') ? { deviceId: r.deviceId, time: r.time, extra: { error: 'nvidia-smi timed out' } } : r));
      },
    };
    const sampler = new TelemetrySampler({ sys, devices, hal: failingGpu, pipelines: () => [] });
    const t = await sampler.sample(T0);
    expect(t.accelerators?.map((a) => a.id)).toEqual(['cuda:0000:01:00.0', 'cpu:0']);
    expect(t.accelerators?.[0]?.temperatureC).toBeNaN();
    expect(t.accelerators?.[1]?.utilizationPercent).toBeCloseTo(6.62, 9);
    expect(problem(sampler, 'accelerator:cuda:0000:01:00.0')?.message).toBe('nvidia-smi timed out');

    const broken = new TelemetrySampler({ sys, devices, hal: { telemetry: () => Promise.reject(new Error('registry gone')) }, pipelines: () => { throw new Error('pipeline table locked'); } });
    const u = await broken.sample(T0);
    expect(u.accelerators).toEqual([]);
    expect(u.stages).toEqual([]);
    expect(u.device?.memoryTotalBytes).toBe(65568852 * KIB);
    expect(broken.problems.map((p) => [p.source, p.message])).toEqual(expect.arrayContaining([['accelerators', 'registry gone'], ['pipelines', 'pipeline table locked']]));
  });

  it('a logger that throws in onProblem does not cost the sample', async () => {
    const sampler = await samplerFor(await tempRoot({}), () => [], () => {
      throw new Error('log sink closed');
    });
    await expect(sampler.sample(T0)).resolves.toMatchObject({ timeUnixMs: T0 });
  });
});

describe('TelemetrySampler: pipeline stages', () => {
  it('rates come from counter deltas over the injected clock; the first sample is the mean since the pipeline started', async () => {
    let stats: PipelineStats = { name: 'front-camera', uptimeMs: 4000, nodes: [nodeStats('camera', 'camera.v4l2', { out: 120 }), nodeStats('detect', 'infer', { in: 120, dropped: 6, late: 2, errors: 1, queued: 2 }, { p50: 18.5, p99: 41.25, count: 110 })] };
    const sampler = new TelemetrySampler({ sys: await tempRoot({}), devices: [], hal: { telemetry: async () => [] }, pipelines: () => [stats] });

    const first = await sampler.sample(T0);
    expect(first.stages).toEqual([
      { pipeline: 'front-camera', stage: 'camera', processed: 120, dropped: 0, errors: 0, rateHz: 30, latencyP50Ms: Number.NaN, latencyP99Ms: Number.NaN },
      // 120 in - 6 dropped - 2 late - 2 queued = 110 run; over 4 s since start.
      { pipeline: 'front-camera', stage: 'detect', processed: 110, dropped: 8, errors: 1, rateHz: 27.5, latencyP50Ms: 18.5, latencyP99Ms: 41.25 },
    ]);

    // 2.5 s later by the sampler's clock: 75 more frames, 70 more detections.
    stats = { ...stats, uptimeMs: 6500, nodes: [nodeStats('camera', 'camera.v4l2', { out: 195 }), nodeStats('detect', 'infer', { in: 195, dropped: 11, late: 2, errors: 1, queued: 2 }, { p50: 19, p99: 44, count: 180 })] };
    const second = await sampler.sample(T0 + 2500);
    expect(second.stages?.map((s) => [s.stage, s.processed, s.rateHz])).toEqual([['camera', 195, 30], ['detect', 180, 28]]);

    // Nothing processed in the next interval: rate 0, and the old latency window is not reported as current.
    const third = await sampler.sample(T0 + 3500);
    expect(third.stages?.[1]).toMatchObject({ rateHz: 0, processed: 180 });
    expect(third.stages?.[1]?.latencyP50Ms).toBeNaN();

    // A restart (counters and uptime back near zero) starts a new series instead of a negative rate.
    stats = { ...stats, uptimeMs: 1000, nodes: [nodeStats('camera', 'camera.v4l2', { out: 30 }), nodeStats('detect', 'infer', { in: 30, queued: 1 }, { p50: 17, p99: 30, count: 29 })] };
    const fourth = await sampler.sample(T0 + 5000);
    expect(fourth.stages?.map((s) => [s.stage, s.processed, s.rateHz])).toEqual([['camera', 30, 30], ['detect', 29, 29]]);
  });

  it('a drop_oldest queue keeps processed steady: the arrival and the drop cancel', () => {
    const before = nodeStats('n', 'x', { in: 10, queued: 4 });
    const after = nodeStats('n', 'x', { in: 11, dropped: 1, queued: 4 });
    expect(processedOf(before)).toBe(6);
    expect(processedOf(after)).toBe(6);
  });

  it('from a real pipeline run to the end, every stage has handled every message', async () => {
    const collected: Record<string, unknown[]> = {};
    const pipeline = await Pipeline.fromConfig(
      { name: 'numbers', sources: { numbers: { use: 'test.count', params: { count: 20 } } }, stages: { twice: { use: 'test.double', params: { throwOn: 7 } } }, sinks: { out: { use: 'test.collect' } }, flows: ['numbers -> twice', 'twice -> out'] },
      { kinds: testKinds(), extra: { collected }, statsIntervalMs: 0 },
    );
    const done = pipeline.finished();
    await pipeline.start();
    await done;
    const sampler = new TelemetrySampler({ sys: await tempRoot({}), devices: [], hal: { telemetry: async () => [] }, pipelines: () => [pipeline.stats()] });
    const stages = (await sampler.sample(T0)).stages ?? [];
    await pipeline.stop();
    expect(stages.map((s) => [s.stage, s.processed, s.errors])).toEqual([['numbers', 20, 0], ['twice', 20, 1], ['out', 19, 0]]);
    expect(stages.find((s) => s.stage === 'twice')?.latencyP99Ms).toBeGreaterThan(0);
    expect(stages.find((s) => s.stage === 'numbers')?.latencyP50Ms).toBeNaN(); // a source has no input latency
    for (const s of stages) expect(s.rateHz).toBeGreaterThan(0);
  });
});

describe('Telemetry on the wire', () => {
  /** An x86 box with an RTX 4090 running one five-stage camera pipeline, sampled twice 10 s apart. */
  async function typicalRecord(): Promise<aios.fleet.v1.ITelemetry> {
    const root = copyFixture('x86-rtx4090');
    let frames = 3000;
    const stagesAt = (n: number): PipelineStats => ({
      name: 'front-camera',
      uptimeMs: (n / 30) * 1000,
      nodes: [
        nodeStats('camera', 'camera.v4l2', { out: n }),
        nodeStats('resize', 'image.resize', { in: n, out: n, queued: 1 }, { p50: 2.125, p99: 4.5, count: 1024 }),
        nodeStats('detect', 'infer', { in: n, out: n - 40, dropped: 37, late: 3, queued: 1 }, { p50: 11.75, p99: 23.5, count: 1024 }),
        nodeStats('decode', 'decode.ssd', { in: n - 40, out: n - 40, errors: 2 }, { p50: 12.25, p99: 24.75, count: 1024 }),
        nodeStats('publish', 'mqtt', { in: n - 40 }, { p50: 12.5, p99: 26, count: 1024 }),
      ],
    });
    const sampler = await samplerFor(await SysRoot.open(root), () => [stagesAt(frames)]);
    await sampler.sample(T0);
    writeFileSync(path.join(root, 'proc/stat'), 'cpu  5759800 3840 1486600 103248000 37552 0 72656 0 0 0\n');
    frames += 300;
    return sampler.sample(T0 + 10_000);
  }

  it('encodes with Telemetry.encode and decodes to the same values (NaN included); protoc reads it too', async () => {
    const t = await typicalRecord();
    expect(aios.fleet.v1.Telemetry.verify(t)).toBeNull();
    expect(t.device?.cpuPercent).toBeCloseTo(40, 9); // (3000 + 1000) busy of 10000 jiffies
    expect(t.device?.temperatureC).toBeNaN(); // the capture has neither thermal zones nor hwmon
    expect(t.stages?.map((s) => s.rateHz)).toEqual([30, 30, 30, 30, 30]);

    const bytes = aios.fleet.v1.Telemetry.encode(t).finish();
    const back = aios.fleet.v1.Telemetry.toObject(aios.fleet.v1.Telemetry.decode(bytes), { longs: Number, defaults: true });
    expect(back).toMatchObject(t as Record<string, unknown>);
    expect(back['device']).toMatchObject({ memoryTotalBytes: 65568852 * KIB, memoryUsedBytes: (65568852 - 61934212) * KIB });
    expect(back['accelerators']).toEqual([
      { id: 'cuda:0000:01:00.0', utilizationPercent: 3, memoryUsedBytes: 1244659712, temperatureC: 41, powerW: 31.27 },
      { id: 'cpu:0', utilizationPercent: expect.closeTo(40, 9), memoryUsedBytes: (65568852 - 61934212) * KIB, temperatureC: Number.NaN, powerW: Number.NaN },
    ]);
    expect((back['stages'] as unknown[])[2]).toEqual({ pipeline: 'front-camera', stage: 'detect', processed: 3259, dropped: 40, errors: 0, rateHz: 30, latencyP50Ms: 11.75, latencyP99Ms: 23.5 });

    if (PROTOC !== undefined) {
      const text = execFileSync(PROTOC, ['--proto_path=deploy/proto', '--decode=aios.fleet.v1.Telemetry', 'aios/fleet/v1/fleet.proto'], { input: bytes, encoding: 'utf8' });
      expect(text).toMatch(/temperature_c: nan/u);
      expect(text).toMatch(/stage: "publish"/u);
      expect(text).toMatch(/memory_total_bytes: 67142504448/u);
    }
  });

  it('is smaller than the same record as JSON (sizes printed)', async () => {
    const t = await typicalRecord();
    const protobuf = aios.fleet.v1.Telemetry.encode(t).finish().length;
    const json = Buffer.byteLength(JSON.stringify(t));
    console.log(`typical telemetry record (x86 + RTX 4090, 2 accelerators, 1 pipeline of 5 stages): protobuf ${protobuf} bytes, JSON.stringify ${json} bytes (${(json / protobuf).toFixed(2)}x)`);
    expect(protobuf).toBeLessThan(json);
  });
});
