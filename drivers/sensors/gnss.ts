import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { SensorError } from './errors.js';
import { LiveFeed } from './live-feed.js';
import { KNOT_MPS, NmeaEpochs, parseNmea, type NmeaEpoch } from './nmea.js';
import { ReplayClock } from './replay-clock.js';
import type { GnssFix, Sensor, SensorMessage } from './types.js';

/** The port gpsd listens on for clients. */
export const GPSD_PORT = 2947;

export interface GpsdOptions {
  /** Default 'localhost'. */
  readonly host?: string;
  /** Default 2947. */
  readonly port?: number;
  /** Watch only this receiver (a gpsd device path such as /dev/ttyACM0); default every device. */
  readonly device?: string;
  /** Fixes held for a slow reader before the oldest is dropped. Default 16. */
  readonly capacity?: number;
  /** Silence after which `onStale` is told, ms. Default 3000 (three epochs of a 1 Hz receiver). */
  readonly staleAfterMs?: number;
  readonly onStale?: (silentMs: number) => void;
}

export interface GpsdStats {
  /** gpsd's release from its VERSION banner, once connected. */
  readonly release?: string;
  readonly reports: number;
  readonly fixes: number;
  /** Lines that were not JSON objects, skipped. */
  readonly badLines: number;
  readonly dropped: number;
}

/**
 * A receiver through gpsd, over its JSON protocol: connects, sends
 * `?WATCH={"enable":true,"json":true}`, and turns TPV reports with a 2D/3D fix into GnssFix
 * messages. Satellites used and HDOP come from the latest SKY report. Sensor time is the TPV's
 * `time` (the receiver's UTC); gpsd omits it before the receiver has sent a date, and then the
 * local wall clock stands in. gpsd may report one epoch several times as sentences of it arrive;
 * a repeat that changes nothing is dropped.
 *
 * One connection per `messages()` call. A refused connection throws SensorError
 * `EAI_SENSOR_NOT_FOUND`, a dropped one `EAI_SENSOR_STREAM_ENDED` (both retryable: the caller
 * reconnects with backoff). A receiver that goes quiet calls `onStale` but ends nothing.
 */
export class GpsdClient implements Sensor<GnssFix> {
  private counts = { reports: 0, fixes: 0, badLines: 0 };
  private release: string | undefined;
  private feed: LiveFeed<SensorMessage<GnssFix>> | undefined;

  constructor(private readonly options: GpsdOptions = {}) {}

  get stats(): GpsdStats {
    return { ...(this.release === undefined ? {} : { release: this.release }), ...this.counts, dropped: this.feed?.dropped ?? 0 };
  }

  async *messages(signal: AbortSignal): AsyncGenerator<SensorMessage<GnssFix>, void, void> {
    const { host = 'localhost', port = GPSD_PORT } = this.options;
    const where = `${host}:${port}`;
    const feed = new LiveFeed<SensorMessage<GnssFix>>({ capacity: this.options.capacity ?? 16, staleAfterMs: this.options.staleAfterMs ?? 3000, ...(this.options.onStale === undefined ? {} : { onStale: this.options.onStale }) });
    this.feed = feed;
    const socket = net.connect({ host, port });
    let connected = false;
    let sky: { satellites?: number; hdop?: number } = {};
    let last = '';
    let partial = '';
    socket.setEncoding('utf8');
    socket.on('connect', () => {
      connected = true;
      const watch: Record<string, unknown> = { enable: true, json: true, ...(this.options.device === undefined ? {} : { device: this.options.device }) };
      socket.write(`?WATCH=${JSON.stringify(watch)}\n`);
    });
    socket.on('data', (text: string) => {
      const lines = (partial + text).split('\n');
      partial = lines.pop() ?? '';
      // gpsd's reports are at most 10240 characters: anything longer is not gpsd, and must not grow memory.
      if (partial.length > MAX_REPORT_CHARS) {
        partial = '';
        this.counts.badLines += 1;
      }
      for (const line of lines) {
        if (line.trim() === '') continue;
        const report = parseReport(line);
        if (report === undefined) {
          this.counts.badLines += 1;
          continue;
        }
        this.counts.reports += 1;
        if (report['class'] === 'VERSION' && typeof report['release'] === 'string') this.release = report['release'];
        else if (report['class'] === 'SKY') sky = skyOf(report, sky);
        else if (report['class'] === 'TPV') {
          const fix = fixOfTpv(report, sky);
          const key = JSON.stringify([report['time'], fix]);
          if (fix === undefined || key === last) continue;
          last = key;
          this.counts.fixes += 1;
          feed.push({ sensorTimeNs: isoToNs(report['time']) ?? BigInt(Date.now()) * 1_000_000n, arrivalMs: performance.now(), value: fix });
        }
      }
    });
    socket.on('error', (error: NodeJS.ErrnoException) => {
      const refused = !connected && (error.code === 'ECONNREFUSED' || error.code === 'ENOTFOUND' || error.code === 'EHOSTUNREACH');
      feed.fail(
        refused
          ? new SensorError('EAI_SENSOR_NOT_FOUND', `gpsd is not reachable at ${where} (${error.code}): start it (\`sudo systemctl start gpsd\`, or \`gpsd -N /dev/ttyACM0\`) or set params.host/params.port`, { cause: error, details: { host, port } })
          : new SensorError('EAI_SENSOR_STREAM_ENDED', `connection to gpsd at ${where} failed: ${error.message}`, { cause: error, details: { host, port } }),
      );
    });
    socket.on('close', () => feed.fail(new SensorError('EAI_SENSOR_STREAM_ENDED', `gpsd at ${where} closed the connection (gpsd restarted or stopped)`, { details: { host, port } })));
    try {
      yield* feed.read(signal);
    } finally {
      socket.destroy();
    }
  }
}

