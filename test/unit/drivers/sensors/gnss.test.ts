import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, describe, expect, it } from 'vitest';
import { GnssReplay, GpsdClient, parseMrptRow } from '../../../../drivers/sensors/gnss.js';
import { KNOT_MPS } from '../../../../drivers/sensors/nmea.js';
import type { GnssFix, SensorMessage } from '../../../../drivers/sensors/types.js';

const FIXTURES = path.resolve(import.meta.dirname, '../../../fixtures/gnss');
const HAICOM = path.join(FIXTURES, 'haicom-305N.nmea');
const FRONT = path.join(FIXTURES, 'test_rtk_path_GPS_RTK_FRONT_L.txt');
const REAR = path.join(FIXTURES, 'test_rtk_path_GPS_RTK_REAR.txt');
const GPSD_LINES = readFileSync(path.join(FIXTURES, 'gpsd-3.22-haicom-305N.jsonl'), 'utf8').trim().split('\n');
const DIR = mkdtempSync(path.join(tmpdir(), 'aios-gnss-'));
afterAll(() => rmSync(DIR, { recursive: true, force: true }));
const GPSFAKE = spawnSync('gpsfake', ['-V'], { encoding: 'utf8' }).error === undefined;
if (!GPSFAKE) console.warn('gpsfake is not installed (apt-get install -y gpsd gpsd-clients): skipping the test against a real gpsd');

async function collect<T>(iterable: AsyncIterable<T>, until?: (items: T[]) => boolean): Promise<T[]> {
  const out: T[] = [];
  for await (const item of iterable) {
    out.push(item);
    if (until?.(out) === true) break;
  }
  return out;
}

const ms = (m: SensorMessage<GnssFix>): number => Number(m.sensorTimeNs / 1_000_000n);

describe('NMEA replay', () => {
  it('replays the Haicom log: 6 epochs without a fix, then 17 fixes, one per second', async () => {
    const replay = new GnssReplay(HAICOM, { speed: 0 });
    const fixes = await collect(replay.messages(new AbortController().signal));
    expect(replay.stats).toEqual({ format: 'nmea', fixes: 17, noFix: 6, badChecksum: 0, malformed: 0 });
    expect(fixes).toHaveLength(17);
    expect(fixes[0]).toMatchObject({
      sensorTimeNs: BigInt(Date.UTC(2007, 3, 8, 9, 53, 4, 802)) * 1_000_000n,
      value: { latitude: -(27 + 12.652 / 60), longitude: 153 + 3.1397 / 60, altitude: 3, quality: 1, satellites: 0, hdop: 17, speedMps: 0, courseDeg: 133.96 },
    });
    expect(fixes[16]?.sensorTimeNs).toBe(BigInt(Date.UTC(2007, 3, 8, 9, 53, 20, 799)) * 1_000_000n);
    expect(fixes[16]?.value.speedMps).toBeCloseTo(1.55 * KNOT_MPS, 9);
    const steps = fixes.slice(1).map((m, i) => ms(m) - ms(fixes[i] as SensorMessage<GnssFix>));
    expect(steps.every((s) => s >= 990 && s <= 1010)).toBe(true);
  });

  it('counts and skips a sentence with a bad checksum; the epoch keeps what RMC said', async () => {
    const text = readFileSync(HAICOM, 'utf8').replace('$GPGGA,095310.801,2712.6428,S', '$GPGGA,095310.801,2712.6429,S');
    const file = path.join(DIR, 'damaged.nmea');
    writeFileSync(file, text);
    const replay = new GnssReplay(file, { speed: 0 });
    const fixes = await collect(replay.messages(new AbortController().signal));
    expect(replay.stats).toMatchObject({ fixes: 17, badChecksum: 1 });
    const damaged = fixes.find((m) => ms(m) === Date.UTC(2007, 3, 8, 9, 53, 10, 801));
    // No GGA for this epoch: no altitude, satellites or HDOP; position, speed and course from RMC.
    expect(damaged?.value).toEqual({ latitude: -(27 + 12.6428 / 60), longitude: 153 + 3.1203 / 60, quality: 1, speedMps: 0, courseDeg: 307.41 });
  });

  it('keeps the recorded pace: three epochs 200 ms apart take 400 ms', async () => {
    const lines = ['000000.00', '000000.20', '000000.40'].map((t) => checksum(`$GNGGA,${t},5000.0000,N,00800.0000,E,4,12,0.6,100.0,M,47.0,M,1.0,0000`));
    const file = path.join(DIR, 'rtk.nmea');
    writeFileSync(file, `${lines.join('\r\n')}\r\n`);
    const start = performance.now();
    const fixes = await collect(new GnssReplay(file, { referenceDateMs: Date.UTC(2024, 5, 1) }).messages(new AbortController().signal));
    expect(performance.now() - start).toBeGreaterThanOrEqual(390);
    expect(fixes.map((m) => [ms(m) - Date.UTC(2024, 5, 1), m.value.quality])).toEqual([
      [0, 4],
      [200, 4],
      [400, 4],
    ]);
  });

  it('a missing file is EAI_SENSOR_NOT_FOUND, not retryable', async () => {
    await expect(collect(new GnssReplay('/nonexistent/track.nmea').messages(new AbortController().signal))).rejects.toMatchObject({ code: 'EAI_SENSOR_NOT_FOUND', retryable: false });
  });
});

