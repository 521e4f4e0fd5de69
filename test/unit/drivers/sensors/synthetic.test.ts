import { describe, expect, it } from 'vitest';
import { COLOR_BARS, SyntheticSensor, type CounterValue, type SyntheticOptions, type SyntheticValue } from '../../../../drivers/sensors/synthetic.js';
import type { AudioFrame, ImageFrame, SensorMessage } from '../../../../drivers/sensors/types.js';

async function take(options: SyntheticOptions, limit = Infinity, signal = new AbortController().signal): Promise<SensorMessage<SyntheticValue>[]> {
  const out: SensorMessage<SyntheticValue>[] = [];
  for await (const m of new SyntheticSensor(options).messages(signal)) {
    out.push(m);
    if (out.length >= limit) break;
  }
  return out;
}

const steps = (ms: readonly SensorMessage<unknown>[]): bigint[] => ms.slice(1).map((m, i) => m.sensorTimeNs - (ms[i] as SensorMessage<unknown>).sensorTimeNs);

describe('SyntheticSensor timing', () => {
  it('100 messages at 200 Hz take about 0.5 s, with sensor times exactly 5 ms apart and no drift', async () => {
    const started = performance.now();
    const messages = await take({ pattern: 'json', rate: 200, count: 100 });
    const elapsed = performance.now() - started;
    expect(messages).toHaveLength(100);
    expect(steps(messages)).toEqual(Array(99).fill(5_000_000n));
    // The last is due 495 ms after the first; a setTimeout(5) chain would add its timer overhead every time.
    expect(elapsed).toBeGreaterThanOrEqual(494);
    expect(elapsed).toBeLessThan(650);
    const first = (messages[0] as SensorMessage<unknown>).arrivalMs;
    for (const [k, m] of messages.entries()) {
      expect(m.arrivalMs - first).toBeGreaterThanOrEqual(k * 5 - 0.5);
      expect((m.value as CounterValue).n).toBe(k);
    }
    // Lateness does not accumulate: the last message is as close to its slot as the first ones.
    expect((messages[99] as SensorMessage<unknown>).arrivalMs - first - 495).toBeLessThan(40);
  });

  it('fractional rates stay exact: 29.97 Hz in integer nanoseconds', async () => {
    const messages = await take({ pattern: 'json', rate: 29.97, count: 3 });
    const t0 = (messages[0] as SensorMessage<unknown>).sensorTimeNs;
    expect(messages.map((m) => m.sensorTimeNs - t0)).toEqual([0n, 1_000_000_000_000n / 29_970n, 2_000_000_000_000n / 29_970n]);
  });

  it('sensor time starts at the wall clock; count 0 gives nothing; abort stops at once', async () => {
    const before = BigInt(Date.now()) * 1_000_000n;
    const [m] = await take({ pattern: 'json', count: 1 });
    expect((m as SensorMessage<unknown>).sensorTimeNs >= before).toBe(true);
    expect(await take({ pattern: 'json', count: 0 })).toEqual([]);
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 50);
    const started = performance.now();
    const some = await take({ pattern: 'json', rate: 1 }, Infinity, controller.signal);
    expect(some).toHaveLength(1);
    expect(performance.now() - started).toBeLessThan(500);
  });
});

