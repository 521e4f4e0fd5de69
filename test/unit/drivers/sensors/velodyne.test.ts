import dgram from 'node:dgram';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, describe, expect, it } from 'vitest';
import { SensorError } from '../../../../drivers/sensors/errors.js';
import type { PointCloud, SensorMessage } from '../../../../drivers/sensors/types.js';
import { checkVlp16Packet, topOfHourToNs, Vlp16Assembler, Vlp16Live, Vlp16Replay, VLP16_PACKET_BYTES } from '../../../../drivers/sensors/velodyne.js';

const FIXTURE = path.resolve(import.meta.dirname, '../../../fixtures/lidar/vlp16_75packets.bin');
const BYTES = readFileSync(FIXTURE);
const packets = Array.from({ length: BYTES.length / VLP16_PACKET_BYTES }, (_, i) => BYTES.subarray(i * VLP16_PACKET_BYTES, (i + 1) * VLP16_PACKET_BYTES));
const packet = (i: number): Buffer => packets[i] ?? Buffer.alloc(0);
/** 2024-01-01 12:10 UTC: the replay's hour is 12:00. */
const REFERENCE_MS = Date.UTC(2024, 0, 1, 12, 10);
const HOUR_NS = BigInt(Date.UTC(2024, 0, 1, 12)) * 1_000_000n;
const DIR = mkdtempSync(path.join(tmpdir(), 'aios-vlp16-'));
afterAll(() => rmSync(DIR, { recursive: true, force: true }));

async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of iterable) out.push(item);
  return out;
}

function point(cloud: PointCloud, i: number): { x: number; y: number; z: number; intensity: number; ring: number } {
  return { x: cloud.xyz[3 * i] ?? NaN, y: cloud.xyz[3 * i + 1] ?? NaN, z: cloud.xyz[3 * i + 2] ?? NaN, intensity: cloud.intensity?.[i] ?? -1, ring: cloud.ring?.[i] ?? -1 };
}

function assembleAll(assembler = new Vlp16Assembler()): { clouds: PointCloud[]; times: bigint[] } {
  const clouds: PointCloud[] = [];
  const times: bigint[] = [];
  let reference = REFERENCE_MS;
  for (const p of packets) {
    const check = checkVlp16Packet(p);
    if (!check.ok) throw new Error(check.reason);
    const t = topOfHourToNs(check.header.timestampUs, reference);
    reference = Number(t / 1_000_000n);
    for (const r of assembler.push(p, t)) {
      clouds.push(r.cloud);
      times.push(r.sensorTimeNs);
    }
  }
  const last = assembler.flush();
  if (last !== undefined) {
    clouds.push(last.cloud);
    times.push(last.sensorTimeNs);
  }
  return { clouds, times };
}

describe('VLP-16 packets', () => {
  it('reads the 75 recorded packets: strongest return, timestamps in µs past the hour, 1327 µs apart', () => {
    expect(packets).toHaveLength(75);
    const headers = packets.map((p) => checkVlp16Packet(p));
    expect(headers.every((h) => h.ok && h.header.returnMode === 'strongest')).toBe(true);
    const first = headers[0];
    const last = headers[74];
    expect(first).toEqual({ ok: true, header: { timestampUs: 1_461_085_268, returnMode: 'strongest' } });
    expect(last?.ok === true ? last.header.timestampUs : 0).toBe(1_461_183_474);
  });

  it('refuses what is not a VLP-16 data packet, saying why', () => {
    expect(checkVlp16Packet(packet(0).subarray(0, 512))).toEqual({ ok: false, reason: '512 bytes, not 1206' });
    const flag = Buffer.from(packet(0));
    flag[300] = 0;
    expect(checkVlp16Packet(flag)).toEqual({ ok: false, reason: 'block 3 does not start with 0xFFEE' });
    const hdl32 = Buffer.from(packet(0));
    hdl32[1205] = 0x21;
    expect(checkVlp16Packet(hdl32)).toEqual({ ok: false, reason: 'product 0x21 is not a VLP-16 (0x22)' });
    const mode = Buffer.from(packet(0));
    mode[1204] = 0x40;
    expect(checkVlp16Packet(mode)).toEqual({ ok: false, reason: 'unknown return mode 0x40' });
  });

  it('places "µs past the hour" on the hour nearest the reference clock', () => {
    const h1 = Date.UTC(2024, 0, 1, 1);
    // Stamped 00:59:59.9, arriving just after 01:00: the previous hour.
    expect(topOfHourToNs(3_599_900_000, h1 + 100)).toBe(BigInt(h1 - 100) * 1_000_000n);
    // Stamped 01:00:00.1, with a clock still at 00:59:59.95: the next hour.
    expect(topOfHourToNs(100_000, h1 - 50)).toBe(BigInt(h1 + 100) * 1_000_000n);
    expect(topOfHourToNs(1_461_085_268, REFERENCE_MS)).toBe(HOUR_NS + 1_461_085_268_000n);
  });
});

