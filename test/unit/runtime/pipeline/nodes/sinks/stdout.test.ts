import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Tensor } from '../../../../../../drivers/tensor/tensor.js';
import { stdoutSink, summarize } from '../../../../../../runtime/pipeline/nodes/sinks/stdout.js';
import { envelope, startSink } from './sink-context.js';

// Node re-reads TZ when it is assigned; the text lines print local time.
process.env['TZ'] = 'UTC';
const NOON = BigInt(Date.UTC(2024, 0, 31, 12, 0, 1, 234)) * 1_000_000n + 567_891n;

let printed: string[];
beforeEach(() => {
  printed = [];
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    printed.push(String(chunk));
    return true;
  });
});
afterEach(() => {
  vi.restoreAllMocks();
});

describe('stdout sink', () => {
  it('prints one human line per message: local time, flow, summary', async () => {
    const sink = await startSink(stdoutSink, {});
    const faces = { boxes: [{ x: 0, y: 0, width: 1, height: 1, score: 0.97, label: 'face' }, { x: 0, y: 0, width: 1, height: 1, score: 0.812, label: 'face' }], imageWidth: 9, imageHeight: 9 };
    await sink.send('detect.boxes', envelope(faces, { sensorTimeNs: NOON }));
    await sink.send('infer.out', envelope(Tensor.zeros('float32', [1, 896, 16]), { sensorTimeNs: NOON }));
    await sink.send('in', envelope({ width: 640, height: 480, format: 'rgb24', data: new Uint8Array(640 * 480 * 3) }, { sensorTimeNs: NOON, origin: 'camera' }));
    await sink.stop();
    expect(printed).toEqual(['12:00:01.234 detect.boxes 2 faces (0.97, 0.81)\n', '12:00:01.234 infer.out float32[1, 896, 16]\n', '12:00:01.234 camera image 640×480 rgb24\n']);
    expect(sink.state.printed).toBe(3);
  });

  it('prints JSON lines with format: json', async () => {
    const sink = await startSink(stdoutSink, { format: 'json' });
    await sink.send('gps.fix', envelope({ latitude: 1.5, longitude: 2.5 }, { sensorTimeNs: NOON, origin: 'gps', seq: 4 }));
    expect(printed.map((l) => JSON.parse(l) as unknown)).toEqual([{ time: NOON.toString(), origin: 'gps', seq: 4, port: 'gps.fix', value: { latitude: 1.5, longitude: 2.5 } }]);
  });

  it('waits for stdout to drain when its buffer is full', async () => {
    vi.restoreAllMocks();
    let drained = false;
    vi.spyOn(process.stdout, 'write').mockImplementation(() => {
      setTimeout(() => {
        drained = true;
        process.stdout.emit('drain');
      }, 30);
      return false;
    });
    const sink = await startSink(stdoutSink, {});
    await sink.send('a.b', envelope(1));
    expect(drained).toBe(true);
  });

  it('counts what it cannot print', async () => {
    const sink = await startSink(stdoutSink, {});
    const loop: unknown[] = [];
    loop.push(loop);
    await sink.send('a.b', envelope(loop));
    expect(printed).toEqual([]);
    expect(sink.state.problems.count('encode')).toBe(1);
    expect(sink.warnings).toEqual([expect.stringContaining('cannot print a message from a.b') as string]);
  });
});

describe('summarize', () => {
  it('describes each payload family in a few words', () => {
    const box = (score: number, label?: string) => ({ x: 0, y: 0, width: 1, height: 1, score, ...(label === undefined ? {} : { label }) });
    const det = (boxes: unknown[]) => ({ boxes, imageWidth: 1, imageHeight: 1 });
    expect(summarize(det([box(0.5, 'face')]))).toBe('1 face (0.50)');
    expect(summarize(det([]))).toBe('0 boxes');
    expect(summarize(det([box(0.9), box(0.8)]))).toBe('2 boxes (0.90, 0.80)');
    expect(summarize(det([box(0.9, 'person'), box(0.7, 'car')]))).toBe('2 detections (person 0.90, car 0.70)');
    expect(summarize(det(Array.from({ length: 7 }, () => box(0.5, 'bus'))))).toBe('7 buses (0.50, 0.50, 0.50, 0.50, 0.50, ...)');
    expect(summarize({ boxes: Tensor.zeros('float32', [1, 4]), scores: Tensor.zeros('float32', [1]) })).toBe('boxes float32[1, 4], scores float32[1]');
    expect(summarize({ sampleRate: 16000, channels: 2, samples: new Float32Array(1024) })).toBe('audio 512 samples × 2 ch @ 16000 Hz');
    expect(summarize({ frameId: 'velodyne', count: 3, xyz: new Float32Array(9) })).toBe('pointcloud 3 points in velodyne');
    expect(summarize({ latitude: 52.520008, longitude: 13.404954, altitude: 34, satellites: 9 })).toBe('fix 52.520008, 13.404954, 34.0 m, 9 sats');
    expect(summarize({ interface: 'can0', id: 0x7df, extended: false, data: Uint8Array.of(2, 1, 12) })).toBe('can0 7DF#02010C');
    expect(summarize(det([{ ...box(0.9), classId: 3 }, box(0.8, 'dog')]))).toBe('2 detections (class 3 0.90, dog 0.80)');
    expect(summarize({ classes: [{ id: 281, label: 'tabby', score: 0.9 }, { id: 7, score: 0.05 }] })).toBe('tabby 0.90, class 7 0.05');
    expect(summarize({ classes: [] })).toBe('no classes');
    expect(summarize({ speed: 3 })).toBe('{"speed":3}');
    expect(summarize({ text: 'x'.repeat(300) })).toHaveLength(160);
  });
});