export interface GnssReplayOptions {
  /** 1: original timing (default); 2: twice as fast; 0: as fast as the reader takes fixes. */
  readonly speed?: number;
  /** Date for NMEA times before the first RMC (GGA-only logs), ms since the epoch. Default today (UTC). */
  readonly referenceDateMs?: number;
  /**
   * Which time line fixes are stamped on. `recording` (default): the receiver's UTC times as
   * recorded. `replay`: moved as a block so the recording's first epoch (with a fix or not) is
   * stamped with the wall time it is replayed at, and every later fix keeps its recorded spacing
   * from it — for fusing a recording with sensors stamped from today's wall clock (a video file,
   * a live camera). At `speed` 1 a fix is then released when the wall clock reaches its stamp.
   */
  readonly timeBase?: GnssTimeBase;
  /** Wall clock for `timeBase: 'replay'`, ms since the epoch. Default `Date.now`. */
  readonly now?: () => number;
}

/** The time line a replayed fix is stamped on (see `GnssReplayOptions.timeBase`). */
export type GnssTimeBase = 'recording' | 'replay';

export interface GnssReplayStats {
  readonly format: 'nmea' | 'mrpt' | undefined;
  readonly fixes: number;
  /** Epochs or rows without a valid position (no fix yet, fix lost), skipped. */
  readonly noFix: number;
  /** NMEA sentences with a missing or wrong checksum, skipped. */
  readonly badChecksum: number;
  /** Sentences or rows whose fields do not parse, skipped. */
  readonly malformed: number;
}

/**
 * A recorded receiver, replayed at its own timing (from the fixes' UTC times) or faster. Fixes
 * are stamped with their recorded UTC times, or rebased onto the replay's start (`timeBase`). Two
 * formats, told apart by content:
 *
 * - NMEA 0183 logs (`.nmea`, gpsd's test logs; `#` comment lines allowed): GGA, RMC, GSA and
 *   VTG merged per epoch (see `NmeaEpochs`); sentences with a bad checksum are counted and
 *   skipped; other sentence types ignored.
 * - MRPT's GPS text export (`rawlog-edit --export-gps-txt`): a `%` header, then one row per fix:
 *   Unix time, latitude and longitude in radians, altitude, GGA fix quality, satellites, speed,
 *   direction, ... MRPT writes speed as knots × π/180 and direction in radians; both are
 *   converted back (m/s, degrees). A row with speed and direction both exactly 0 is a receiver
 *   that sent no RMC: the fix carries neither.
 *
 * A missing file throws SensorError `EAI_SENSOR_NOT_FOUND` (not retryable).
 */
export class GnssReplay implements Sensor<GnssFix> {
  private counts = { fixes: 0, noFix: 0, badChecksum: 0, malformed: 0 };
  private format: 'nmea' | 'mrpt' | undefined;

  constructor(
    readonly file: string,
    private readonly options: GnssReplayOptions = {},
  ) {}

  get stats(): GnssReplayStats {
    return { format: this.format, ...this.counts };
  }