describe('VLP-16 revolutions', () => {
  const { clouds, times } = assembleAll();

  it('cuts the recording where the azimuth wraps: 22,493 points up to 359.89°, 82 after (22,575 in all)', () => {
    expect(clouds.map((c) => c.count)).toEqual([22_493, 82]);
    expect(clouds.every((c) => c.frameId === 'velodyne' && c.xyz.length === 3 * c.count && c.intensity?.length === c.count && c.ring?.length === c.count)).toBe(true);
  });

  it('decodes the first firings by hand: x = r·cosω·cosα, y = −r·cosω·sinα, z = r·sinω', () => {
    const cloud = clouds[0] as PointCloud;
    // Block 0: azimuth 343 (3.43°), next block 383: a gap of 40 hundredths per 110.592 µs.
    // Channel 0 (laser 0, −15°): distance 3996 × 2 mm = 7.992 m, intensity 13, α = 3.43°.
    expect(point(cloud, 0).x).toBeCloseTo(7.992 * Math.cos((15 * Math.PI) / 180) * Math.cos((3.43 * Math.PI) / 180), 5);
    expect(point(cloud, 0)).toMatchObject({ intensity: 13, ring: 0 });
    expect([point(cloud, 0).x, point(cloud, 0).y, point(cloud, 0).z].map((v) => Number(v.toFixed(4)))).toEqual([7.7059, -0.4619, -2.0685]);
    // Channel 1 (laser 1, +1°): 8071 → 16.142 m, fired 2.304 µs later: α = 3.43° + 0.40° × 2.304/110.592.
    expect([point(cloud, 1).x, point(cloud, 1).y, point(cloud, 1).z].map((v) => Number(v.toFixed(4)))).toEqual([16.1105, -0.968, 0.2817]);
    expect(point(cloud, 1)).toMatchObject({ intensity: 21, ring: 8 });
    // Channel 15 has no return (0); channel 16 (laser 0, second firing sequence, 55.296 µs
    // later: α = 3.43° + 0.20° = 3.63°): 3997 → 7.994 m.
    expect([point(cloud, 15).x, point(cloud, 15).y, point(cloud, 15).z].map((v) => Number(v.toFixed(4)))).toEqual([7.7061, -0.4889, -2.069]);
    expect(point(cloud, 15)).toMatchObject({ intensity: 13, ring: 0 });
  });

  it('keeps every return between 0.4 m and 100 m; the recording spans 2.4–96.9 m once the 16 returns past 100 m are dropped', () => {
    const ranges = clouds.flatMap((c) => Array.from({ length: c.count }, (_, i) => Math.hypot(c.xyz[3 * i] ?? 0, c.xyz[3 * i + 1] ?? 0, c.xyz[3 * i + 2] ?? 0)));
    expect(Math.min(...ranges)).toBeCloseTo(2.424, 2);
    expect(Math.max(...ranges)).toBeCloseTo(96.912, 2);
    expect(ranges.every((r) => r >= 0.5 && r <= 100)).toBe(true);
    const far = assembleAll(new Vlp16Assembler({ maxRangeM: 130 })).clouds;
    expect(far.reduce((n, c) => n + c.count, 0)).toBe(22_575 + 16);
  });

  it('numbers rings by elevation, 0 the lowest; every ring has returns, the upward ones fewer', () => {
    const rings = new Array<number>(16).fill(0);
    for (const c of clouds) for (const r of c.ring ?? []) rings[r] = (rings[r] ?? 0) + 1;
    expect(rings).toEqual([1217, 1471, 1550, 1561, 1554, 1560, 1535, 1548, 1495, 1523, 1446, 1391, 1340, 1232, 1139, 1013]);
    // Ring 0 points down 15°: z/r = sin(−15°) for each of its points.
    const cloud = clouds[0] as PointCloud;
    for (let i = 0; i < 200; i++) {
      const p = point(cloud, i);
      if (p.ring === 0) expect(p.z / Math.hypot(p.x, p.y, p.z)).toBeCloseTo(Math.sin((-15 * Math.PI) / 180), 5);
    }
  });

  it('stamps a revolution with its first firing: packet time plus the block offset (110.592 µs per block)', () => {
    expect(times[0]).toBe(HOUR_NS + 1_461_085_268_000n);
    // The second starts at block 9 of the last packet.
    expect(times[1]).toBe(HOUR_NS + 1_461_183_474_000n + 995_328n);
  });

  it('ends a revolution when packets stop for more than 0.2 s', () => {
    const assembler = new Vlp16Assembler();
    const t0 = HOUR_NS + 1_461_085_268_000n;
    expect(assembler.push(packet(0), t0)).toEqual([]);
    const gap = assembler.push(packet(1), t0 + 300_000_000n);
    expect(gap.map((r) => r.cloud.count)).toEqual([countPoints(0)]);
  });

  it('counts and skips packets that are not VLP-16 data', () => {
    const assembler = new Vlp16Assembler();
    expect(assembler.push(Buffer.alloc(512), 0n)).toEqual([]);
    expect(assembler.stats).toEqual({ packets: 0, badPackets: 1, revolutions: 0 });
  });

  it('dual return: pairs of blocks share an azimuth; a second return equal to the first is one echo, not two points', () => {
    const dual = Buffer.from(packet(0));
    dual[1204] = 0x39;
    // Each odd block repeats the block before it (one echo per firing) ...
    for (let b = 1; b < 12; b += 2) dual.copy(dual, b * 100, (b - 1) * 100, b * 100);
    // ... except channel 5 of block 1: a farther last return (9000 × 2 mm = 18 m).
    dual.writeUInt16LE(9000, 100 + 4 + 5 * 3);
    const assembler = new Vlp16Assembler();
    expect(assembler.push(dual, 0n)).toEqual([]);
    const cloud = assembler.flush()?.cloud as PointCloud;
    expect(cloud.count).toBe([0, 2, 4, 6, 8, 10].reduce((n, b) => n + returns(dual, b), 0) + 1);
    // Channels 0-4 have returns; channel 5's two returns follow, at the same azimuth.
    const near = point(cloud, 5);
    const far = point(cloud, 6);
    expect(Math.hypot(near.x, near.y, near.z)).toBeCloseTo(14.812, 4);
    expect(Math.hypot(far.x, far.y, far.z)).toBeCloseTo(18, 4);
    expect(Math.atan2(-far.y, far.x)).toBeCloseTo(Math.atan2(-near.y, near.x), 6);
  });
});

