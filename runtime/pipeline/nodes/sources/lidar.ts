import path from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import { VLP16_DATA_PORT, Vlp16Live, Vlp16Replay } from '../../../../drivers/sensors/velodyne.js';
import { defineNode } from '../../definition.js';
import { checkSource, runSensor } from './sensor-loop.js';
import { RestartParams } from './video.js';

const LidarParams = Type.Object(
  {
    model: Type.Literal('VLP-16', { default: 'VLP-16', description: 'the lidar: Velodyne VLP-16 (Puck)' }),
    file: Type.Optional(Type.String({ minLength: 1, description: 'replay this recording (a pcap capture, or raw 1206-byte packets back to back), relative to the pipeline file; omit to listen to the sensor live' })),
    port: Type.Integer({ minimum: 1, maximum: 65_535, default: VLP16_DATA_PORT, description: 'UDP port the sensor sends data packets to (live: listen on it; pcap replay: the packets to take)' }),
    address: Type.String({ default: '0.0.0.0', description: 'live: local address to listen on' }),
    realtime: Type.Boolean({ default: true, description: 'replay: at the recorded pace like the sensor; false: as fast as the pipeline takes clouds' }),
    frameId: Type.String({ default: 'velodyne', description: 'frameId of the clouds' }),
    minRange: Type.Number({ minimum: 0, default: 0.4, description: 'drop returns nearer than this, metres' }),
    maxRange: Type.Number({ exclusiveMinimum: 0, default: 100, description: 'drop returns farther than this, metres (VLP-16 datasheet range: 100)' }),
    queue: Type.Integer({ minimum: 1, maximum: 1000, default: 4, description: 'live: revolutions held for a slow pipeline before the oldest is dropped' }),
    staleAfterMs: Type.Integer({ minimum: 0, default: 1000, description: 'live: warn when no packet arrives for this long (0: never)' }),
    restart: RestartParams,
  },
  { additionalProperties: false },
);

export type LidarSourceParams = Static<typeof LidarParams>;

/**
 * `use: lidar` — a Velodyne VLP-16, live over UDP or replayed from a recording: output `points`
 * carries one PointCloud per revolution (REP-103 frame, metres, intensity, ring 0 = lowest laser;
 * see `Vlp16Assembler`). Sensor time is the revolution's first firing: the packets' "µs past the
 * hour" on the hour of the wall clock (live, raw replays) or of the pcap capture time.
 * Live: a busy port is retried with backoff, silence is warned about after `staleAfterMs` and the
 * source keeps waiting. Replay: returns at the end of the recording.
 */
export const lidarSource = defineNode({
  use: 'lidar',
  role: 'source',
  description: 'Velodyne VLP-16 point clouds, one per revolution, live over UDP or from a pcap/raw recording',
  params: LidarParams,
  inputs: [],
  outputs: ['points'],
  types() {
    return { points: { kind: 'pointcloud' } };
  },
  async check(params, env) {
    return checkSource(params, env.baseDir, 'lidar');
  },
  async run(ctx) {
    const p = ctx.params;
    const geometry = { frameId: p.frameId, minRangeM: p.minRange, maxRangeM: p.maxRange };
    if (p.file !== undefined) {
      const replay = new Vlp16Replay(path.resolve(ctx.baseDir, p.file), { ...geometry, port: p.port, speed: p.realtime ? 1 : 0 });
      await runSensor(ctx, 'points', replay, p.restart, () => skipped(replay.stats.badPackets, p.file ?? ''));
      return;
    }
    const live = new Vlp16Live({
      ...geometry,
      port: p.port,
      address: p.address,
      capacity: p.queue,
      staleAfterMs: p.staleAfterMs,
      onStale: (silentMs) => ctx.warn(`no VLP-16 packets on UDP ${p.address}:${p.port} for ${(silentMs / 1000).toFixed(1)} s: is the sensor powered, cabled, and sending to this host's address and port (its web page, Host settings)?`),
    });
    await runSensor(ctx, 'points', live, p.restart, () => skipped(live.stats.badPackets, `UDP port ${p.port}`));
  },
});

function skipped(badPackets: number, where: string): string | undefined {
  return badPackets === 0 ? undefined : `skipped ${badPackets} packets from ${where} that are not VLP-16 data packets (another sensor model, or position packets sent to the data port?)`;
}