  async *messages(signal: AbortSignal): AsyncGenerator<SensorMessage<GnssFix>, void, void> {
    await assertReadable(this.file);
    const clock = new ReplayClock(this.options.speed ?? 1);
    const stamp = timeLine(this.options);
    const epochs = new NmeaEpochs(this.options.referenceDateMs);
    const input = createReadStream(this.file, { encoding: 'utf8' });
    const lines = createInterface({ input, crlfDelay: Infinity });
    try {
      for await (const raw of lines) {
        const line = raw.trim();
        if (line === '' || line.startsWith('#')) continue;
        if (this.format === undefined) this.format = line.startsWith('%') ? 'mrpt' : 'nmea';
        if (line.startsWith('%')) continue;
        const epoch = this.format === 'mrpt' ? this.mrptRow(line) : this.nmeaLine(line, epochs);
        if (epoch === undefined) continue;
        if (!(await clock.waitFor(Number(epoch.sensorTimeNs / 1000n) / 1000, signal))) return;
        // Stamped after the wait: the first epoch is anchored when it is actually replayed.
        const sensorTimeNs = stamp(epoch.sensorTimeNs);
        if (epoch.fix !== undefined) yield { sensorTimeNs, arrivalMs: performance.now(), value: epoch.fix };
      }
      const tail = this.format === 'nmea' ? this.count(epochs.flush()) : undefined;
      if (tail?.fix === undefined || !(await clock.waitFor(Number(tail.sensorTimeNs / 1000n) / 1000, signal))) return;
      yield { sensorTimeNs: stamp(tail.sensorTimeNs), arrivalMs: performance.now(), value: tail.fix };
    } finally {
      lines.close();
      // Closing readline leaves its input open: a replay stopped early must not hold the file.
      input.destroy();
    }
  }

  private nmeaLine(line: string, epochs: NmeaEpochs): NmeaEpoch | undefined {
    const parsed = parseNmea(line);
    if (!parsed.ok) {
      if (parsed.reason === 'checksum') this.counts.badChecksum += 1;
      else if (parsed.reason === 'malformed') this.counts.malformed += 1;
      return undefined;
    }
    return this.count(epochs.push(parsed.sentence));
  }

  private mrptRow(line: string): NmeaEpoch | undefined {
    const epoch = parseMrptRow(line);
    if (epoch === undefined) this.counts.malformed += 1;
    return this.count(epoch);
  }

  private count(epoch: NmeaEpoch | undefined): NmeaEpoch | undefined {
    if (epoch !== undefined) {
      if (epoch.fix === undefined) this.counts.noFix += 1;
      else this.counts.fixes += 1;
    }
    return epoch;
  }
}

/**
 * One row of MRPT's `--export-gps-txt` (columns: time, lat, lon, alt, fix, #sats, speed, dir,
 * ...): the fix at that time, `fix: undefined` for quality 0; undefined when the row is malformed.
 */
export function parseMrptRow(line: string): NmeaEpoch | undefined {
  const c = line.trim().split(/\s+/u);
  if (c.length < 8) return undefined;
  const [time, lat, lon, alt, quality, sats, speed, dir] = c.slice(0, 8).map(Number) as [number, number, number, number, number, number, number, number];
  if (![time, lat, lon, alt, quality, sats, speed, dir].every(Number.isFinite) || Math.abs(lat) > Math.PI / 2 || Math.abs(lon) > Math.PI) return undefined;
  const sensorTimeNs = decimalSecondsToNs(c[0] ?? '');
  if (sensorTimeNs === undefined) return undefined;
  if (quality <= 0) return { sensorTimeNs, fix: undefined };
  const moving = speed !== 0 || dir !== 0;
  const fix: GnssFix = {
    latitude: (lat * 180) / Math.PI,
    longitude: (lon * 180) / Math.PI,
    altitude: alt,
    quality,
    satellites: sats,
    // MRPT passes RMC's knots and degrees through DEG2RAD on export; undo both.
    ...(moving ? { speedMps: ((speed * 180) / Math.PI) * KNOT_MPS, courseDeg: ((((dir * 180) / Math.PI) % 360) + 360) % 360 } : {}),
  };
  return { sensorTimeNs, fix };
}

const MAX_REPORT_CHARS = 65_536;

/**
 * The stamp of each replayed epoch: unchanged on the recording's time line; on the replay's, shifted
 * by the one offset that puts the first epoch asked about at the wall clock's now.
 */
