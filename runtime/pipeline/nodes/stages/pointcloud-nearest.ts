import { Type, type Static } from '@sinclair/typebox';
import type { PointCloud } from '../../../../drivers/sensors/types.js';
import { defineNode, PortTypeMismatch, type ConfigProblem } from '../../definition.js';
import { describe } from '../../port-types.js';
import { StageError, summarize } from './stage-error.js';

const Sector = Type.Object(
  {
    fromDeg: Type.Number({ minimum: -360, maximum: 360, description: 'first bearing of the sector, degrees (0 ahead along +x, positive to the left, towards +y)' }),
    toDeg: Type.Number({ minimum: -360, maximum: 360, description: 'last bearing, degrees, counter-clockwise from fromDeg: {fromDeg: 135, toDeg: -135} is the 90° behind' }),
  },
  { additionalProperties: false, default: { fromDeg: -180, toDeg: 180 }, description: 'bearings looked at, counter-clockwise from fromDeg to toDeg; default all around' },
);

const Params = Type.Object(
  {
    sector: Sector,
    minZ: Type.Optional(Type.Number({ description: 'ignore points lower than this, metres in the sensor frame (the ground: about minus the mounting height); default no bound' })),
    maxZ: Type.Optional(Type.Number({ description: 'ignore points higher than this, metres in the sensor frame (overhangs the machine passes under); default no bound' })),
    minRange: Type.Number({ minimum: 0, default: 0, description: 'ignore points horizontally nearer than this, metres (the machine itself, its mast)' }),
  },
  { additionalProperties: false },
);

export type PointcloudNearestParams = Static<typeof Params>;

/**
 * The nearest point of a cloud in a sector and height band, as `pointcloud.nearest` emits it.
 * With no point in the band every field but `points` is null: "nothing there" is a result a
 * consumer (a speed limiter) must see, not silence it would mistake for a stalled sensor.
 */
export interface NearestObstacle {
  /** Horizontal distance from the sensor's z axis, metres: how far the machine may move towards it. */
  readonly distanceM: number | null;
  /** Bearing of the point, degrees in (-180, 180]: 0 ahead (+x), positive to the left (+y). */
  readonly bearingDeg: number | null;
  readonly x: number | null;
  readonly y: number | null;
  readonly z: number | null;
  /** Points of the cloud in the sector and band (and beyond `minRange`). */
  readonly points: number;
}

/**
 * Finds the point nearest the sensor's vertical axis among those whose bearing atan2(y, x) lies in
 * the sector, whose height z lies in [minZ, maxZ] and whose horizontal range hypot(x, y) is at
 * least `minRange`, in the cloud's own frame (REP-103: x forward, y left, z up, as the `lidar`
 * source emits). Distance is horizontal, not 3-D, because a point 1 m above the sensor 2 m ahead
 * is an obstacle 2 m ahead. Ties keep the first point. Pure; reads `cloud.xyz` only.
 */
export function nearestInBand(cloud: PointCloud, params: PointcloudNearestParams): NearestObstacle {
  const from = params.sector.fromDeg;
  const span = sectorSpan(params.sector.fromDeg, params.sector.toDeg);
  const minZ = params.minZ ?? Number.NEGATIVE_INFINITY;
  const maxZ = params.maxZ ?? Number.POSITIVE_INFINITY;
  const xyz = cloud.xyz;
  let best = -1;
  let bestRange = Number.POSITIVE_INFINITY;
  let points = 0;
  for (let i = 0; i < cloud.count; i++) {
    const x = xyz[3 * i] ?? 0;
    const y = xyz[3 * i + 1] ?? 0;
    const z = xyz[3 * i + 2] ?? 0;
    if (!(z >= minZ && z <= maxZ)) continue;
    const range = Math.hypot(x, y);
    if (!(range >= params.minRange)) continue;
    if (span < 360 && !inSector(bearingOf(x, y), from, span)) continue;
    points++;
    if (range < bestRange) {
      bestRange = range;
      best = i;
    }
  }
  if (best < 0) return { distanceM: null, bearingDeg: null, x: null, y: null, z: null, points };
  const x = xyz[3 * best] ?? 0;
  const y = xyz[3 * best + 1] ?? 0;
  return { distanceM: bestRange, bearingDeg: bearingOf(x, y), x, y, z: xyz[3 * best + 2] ?? 0, points };
}

/**
 * `pointcloud.nearest`: one `json` message per cloud on `out` — the nearest point in a sector and
 * height band ({@link nearestInBand}), with the cloud's sensor time — for a safety stop or a speed
 * limit that needs "how far is the nearest obstacle ahead", not the cloud. A message that is not
 * a point cloud is an `EAI_STAGE_INPUT` error for that message only.
 */
export const pointcloudNearest = defineNode({
  use: 'pointcloud.nearest',
  role: 'stage',
  description: 'the nearest point of each cloud in a bearing sector and height band: distance, bearing, position, points in the band',
  params: Params,
  inputs: ['in'],
  outputs: ['out'],

  types(_params, inputs) {
    const input = inputs['in'];
    if (input !== undefined && input.kind !== 'pointcloud' && input.kind !== 'any') throw new PortTypeMismatch('in', `pointcloud.nearest takes point clouds (a lidar source), not ${describe(input)}`);
    return { out: { kind: 'json' } };
  },

  async check(params): Promise<readonly ConfigProblem[]> {
    const problems: ConfigProblem[] = [];
    if (params.sector.fromDeg === params.sector.toDeg) problems.push({ path: ['params', 'sector'], message: `the sector from ${params.sector.fromDeg}° to ${params.sector.toDeg}° is empty: give two different bearings (-180 to 180 is all around)` });
    if (params.minZ !== undefined && params.maxZ !== undefined && params.minZ > params.maxZ) problems.push({ path: ['params', 'minZ'], message: `minZ (${params.minZ}) is above maxZ (${params.maxZ}): no point can be in the band` });
    return problems;
  },

  process(_port, message, ctx) {
    if (!isPointCloud(message.value)) throw new StageError('EAI_STAGE_INPUT', `pointcloud.nearest takes a point cloud ({ frameId, count, xyz }), got ${summarize(message.value)}.`);
    return ctx.emit('out', nearestInBand(message.value, ctx.params), message);
  },
});

/** Degrees from `from` counter-clockwise to `to`, in (0, 360]; exactly 360 apart (or -180→180) is all around. */
function sectorSpan(from: number, to: number): number {
  if (Math.abs(to - from) === 360) return 360;
  const span = (((to - from) % 360) + 360) % 360;
  // Equal bearings are rejected by `check`; treated as all around rather than nothing if they slip through.
  return span === 0 ? 360 : span;
}

function inSector(bearing: number, from: number, span: number): boolean {
  return (((bearing - from) % 360) + 360) % 360 <= span;
}

function bearingOf(x: number, y: number): number {
  const deg = (Math.atan2(y, x) * 180) / Math.PI;
  // atan2(-0, -1) is -π: straight behind is +180 whichever sign of zero the float has.
  return deg === -180 ? 180 : deg;
}

function isPointCloud(value: unknown): value is PointCloud {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Partial<PointCloud>;
  return typeof v.count === 'number' && v.xyz instanceof Float32Array && v.xyz.length >= 3 * v.count;
}
