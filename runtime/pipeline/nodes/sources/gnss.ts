import path from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import { GPSD_PORT, GnssReplay, GpsdClient } from '../../../../drivers/sensors/gnss.js';
import { defineNode, type ConfigProblem } from '../../definition.js';
import { checkSource, runSensor } from './sensor-loop.js';
import { RestartParams } from './video.js';

const GnssParams = Type.Object(
  {
    file: Type.Optional(Type.String({ minLength: 1, description: 'replay this recording (an NMEA 0183 log, or MRPT `--export-gps-txt` text), relative to the pipeline file; omit to read a receiver through gpsd' })),
    host: Type.String({ default: 'localhost', description: 'live: host gpsd runs on' }),
    port: Type.Integer({ minimum: 1, maximum: 65_535, default: GPSD_PORT, description: 'live: gpsd port' }),
    device: Type.Optional(Type.String({ minLength: 1, description: "live: watch only this gpsd device (e.g. /dev/ttyACM0); default all" })),
    realtime: Type.Boolean({ default: true, description: 'replay: at the recorded pace; false: as fast as the pipeline takes fixes' }),
    timeBase: Type.Union([Type.Literal('recording'), Type.Literal('replay')], {
      default: 'recording',
      description: "replay: stamp fixes with their recorded UTC times (recording), or shift them so the first is stamped with the wall time the replay starts, keeping their spacing (replay) — to sync with sensors stamped from today's clock, such as a video file",
    }),
    date: Type.Optional(Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}$', description: 'replay: UTC date (YYYY-MM-DD) for NMEA logs without RMC sentences; default today' })),
    queue: Type.Integer({ minimum: 1, maximum: 10_000, default: 16, description: 'live: fixes held for a slow pipeline before the oldest is dropped' }),
    staleAfterMs: Type.Integer({ minimum: 0, default: 3000, description: 'live: warn when no fix arrives for this long (0: never)' }),
    restart: RestartParams,
  },
  { additionalProperties: false },
);

export type GnssSourceParams = Static<typeof GnssParams>;

/**
 * `use: gnss` — position fixes (GnssFix, WGS84) from a receiver through gpsd, or replayed from
 * an NMEA log or MRPT GPS text export: output `fix`. Sensor time is the receiver's UTC time of
 * the fix; a replay with `timeBase: replay` shifts the recording's times as a block so its first
 * epoch is stamped with the wall time the replay starts (see `GnssReplayOptions.timeBase`).
 * Live: gpsd not running or restarting is retried with backoff (a reconnect), silence is warned
 * about after `staleAfterMs`. Replay: NMEA sentences with bad checksums are counted,
 * skipped and reported at the end; the source returns at the end of the recording.
 */
export const gnssSource = defineNode({
  use: 'gnss',
  role: 'source',
  description: 'GNSS position fixes from gpsd, or replayed from an NMEA log or MRPT GPS text export',
  params: GnssParams,
  inputs: [],
  outputs: ['fix'],
  types() {
    return { fix: { kind: 'gnss' } };
  },
  async check(params, env) {
    const problems: ConfigProblem[] = await checkSource(params, env.baseDir, 'GNSS');
    if (params.date !== undefined && Number.isNaN(Date.parse(`${params.date}T00:00:00Z`))) problems.push({ path: ['params', 'date'], message: `${params.date} is not a date (YYYY-MM-DD)` });
    // Live fixes are stamped by the receiver's clock, which is today's: there is nothing to rebase.
    if (params.file === undefined && params.timeBase === 'replay') problems.push({ path: ['params', 'timeBase'], message: "timeBase 'replay' rebases a recording's times and needs params.file; live fixes already carry the receiver's current time" });
    return problems;
  },
  async run(ctx) {
    const p = ctx.params;
    if (p.file !== undefined) {
      const replay = new GnssReplay(path.resolve(ctx.baseDir, p.file), { speed: p.realtime ? 1 : 0, timeBase: p.timeBase, ...(p.date === undefined ? {} : { referenceDateMs: Date.parse(`${p.date}T00:00:00Z`) }) });
      await runSensor(ctx, 'fix', replay, p.restart, () => {
        const s = replay.stats;
        const skipped = [s.badChecksum > 0 ? `${s.badChecksum} sentences with bad checksums` : '', s.malformed > 0 ? `${s.malformed} malformed sentences or rows` : ''].filter((x) => x !== '');
        return skipped.length === 0 ? undefined : `skipped ${skipped.join(' and ')} in ${p.file ?? ''} (a noisy serial line when it was recorded?)`;
      });
      return;
    }
    const client = new GpsdClient({
      host: p.host,
      port: p.port,
      capacity: p.queue,
      staleAfterMs: p.staleAfterMs,
      ...(p.device === undefined ? {} : { device: p.device }),
      onStale: (silentMs) => ctx.warn(`no fix from gpsd at ${p.host}:${p.port} for ${(silentMs / 1000).toFixed(1)} s: is the receiver connected, and does it see the sky? (\`gpsmon\` shows what gpsd receives)`),
    });
    await runSensor(ctx, 'fix', client, p.restart);
  },
});
