import { readFileSync } from 'node:fs';
import path from 'node:path';
import { connectAsync, type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { VLP16_PACKET_BYTES, Vlp16Assembler, checkVlp16Packet, topOfHourToNs, type Revolution } from '../../../drivers/sensors/velodyne.js';
import { Pipeline } from '../../../runtime/pipeline/pipeline.js';
import { findBinary, startMosquitto, until, type Mosquitto } from '../../support/wait.js';

const repo = path.resolve(import.meta.dirname, '../../..');
const example = path.join(repo, 'examples/pipelines/lidar-obstacles.yaml');
const recording = path.join(repo, 'test/fixtures/lidar/vlp16_75packets.bin');

/**
 * The example as written, against a real Mosquitto started here on a free port (the file's
 * `mqtt://localhost:1883` is the one value the test replaces), checked by a real subscriber.
 */
const mosquitto = findBinary('mosquitto');
if (mosquitto === undefined) console.warn('lidar-obstacles example test skipped: mosquitto is not installed (apt-get install -y mosquitto)');

interface Obstacle {
  readonly distanceM: number | null;
  readonly bearingDeg: number | null;
  readonly x: number | null;
  readonly y: number | null;
  readonly z: number | null;
  readonly points: number;
}

describe.skipIf(mosquitto === undefined)('examples/pipelines/lidar-obstacles.yaml', () => {
  let broker: Mosquitto | undefined;
  let port: number;
  let subscriber: MqttClient;
  const received: { topic: string; payload: { time: string; origin: string; seq: number; port: string; value: Obstacle } }[] = [];

  beforeAll(async () => {
    broker = await startMosquitto(mosquitto as string);
    port = broker.port;
    subscriber = await connectAsync(`mqtt://127.0.0.1:${port}`);
    subscriber.on('message', (topic, payload) => received.push({ topic, payload: JSON.parse(payload.toString()) as (typeof received)[number]['payload'] }));
    await subscriber.subscribeAsync('aios/demo/#', { qos: 1 });
  });
  afterAll(async () => {
    await subscriber?.endAsync();
    broker?.stop();
  });

  it('publishes, per revolution of the real recording, the nearest obstacle ahead exactly as decoding the packets directly finds it', async () => {
    const config = parse(readFileSync(example, 'utf8')) as { sinks: { obstacles: { params: { url: string } } }; stages: { nearest: { params: Band } } };
    expect(config.sinks.obstacles.params.url).toBe('mqtt://localhost:1883');
    config.sinks.obstacles.params.url = `mqtt://127.0.0.1:${port}`;
    const pipeline = await Pipeline.fromConfig(config, { baseDir: path.dirname(example), statsIntervalMs: 0 });
    const done = pipeline.finished();
    await pipeline.start();
    await done;
    await pipeline.stop();
    await until(() => received.length >= 2);

    // The same recording decoded without the pipeline: the lidar source's default range limits
    // (0.4–100 m), and the band searched point by point.
    const band = config.stages.nearest.params;
    const expected = decode(recording).map((r) => nearest(r, band));
    expect(expected.map((e) => e.points)).toEqual([2832, 16]);
    expect(received.map((r) => r.topic)).toEqual(['aios/demo/obstacles', 'aios/demo/obstacles']);
    expect(received.map((r) => [r.payload.origin, r.payload.seq, r.payload.port])).toEqual([
      ['lidar', 0, 'nearest.out'],
      ['lidar', 1, 'nearest.out'],
    ]);
    expect(received.map((r) => r.payload.value)).toEqual(expected);
    // Each message carries its revolution's sensor time: the second turn starts 99.2 ms after the first.
    const [first, second] = decode(recording).map((r) => r.sensorTimeNs);
    expect(BigInt(received[1]?.payload.time ?? 0) - BigInt(received[0]?.payload.time ?? 0)).toBe((second ?? 0n) - (first ?? 0n));

    // Plausible: the full revolution's nearest obstacle is 2.36 m away, ahead and to the right
    // (negative bearing), in the band, and on a surface (other returns within 20 cm of it), not a
    // stray return. The second message is the 82-point start of the next turn: a thin slice
    // straight ahead, where the nearest thing is 15 m out.
    const [full, tail] = received.map((r) => r.payload.value);
    expect(full?.distanceM).toBeCloseTo(2.3619, 4);
    expect(full?.bearingDeg).toBeCloseTo(-38.74, 2);
    expect(full?.z).toBeGreaterThanOrEqual(band.minZ);
    expect(full?.z).toBeLessThanOrEqual(band.maxZ);
    expect(surfacePoints(decode(recording)[0] as Revolution, band, full?.distanceM ?? 0)).toBe(21);
    expect(tail?.distanceM).toBeCloseTo(14.977, 3);
    expect(Math.abs(tail?.bearingDeg ?? 99)).toBeLessThan(3.5);

    const stats = Object.fromEntries(pipeline.stats().nodes.map((n) => [n.node, n]));
    expect(stats['nearest']).toMatchObject({ in: 2, out: 2, dropped: 0, errors: 0 });
    expect(stats['obstacles']).toMatchObject({ in: 2, dropped: 0, errors: 0 });
  }, 30_000);
});

interface Band {
  readonly sector: { readonly fromDeg: number; readonly toDeg: number };
  readonly minZ: number;
  readonly maxZ: number;
  readonly minRange: number;
}

/** Every revolution of the raw recording, as the VLP-16 assembler cuts it, stamped from the packets' own µs-past-the-hour. */
function decode(file: string): Revolution[] {
  const packets = readFileSync(file);
  const assembler = new Vlp16Assembler({ minRangeM: 0.4, maxRangeM: 100 });
  const revolutions: Revolution[] = [];
  for (let at = 0; at + VLP16_PACKET_BYTES <= packets.length; at += VLP16_PACKET_BYTES) {
    const packet = packets.subarray(at, at + VLP16_PACKET_BYTES);
    const check = checkVlp16Packet(packet);
    if (!check.ok) throw new Error(`packet at byte ${at}: ${check.reason}`);
    revolutions.push(...assembler.push(packet, topOfHourToNs(check.header.timestampUs, Date.now())));
  }
  const last = assembler.flush();
  if (last !== undefined) revolutions.push(last);
  return revolutions;
}

/**
 * The nearest point in the band, written independently of the stage for a sector that does not
 * wrap (the example's). Distance is horizontal, as `Math.hypot` gives it, so it compares exactly.
 */
function nearest(revolution: Revolution, band: Band): Obstacle {
  const { xyz, count } = revolution.cloud;
  let best: Obstacle = { distanceM: null, bearingDeg: null, x: null, y: null, z: null, points: 0 };
  let points = 0;
  for (let i = 0; i < count; i++) {
    const [x, y, z] = [xyz[3 * i] ?? 0, xyz[3 * i + 1] ?? 0, xyz[3 * i + 2] ?? 0];
    const bearingDeg = (Math.atan2(y, x) * 180) / Math.PI;
    const distanceM = Math.hypot(x, y);
    if (z < band.minZ || z > band.maxZ || distanceM < band.minRange || bearingDeg < band.sector.fromDeg || bearingDeg > band.sector.toDeg) continue;
    points++;
    if (best.distanceM === null || distanceM < best.distanceM) best = { distanceM, bearingDeg, x, y, z, points: 0 };
  }
  return { ...best, points };
}

/** Points in the band no more than 20 cm farther than `distanceM`. */
function surfacePoints(revolution: Revolution, band: Band, distanceM: number): number {
  const { xyz, count } = revolution.cloud;
  let n = 0;
  for (let i = 0; i < count; i++) {
    const [x, y, z] = [xyz[3 * i] ?? 0, xyz[3 * i + 1] ?? 0, xyz[3 * i + 2] ?? 0];
    const bearingDeg = (Math.atan2(y, x) * 180) / Math.PI;
    const d = Math.hypot(x, y);
    if (z >= band.minZ && z <= band.maxZ && d >= band.minRange && bearingDeg >= band.sector.fromDeg && bearingDeg <= band.sector.toDeg && d - distanceM < 0.2) n++;
  }
  return n;
}

