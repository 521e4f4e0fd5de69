import { open, rm } from 'node:fs/promises';
import path from 'node:path';
import { McapIndexedReader } from '@mcap/core';
import { describe, expect, it } from 'vitest';
import { Pipeline } from '../../../runtime/pipeline/pipeline.js';

const repo = path.resolve(import.meta.dirname, '../../..');
const recording = path.join(repo, 'out/face-detection.mcap');

describe('examples/pipelines/face-detection.yaml', () => {
  it('finds the one face in the real clip and records frames and boxes to MCAP', async () => {
    await rm(recording, { force: true });
    const pipeline = await Pipeline.fromFile(path.join(repo, 'examples/pipelines/face-detection.yaml'), { statsIntervalMs: 0 });
    await pipeline.start();
    await new Promise((r) => setTimeout(r, 3000));
    await pipeline.stop();
    const stats = Object.fromEntries(pipeline.stats().nodes.map((n) => [n.node, n]));
    expect(stats['detect']?.out).toBeGreaterThan(10);
    expect(stats['detect']?.errors).toBe(0);
    expect(stats['faces']?.out).toBe(stats['detect']?.out);

    const handle = await open(recording);
    const size = (await handle.stat()).size;
    const reader = await McapIndexedReader.Initialize({
      readable: {
        size: async () => BigInt(size),
        read: async (offset, length) => {
          const buf = Buffer.alloc(Number(length));
          await handle.read(buf, 0, Number(length), Number(offset));
          return buf;
        },
      },
    });
    const byTopic = new Map<string, { schema: string; boxes: number[] }>();
    for await (const m of reader.readMessages()) {
      const channel = reader.channelsById.get(m.channelId);
      const schema = reader.schemasById.get(channel?.schemaId ?? -1)?.name ?? '';
      const entry = byTopic.get(channel?.topic ?? '') ?? { schema, boxes: [] };
      if (schema === 'foxglove.ImageAnnotations') {
        const value = JSON.parse(new TextDecoder().decode(m.data)) as { points?: unknown[] };
        entry.boxes.push(value.points?.length ?? 0);
      }
      byTopic.set(channel?.topic ?? '', entry);
    }
    await handle.close();
    expect(byTopic.get('/square/out')?.schema).toBe('foxglove.RawImage');
    const annotations = byTopic.get('/faces/out');
    expect(annotations?.schema).toBe('foxglove.ImageAnnotations');
    // The clip zooms in on the face: the front-camera model finds it once it is selfie-sized, and
    // then exactly one face per frame (an outline and its keypoints: two point annotations).
    expect(annotations?.boxes.length).toBeGreaterThan(10);
    expect(annotations?.boxes.every((n) => n === 0 || n === 2)).toBe(true);
    expect(annotations?.boxes.filter((n) => n === 2).length).toBeGreaterThanOrEqual(5);
  }, 60_000);
});