describe('VLP-16 replay', () => {
  it('replays the recording at its own pace (~98 ms of packets)', async () => {
    const start = performance.now();
    const real = await collect(new Vlp16Replay(FIXTURE, { referenceTimeMs: REFERENCE_MS }).messages(new AbortController().signal));
    expect(performance.now() - start).toBeGreaterThanOrEqual(90);
    expect(real.map((m) => m.value.count)).toEqual([22_493, 82]);
    expect(real.map((m) => m.sensorTimeNs)).toEqual([HOUR_NS + 1_461_085_268_000n, HOUR_NS + 1_461_184_469_328n]);
  });

  it('speed 0 does not wait: packets stamped a second apart (74 s of recording) replay at once', async () => {
    const slow = Buffer.concat(packets.map((p, i) => {
      const copy = Buffer.from(p);
      copy.writeUInt32LE(1_000_000_000 + i * 1_000_000, 1200);
      return copy;
    }));
    const file = path.join(DIR, 'slow.bin');
    writeFileSync(file, slow);
    const start = performance.now();
    const clouds = await collect(new Vlp16Replay(file, { referenceTimeMs: REFERENCE_MS, speed: 0 }).messages(new AbortController().signal));
    expect(performance.now() - start).toBeLessThan(5000);
    // Each packet is a second after the last: each ends the revolution before it.
    expect(clouds).toHaveLength(76);
    expect(clouds.reduce((n, m) => n + m.value.count, 0)).toBe(22_575);
  });

  it('reads a pcap capture: Ethernet/IPv4/UDP frames to the chosen port, other traffic skipped, the hour from the capture time', async () => {
    const file = path.join(DIR, 'capture.pcap');
    const captureMs = Date.UTC(2015, 6, 10, 3, 24, 21);
    writeFileSync(file, pcap(captureMs));
    const replay = new Vlp16Replay(file, { speed: 0, port: 2368 });
    const clouds = await collect(replay.messages(new AbortController().signal));
    expect(clouds.map((m) => m.value.count)).toEqual([22_493, 82]);
    expect(clouds[0]?.sensorTimeNs).toBe(BigInt(Date.UTC(2015, 6, 10, 3)) * 1_000_000n + 1_461_085_268_000n);
    expect(replay.stats).toEqual({ packets: 75, badPackets: 0, revolutions: 2 });
    // Without the port filter the second sensor's packets join in (and break up the revolutions).
    const mixed = new Vlp16Replay(file, { speed: 0 });
    await collect(mixed.messages(new AbortController().signal));
    expect(mixed.stats.packets).toBe(75 + 7);
  });

  it('a missing file and a file of another format are SensorErrors that say so, not retryable', async () => {
    const missing = collect(new Vlp16Replay('/nonexistent/x.pcap').messages(new AbortController().signal));
    await expect(missing).rejects.toMatchObject({ code: 'EAI_SENSOR_NOT_FOUND', retryable: false, message: expect.stringContaining('no such file') as unknown });
    const other = path.join(DIR, 'notes.txt');
    writeFileSync(other, 'hello, this is not a capture at all\n');
    const error = await collect(new Vlp16Replay(other).messages(new AbortController().signal)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SensorError);
    expect(error).toMatchObject({ code: 'EAI_SENSOR_CONFIG', retryable: false, message: expect.stringContaining('neither a pcap capture nor raw VLP-16 packets') as unknown });
  });
});

