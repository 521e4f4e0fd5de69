import { open } from 'node:fs/promises';
import path from 'node:path';
import { MCAP_MAGIC } from '@mcap/core';
import { Type, type Static } from '@sinclair/typebox';
import { McapReplay } from '../../../../drivers/sensors/mcap-replay.js';
import { defineNode } from '../../definition.js';
import { checkSource, runSensor } from './sensor-loop.js';
import { RestartParams } from './video.js';

const McapParams = Type.Object(
  {
    file: Type.String({ minLength: 1, description: 'the MCAP recording, relative to the pipeline file' }),
    topics: Type.Array(Type.String({ minLength: 1 }), { default: [], description: 'replay only these topics; default (empty) all' }),
    realtime: Type.Boolean({ default: true, description: 'at the recorded pace (log times); false: as fast as the pipeline takes messages' }),
    restart: RestartParams,
  },
  { additionalProperties: false },
);

export type McapSourceParams = Static<typeof McapParams>;

/**
 * `use: mcap` — replays an MCAP recording: output `messages` carries one `McapMessage`
 * (`{ topic, schemaName, encoding, data, decoded? }`; JSON channels decoded) per recorded message
 * of the selected topics, with its log time as sensor time. A recording cut short by a crash
 * replays up to its last complete message, then the source warns and returns (see `McapReplay`).
 */
export const mcapSource = defineNode({
  use: 'mcap',
  role: 'source',
  description: 'replay the messages of an MCAP recording (all topics or selected ones) at their log times',
  params: McapParams,
  inputs: [],
  outputs: ['messages'],
  types() {
    return { messages: { kind: 'json' } };
  },
  async check(params, env) {
    const problems = await checkSource(params, env.baseDir, 'MCAP');
    if (problems.some((p) => p.path[1] === 'file')) return problems;
    const file = path.resolve(env.baseDir, params.file);
    const head = new Uint8Array(MCAP_MAGIC.length);
    try {
      const handle = await open(file, 'r');
      try {
        await handle.read(head, 0, head.length, 0);
      } finally {
        await handle.close();
      }
    } catch (error) {
      return [...problems, { path: ['params', 'file'], message: `cannot read MCAP recording ${file}: ${error instanceof Error ? error.message : String(error)}` }];
    }
    if (MCAP_MAGIC.some((b, i) => head[i] !== b)) problems.push({ path: ['params', 'file'], message: `${file} is not an MCAP file (no MCAP magic at its start)` });
    return problems;
  },
  async run(ctx) {
    const p = ctx.params;
    const replay = new McapReplay(path.resolve(ctx.baseDir, p.file), { topics: p.topics, speed: p.realtime ? 1 : 0 });
    await runSensor(ctx, 'messages', replay, p.restart, () => (replay.stats.decodeErrors === 0 ? undefined : `${replay.stats.decodeErrors} messages on JSON channels of ${p.file} did not parse; they were sent without 'decoded'`));
  },
});
