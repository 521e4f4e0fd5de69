import path from 'node:path';
import { Value } from '@sinclair/typebox/value';
import { describe, expect, it } from 'vitest';
import type { CanRecord } from '../../../../../../drivers/sensors/can.js';
import { canSource } from '../../../../../../runtime/pipeline/nodes/sources/can.js';
import { sourceContext } from './context.js';

const FIXTURES = path.resolve(import.meta.dirname, '../../../../../fixtures');
const defaults = (p: Record<string, unknown>) => Value.Default(canSource.params, structuredClone(p)) as Parameters<NonNullable<typeof canSource.check>>[0];

describe('can source', () => {
  it('is a source with one can output; fills defaults', async () => {
    expect([canSource.use, canSource.role, canSource.inputs, canSource.outputs]).toEqual(['can', 'source', [], ['frames']]);
    expect(await canSource.types?.(defaults({}), {})).toEqual({ frames: { kind: 'can' } });
    expect(defaults({})).toMatchObject({ candump: 'candump', realtime: true, queue: 1024, staleAfterMs: 1000 });
  });

  it('check: a missing log is a problem at params.file', async () => {
    const check = canSource.check as NonNullable<typeof canSource.check>;
    expect(await check(defaults({ file: 'can/candump-sample.log' }), { baseDir: FIXTURES, inputs: {} })).toEqual([]);
    expect(await check(defaults({ file: 'can/none.log' }), { baseDir: FIXTURES, inputs: {} })).toEqual([{ path: ['params', 'file'], message: expect.stringMatching(/^CAN recording .*can\/none\.log does not exist/u) as unknown }]);
  });

  it('replays a candump log on `frames`, one interface if asked, and reports the lines it skipped', async () => {
    const { ctx, recorded } = sourceContext(canSource, { file: 'can/candump-sample.log', realtime: false }, { baseDir: FIXTURES, signal: new AbortController().signal });
    await canSource.run?.(ctx, undefined);
    expect(recorded.emits).toHaveLength(12);
    expect(recorded.emits[0]?.envelope).toMatchObject({ sensorTimeNs: 1_436_509_052_249_713_000n, origin: 'cam', seq: 0, value: { interface: 'vcan0', id: 0x44 } });
    expect(recorded.warnings.map((w) => w.message)).toEqual([expect.stringMatching(/^skipped 2 lines of can\/candump-sample\.log that are not candump log frames$/u)]);
    const one = sourceContext(canSource, { file: 'can/candump-sample.log', interface: 'can1', realtime: false }, { baseDir: FIXTURES, signal: new AbortController().signal });
    await canSource.run?.(one.ctx, undefined);
    expect(one.recorded.emits.map((e) => (e.envelope.value as CanRecord).id)).toEqual([0x7ff]);
  });

  it('live without can-utils: one warning saying what to install, then the source ends (no retry loop)', async () => {
    const { ctx, recorded } = sourceContext(canSource, { interface: 'can0', candump: '/nonexistent/candump' }, { baseDir: FIXTURES, signal: new AbortController().signal });
    await expect(canSource.run?.(ctx, undefined)).resolves.toBeUndefined();
    expect(recorded.warnings.map((w) => w.message)).toEqual([expect.stringMatching(/^EAI_SENSOR_NOT_FOUND: \/nonexistent\/candump is not installed: install can-utils/u)]);
  });
});