describe('SyntheticSensor patterns', () => {
  it('color-bars: eight bars of the documented colours, in every pixel layout', async () => {
    const [rgb] = await take({ pattern: 'color-bars', width: 80, height: 4, count: 1 });
    const image = (rgb as SensorMessage<SyntheticValue>).value as ImageFrame;
    expect([image.width, image.height, image.format, image.data.length]).toEqual([80, 4, 'rgb24', 80 * 4 * 3]);
    for (let bar = 0; bar < 8; bar++) {
      for (const x of [bar * 10, bar * 10 + 9]) {
        for (const y of [0, 3]) expect([...image.data.subarray((y * 80 + x) * 3, (y * 80 + x) * 3 + 3)]).toEqual(COLOR_BARS[bar]);
      }
    }
    const [bgr] = await take({ pattern: 'color-bars', width: 8, height: 1, format: 'bgr24', count: 1 });
    expect([...((bgr as SensorMessage<SyntheticValue>).value as ImageFrame).data.subarray(3, 6)]).toEqual([0, 255, 255]); // yellow as b, g, r
    const [gray] = await take({ pattern: 'color-bars', width: 8, height: 1, format: 'gray8', count: 1 });
    expect([...((gray as SensorMessage<SyntheticValue>).value as ImageFrame).data]).toEqual([255, 226, 179, 150, 105, 76, 29, 0]);
    const [rgba] = await take({ pattern: 'color-bars', width: 8, height: 1, format: 'rgba', count: 1 });
    expect([...((rgba as SensorMessage<SyntheticValue>).value as ImageFrame).data.subarray(28, 32)]).toEqual([0, 0, 0, 255]);
  });

  it('counter: every byte is k mod 256 except the first four, k as little-endian uint32', async () => {
    const messages = await take({ pattern: 'counter', rate: 10_000, width: 4, height: 2, format: 'gray8', count: 300 });
    const last = (messages[299] as SensorMessage<SyntheticValue>).value as ImageFrame;
    expect([...last.data]).toEqual([299 & 0xff, 299 >> 8, 0, 0, 299 & 0xff, 299 & 0xff, 299 & 0xff, 299 & 0xff]);
  });

  it('noise: the same seed gives the same frames, another seed others, bytes spread over 0..255', async () => {
    const bytes = async (seed: number): Promise<number[]> => {
      const out: number[] = [];
      for (const m of await take({ pattern: 'noise', rate: 10_000, width: 32, height: 32, seed, count: 2 })) out.push(...(m.value as ImageFrame).data);
      return out;
    };
    const a = await bytes(7);
    expect(await bytes(7)).toEqual(a);
    expect(await bytes(8)).not.toEqual(a);
    const mean = a.reduce((s, v) => s + v, 0) / a.length;
    expect(mean).toBeGreaterThan(120);
    expect(mean).toBeLessThan(135);
    expect(a.slice(0, 3072)).not.toEqual(a.slice(3072)); // frames differ
  });

  it('sine: a continuous tone across frames, frames at sampleRate / frameSize', async () => {
    const messages = await take({ pattern: 'sine', frequency: 1000, amplitude: 0.25, sampleRate: 8000, frameSize: 80, count: 3 });
    expect(steps(messages)).toEqual([10_000_000n, 10_000_000n]);
    const all = messages.flatMap((m) => [...(m.value as AudioFrame).samples]);
    expect((messages[0] as SensorMessage<SyntheticValue>).value).toMatchObject({ sampleRate: 8000, channels: 1 });
    for (const [s, v] of all.entries()) expect(v).toBeCloseTo(0.25 * Math.sin((2 * Math.PI * 1000 * s) / 8000), 6);
  });

  it('buffers: a frame stays intact while among the poolSize newest received', async () => {
    const frames: ImageFrame[] = [];
    for (const m of await take({ pattern: 'counter', rate: 10_000, width: 2, height: 2, format: 'gray8', poolSize: 3, count: 10 })) frames.push(m.value as ImageFrame);
    // Only the three newest are guaranteed; the ring has poolSize buffers, all shared memory.
    expect(frames.slice(-3).map((f) => f.data[3])).toEqual([0, 0, 0]);
    expect(frames.slice(-3).map((f) => f.data[0])).toEqual([7, 8, 9]);
    expect(new Set(frames.map((f) => f.data)).size).toBe(3);
    expect(frames[0]?.data.buffer).toBeInstanceOf(SharedArrayBuffer);
  });

  it('rejects impossible options with EAI_SENSOR_CONFIG', () => {
    expect(() => new SyntheticSensor({ pattern: 'json', rate: 0 })).toThrow(expect.objectContaining({ code: 'EAI_SENSOR_CONFIG' }));
    expect(() => new SyntheticSensor({ pattern: 'noise', width: 0 })).toThrow(/width/u);
    expect(() => new SyntheticSensor({ pattern: 'plaid' as 'noise' })).toThrow(/unknown pattern 'plaid'/u);
    expect(() => new SyntheticSensor({ pattern: 'json', count: -1 })).toThrow(/count/u);
  });
});
