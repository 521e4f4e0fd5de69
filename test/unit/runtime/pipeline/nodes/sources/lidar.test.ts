import dgram from 'node:dgram';
import path from 'node:path';
import { Value } from '@sinclair/typebox/value';
import { describe, expect, it } from 'vitest';
import type { PointCloud } from '../../../../../../drivers/sensors/types.js';
import { lidarSource } from '../../../../../../runtime/pipeline/nodes/sources/lidar.js';
import { sourceContext } from './context.js';

const FIXTURES = path.resolve(import.meta.dirname, '../../../../../fixtures');
const defaults = (p: Record<string, unknown>) => Value.Default(lidarSource.params, structuredClone(p)) as Parameters<NonNullable<typeof lidarSource.check>>[0];
const HOUR_NS = 3_600_000_000_000n;

describe('lidar source', () => {
  it('is a source with one pointcloud output; fills defaults, refuses unknown params and models', async () => {
    expect([lidarSource.use, lidarSource.role, lidarSource.inputs, lidarSource.outputs]).toEqual(['lidar', 'source', [], ['points']]);
    expect(await lidarSource.types?.(defaults({}), {})).toEqual({ points: { kind: 'pointcloud' } });
    const p = defaults({});
    expect(p).toMatchObject({ model: 'VLP-16', port: 2368, address: '0.0.0.0', realtime: true, frameId: 'velodyne', minRange: 0.4, maxRange: 100, queue: 4, staleAfterMs: 1000, restart: { initialMs: 500, maxMs: 30_000 } });
    expect(Value.Check(lidarSource.params, p)).toBe(true);
    expect(Value.Check(lidarSource.params, { ...p, rpm: 600 })).toBe(false);
    expect(Value.Check(lidarSource.params, { ...p, model: 'VLP-32C' })).toBe(false);
  });

  it('check: a recording that does not exist is a problem at params.file; live needs no file', async () => {
    const check = lidarSource.check as NonNullable<typeof lidarSource.check>;
    const env = { baseDir: FIXTURES, inputs: {} };
    expect(await check(defaults({ file: 'lidar/vlp16_75packets.bin' }), env)).toEqual([]);
    expect(await check(defaults({}), env)).toEqual([]);
    expect(await check(defaults({ file: 'lidar/missing.pcap' }), env)).toEqual([{ path: ['params', 'file'], message: expect.stringMatching(/^lidar recording .*lidar\/missing\.pcap does not exist/u) as unknown }]);
    expect((await check(defaults({ restart: { initialMs: 100, maxMs: 10 } }), env)).map((p) => p.path)).toEqual([['params', 'restart', 'maxMs']]);
  });

  it('replays the recording: one cloud per revolution on `points`, with sensor time, origin and sequence', async () => {
    const abort = new AbortController();
    const { ctx, recorded } = sourceContext(lidarSource, { file: 'lidar/vlp16_75packets.bin', realtime: false }, { baseDir: FIXTURES, signal: abort.signal });
    await lidarSource.run?.(ctx, undefined);
    expect(recorded.emits.map((e) => [e.port, (e.envelope.value as PointCloud).count, e.envelope.origin, e.envelope.seq])).toEqual([
      ['points', 22_493, 'cam', 0],
      ['points', 82, 'cam', 1],
    ]);
    // The packets' microseconds past the hour survive; the hour is the replay's.
    expect(recorded.emits[0]?.envelope.sensorTimeNs !== undefined ? recorded.emits[0].envelope.sensorTimeNs % HOUR_NS : 0n).toBe(1_461_085_268_000n);
    expect(recorded.warnings).toEqual([]);
  });

  it('live: a sensor that sends nothing is a warning, not a failure; the source runs until stopped', async () => {
    const port = await freePort();
    const abort = new AbortController();
    const { ctx, recorded } = sourceContext(lidarSource, { port, address: '127.0.0.1', staleAfterMs: 100 }, { baseDir: FIXTURES, signal: abort.signal });
    const running = lidarSource.run?.(ctx, undefined);
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(recorded.warnings.map((w) => w.message)).toEqual([expect.stringMatching(new RegExp(`^no VLP-16 packets on UDP 127\\.0\\.0\\.1:${port} for \\d+\\.\\d s: is the sensor powered`, 'u'))]);
    abort.abort();
    await expect(running).resolves.toBeUndefined();
    expect(recorded.emits).toEqual([]);
  });

  it('live: a port held by another program is retried with backoff and warned about each time', async () => {
    const holder = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => holder.bind(0, '127.0.0.1', resolve));
    const abort = new AbortController();
    const { ctx, recorded } = sourceContext(lidarSource, { port: holder.address().port, address: '127.0.0.1', restart: { initialMs: 20, maxMs: 40 } }, { baseDir: FIXTURES, signal: abort.signal });
    const running = lidarSource.run?.(ctx, undefined);
    await new Promise((resolve) => setTimeout(resolve, 200));
    abort.abort();
    await expect(running).resolves.toBeUndefined();
    holder.close();
    expect(recorded.warnings.length).toBeGreaterThanOrEqual(3);
    expect(recorded.warnings[0]?.message).toMatch(/^EAI_SENSOR_CONFIG: cannot listen for VLP-16 packets .* in use .*; retrying in 20 ms \(failure 1 in a row\)$/u);
    expect(recorded.warnings[2]?.message).toMatch(/retrying in 40 ms \(failure 3 in a row\)$/u);
  });
});

async function freePort(): Promise<number> {
  const probe = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => probe.bind(0, '127.0.0.1', resolve));
  const { port } = probe.address();
  await new Promise<void>((resolve) => probe.close(resolve));
  return port;
}
