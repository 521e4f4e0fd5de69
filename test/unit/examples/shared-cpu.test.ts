import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Pipeline } from '../../../runtime/pipeline/pipeline.js';

const repo = path.resolve(import.meta.dirname, '../../..');
const dir = path.join(repo, 'examples/pipelines/shared-cpu');

describe('examples/pipelines/shared-cpu: two pipelines of different priority on one device', () => {
  it('gives the priority-4 front camera its declared 30 runs/s on time while the rear camera takes the rest', async () => {
    const front = await Pipeline.fromFile(path.join(dir, 'front-camera.yaml'), { statsIntervalMs: 0 });
    const rear = await Pipeline.fromFile(path.join(dir, 'rear-camera.yaml'), { statsIntervalMs: 0 });
    await front.start();
    await rear.start();
    await new Promise((r) => setTimeout(r, 7000));
    const shares = [front, rear].map((p) => p.stats().nodes.find((n) => n.node === 'detect')?.scheduling);
    const frontNodes = front.stats().nodes;
    await front.stop();
    await rear.stop();

    const [f, r] = shares;
    expect(f).toMatchObject({ device: 'cpu:0', priority: 4, rateHz: 30, entitledRateHz: 30, failovers: 0 });
    expect(r).toMatchObject({ device: 'cpu:0', priority: 1, failovers: 0 });
    // A 30 Hz camera: the scheduler's 5 s window sees about 30 runs/s (frames the camera repeated
    // to reach 30 fps included), all on time even with the rear camera saturating the CPU.
    expect(f?.receivedRateHz).toBeGreaterThan(22);
    expect(f?.receivedRateHz).toBeLessThan(34);
    const detect = frontNodes.find((n) => n.node === 'detect');
    expect((f?.deadlineMisses ?? 0) + (f?.expired ?? 0)).toBeLessThanOrEqual(Math.ceil(0.02 * (detect?.in ?? 0)));
    // The rear camera absorbs the slack: it gets more runs than the front, and more device time.
    expect(r?.receivedRateHz).toBeGreaterThan(f?.receivedRateHz ?? 0);
    expect(r?.receivedShare).toBeGreaterThan(f?.receivedShare ?? 1);
    // Entitlement follows the formula: the front is capped at its demand, the rear gets the rest.
    expect((f?.entitledShare ?? 0) + (r?.entitledShare ?? 0)).toBeCloseTo(1, 1);
  });

  it('refuses at start a pipeline that declares more runs per second than the device can give at its priority, saying by how much', async () => {
    const config = {
      name: 'greedy',
      priority: 1,
      sources: { camera: { use: 'synthetic', params: { pattern: 'color-bars', rate: 30, width: 256, height: 256, format: 'rgb24' } } },
      stages: {
        normalize: { use: 'image.normalize', params: { scale: 0.00784313725490196, offset: -1 } },
        detect: { use: 'infer', params: { model: 'models/zoo/blazeface-back-256/face_detection_back_256x256_barracuda.onnx', devices: ['cpu'], threads: 1, rate: 5000 } },
      },
      sinks: { out: { use: 'callback' } },
      flows: ['camera -> normalize', 'normalize -> detect', 'detect -> out'],
    };
    const pipeline = await Pipeline.fromConfig(config, { baseDir: repo, statsIntervalMs: 0 });
    const error = await pipeline.start().then(
      () => undefined,
      (e: unknown) => e as { code: string; message: string },
    );
    await pipeline.stop();
    expect(error?.code).toBe('EAI_SCHED_ADMISSION');
    // e.g. "greedy/detect needs 5000/s × 6.4 ms = 3210.3 % of cpu:0, but at priority 1 it is entitled to 155.7/s (100 %): short by 4844.3/s (97 %)"
    const m = /^greedy\/detect needs 5000\/s × ([0-9.]+) ms = ([0-9.]+) % of cpu:0, but at priority 1 it is entitled to ([0-9.]+)\/s \(100 %\): short by ([0-9.]+)\/s \(([0-9]+) %\)/u.exec(error?.message ?? '');
    expect(m, error?.message).not.toBeNull();
    const [cost, needed, entitled, short, pct] = (m as RegExpExecArray).slice(1).map(Number) as [number, number, number, number, number];
    // Alone on one lane it is entitled to the whole device, 1000 / cost runs per second.
    expect(needed / 100).toBeCloseTo((5000 * cost) / 1000, 0);
    expect(entitled).toBeGreaterThan((1000 / cost) * 0.97);
    expect(entitled).toBeLessThan((1000 / cost) * 1.03);
    expect(short).toBeCloseTo(5000 - entitled, 0);
    expect(pct).toBe(Math.round((short / 5000) * 100));
  });
});