describe('VLP-16 live over UDP', () => {
  it('receives the recorded packets sent to its port as the same clouds; silence is reported, not fatal', async () => {
    const stale: number[] = [];
    let port = 0;
    const live = new Vlp16Live({ port: 0, address: '127.0.0.1', staleAfterMs: 300, now: () => REFERENCE_MS, onStale: (ms) => stale.push(ms), onListening: (p) => (port = p) });
    const abort = new AbortController();
    const got: SensorMessage<PointCloud>[] = [];
    const reading = (async () => {
      for await (const m of live.messages(abort.signal)) got.push(m);
    })();
    await waitUntil(() => port !== 0, 2000);
    const sender = dgram.createSocket('udp4');
    await sendAll(sender, port);
    // The wrap ends the first revolution; the last three blocks come out when the packets stop.
    await waitUntil(() => got.length === 2, 3000);
    expect(got.map((m) => m.value.count)).toEqual([22_493, 82]);
    expect(got[0]?.sensorTimeNs).toBe(HOUR_NS + 1_461_085_268_000n);
    const replayed = await collect(new Vlp16Replay(FIXTURE, { referenceTimeMs: REFERENCE_MS, speed: 0 }).messages(new AbortController().signal));
    expect(Array.from(got[0]?.value.xyz ?? [])).toEqual(Array.from(replayed[0]?.value.xyz ?? []));
    // One warning per silence, however long: the flushed revolution does not count as data.
    await new Promise((resolve) => setTimeout(resolve, 700));
    expect(stale).toHaveLength(1);
    expect(stale[0]).toBeGreaterThanOrEqual(290);
    // Still listening: the sensor comes back, the clouds resume.
    await sendAll(sender, port);
    await waitUntil(() => got.length === 4, 3000);
    expect(got.map((m) => m.value.count)).toEqual([22_493, 82, 22_493, 82]);
    expect(live.stats).toMatchObject({ packets: 150, badPackets: 0, dropped: 0 });
    sender.close();
    abort.abort();
    await reading;
  });

  it('a port held by another program is EAI_SENSOR_CONFIG naming the port', async () => {
    const holder = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => holder.bind(0, '127.0.0.1', resolve));
    const port = holder.address().port;
    const error = await collect(new Vlp16Live({ port, address: '127.0.0.1' }).messages(new AbortController().signal)).catch((e: unknown) => e);
    holder.close();
    expect(error).toMatchObject({ code: 'EAI_SENSOR_CONFIG', message: expect.stringContaining(`UDP 127.0.0.1:${port}: the port is in use`) as unknown });
  });
});