function timeLine(options: GnssReplayOptions): (recordedNs: bigint) => bigint {
  if ((options.timeBase ?? 'recording') === 'recording') return (recordedNs) => recordedNs;
  const now = options.now ?? Date.now;
  let shiftNs: bigint | undefined;
  return (recordedNs) => {
    shiftNs ??= msToNs(now()) - recordedNs;
    return recordedNs + shiftNs;
  };
}

type Report = Readonly<Record<string, unknown>>;

function parseReport(line: string): Report | undefined {
  try {
    const value: unknown = JSON.parse(line);
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Report) : undefined;
  } catch {
    return undefined;
  }
}

function numberOf(report: Report, key: string): number | undefined {
  const v = report[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

function skyOf(report: Report, previous: { satellites?: number; hdop?: number }): { satellites?: number; hdop?: number } {
  const list = Array.isArray(report['satellites']) ? (report['satellites'] as unknown[]) : undefined;
  const used = numberOf(report, 'uSat') ?? list?.filter((s) => typeof s === 'object' && s !== null && (s as Report)['used'] === true).length;
  const hdop = numberOf(report, 'hdop');
  return { ...previous, ...(used === undefined ? {} : { satellites: used }), ...(hdop === undefined ? {} : { hdop }) };
}

/** gpsd TPV to GnssFix; undefined without a 2D/3D fix. `status` maps to the GGA quality scale. */
function fixOfTpv(tpv: Report, sky: { satellites?: number; hdop?: number }): GnssFix | undefined {
  const latitude = numberOf(tpv, 'lat');
  const longitude = numberOf(tpv, 'lon');
  if ((numberOf(tpv, 'mode') ?? 0) < 2 || latitude === undefined || longitude === undefined) return undefined;
  const altitude = numberOf(tpv, 'altMSL') ?? numberOf(tpv, 'alt') ?? numberOf(tpv, 'altHAE');
  const speedMps = numberOf(tpv, 'speed');
  const courseDeg = numberOf(tpv, 'track');
  return {
    latitude,
    longitude,
    ...(altitude === undefined ? {} : { altitude }),
    quality: TPV_STATUS_QUALITY[numberOf(tpv, 'status') ?? 1] ?? 1,
    ...(sky.satellites === undefined ? {} : { satellites: sky.satellites }),
    ...(sky.hdop === undefined ? {} : { hdop: sky.hdop }),
    ...(speedMps === undefined ? {} : { speedMps }),
    ...(courseDeg === undefined ? {} : { courseDeg }),
  };
}

/** gpsd TPV `status` (2 DGPS, 3 RTK fixed, 4 RTK float, 5 DR, 6 GNSS+DR, 7 surveyed, 8 simulated) to GGA quality. */
const TPV_STATUS_QUALITY: Readonly<Record<number, number>> = { 0: 1, 1: 1, 2: 2, 3: 4, 4: 5, 5: 6, 6: 6, 7: 7, 8: 8 };

/** ISO 8601 UTC (`2005-06-08T10:34:48.283Z`, any number of fraction digits) to ns; undefined if absent or malformed. */
function isoToNs(value: unknown): bigint | undefined {
  if (typeof value !== 'string') return undefined;
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$/u.exec(value);
  if (m === null) return undefined;
  const seconds = Date.parse(`${m[1]}Z`);
  if (Number.isNaN(seconds)) return undefined;
  return BigInt(seconds) * 1_000_000n + BigInt((m[2] ?? '').padEnd(9, '0'));
}

/** Milliseconds since the epoch to ns, the fraction kept (ms × 1e6 as a double would lose the last digits). */
function msToNs(ms: number): bigint {
  const whole = Math.floor(ms);
  return BigInt(whole) * 1_000_000n + BigInt(Math.round((ms - whole) * 1e6));
}

/** `1226225355.2000` to ns, exactly (no float rounding of the fraction). */
function decimalSecondsToNs(text: string): bigint | undefined {
  const m = /^(\d+)(?:\.(\d{1,9})\d*)?$/u.exec(text);
  if (m === null) return undefined;
  return BigInt(m[1] ?? '0') * 1_000_000_000n + BigInt((m[2] ?? '').padEnd(9, '0'));
}

async function assertReadable(file: string): Promise<void> {
  try {
    await (await open(file, 'r')).close();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new SensorError('EAI_SENSOR_NOT_FOUND', `cannot read GNSS recording ${file}: ${code === 'ENOENT' ? 'no such file' : (error as Error).message}`, { cause: error, retryable: false, details: { file } });
  }
}
