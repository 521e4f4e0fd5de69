import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Type } from '@sinclair/typebox';
import { afterAll, describe, expect, it } from 'vitest';
import { defineNode, type Envelope } from '../../../../../../runtime/pipeline/definition.js';
import { NodeKinds } from '../../../../../../runtime/pipeline/node-kinds.js';
import { callbackSink } from '../../../../../../runtime/pipeline/nodes/sinks/callback.js';
import { Pipeline } from '../../../../../../runtime/pipeline/pipeline.js';

// docs/user-stages.md promises its example works: run the code blocks from the page itself.
const repo = path.resolve(import.meta.dirname, '../../../../../..');
const page = readFileSync(path.join(repo, 'docs/user-stages.md'), 'utf8');
const blocks = [...page.matchAll(/```js\n([\s\S]*?)```/gu)].map((m) => m[1] ?? '');
// Inside node_modules so the module resolves @sinclair/typebox as a user's project would.
const dir = path.join(repo, 'node_modules/.cache/aios-user-stage-doc');

const detections = defineNode({
  use: 'test.detections',
  role: 'source',
  description: 'detections',
  params: Type.Object({}),
  inputs: [],
  outputs: ['out'],
  types: () => ({ out: { kind: 'detections' } }),
  async run(ctx) {
    const frames = [[{ label: 'person', score: 0.9 }, { label: 'person', score: 0.4 }, { label: 'dog', score: 0.8 }], [{ label: 'dog', score: 0.9 }], [{ label: 'person', score: 0.6 }]];
    for (const [i, boxes] of frames.entries()) await ctx.emit('out', { boxes, imageWidth: 300, imageHeight: 300 }, { sensorTimeNs: BigInt(i), arrivalMs: performance.now(), origin: ctx.name, seq: i });
  },
});

describe('docs/user-stages.md', () => {
  mkdirSync(path.join(dir, 'stages'), { recursive: true });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('the example module runs in a pipeline, used by path', async () => {
    const example = blocks.find((b) => b.startsWith('// stages/count-labels.mjs'));
    expect(example).toBeDefined();
    writeFileSync(path.join(dir, 'stages/count-labels.mjs'), example ?? '');
    const pipeline = await Pipeline.fromConfig(
      {
        name: 'doc',
        sources: { camera: { use: 'test.detections' } },
        stages: { people: { use: './stages/count-labels.mjs', params: { labels: ['person'], skipEmpty: true } } },
        sinks: { out: { use: 'callback', queue: { size: 10, full: 'block' } } },
        flows: ['camera -> people', 'people -> out'],
      },
      { kinds: new NodeKinds().register(detections, callbackSink), baseDir: dir, statsIntervalMs: 0 },
    );
    const got: Envelope[] = [];
    pipeline.on('result', (_sink: string, m: Envelope) => got.push(m));
    const done = pipeline.finished();
    await pipeline.start();
    await done;
    await pipeline.stop();
    expect(got.map((m) => [m.value, m.seq])).toEqual([[{ counts: { person: 1 }, total: 1, frame: 1 }, 0], [{ counts: { person: 1 }, total: 1, frame: 3 }, 2]]);
  });

  it('a misspelt param is reported at validation', async () => {
    const config = { name: 'doc', sources: { camera: { use: 'test.detections' } }, stages: { people: { use: './stages/count-labels.mjs', params: { labels: ['person'], minscore: 1 } } }, sinks: { out: { use: 'callback' } }, flows: ['camera -> people', 'people -> out'] };
    await expect(Pipeline.fromConfig(config, { kinds: new NodeKinds().register(detections, callbackSink), baseDir: dir })).rejects.toMatchObject({ message: expect.stringContaining("unknown param 'minscore'") });
  });

  it('the unit-test snippet gives what it says', async () => {
    const snippet = blocks.find((b) => b.includes("import stage from './stages/count-labels.mjs'"));
    expect(snippet).toBeDefined();
    writeFileSync(path.join(dir, 'snippet.mjs'), `${snippet ?? ''}\nexport { emitted };\n`);
    const { emitted } = (await import(pathToFileURL(path.join(dir, 'snippet.mjs')).href)) as { emitted: unknown[] };
    expect(emitted).toEqual([{ counts: { person: 1 }, total: 1, frame: 1 }]);
  });
});
