import { describe, expect, it } from 'vitest';
import type { PointCloud } from '../../../../../../drivers/sensors/types.js';
import { PortTypeMismatch } from '../../../../../../runtime/pipeline/definition.js';
import { nearestInBand, pointcloudNearest, type PointcloudNearestParams } from '../../../../../../runtime/pipeline/nodes/stages/pointcloud-nearest.js';
import { defaults, startStage } from './harness.js';

/** A cloud of the given points, in the REP-103 frame the lidar source emits (x ahead, y left, z up). */
function cloud(points: readonly (readonly [number, number, number])[]): PointCloud {
  return { frameId: 'velodyne', count: points.length, xyz: Float32Array.from(points.flat()) };
}

const AHEAD: [number, number, number] = [3, 0, 0];
const FRONT_LEFT: [number, number, number] = [1, 1, 0];
const RIGHT: [number, number, number] = [0, -2, 0];
const BEHIND: [number, number, number] = [-0.5, 0, 0];
const GROUND_AHEAD: [number, number, number] = [1.5, 0, -2];
const OVERHANG_AHEAD: [number, number, number] = [0.75, 0, 1.5];
const MAST: [number, number, number] = [0.25, 0, 0];
const SCENE = cloud([AHEAD, FRONT_LEFT, RIGHT, BEHIND, GROUND_AHEAD, OVERHANG_AHEAD, MAST]);

const params = (p: Record<string, unknown>): PointcloudNearestParams => defaults(pointcloudNearest, p);

describe('pointcloud.nearest', () => {
  it('defaults: all around, no height band, no minimum range — the nearest point of the whole cloud', () => {
    expect(params({})).toEqual({ sector: { fromDeg: -180, toDeg: 180 }, minRange: 0 });
    expect(nearestInBand(SCENE, params({}))).toEqual({ distanceM: 0.25, bearingDeg: 0, x: 0.25, y: 0, z: 0, points: 7 });
  });

  it('minRange skips the machine itself; straight behind is bearing +180', () => {
    expect(nearestInBand(SCENE, params({ minRange: 0.3 }))).toEqual({ distanceM: 0.5, bearingDeg: 180, x: -0.5, y: 0, z: 0, points: 6 });
  });

  it('bearings are counter-clockwise from +x: left positive, right negative; sector edges included', () => {
    const left = nearestInBand(SCENE, params({ sector: { fromDeg: -45, toDeg: 45 }, minRange: 0.3, minZ: -1, maxZ: 1 }));
    expect(left).toMatchObject({ distanceM: Math.SQRT2, x: 1, y: 1, z: 0, points: 2 });
    expect(left.bearingDeg).toBeCloseTo(45, 12);
    const right = nearestInBand(SCENE, params({ sector: { fromDeg: -100, toDeg: -80 } }));
    expect(right).toMatchObject({ distanceM: 2, x: 0, y: -2, z: 0, points: 1 });
    expect(right.bearingDeg).toBeCloseTo(-90, 12);
    // Only the 45° sector to the left of straight ahead: the right-hand point is not in it.
    expect(nearestInBand(SCENE, params({ sector: { fromDeg: 1, toDeg: 46 } }))).toMatchObject({ x: 1, y: 1, points: 1 });
  });

  it('a sector from a larger to a smaller bearing wraps through 180°: {135, -135} is behind', () => {
    expect(nearestInBand(SCENE, params({ sector: { fromDeg: 135, toDeg: -135 } }))).toEqual({ distanceM: 0.5, bearingDeg: 180, x: -0.5, y: 0, z: 0, points: 1 });
    // And 0 → 360 is all around, like the default.
    expect(nearestInBand(SCENE, params({ sector: { fromDeg: 0, toDeg: 360 } })).points).toBe(7);
  });

  it('the height band drops the overhang above and the ground below, nearest first', () => {
    const ahead = { sector: { fromDeg: -10, toDeg: 10 }, minRange: 0.3 };
    expect(nearestInBand(SCENE, params(ahead))).toEqual({ distanceM: 0.75, bearingDeg: 0, x: 0.75, y: 0, z: 1.5, points: 3 });
    expect(nearestInBand(SCENE, params({ ...ahead, maxZ: 1 }))).toEqual({ distanceM: 1.5, bearingDeg: 0, x: 1.5, y: 0, z: -2, points: 2 });
    expect(nearestInBand(SCENE, params({ ...ahead, minZ: -1, maxZ: 1 }))).toEqual({ distanceM: 3, bearingDeg: 0, x: 3, y: 0, z: 0, points: 1 });
  });

  it('distance is horizontal: a point high above but near is nearer than a low one farther out', () => {
    const result = nearestInBand(cloud([[2, 0, 0], [1.5, 0, 1.75]]), params({}));
    expect(result).toMatchObject({ distanceM: 1.5, z: 1.75 });
  });

  it('an empty band is a result with null fields and 0 points, not silence', () => {
    expect(nearestInBand(SCENE, params({ sector: { fromDeg: -100, toDeg: -80 }, minZ: 1 }))).toEqual({ distanceM: null, bearingDeg: null, x: null, y: null, z: null, points: 0 });
    expect(nearestInBand(cloud([]), params({}))).toMatchObject({ distanceM: null, points: 0 });
  });

  it('as a stage: one json message per cloud, with the cloud’s sensor time and origin', async () => {
    const stage = await startStage(pointcloudNearest, { sector: { fromDeg: -45, toDeg: 45 }, minZ: -1, maxZ: 1 });
    await stage.send(SCENE, { sensorTimeNs: 1_700_000_000_000_000_000n, origin: 'lidar', seq: 4 });
    await stage.send(cloud([]), { sensorTimeNs: 1_700_000_000_100_000_000n, origin: 'lidar', seq: 5 });
    expect(stage.emitted.map((e) => [e.port, (e.value as { distanceM: number | null }).distanceM, e.from.sensorTimeNs, e.from.origin, e.from.seq])).toEqual([
      ['out', 0.25, 1_700_000_000_000_000_000n, 'lidar', 4],
      ['out', null, 1_700_000_000_100_000_000n, 'lidar', 5],
    ]);
    await expect(stage.send({ width: 2, height: 2 })).rejects.toMatchObject({ code: 'EAI_STAGE_INPUT', message: expect.stringContaining('pointcloud.nearest takes a point cloud') as unknown });
    await stage.stop();
  });

  it('types: takes point clouds (or anything untyped), emits json; an image is refused at validation', async () => {
    const types = pointcloudNearest.types as NonNullable<typeof pointcloudNearest.types>;
    expect(await types(params({}), { in: { kind: 'pointcloud' } })).toEqual({ out: { kind: 'json' } });
    expect(await types(params({}), { in: { kind: 'any' } })).toEqual({ out: { kind: 'json' } });
    expect(() => types(params({}), { in: { kind: 'image', width: 640, height: 480, format: 'rgb24' } })).toThrow(PortTypeMismatch);
  });

  it('check: an empty sector and an upside-down band are problems at their keys', async () => {
    const check = pointcloudNearest.check as NonNullable<typeof pointcloudNearest.check>;
    const env = { baseDir: '.', inputs: {} };
    expect(await check(params({ sector: { fromDeg: -45, toDeg: 45 }, minZ: -1, maxZ: 1 }), env)).toEqual([]);
    expect((await check(params({ sector: { fromDeg: 30, toDeg: 30 }, minZ: 2, maxZ: 1 }), env)).map((p) => p.path)).toEqual([
      ['params', 'sector'],
      ['params', 'minZ'],
    ]);
  });
});