/** Points with a return in range in packet 0 (every block), for the gap test. */
function countPoints(i: number): number {
  const p = packet(i);
  let n = 0;
  for (let b = 0; b < 12; b++) for (let ch = 0; ch < 32; ch++) n += returns1(p, b, ch) ? 1 : 0;
  return n;
}

function returns1(p: Buffer, block: number, channel: number): boolean {
  const raw = p.readUInt16LE(block * 100 + 4 + channel * 3);
  return raw >= 200 && raw <= 50_000;
}

function returns(p: Buffer, block: number): number {
  let n = 0;
  for (let ch = 0; ch < 32; ch++) n += returns1(p, block, ch) ? 1 : 0;
  return n;
}

/** A classic little-endian pcap of the 75 packets in Ethernet/IPv4/UDP frames, plus an ARP frame and a position packet. */
function pcap(firstCaptureMs: number): Buffer {
  const header = Buffer.alloc(24);
  header.writeUInt32LE(0xa1b2c3d4, 0);
  header.writeUInt16LE(2, 4);
  header.writeUInt16LE(4, 6);
  header.writeUInt32LE(65_535, 16);
  header.writeUInt32LE(1, 20);
  const records: Buffer[] = [header];
  const add = (frame: Buffer, ms: number): void => {
    const rec = Buffer.alloc(16);
    rec.writeUInt32LE(Math.floor(ms / 1000), 0);
    rec.writeUInt32LE(Math.round((ms % 1000) * 1000), 4);
    rec.writeUInt32LE(frame.length, 8);
    rec.writeUInt32LE(frame.length, 12);
    records.push(rec, frame);
  };
  add(Buffer.concat([Buffer.alloc(12, 0xff), Buffer.from([0x08, 0x06]), Buffer.alloc(28)]), firstCaptureMs);
  packets.forEach((p, i) => {
    add(udpFrame(p, 2368), firstCaptureMs + i * 1.327);
    if (i === 10) add(udpFrame(Buffer.alloc(512), 8308), firstCaptureMs + i * 1.327 + 0.5);
    // A second sensor on port 2369, its packets a copy of packet 0 (azimuth 3.43°, far from the wrap).
    if (i % 10 === 5) add(udpFrame(packet(0), 2369), firstCaptureMs + i * 1.327 + 0.7);
  });
  return Buffer.concat(records);
}

function udpFrame(payload: Buffer, port: number): Buffer {
  const eth = Buffer.alloc(14);
  eth.writeUInt16BE(0x0800, 12);
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + 8 + payload.length, 2);
  ip[8] = 64;
  ip[9] = 17;
  Buffer.from([192, 168, 1, 201]).copy(ip, 12);
  Buffer.from([255, 255, 255, 255]).copy(ip, 16);
  const udp = Buffer.alloc(8);
  udp.writeUInt16BE(2368, 0);
  udp.writeUInt16BE(port, 2);
  udp.writeUInt16BE(8 + payload.length, 4);
  return Buffer.concat([eth, ip, udp, payload]);
}

async function sendAll(socket: dgram.Socket, port: number): Promise<void> {
  for (const p of packets) await new Promise<void>((resolve, reject) => socket.send(p, port, '127.0.0.1', (error) => (error ? reject(error) : resolve())));
}

async function waitUntil(condition: () => boolean, timeoutMs: number): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!condition() && performance.now() < end) await new Promise((resolve) => setTimeout(resolve, 10));
}
