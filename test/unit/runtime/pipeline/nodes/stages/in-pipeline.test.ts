import { Type } from '@sinclair/typebox';
import { describe, expect, it } from 'vitest';
import type { ImageFrame } from '../../../../../../drivers/sensors/types.js';
import type { Tensor } from '../../../../../../drivers/tensor/tensor.js';
import { defineNode, type Envelope } from '../../../../../../runtime/pipeline/definition.js';
import { NodeKinds } from '../../../../../../runtime/pipeline/node-kinds.js';
import { callbackSink } from '../../../../../../runtime/pipeline/nodes/sinks/callback.js';
import { filterStage } from '../../../../../../runtime/pipeline/nodes/stages/filter.js';
import { imageCrop } from '../../../../../../runtime/pipeline/nodes/stages/image-crop.js';
import { imageNormalize } from '../../../../../../runtime/pipeline/nodes/stages/image-normalize.js';
import { imageResize } from '../../../../../../runtime/pipeline/nodes/stages/image-resize.js';
import { syncStage } from '../../../../../../runtime/pipeline/nodes/stages/sync.js';
import { throttleStage } from '../../../../../../runtime/pipeline/nodes/stages/throttle.js';
import { Pipeline } from '../../../../../../runtime/pipeline/pipeline.js';

// The stages inside the real validator and executor: params defaulted and checked, port types
// propagated (and mismatches reported at the flow), messages flowing with their times.

/** A test source: `count` gray frames (or numbers) at `hz`, with exact sensor times. */
const frames = defineNode({
  use: 'test.frames',
  role: 'source',
  description: 'test frames',
  params: Type.Object({ width: Type.Integer(), height: Type.Integer(), hz: Type.Number(), count: Type.Integer(), offsetMs: Type.Number({ default: 0 }) }),
  inputs: [],
  outputs: ['out'],
  types: (p) => ({ out: { kind: 'image', width: p.width, height: p.height, format: 'gray8' } }),
  async run(ctx) {
    const { width, height, hz, count, offsetMs } = ctx.params;
    for (let i = 0; i < count; i++) {
      const data = new Uint8Array(width * height).fill(i);
      const sensorTimeNs = BigInt(Math.round((offsetMs + (i * 1000) / hz) * 1e6));
      await ctx.emit('out', { width, height, format: 'gray8', data } satisfies ImageFrame, { sensorTimeNs, arrivalMs: performance.now(), origin: ctx.name, seq: i });
    }
  },
});

const kinds = (): NodeKinds => new NodeKinds().register(frames, imageResize, imageCrop, imageNormalize, throttleStage, syncStage, filterStage, callbackSink);

async function results(config: object): Promise<Envelope[]> {
  const pipeline = await Pipeline.fromConfig(config, { kinds: kinds(), statsIntervalMs: 0 });
  const got: Envelope[] = [];
  pipeline.on('result', (_sink: string, message: Envelope) => got.push(message));
  const done = pipeline.finished();
  await pipeline.start();
  await done;
  await pipeline.stop();
  return got;
}

describe('image stages in a pipeline', () => {
  it('camera -> throttle -> crop -> resize -> normalize -> callback', async () => {
    const got = await results({
      name: 'chain',
      sources: { camera: { use: 'test.frames', params: { width: 64, height: 48, hz: 30, count: 10 } } },
      stages: {
        slow: { use: 'throttle', params: { rate: 10 } },
        square: { use: 'image.crop', params: { center: true, width: 48, height: 48 } },
        small: { use: 'image.resize', params: { width: 16, height: 16 } },
        tensor: { use: 'image.normalize', params: { scale: 1, layout: 'NCHW' } },
      },
      sinks: { out: { use: 'callback', queue: { size: 100, full: 'block' } } },
      flows: ['camera -> slow', 'slow -> square', 'square -> small', 'small -> tensor', 'tensor -> out'],
    });
    expect(got.map((m) => m.seq)).toEqual([0, 3, 6, 9]);
    const t = got[1]?.value as Tensor<'float32'>;
    expect(t.shape).toEqual([1, 1, 16, 16]);
    expect(t.data.every((v) => v === 3)).toBe(true);
    expect(got[1]?.sensorTimeNs).toBe(100_000_000n);
    expect(got[1]?.origin).toBe('camera');
  });

  it('reports type problems at validation: a crop larger than the camera frame, and its consequence', async () => {
    const config = {
      name: 'bad',
      sources: { camera: { use: 'test.frames', params: { width: 64, height: 48, hz: 30, count: 1 } } },
      stages: { square: { use: 'image.crop', params: { x: 0, y: 0, width: 100, height: 100 } } },
      sinks: { out: { use: 'callback' } },
      flows: ['camera -> square', 'square -> out'],
    };
    await expect(Pipeline.fromConfig(config, { kinds: kinds() })).rejects.toMatchObject({ code: 'EAI_CFG_INVALID', message: expect.stringContaining('camera.out -> square.in: the crop 100×100 at (0, 0) does not fit a 64×48 frame') });
  });

  it('sync fuses two cameras by sensor time; filter keeps the even frames', async () => {
    const got = await results({
      name: 'fusion',
      sources: {
        left: { use: 'test.frames', params: { width: 2, height: 2, hz: 10, count: 5 } },
        right: { use: 'test.frames', params: { width: 2, height: 2, hz: 10, count: 5, offsetMs: 3 } },
      },
      stages: {
        pair: { use: 'sync', params: { tolerance: 10 } },
        even: { use: 'filter', params: { where: { field: 'a.data.0', op: 'in', value: [0, 2, 4] } } },
      },
      sinks: { out: { use: 'callback', queue: { size: 100, full: 'block' } } },
      flows: ['left -> pair.a', 'right -> pair.b', 'pair -> even', 'even -> out'],
    });
    // Each right frame is 3 ms after its left one: pairs (0, 0) .. (4, 4), the left's times carried.
    expect(got.map((m) => [(m.value as { a: ImageFrame }).a.data[0], (m.value as { b: ImageFrame }).b.data[0], m.origin, m.sensorTimeNs])).toEqual([
      [0, 0, 'left', 0n],
      [2, 2, 'left', 200_000_000n],
      [4, 4, 'left', 400_000_000n],
    ]);
  });

  it('sync: a listed port nothing flows into is reported', async () => {
    const config = {
      name: 'unfed',
      sources: { left: { use: 'test.frames', params: { width: 2, height: 2, hz: 10, count: 1 } } },
      stages: { pair: { use: 'sync', params: { inputs: ['a', 'b'] } } },
      sinks: { out: { use: 'callback' } },
      flows: ['left -> pair.a', 'pair -> out'],
    };
    await expect(Pipeline.fromConfig(config, { kinds: kinds() })).rejects.toMatchObject({ message: expect.stringContaining("sync lists input 'b' but nothing flows into it") });
  });

  it('filter: a predicate that is not data is a param error', async () => {
    const config = {
      name: 'badfilter',
      sources: { left: { use: 'test.frames', params: { width: 2, height: 2, hz: 10, count: 1 } } },
      stages: { keep: { use: 'filter', params: { where: 'a > 1' } } },
      sinks: { out: { use: 'callback' } },
      flows: ['left -> keep', 'keep -> out'],
    };
    await expect(Pipeline.fromConfig(config, { kinds: kinds() })).rejects.toMatchObject({ code: 'EAI_CFG_INVALID', message: expect.stringContaining('stages.keep.params.where') });
  });
});
