import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Tensor } from '../../../../../../drivers/tensor/tensor.js';
import { mcapSink } from '../../../../../../runtime/pipeline/nodes/sinks/mcap.js';
import { json, readIndexed } from '../../../../drivers/recording/read-mcap.js';
import { T0, envelope, startSink } from './sink-context.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'aios-mcap-sink-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const frame = { width: 4, height: 2, format: 'rgb24' as const, data: new Uint8Array(24).fill(9) };
const boxes = { boxes: [{ x: 1, y: 2, width: 3, height: 4, score: 0.9, label: 'face' }], imageWidth: 4, imageHeight: 2 };

describe('mcap sink', () => {
  it('records each flow as its own topic with the Foxglove schema, sensor log time and origin sequence', async () => {
    const sink = await startSink(mcapSink, { path: 'rec/run.mcap' }, { name: 'rec', baseDir: dir });
    const before = BigInt(Date.now()) * 1_000_000n;
    for (let seq = 0; seq < 3; seq++) {
      const at = T0 + BigInt(seq) * 33_000_000n;
      await sink.send('camera.frames', envelope(frame, { seq, sensorTimeNs: at }));
      await sink.send('detect.boxes', envelope(boxes, { seq, sensorTimeNs: at }));
    }
    await sink.send('gps.fix', envelope({ latitude: 52.5, longitude: 13.4 }, { origin: 'gps', seq: 41, sensorTimeNs: T0 }));
    await sink.send('infer.out', envelope(new Tensor('float32', [2], Float32Array.of(0.25, 0.75)), { seq: 2 }));
    await sink.send('in', envelope({ note: 'plain' }, { origin: 'clock', seq: 5 }));
    await sink.stop();
    const after = BigInt(Date.now()) * 1_000_000n;

    const { reader, messages } = await readIndexed(path.join(dir, 'rec/run.mcap'));
    const byTopic = (t: string) => messages.filter((m) => m.topic === t);
    expect(new Set(messages.map((m) => `${m.topic} ${m.schemaName ?? '-'} ${m.messageEncoding}`))).toEqual(
      new Set(['/camera/frames foxglove.RawImage json', '/detect/boxes foxglove.ImageAnnotations json', '/gps/fix foxglove.LocationFix json', '/infer/out aios.Tensor json', '/clock - json']),
    );
    expect(byTopic('/camera/frames').map((m) => m.logTime)).toEqual([T0, T0 + 33_000_000n, T0 + 66_000_000n]);
    expect(byTopic('/camera/frames').map((m) => m.sequence)).toEqual([0, 1, 2]);
    for (const m of messages) {
      expect(m.publishTime).toBeGreaterThanOrEqual(before - 1_000_000_000n);
      expect(m.publishTime).toBeLessThanOrEqual(after + 1_000_000n);
    }
    expect(json(byTopic('/camera/frames')[1]!)).toMatchObject({ width: 4, height: 2, encoding: 'rgb8', step: 12, frame_id: 'camera', timestamp: { sec: 1_700_000_000, nsec: 33_000_123 } });
    expect(json(byTopic('/detect/boxes')[0]!)).toMatchObject({ labels: [{ text: 'face 0.90' }] });
    expect(byTopic('/gps/fix')[0]?.sequence).toBe(41);
    expect(json(byTopic('/infer/out')[0]!)).toEqual({ dtype: 'float32', shape: [2], data: [0.25, 0.75] });
    expect(json(byTopic('/clock')[0]!)).toEqual({ note: 'plain' });
    expect(reader.statistics?.messageCount).toBe(9n);
    expect(sink.state.recorded).toBe(9);
    expect(sink.warnings).toEqual([]);
  });

  it('counts and reports a payload it cannot encode, once per interval, and keeps recording', async () => {
    const sink = await startSink(mcapSink, { path: path.join(dir, 'bad.mcap') });
    const loop: Record<string, unknown> = {};
    loop['self'] = loop;
    for (let i = 0; i < 5; i++) await sink.send('weird.out', envelope(loop, { seq: i }));
    await sink.send('camera.frames', envelope({ ...frame, data: new Uint8Array(3) }));
    await sink.send('camera.frames', envelope(frame, { seq: 9 }));
    await sink.stop();
    expect(sink.state.problems.count('encode')).toBe(6);
    expect(sink.warnings).toHaveLength(1);
    expect(sink.warnings[0]).toMatch(/sink: cannot record a message from weird\.out: .*cycle/u);
    const { messages } = await readIndexed(path.join(dir, 'bad.mcap'));
    expect(messages.map((m) => [m.topic, m.sequence])).toEqual([['/camera/frames', 9]]);
  });

  it('rotates by size from its parameters, every file complete', async () => {
    const sink = await startSink(mcapSink, { path: 'parts/{index}.mcap', maxFileSize: 4096, chunkSize: 1024, fsync: null }, { baseDir: dir });
    for (let seq = 0; seq < 40; seq++) await sink.send('camera.frames', envelope({ ...frame, width: 20, height: 5, data: new Uint8Array(300).fill(seq) }, { seq }));
    await sink.stop();
    const files = (await readdir(path.join(dir, 'parts'))).sort();
    expect(files.length).toBeGreaterThan(3);
    const seqs: number[] = [];
    for (const f of files) seqs.push(...(await readIndexed(path.join(dir, 'parts', f))).messages.map((m) => m.sequence));
    expect(seqs).toEqual([...Array(40).keys()]);
  });

  it('reports a bad path pattern at validation time', async () => {
    expect(await mcapSink.check?.({ path: 'x-{date}.mcap' } as never, { baseDir: dir, inputs: {} })).toEqual([
      { path: ['params', 'path'], message: expect.stringContaining('{date}') as string },
    ]);
    expect(await mcapSink.check?.({ path: 'x-{time}.mcap' } as never, { baseDir: dir, inputs: {} })).toEqual([]);
  });
});
