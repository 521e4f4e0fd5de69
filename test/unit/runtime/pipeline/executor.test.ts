import { describe, expect, it } from 'vitest';
import { Pipeline } from '../../../../runtime/pipeline/pipeline.js';
import type { NodeWarning } from '../../../../runtime/pipeline/executor.js';
import { testKinds } from '../../../support/test-nodes.js';

function config(extra: { source?: Record<string, unknown>; stage?: Record<string, unknown> } = {}): Record<string, unknown> {
  return {
    name: 'test',
    sources: { numbers: { use: 'test.count', params: { count: 20 }, ...extra.source } },
    stages: { twice: { use: 'test.double', ...extra.stage } },
    sinks: { out: { use: 'test.collect' } },
    flows: ['numbers -> twice', 'twice -> out'],
  };
}

async function runToEnd(cfg: Record<string, unknown>): Promise<{ collected: Record<string, unknown[]>; pipeline: Pipeline; warnings: NodeWarning[] }> {
  const collected: Record<string, unknown[]> = {};
  const pipeline = await Pipeline.fromConfig(cfg, { kinds: testKinds(), extra: { collected }, statsIntervalMs: 0 });
  const warnings: NodeWarning[] = [];
  pipeline.on('warning', (w: NodeWarning) => warnings.push(w));
  const done = pipeline.finished();
  await pipeline.start();
  await done;
  await pipeline.stop();
  return { collected, pipeline, warnings };
}

describe('pipeline execution', () => {
  it('moves every message through in order when nothing is overloaded, and counts it', async () => {
    const { collected, pipeline } = await runToEnd(config());
    expect(collected['out']).toEqual(Array.from({ length: 20 }, (_, i) => i * 2));
    const stats = Object.fromEntries(pipeline.stats().nodes.map((n) => [n.node, n]));
    expect(stats['numbers']).toMatchObject({ out: 20, errors: 0 });
    expect(stats['twice']).toMatchObject({ in: 20, out: 20, dropped: 0, late: 0, errors: 0, queued: 0 });
    expect(stats['out']).toMatchObject({ in: 20, dropped: 0 });
    expect(stats['out']?.latencyMs.count).toBe(20);
  });

  it('a stage that throws on one message is counted and warned about, and the rest go through', async () => {
    const { collected, pipeline, warnings } = await runToEnd(config({ stage: { params: { throwOn: 7 } } }));
    expect(collected['out']).toHaveLength(19);
    expect(collected['out']).not.toContain(14);
    expect(pipeline.stats().nodes.find((n) => n.node === 'twice')?.errors).toBe(1);
    expect(warnings).toEqual([expect.objectContaining({ node: 'twice', message: 'failed on a message from numbers #7: cannot double 7' })]);
  });

  it('drop_oldest keeps the queue bounded under overload and the newest messages win', async () => {
    const { collected, pipeline } = await runToEnd(config({ source: { params: { count: 50 } }, stage: { params: { delayMs: 5 }, queue: { size: 2, full: 'drop_oldest' } } }));
    const twice = pipeline.stats().nodes.find((n) => n.node === 'twice');
    expect(twice?.dropped).toBeGreaterThan(20);
    expect((twice?.out ?? 0) + (twice?.dropped ?? 0)).toBe(50);
    expect(collected['out']?.at(-1)).toBe(98); // the last message always survives drop_oldest
  });

  it('drop_newest keeps the first messages', async () => {
    const { collected } = await runToEnd(config({ source: { params: { count: 50 } }, stage: { params: { delayMs: 5 }, queue: { size: 2, full: 'drop_newest' } } }));
    expect(collected['out']?.slice(0, 2)).toEqual([0, 2]);
    expect(collected['out']?.length).toBeLessThan(50);
  });

  it('block slows the source down instead of dropping', async () => {
    const { collected, pipeline } = await runToEnd(config({ source: { params: { count: 30 } }, stage: { params: { delayMs: 2 }, queue: { size: 2, full: 'block' } } }));
    expect(collected['out']).toEqual(Array.from({ length: 30 }, (_, i) => i * 2));
    expect(pipeline.stats().nodes.find((n) => n.node === 'twice')?.dropped).toBe(0);
  });

  it('messages older than the deadline are counted late and skipped', async () => {
    const { pipeline } = await runToEnd(config({ source: { params: { count: 40 } }, stage: { params: { delayMs: 10 }, queue: { size: 100, full: 'block' }, deadline: '15ms' } }));
    const twice = pipeline.stats().nodes.find((n) => n.node === 'twice');
    expect(twice?.late).toBeGreaterThan(10);
    expect((twice?.out ?? 0) + (twice?.late ?? 0)).toBe(40);
  });

  it('a failing source is restarted with backoff and the pipeline keeps going', async () => {
    const { collected, warnings } = await runToEnd(config({ source: { params: { count: 5, failAt: 3 } } }));
    expect(warnings[0]).toMatchObject({ node: 'numbers', message: 'source failed, restarting in 500 ms: sensor unplugged' });
    // The restarted source starts over: the first three, then all five.
    expect(collected['out']).toEqual([0, 2, 4, 0, 2, 4, 6, 8]);
  });

  it('stop() while running ends sources and returns promptly', async () => {
    const collected: Record<string, unknown[]> = {};
    const pipeline = await Pipeline.fromConfig(config({ source: { params: { count: 100000, intervalMs: 1 } } }), { kinds: testKinds(), extra: { collected }, statsIntervalMs: 0 });
    await pipeline.start();
    await new Promise((r) => setTimeout(r, 50));
    const t0 = performance.now();
    await pipeline.stop();
    expect(performance.now() - t0).toBeLessThan(1000);
    const n = collected['out']?.length ?? 0;
    expect(n).toBeGreaterThan(5);
    expect(pipeline.stats().nodes.find((x) => x.node === 'twice')?.queued).toBe(0);
  });
});

describe('user stage modules', () => {
  it('loads a stage from a module path relative to the pipeline and runs it', async () => {
    const collected: Record<string, unknown[]> = {};
    const cfg = {
      name: 'user',
      sources: { numbers: { use: 'test.count', params: { count: 3 } } },
      stages: { scale: { use: './scale-stage.mjs', params: { factor: 10 } } },
      sinks: { out: { use: 'test.collect' } },
      flows: ['numbers -> scale', 'scale -> out'],
    };
    const pipeline = await Pipeline.fromConfig(cfg, { kinds: testKinds(), extra: { collected }, statsIntervalMs: 0, baseDir: new URL('../../../fixtures/pipelines/', import.meta.url).pathname });
    const done = pipeline.finished();
    await pipeline.start();
    await done;
    await pipeline.stop();
    expect(collected['out']).toEqual([0, 10, 20]);
  });

  it('a module that exports no node definition is a config error naming what to export', async () => {
    const cfg = { name: 'bad', sources: { numbers: { use: 'test.count' } }, stages: { x: { use: './does-not-exist.mjs' } }, sinks: { out: { use: 'test.collect' } }, flows: ['numbers -> x', 'x -> out'] };
    await expect(Pipeline.fromConfig(cfg, { kinds: testKinds(), baseDir: new URL('../../../fixtures/pipelines/', import.meta.url).pathname })).rejects.toThrow(/stages\.x\.use: cannot load the node module \.\/does-not-exist\.mjs/u);
  });
});