describe('MRPT GPS text replay (real RTK recordings, Málaga 2008)', () => {
  it('reads every row of the front-left receiver: RTK fixed, radians to degrees, exact Unix times', async () => {
    const replay = new GnssReplay(FRONT, { speed: 0 });
    const fixes = await collect(replay.messages(new AbortController().signal));
    expect(replay.stats).toEqual({ format: 'mrpt', fixes: 307, noFix: 0, badChecksum: 0, malformed: 0 });
    expect(fixes[0]?.sensorTimeNs).toBe(1_226_225_355_000_000_000n);
    expect(fixes[1]?.sensorTimeNs).toBe(1_226_225_355_200_000_000n);
    expect(fixes[0]?.value).toMatchObject({ altitude: 45.9339, quality: 4, satellites: 7 });
    expect(fixes[0]?.value.latitude).toBeCloseTo((0.6408178945934976 * 180) / Math.PI, 12);
    expect(fixes[0]?.value.longitude).toBeCloseTo((-0.0780892461252184 * 180) / Math.PI, 12);
    expect(fixes[0]?.value.latitude).toBeCloseTo(36.7162, 4);
  });

  it("undoes MRPT's DEG2RAD on speed and course: they agree with the distance actually driven", async () => {
    const fixes = await collect(new GnssReplay(FRONT, { speed: 0 }).messages(new AbortController().signal));
    const ratios: number[] = [];
    const headingErrors: number[] = [];
    for (let i = 1; i < fixes.length; i++) {
      const a = fixes[i - 1] as SensorMessage<GnssFix>;
      const b = fixes[i] as SensorMessage<GnssFix>;
      const dt = (ms(b) - ms(a)) / 1000;
      const north = ((b.value.latitude - a.value.latitude) * Math.PI * 6_378_137) / 180;
      const east = ((b.value.longitude - a.value.longitude) * Math.PI * 6_378_137 * Math.cos((a.value.latitude * Math.PI) / 180)) / 180;
      ratios.push(Math.hypot(north, east) / dt / (a.value.speedMps ?? NaN));
      headingErrors.push(Math.abs(((Math.atan2(east, north) * 180) / Math.PI + 360) % 360 - (a.value.courseDeg ?? NaN)));
    }
    const mean = (v: number[]): number => v.reduce((s, x) => s + x, 0) / v.length;
    expect(mean(ratios)).toBeGreaterThan(0.97);
    expect(mean(ratios)).toBeLessThan(1.03);
    expect(mean(headingErrors)).toBeLessThan(3);
    // Row 100 as written: speed 0.124027 (knots × π/180) and direction 1.393785 rad: 3.656 m/s heading 79.86°.
    const row = readFileSync(FRONT, 'utf8').split('\n').filter((l) => l.trim() !== '' && !l.startsWith('%'))[100]?.trim().split(/\s+/u) ?? [];
    expect([row[6], row[7]]).toEqual(['0.124027', '1.393785']);
    expect(fixes[100]?.value.speedMps).toBeCloseTo(((0.124027 * 180) / Math.PI) * KNOT_MPS, 9);
    expect(fixes[100]?.value.speedMps).toBeCloseTo(3.6558, 4);
    expect(fixes[100]?.value.courseDeg).toBeCloseTo(79.858, 3);
  });

  it('the rear receiver sent no RMC: its fixes carry no speed or course', async () => {
    const fixes = await collect(new GnssReplay(REAR, { speed: 0 }).messages(new AbortController().signal));
    expect(fixes).toHaveLength(77);
    expect(fixes.every((m) => m.value.speedMps === undefined && m.value.courseDeg === undefined && m.value.quality === 4)).toBe(true);
    expect(ms(fixes[76] as SensorMessage<GnssFix>) - ms(fixes[0] as SensorMessage<GnssFix>)).toBe(76_000);
  });

  it("timeBase 'replay': the recording moves as a block, its first fix stamped with the wall clock at replay, spacing kept to the nanosecond", async () => {
    const recorded = await collect(new GnssReplay(FRONT, { speed: 0 }).messages(new AbortController().signal));
    let calls = 0;
    const now = (): number => {
      calls += 1;
      return Date.UTC(2026, 0, 2, 3, 4, 5, 678) + 0.25;
    };
    const rebased = await collect(new GnssReplay(FRONT, { speed: 0, timeBase: 'replay', now }).messages(new AbortController().signal));
    expect(calls).toBe(1);
    expect(rebased).toHaveLength(307);
    expect(rebased[0]?.sensorTimeNs).toBe(BigInt(Date.UTC(2026, 0, 2, 3, 4, 5, 678)) * 1_000_000n + 250_000n);
    const since = (ms: readonly SensorMessage<GnssFix>[]): bigint[] => ms.map((m) => m.sensorTimeNs - (ms[0]?.sensorTimeNs ?? 0n));
    expect(since(rebased)).toEqual(since(recorded));
    expect(since(rebased)[306]).toBe(76_200_000_000n);
    expect(rebased.map((m) => m.value)).toEqual(recorded.map((m) => m.value));
  });

  it("timeBase 'replay': an epoch without a fix anchors the time line too; each replay anchors afresh", async () => {
    const file = path.join(DIR, 'late-fix.txt');
    writeFileSync(file, ['% Time Lat Lon Alt fix #sats speed dir', '1226225355.0000 0.64 -0.078 48.2 0 0 0 0', '1226225355.4000 0.64 -0.078 48.2 4 10 0 0', ''].join('\n'));
    let wall = 1_000_000;
    const replay = new GnssReplay(file, { speed: 0, timeBase: 'replay', now: () => wall });
    const first = await collect(replay.messages(new AbortController().signal));
    wall = 2_000_000;
    const second = await collect(replay.messages(new AbortController().signal));
    expect([...first, ...second].map((m) => m.sensorTimeNs)).toEqual([1_000_400_000_000n, 2_000_400_000_000n]);
  });

  it("timeBase 'replay' in real time: each fix is released when the wall clock reaches its stamp", async () => {
    const lines = ['000000.00', '000000.20', '000000.40'].map((t) => checksum(`$GNGGA,${t},5000.0000,N,00800.0000,E,4,12,0.6,100.0,M,47.0,M,1.0,0000`));
    const file = path.join(DIR, 'rtk-now.nmea');
    writeFileSync(file, `${lines.join('\r\n')}\r\n`);
    const lateness: number[] = [];
    for await (const m of new GnssReplay(file, { timeBase: 'replay' }).messages(new AbortController().signal)) lateness.push(Date.now() - Number(m.sensorTimeNs / 1_000_000n));
    expect(lateness).toHaveLength(3);
    // Never early: that is the replay's promise. The replay waits on the monotonic clock and the
    // check reads the wall clock, which can drift from it by a few ms (NTP slewing; -2 ms seen),
    // hence -5. How late a timer fires depends on how busy the machine is (hundreds of ms while
    // the whole suite, agents and brokers included, runs on 2 cores); a second would be a wrong wait.
    expect(lateness.every((ms) => ms >= -5), `lateness ${lateness.join(', ')} ms`).toBe(true);
    expect(lateness.every((ms) => ms < 1000), `lateness ${lateness.join(', ')} ms`).toBe(true);
  });

  it('rows: quality 0 is an epoch without a fix; short or non-numeric rows are malformed', () => {
    expect(parseMrptRow('1226225355.0000 0.64 -0.078 48.2 0 0 0 0')).toEqual({ sensorTimeNs: 1_226_225_355_000_000_000n, fix: undefined });
    expect(parseMrptRow('1226225355.0000 0.64 -0.078 48.2')).toBeUndefined();
    expect(parseMrptRow('1226225355.0000 0.64 x 48.2 4 10 0 0')).toBeUndefined();
    expect(parseMrptRow('1226225355.0000 7 0 48.2 4 10 0 0')).toBeUndefined();
  });
});

