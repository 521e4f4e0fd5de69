import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readNpy } from '../../../../../../drivers/tensor/npy.js';
import { Tensor } from '../../../../../../drivers/tensor/tensor.js';
import { fileSink } from '../../../../../../runtime/pipeline/nodes/sinks/file.js';
import { T0, envelope, startSink } from './sink-context.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'aios-file-sink-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const lines = async (file: string): Promise<unknown[]> =>
  (await readFile(file, 'utf8'))
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as unknown);

describe('file sink, jsonl', () => {
  it('writes one JSON object per message, nanosecond time as a string, and flushes on stop', async () => {
    const sink = await startSink(fileSink, { path: 'out/results.jsonl' }, { baseDir: dir });
    await sink.send('detect.boxes', envelope({ boxes: [{ x: 1, y: 2, width: 3, height: 4, score: 0.5 }], imageWidth: 8, imageHeight: 8 }, { seq: 3 }));
    await sink.send('infer.out', envelope(new Tensor('int64', [2], BigInt64Array.of(1n, 2n ** 60n)), { seq: 4, origin: 'mic' }));
    await sink.send('in', envelope({ big: 10n }, { seq: 5, origin: 'clock' }));
    expect(await readFile(path.join(dir, 'out/results.jsonl'), 'utf8')).toBe(''); // still buffered
    await sink.stop();
    expect(await lines(path.join(dir, 'out/results.jsonl'))).toEqual([
      { time: T0.toString(), origin: 'camera', seq: 3, port: 'detect.boxes', value: { boxes: [{ x: 1, y: 2, width: 3, height: 4, score: 0.5 }], imageWidth: 8, imageHeight: 8 } },
      { time: T0.toString(), origin: 'mic', seq: 4, port: 'infer.out', value: { dtype: 'int64', shape: [2], data: ['1', '1152921504606846976'] } },
      { time: T0.toString(), origin: 'clock', seq: 5, port: 'clock', value: { big: '10' } },
    ]);
    expect(sink.state.written).toBe(3);
  });

  it('holds at most bufferSize bytes: past it the write happens before process returns', async () => {
    const file = path.join(dir, 'small.jsonl');
    const sink = await startSink(fileSink, { path: file, bufferSize: 200, flushInterval: '1m' });
    for (let seq = 0; seq < 10; seq++) await sink.send('gps.fix', envelope({ latitude: 52.5, longitude: 13.4 }, { seq }));
    const written = await lines(file);
    expect(written.length).toBeGreaterThanOrEqual(8);
    expect(written.map((l) => (l as { seq: number }).seq)).toEqual([...Array(written.length).keys()]);
    await sink.stop();
    expect(await lines(file)).toHaveLength(10);
  });

  it('writes buffered lines every flushInterval while running', async () => {
    const file = path.join(dir, 'timed.jsonl');
    const sink = await startSink(fileSink, { path: file, flushInterval: '20ms' });
    await sink.send('gps.fix', envelope({ latitude: 1, longitude: 2 }));
    const end = Date.now() + 5_000;
    while ((await lines(file)).length === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    expect(await lines(file)).toHaveLength(1);
    await sink.stop();
  });

  it('appends to an existing file, and counts what it cannot encode', async () => {
    const file = path.join(dir, 'log.jsonl');
    await writeFile(file, '{"earlier":true}\n');
    const sink = await startSink(fileSink, { path: file });
    const loop: Record<string, unknown> = {};
    loop['me'] = loop;
    await sink.send('x.y', envelope(loop));
    await sink.send('x.y', envelope({ ok: 1 }));
    await sink.stop();
    expect(await lines(file)).toEqual([{ earlier: true }, expect.objectContaining({ value: { ok: 1 } })]);
    expect(sink.state.problems.count('encode')).toBe(1);
    expect(sink.warnings[0]).toMatch(/cannot write a message from x\.y as JSON/u);
  });
});

describe('file sink, npy', () => {
  it('writes one .npy per tensor message, readable back with the same dtype, shape and values', async () => {
    const sink = await startSink(fileSink, { path: 'tensors', format: 'npy' }, { baseDir: dir });
    await sink.send('infer.out', envelope(new Tensor('float32', [2, 3], Float32Array.of(1, 2, 3, 4, 5, 6)), { seq: 7 }));
    await sink.send('infer.out', envelope(new Tensor('int64', [1], BigInt64Array.of(-5n)), { seq: 8 }));
    await sink.stop();
    expect((await readdir(path.join(dir, 'tensors'))).sort()).toEqual(['7.npy', '8.npy']);
    const a = await readNpy(path.join(dir, 'tensors/7.npy'));
    expect([a.dtype, a.shape, Array.from(a.data as Float32Array)]).toEqual(['float32', [2, 3], [1, 2, 3, 4, 5, 6]]);
    const b = await readNpy(path.join(dir, 'tensors/8.npy'));
    expect([b.dtype, Array.from(b.data as BigInt64Array)]).toEqual(['int64', [-5n]]);
  });

  it('writes images as uint8 [h, w, c], several tensors one file each, and names by pattern', async () => {
    const sink = await startSink(fileSink, { path: dir, format: 'npy', name: '{flow}/{origin}-{seq}.npy' });
    await sink.send('camera.frames', envelope({ width: 3, height: 2, format: 'gray8', data: Uint8Array.of(1, 2, 3, 4, 5, 6) }, { seq: 1 }));
    await sink.send('infer.out', envelope({ boxes: Tensor.zeros('float32', [1, 4]), scores: new Tensor('float32', [1], Float32Array.of(0.5)) }, { seq: 2 }));
    await sink.stop();
    const img = await readNpy(path.join(dir, 'camera.frames/camera-1.npy'));
    expect([img.dtype, img.shape, Array.from(img.data as Uint8Array)]).toEqual(['uint8', [2, 3, 1], [1, 2, 3, 4, 5, 6]]);
    expect((await readdir(path.join(dir, 'infer.out'))).sort()).toEqual(['camera-2.boxes.npy', 'camera-2.scores.npy']);
    expect(Array.from((await readNpy(path.join(dir, 'infer.out/camera-2.scores.npy'))).data as Float32Array)).toEqual([0.5]);
  });

  it('counts payloads with no array form and keeps going, reporting once per interval', async () => {
    const sink = await startSink(fileSink, { path: dir, format: 'npy' });
    await sink.send('gps.fix', envelope({ latitude: 1, longitude: 2 }));
    await sink.send('camera.frames', envelope({ width: 4, height: 4, format: 'rgb24', data: new Uint8Array(2) }));
    await sink.send('infer.out', envelope(Tensor.zeros('uint8', [2]), { seq: 3 }));
    await sink.stop();
    expect(sink.state.problems.count('encode')).toBe(2);
    expect(sink.warnings).toHaveLength(1);
    expect(sink.warnings[0]).toMatch(/a gnss message from gps\.fix has no array form/u);
    expect(await readdir(dir)).toEqual(['3.npy']);
  });
});
