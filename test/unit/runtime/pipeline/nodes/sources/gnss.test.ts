import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Value } from '@sinclair/typebox/value';
import { afterAll, describe, expect, it } from 'vitest';
import type { GnssFix } from '../../../../../../drivers/sensors/types.js';
import { gnssSource } from '../../../../../../runtime/pipeline/nodes/sources/gnss.js';
import { sourceContext } from './context.js';

const FIXTURES = path.resolve(import.meta.dirname, '../../../../../fixtures');
const GPSD_LINES = readFileSync(path.join(FIXTURES, 'gnss/gpsd-3.22-haicom-305N.jsonl'), 'utf8').trim().split('\n');
const DIR = mkdtempSync(path.join(tmpdir(), 'aios-gnss-node-'));
afterAll(() => rmSync(DIR, { recursive: true, force: true }));
const defaults = (p: Record<string, unknown>) => Value.Default(gnssSource.params, structuredClone(p)) as Parameters<NonNullable<typeof gnssSource.check>>[0];

describe('gnss source', () => {
  it('is a source with one gnss output; fills defaults', async () => {
    expect([gnssSource.use, gnssSource.role, gnssSource.inputs, gnssSource.outputs]).toEqual(['gnss', 'source', [], ['fix']]);
    expect(await gnssSource.types?.(defaults({}), {})).toEqual({ fix: { kind: 'gnss' } });
    expect(defaults({})).toMatchObject({ host: 'localhost', port: 2947, realtime: true, queue: 16, staleAfterMs: 3000 });
    expect(Value.Check(gnssSource.params, { ...defaults({}), baud: 9600 })).toBe(false);
  });

  it('check: missing recordings and impossible dates are problems at their keys', async () => {
    const check = gnssSource.check as NonNullable<typeof gnssSource.check>;
    const env = { baseDir: FIXTURES, inputs: {} };
    expect(await check(defaults({ file: 'gnss/haicom-305N.nmea', date: '2007-04-08' }), env)).toEqual([]);
    expect(await check(defaults({ file: 'gnss/nothing.nmea' }), env)).toEqual([{ path: ['params', 'file'], message: expect.stringMatching(/^GNSS recording .*gnss\/nothing\.nmea does not exist/u) as unknown }]);
    expect(await check(defaults({ date: '2024-13-45' }), env)).toEqual([{ path: ['params', 'date'], message: '2024-13-45 is not a date (YYYY-MM-DD)' }]);
  });

  it('replays an NMEA log on `fix` and reports skipped sentences at the end', async () => {
    const file = path.join(DIR, 'haicom.nmea');
    writeFileSync(file, readFileSync(path.join(FIXTURES, 'gnss/haicom-305N.nmea'), 'utf8').replace('15303.1290,E,1,05', '15303.1291,E,1,05'));
    const { ctx, recorded } = sourceContext(gnssSource, { file, realtime: false }, { baseDir: FIXTURES, signal: new AbortController().signal });
    await gnssSource.run?.(ctx, undefined);
    expect(recorded.emits).toHaveLength(17);
    expect(recorded.emits.map((e) => e.envelope.seq)).toEqual(Array.from({ length: 17 }, (_, i) => i));
    expect(recorded.emits.every((e) => e.port === 'fix' && e.envelope.origin === 'cam')).toBe(true);
    expect((recorded.emits[0]?.envelope.value as GnssFix).latitude).toBeCloseTo(-27.2108667, 6);
    expect(recorded.warnings.map((w) => w.message)).toEqual([`skipped 1 sentences with bad checksums in ${file} (a noisy serial line when it was recorded?)`]);
  });

  it('replays a real RTK recording (MRPT text export)', async () => {
    const { ctx, recorded } = sourceContext(gnssSource, { file: 'gnss/test_rtk_path_GPS_RTK_REAR.txt', realtime: false }, { baseDir: FIXTURES, signal: new AbortController().signal });
    await gnssSource.run?.(ctx, undefined);
    expect(recorded.emits).toHaveLength(77);
    expect(recorded.emits[0]?.envelope.sensorTimeNs).toBe(1_226_225_355_000_000_000n);
    expect(recorded.emits[0]?.envelope.value).toMatchObject({ quality: 4, satellites: 10, altitude: 48.2433 });
  });

  it("timeBase: replay stamps a real recording from the replay's start, spacing kept; it needs a recording", async () => {
    expect(defaults({}).timeBase).toBe('recording');
    const before = BigInt(Date.now()) * 1_000_000n;
    const { ctx, recorded } = sourceContext(gnssSource, { file: 'gnss/test_rtk_path_GPS_RTK_REAR.txt', realtime: false, timeBase: 'replay' }, { baseDir: FIXTURES, signal: new AbortController().signal });
    await gnssSource.run?.(ctx, undefined);
    const after = BigInt(Date.now()) * 1_000_000n;
    const times = recorded.emits.map((e) => e.envelope.sensorTimeNs);
    expect(times).toHaveLength(77);
    expect(times[0]).toBeGreaterThanOrEqual(before);
    expect(times[0]).toBeLessThanOrEqual(after);
    // The rear receiver's 77 fixes are 1 s apart in the recording (1226225355 to 1226225431).
    expect(times.map((t) => t - (times[0] ?? 0n))).toEqual(Array.from({ length: 77 }, (_, i) => BigInt(i) * 1_000_000_000n));
    const check = gnssSource.check as NonNullable<typeof gnssSource.check>;
    expect(await check(defaults({ timeBase: 'replay' }), { baseDir: FIXTURES, inputs: {} })).toEqual([
      { path: ['params', 'timeBase'], message: "timeBase 'replay' rebases a recording's times and needs params.file; live fixes already carry the receiver's current time" },
    ]);
  });

  it('live: reconnects to gpsd with backoff when it drops the connection; sequence numbers keep counting', async () => {
    let connections = 0;
    const server = net.createServer((socket) => {
      connections += 1;
      socket.on('error', () => undefined);
      socket.write(`${GPSD_LINES[0] ?? ''}\r\n`);
      socket.once('data', () => {
        // Each connection: two epochs, then gpsd "restarts".
        const start = 16 + 4 * ((connections - 1) % 4);
        socket.end(`${GPSD_LINES.slice(start, start + 4).join('\r\n')}\r\n`);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const abort = new AbortController();
    const { ctx, recorded } = sourceContext(gnssSource, { host: '127.0.0.1', port: (server.address() as net.AddressInfo).port, restart: { initialMs: 20, maxMs: 100 } }, {
      baseDir: FIXTURES,
      signal: abort.signal,
      onEmit: (_port, _envelope, r) => {
        if (r.emits.length === 6) abort.abort();
      },
    });
    await gnssSource.run?.(ctx, undefined);
    server.close();
    expect(connections).toBeGreaterThanOrEqual(2);
    expect(recorded.emits.map((e) => e.envelope.seq)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(recorded.warnings[0]?.message).toMatch(/^EAI_SENSOR_STREAM_ENDED: gpsd at 127\.0\.0\.1:\d+ closed the connection .*; retrying in 20 ms \(failure 1 in a row\)$/u);
  });
});