describe('gpsd client', () => {
  it('speaks the protocol: answers VERSION with ?WATCH, turns TPV into fixes with SKY satellites and HDOP', async () => {
    const server = await fakeGpsd((socket, watch) => {
      expect(watch).toBe('?WATCH={"enable":true,"json":true}');
      for (const line of GPSD_LINES.slice(1)) socket.write(`${line}\r\n`);
    });
    const client = new GpsdClient({ host: '127.0.0.1', port: server.port, capacity: 64 });
    const fixes = await collect(client.messages(new AbortController().signal), (f) => f.length === 32);
    server.close();
    expect(fixes).toHaveLength(32);
    expect(fixes[0]).toMatchObject({ sensorTimeNs: BigInt(Date.parse('2026-11-22T09:53:05.802Z')) * 1_000_000n, value: { latitude: -27.210911667, longitude: 153.05225, altitude: 3, quality: 1, satellites: 3, hdop: 17, speedMps: 9.224 } });
    // gpsd reports an epoch once per sentence; the RMC one adds the course.
    expect(fixes[1]?.value).toMatchObject({ speedMps: 0.993, courseDeg: 133.96 });
    expect(fixes[31]?.value).toMatchObject({ latitude: -27.2107, longitude: 153.05215, altitude: 19.5, satellites: 5, hdop: 7.5, courseDeg: 100.78 });
    expect(client.stats).toMatchObject({ release: '3.22', fixes: 32, badLines: 0 });
  });

  it('a reader that falls behind loses the oldest fixes, never memory: the newest `capacity` remain', async () => {
    const server = await fakeGpsd((socket) => {
      socket.write(`${GPSD_LINES.slice(1).join('\r\n')}\r\n`);
    });
    const client = new GpsdClient({ host: '127.0.0.1', port: server.port, capacity: 4 });
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 5000);
    const fixes: SensorMessage<GnssFix>[] = [];
    for await (const m of client.messages(abort.signal)) {
      // A slow first step: everything gpsd sent arrives meanwhile.
      if (fixes.length === 0) await new Promise((resolve) => setTimeout(resolve, 200));
      fixes.push(m);
      if (m.value.longitude === 153.05215 && m.value.courseDeg === 100.78) break;
    }
    clearTimeout(timer);
    server.close();
    expect(client.stats.fixes).toBe(32);
    expect(fixes.length).toBeLessThanOrEqual(5);
    expect(fixes.length + client.stats.dropped).toBe(32);
    expect(fixes.at(-1)?.value).toMatchObject({ latitude: -27.2107, courseDeg: 100.78 });
  });

  it("reads the example TPV of gpsd_json(5) and maps gpsd's status to GGA quality", async () => {
    const server = await fakeGpsd((socket) => {
      socket.write('{"class":"TPV","device":"/dev/pts/1","time":"2005-06-08T10:34:48.283Z","ept":0.005,"lat":46.498293369,"lon":7.567411672,"alt":1343.127,"eph":36.000,"epv":32.321,"track":10.3788,"speed":0.091,"climb":-0.085,"mode":3}\r\n');
      socket.write('not json\r\n');
      socket.write('{"class":"TPV","mode":3,"status":3,"time":"2024-01-01T00:00:00.123456789Z","lat":50,"lon":8,"altHAE":150}\r\n');
    });
    const client = new GpsdClient({ host: '127.0.0.1', port: server.port });
    const fixes = await collect(client.messages(new AbortController().signal), (f) => f.length === 2);
    server.close();
    expect(fixes[0]).toMatchObject({ sensorTimeNs: 1_118_226_888_283_000_000n, value: { latitude: 46.498293369, longitude: 7.567411672, altitude: 1343.127, quality: 1, speedMps: 0.091, courseDeg: 10.3788 } });
    expect(fixes[1]).toMatchObject({ sensorTimeNs: 1_704_067_200_123_456_789n, value: { quality: 4, altitude: 150 } });
    expect(client.stats.badLines).toBe(1);
  });

  it('gpsd not running: EAI_SENSOR_NOT_FOUND, retryable, saying how to start it', async () => {
    const port = await closedPort();
    const error = await collect(new GpsdClient({ host: '127.0.0.1', port }).messages(new AbortController().signal)).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'EAI_SENSOR_NOT_FOUND', retryable: true, message: expect.stringContaining('systemctl start gpsd') as unknown });
  });

  it('gpsd closing the connection ends the stream with EAI_SENSOR_STREAM_ENDED after the fixes it sent', async () => {
    const server = await fakeGpsd((socket) => {
      for (const line of GPSD_LINES.slice(1, 19)) socket.write(`${line}\n`);
      socket.end();
    });
    const got: SensorMessage<GnssFix>[] = [];
    const error = await (async () => {
      for await (const m of new GpsdClient({ host: '127.0.0.1', port: server.port }).messages(new AbortController().signal)) got.push(m);
    })().catch((e: unknown) => e);
    server.close();
    expect(got.map((m) => m.value.latitude)).toEqual([-27.210911667, -27.210911667, -27.210843333]);
    expect(error).toMatchObject({ code: 'EAI_SENSOR_STREAM_ENDED', retryable: true });
  });

  it('a receiver that goes quiet is reported stale, and the stream stays open', async () => {
    const server = await fakeGpsd(() => undefined);
    const stale: number[] = [];
    const abort = new AbortController();
    const reading = collect(new GpsdClient({ host: '127.0.0.1', port: server.port, staleAfterMs: 150, onStale: (ms) => stale.push(ms) }).messages(abort.signal));
    await new Promise((resolve) => setTimeout(resolve, 700));
    expect(stale).toHaveLength(1);
    abort.abort();
    expect(await reading).toEqual([]);
    server.close();
  });

  it.skipIf(!GPSFAKE)("against Debian's gpsd (gpsfake feeding it the Haicom log): the same positions as the NMEA replay", async () => {
    const port = await closedPort();
    // -n: start reading at once; -s 115200: a fast pseudo-tty; -1: play the log once.
    const fake = spawn('gpsfake', ['-1', '-n', '-q', '-s', '115200', '-c', '0.02', '-P', String(port), HAICOM], { detached: true, stdio: 'ignore' });
    try {
      const fixes = await connectAndCollect(port, 12, 30_000);
      const replayed = await collect(new GnssReplay(HAICOM, { speed: 0 }).messages(new AbortController().signal));
      const key = (f: GnssFix): string => `${f.latitude.toFixed(6)},${f.longitude.toFixed(6)}`;
      const positions = new Set(replayed.map((m) => key(m.value)));
      expect(fixes.length).toBeGreaterThanOrEqual(12);
      expect(fixes.filter((m) => !positions.has(key(m.value)))).toEqual([]);
      expect(fixes.every((m) => m.value.altitude === replayed.find((r) => key(r.value) === key(m.value))?.value.altitude)).toBe(true);
    } finally {
      // gpsfake runs gpsd as its child: end the whole group we started, and the control socket
      // gpsfake would have removed had it ended by itself.
      if (fake.pid !== undefined) {
        process.kill(-fake.pid, 'SIGKILL');
        rmSync(`/tmp/gpsfake-${fake.pid}.sock`, { force: true });
      }
    }
  });
});

