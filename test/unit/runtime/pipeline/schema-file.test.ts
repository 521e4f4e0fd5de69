import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { builtinNodeKinds } from '../../../../runtime/pipeline/nodes/builtin.js';
import { pipelineJsonSchema } from '../../../../runtime/pipeline/schema.js';

const repo = path.resolve(import.meta.dirname, '../../../..');

describe('pipeline.schema.json', () => {
  it('is what `aios schema pipeline` prints now (regenerate: node dist/deploy/cli/main.js schema pipeline > pipeline.schema.json)', () => {
    const committed = JSON.parse(readFileSync(path.join(repo, 'pipeline.schema.json'), 'utf8')) as unknown;
    expect(committed).toEqual(JSON.parse(JSON.stringify(pipelineJsonSchema(builtinNodeKinds().list()))));
  });

  it('names every built-in node kind, so editors complete `use`', () => {
    const text = readFileSync(path.join(repo, 'pipeline.schema.json'), 'utf8');
    for (const kind of builtinNodeKinds().list()) expect(text).toContain(`"const": "${kind.use}"`);
  });
});
