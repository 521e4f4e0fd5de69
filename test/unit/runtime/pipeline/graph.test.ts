import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../../../runtime/pipeline/config-error.js';
import { buildGraph } from '../../../../runtime/pipeline/graph.js';
import { parsePipelineText } from '../../../../runtime/pipeline/pipeline-file.js';
import { testKinds } from '../../../support/test-nodes.js';

async function problems(yaml: string): Promise<string[]> {
  try {
    await buildGraph(parsePipelineText(yaml, 'p.yaml'), testKinds());
    return [];
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).issues.map((i) => `${i.line}:${i.column} ${i.path}: ${i.message}`);
  }
}

const GOOD = `name: ok
sources:
  numbers: { use: test.count, params: { count: 3 } }
stages:
  twice: { use: test.double }
sinks:
  out: { use: test.collect }
flows:
  - numbers -> twice
  - twice.out -> out.in
`;

describe('pipeline validation', () => {
  it('accepts a good file and orders nodes topologically with defaults applied', async () => {
    const graph = await buildGraph(parsePipelineText(GOOD, 'p.yaml'), testKinds());
    expect(graph.nodes.map((n) => n.name)).toEqual(['numbers', 'twice', 'out']);
    expect(graph.nodes[1]?.params).toEqual({ delayMs: 0 });
    expect(graph.nodes[0]?.params).toEqual({ count: 3, intervalMs: 0 });
    expect(graph.edges.map((e) => `${e.from.node}.${e.from.port}->${e.to.node}.${e.to.port} ${e.queue.size} ${e.queue.full}`)).toEqual(['numbers.out->twice.in 4 drop_oldest', 'twice.out->out.in 4 drop_oldest']);
  });

  it('reports every problem at once, each at its line and column', async () => {
    const yaml = `name: broken
colour: red
sources:
  numbers: { use: test.cuont }
  cam: { use: test.image }
stages:
  twice:
    use: test.double
    params: { delay: 5 }
  lonely: { use: test.double }
sinks:
  out: { use: test.collect }
flows:
  - cam.frames -> out
  - numbers -> twice
  - cam.pixels -> out
  - ghost -> out
  - nonsense
`;
    expect(await problems(yaml)).toEqual([
      "2:1 colour: unknown key 'colour': a pipeline file has name, description, sources, stages, sinks and flows",
      "18:5 flows.4: 'nonsense' is not a flow: write 'from.port -> to.port' (ports may be left out when the node has one)",
    ]);
    // With the structural problem fixed, the semantic ones all appear together.
    const rest = await problems(yaml.replace('colour: red\n', '').replace('  - nonsense\n', ''));
    expect(rest).toEqual([
      "3:14 sources.numbers.use: unknown source kind 'test.cuont' (did you mean 'test.count'?); known sources: test.count, test.image",
      "8:15 stages.twice.params.delay: unknown param 'delay' for test.double; its params are: throwOn, delayMs",
      '9:3 stages.lonely: nothing flows into lonely: add a flow \'<node>.<port> -> lonely\'',
      "9:3 stages.lonely: lonely's output goes nowhere: add a flow 'lonely -> <stage or sink>' or remove it",
      "15:5 flows.2: cam (test.image) has no output 'pixels'; its outputs: frames",
      "16:5 flows.3: flow from unknown node 'ghost'; nodes: numbers, cam, twice, lonely, out",
    ]);
  });

  it('reports a malformed flow', async () => {
    expect(await problems(GOOD.replace('  - numbers -> twice', '  - numbers => twice'))).toEqual(["9:5 flows.0: 'numbers => twice' is not a flow: write 'from.port -> to.port' (ports may be left out when the node has one)"]);
  });

  it('reports a port type mismatch at the flow', async () => {
    const yaml = GOOD.replace('numbers: { use: test.count, params: { count: 3 } }', 'numbers: { use: test.image }').replace('numbers -> twice', 'numbers.frames -> twice');
    expect(await problems(yaml)).toEqual(['9:5 flows.0: numbers.frames -> twice.in: test.double takes numbers (json), not image']);
  });

  it('reports a cycle', async () => {
    const yaml = GOOD.replace('  twice: { use: test.double }', '  twice: { use: test.double }\n  again: { use: test.double }').replace('  - twice.out -> out.in', '  - twice.out -> out.in\n  - twice -> again\n  - again -> twice');
    const found = await problems(yaml);
    expect(found).toHaveLength(1);
    expect(found[0]).toMatch(/flows\.\d+: the flows form a cycle: (twice -> again -> twice|again -> twice -> again); pipelines must be acyclic/u);
  });

  it('reports YAML syntax errors with their position', async () => {
    const found = await problems('name: x\nsources: {a: [\n');
    expect(found.length).toBeGreaterThan(0);
    for (const f of found) expect(f).toMatch(/^\d+:\d+ : YAML: /u);
  });

  it('flows out of a sink or into a source are refused', async () => {
    expect(await problems(GOOD + '  - out -> numbers\n')).toEqual([
      '11:5 flows.2: out is a sink: it has no outputs, so a flow cannot start there',
      '11:5 flows.2: numbers is a source: it has no inputs, so a flow cannot end there',
    ]);
  });
});