/** A TCP server that sends gpsd's VERSION banner, waits for the client's ?WATCH line, then runs `script`. */
async function fakeGpsd(script: (socket: net.Socket, watch: string) => void): Promise<{ port: number; close: () => void }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.write(`${GPSD_LINES[0] ?? ''}\r\n`);
    let text = '';
    let started = false;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      text += chunk;
      const end = text.indexOf('\n');
      if (end < 0 || started || socket.destroyed) return;
      started = true;
      script(socket, text.slice(0, end).trim());
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as net.AddressInfo;
  return {
    port: address.port,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Connects to gpsd (retrying while it starts) and collects `count` fixes or what came within `timeoutMs`. */
async function connectAndCollect(port: number, count: number, timeoutMs: number): Promise<SensorMessage<GnssFix>[]> {
  const end = performance.now() + timeoutMs;
  const fixes: SensorMessage<GnssFix>[] = [];
  while (performance.now() < end && fixes.length < count) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), Math.max(0, end - performance.now()));
    try {
      for await (const m of new GpsdClient({ host: '127.0.0.1', port }).messages(abort.signal)) {
        fixes.push(m);
        if (fixes.length >= count) break;
      }
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 200));
    } finally {
      clearTimeout(timer);
    }
  }
  return fixes;
}

function checksum(sentence: string): string {
  let sum = 0;
  for (const ch of sentence.slice(1)) sum ^= ch.charCodeAt(0);
  return `${sentence}*${sum.toString(16).toUpperCase().padStart(2, '0')}`;
}
