import dgram from 'node:dgram';
import { createReadStream } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { SensorError } from './errors.js';
import { LiveFeed } from './live-feed.js';
import { isPcap, isPcapng, PcapUdpReader } from './pcap.js';
import { ReplayClock } from './replay-clock.js';
import type { PointCloud, Sensor, SensorMessage } from './types.js';

/** Bytes of one VLP-16 data packet (the UDP payload): 12 blocks of 100, timestamp, factory bytes. */
export const VLP16_PACKET_BYTES = 1206;
/** The UDP port VLP-16 sensors send data packets to unless configured otherwise. */
export const VLP16_DATA_PORT = 2368;
/** Elevation of lasers 0..15 in firing order, degrees (VLP-16 user manual, table 9-1). */
export const VLP16_VERTICAL_DEG: readonly number[] = [-15, 1, -13, 3, -11, 5, -9, 7, -7, 9, -5, 11, -3, 13, -1, 15];

export type Vlp16ReturnMode = 'strongest' | 'last' | 'dual';

export interface Vlp16Header {
  /** Time of the first firing in the packet: microseconds past the top of the hour. */
  readonly timestampUs: number;
  readonly returnMode: Vlp16ReturnMode;
}

/** A packet's framing checked: its header, or why it is not a VLP-16 data packet. */
export type Vlp16Check = { readonly ok: true; readonly header: Vlp16Header } | { readonly ok: false; readonly reason: string };

/**
 * Checks one UDP payload: 1206 bytes, every block flagged 0xFFEE, a known return mode
 * (0x37 strongest, 0x38 last, 0x39 dual) and product byte 0x22 (VLP-16). Never throws.
 */
export function checkVlp16Packet(packet: Uint8Array): Vlp16Check {
  if (packet.length !== VLP16_PACKET_BYTES) return { ok: false, reason: `${packet.length} bytes, not ${VLP16_PACKET_BYTES}` };
  for (let b = 0; b < BLOCKS; b++) {
    if (packet[b * BLOCK_BYTES] !== 0xff || packet[b * BLOCK_BYTES + 1] !== 0xee) return { ok: false, reason: `block ${b} does not start with 0xFFEE` };
  }
  const mode = RETURN_MODES.get(packet[1204] ?? 0);
  if (mode === undefined) return { ok: false, reason: `unknown return mode 0x${hex(packet[1204])}` };
  if (packet[1205] !== VLP16_PRODUCT) return { ok: false, reason: `product 0x${hex(packet[1205])} is not a VLP-16 (0x22)` };
  const timestampUs = new DataView(packet.buffer, packet.byteOffset, packet.byteLength).getUint32(1200, true);
  return { ok: true, header: { timestampUs, returnMode: mode } };
}

/**
 * Puts a packet's "microseconds past the hour" on the Unix time line: the hour is the one that
 * places the packet nearest `referenceMs` (a wall clock for live data, the capture time of a
 * pcap record, the previous packet's time in a raw replay), so a packet stamped 59:59.9 that
 * arrives at 00:00.1 belongs to the previous hour. Returns nanoseconds since the epoch.
 */
export function topOfHourToNs(timestampUs: number, referenceMs: number): bigint {
  let hourMs = Math.floor(referenceMs / HOUR_MS) * HOUR_MS;
  const ms = hourMs + timestampUs / 1000;
  if (ms - referenceMs > HOUR_MS / 2) hourMs -= HOUR_MS;
  else if (referenceMs - ms > HOUR_MS / 2) hourMs += HOUR_MS;
  return BigInt(hourMs) * 1_000_000n + BigInt(timestampUs) * 1000n;
}

export interface Vlp16Options {
  /** `frameId` of the clouds. Default 'velodyne'. */
  readonly frameId?: string;
  /** Returns nearer than this are dropped, metres. Default 0.4 (the housing's own reflections). */
  readonly minRangeM?: number;
  /** Returns farther than this are dropped, metres. Default 100 (the datasheet range). */
  readonly maxRangeM?: number;
}

/** One full turn of the sensor, as a cloud, with the sensor time of its first firing. */
export interface Revolution {
  readonly cloud: PointCloud;
  readonly sensorTimeNs: bigint;
}

export interface Vlp16Stats {
  readonly packets: number;
  /** Packets that were not VLP-16 data packets (see `checkVlp16Packet`), skipped. */
  readonly badPackets: number;
  readonly revolutions: number;
}

/**
 * Decodes VLP-16 packets into points and cuts them into revolutions where the azimuth wraps
 * past 0°. Points are in the REP-103 sensor frame (x forward — azimuth 0°, y left, z up), metres:
 * x = r·cos ω·cos α, y = −r·cos ω·sin α, z = r·sin ω, for elevation ω and clockwise azimuth α.
 * `ring` numbers lasers by elevation, 0 the lowest (−15°) to 15 the highest (+15°).
 *
 * Azimuth is interpolated per firing (the second firing sequence of each block, and each laser
 * 2.304 µs after the previous) from the gap to the next block, as the user manual's "precision
 * azimuth" describes. In dual-return mode, blocks come in pairs with the same azimuth; a second
 * return equal to the first (same distance and intensity: one echo) is not repeated.
 * A gap of more than 0.2 s between packets, or time going backwards, ends the revolution.
 *
 * Owns growing point buffers; the arrays of an emitted cloud are copies the caller owns.
 */
export class Vlp16Assembler {
  private readonly frameId: string;
  private readonly minRaw: number;
  private readonly maxRaw: number;
  private xyz = new Float32Array(3 * 32_768);
  private intensity = new Uint8Array(32_768);
  private ring = new Uint8Array(32_768);
  private count = 0;
  private startNs: bigint | undefined;
  private lastAzimuth = -1;
  private lastGap = 40;
  private lastPacketNs: bigint | undefined;
  private counts = { packets: 0, badPackets: 0, revolutions: 0 };

  constructor(options: Vlp16Options = {}) {
    this.frameId = options.frameId ?? 'velodyne';
    this.minRaw = (options.minRangeM ?? 0.4) / DISTANCE_UNIT_M;
    this.maxRaw = (options.maxRangeM ?? 100) / DISTANCE_UNIT_M;
  }

  get stats(): Vlp16Stats {
    return { ...this.counts };
  }

  /**
   * Adds one packet stamped `sensorTimeNs` (its first firing, see `topOfHourToNs`); returns the
   * revolutions it completed (usually none, one when the azimuth wrapped). A packet that is not a
   * VLP-16 data packet is counted in `stats.badPackets` and ignored.
   */
  push(packet: Uint8Array, sensorTimeNs: bigint): Revolution[] {
    const check = checkVlp16Packet(packet);
    if (!check.ok) {
      this.counts.badPackets += 1;
      return [];
    }
    this.counts.packets += 1;
    const done: Revolution[] = [];
    if (this.lastPacketNs !== undefined && (sensorTimeNs < this.lastPacketNs || sensorTimeNs - this.lastPacketNs > MAX_PACKET_GAP_NS)) {
      this.lastAzimuth = -1;
      const partial = this.flush();
      if (partial !== undefined) done.push(partial);
    }
    this.lastPacketNs = sensorTimeNs;
    const view = new DataView(packet.buffer, packet.byteOffset, packet.byteLength);
    const step = check.header.returnMode === 'dual' ? 2 : 1;
    for (let b = 0; b < BLOCKS; b += step) {
      const azimuth = view.getUint16(b * BLOCK_BYTES + 2, true);
      const next = b + step < BLOCKS ? view.getUint16((b + step) * BLOCK_BYTES + 2, true) : undefined;
      // The last block has no successor: it turns as fast as the one before it did.
      const gap = next === undefined ? this.lastGap : (next - azimuth + 36_000) % 36_000;
      this.lastGap = gap;
      for (let slot = 0; slot < 32; slot++) {
        const firingUs = (slot >> 4) * FIRING_US + (slot & 15) * LASER_US;
        const corrected = (azimuth + (gap * firingUs) / BLOCK_US) % 36_000;
        if (this.lastAzimuth - corrected > 18_000) {
          const revolution = this.flush();
          if (revolution !== undefined) done.push(revolution);
        }
        this.lastAzimuth = corrected;
        for (let r = 0; r < step; r++) {
          const at = (b + r) * BLOCK_BYTES + 4 + slot * 3;
          const raw = view.getUint16(at, true);
          if (raw === 0 || raw < this.minRaw || raw > this.maxRaw) continue;
          const intensity = packet[at + 2] ?? 0;
          // The second of a dual pair repeats the first when there was only one echo.
          if (r === 1 && raw === view.getUint16(at - BLOCK_BYTES, true) && intensity === packet[at - BLOCK_BYTES + 2]) continue;
          if (this.count === 0) this.startNs = sensorTimeNs + BigInt(Math.round(((b / step) * BLOCK_US + firingUs) * 1000));
          this.add(raw * DISTANCE_UNIT_M, corrected, slot & 15, intensity);
        }
      }
    }
    return done;
  }

  /** Ends the revolution in progress (end of a recording, a stalled feed); undefined when empty. */
  flush(): Revolution | undefined {
    if (this.count === 0 || this.startNs === undefined) return undefined;
    const n = this.count;
    const cloud: PointCloud = { frameId: this.frameId, count: n, xyz: this.xyz.slice(0, 3 * n), intensity: this.intensity.slice(0, n), ring: this.ring.slice(0, n) };
    const revolution = { cloud, sensorTimeNs: this.startNs };
    this.count = 0;
    this.startNs = undefined;
    this.counts.revolutions += 1;
    return revolution;
  }

  private add(distanceM: number, azimuthHundredths: number, laser: number, intensity: number): void {
    if (this.count === this.intensity.length) this.grow();
    const elevation = ((VLP16_VERTICAL_DEG[laser] ?? 0) * Math.PI) / 180;
    const alpha = (azimuthHundredths * Math.PI) / 18_000;
    const horizontal = distanceM * Math.cos(elevation);
    const i = this.count;
    this.xyz[3 * i] = horizontal * Math.cos(alpha);
    this.xyz[3 * i + 1] = -horizontal * Math.sin(alpha);
    this.xyz[3 * i + 2] = distanceM * Math.sin(elevation);
    this.intensity[i] = intensity;
    this.ring[i] = RING_OF_LASER[laser] ?? 0;
    this.count += 1;
  }

  private grow(): void {
    const size = this.intensity.length * 2;
    const xyz = new Float32Array(3 * size);
    xyz.set(this.xyz);
    const intensity = new Uint8Array(size);
    intensity.set(this.intensity);
    const ring = new Uint8Array(size);
    ring.set(this.ring);
    this.xyz = xyz;
    this.intensity = intensity;
    this.ring = ring;
  }
}

export interface Vlp16LiveOptions extends Vlp16Options {
  /** UDP port to listen on. Default 2368. */
  readonly port?: number;
  /** Address to bind. Default '0.0.0.0' (the sensor sends to the host or broadcasts). */
  readonly address?: string;
  /** Revolutions held for a slow reader before the oldest is dropped. Default 4. */
  readonly capacity?: number;
  /** Silence after which `onStale` is told, ms. Default 1000 (ten revolutions at 600 rpm). */
  readonly staleAfterMs?: number;
  readonly onStale?: (silentMs: number) => void;
  /** Wall clock giving packets their hour (see `topOfHourToNs`). Default `Date.now`. */
  readonly now?: () => number;
  /** Called once the socket is bound, with its port (useful with `port: 0`, any free port). */
  readonly onListening?: (port: number) => void;
}

/**
 * A VLP-16 on the network: listens on a UDP port and yields a PointCloud per revolution. The
 * socket is bound when `messages()` starts and closed when it ends. Decoding happens as packets
 * arrive, so only finished revolutions queue (at most `capacity`; the oldest is dropped). When
 * packets stop, `onStale` is called and the revolution in progress is emitted; the iterator
 * keeps waiting — a sensor that comes back resumes the stream. A port that cannot be bound
 * throws SensorError `EAI_SENSOR_CONFIG`.
 */
export class Vlp16Live implements Sensor<PointCloud> {
  private assembler: Vlp16Assembler | undefined;
  private feed: LiveFeed<SensorMessage<PointCloud>> | undefined;

  constructor(private readonly options: Vlp16LiveOptions = {}) {}

  /** Counters of the current (or last) `messages()` call; dropped = revolutions a slow reader lost. */
  get stats(): Vlp16Stats & { readonly dropped: number } {
    return { ...(this.assembler?.stats ?? { packets: 0, badPackets: 0, revolutions: 0 }), dropped: this.feed?.dropped ?? 0 };
  }

  async *messages(signal: AbortSignal): AsyncGenerator<SensorMessage<PointCloud>, void, void> {
    const o = this.options;
    const now = o.now ?? Date.now;
    const assembler = new Vlp16Assembler(o);
    const feed = new LiveFeed<SensorMessage<PointCloud>>({
      capacity: o.capacity ?? 4,
      staleAfterMs: o.staleAfterMs ?? 1000,
      onStale: (silentMs) => {
        const partial = assembler.flush();
        if (partial !== undefined) feed.push(message(partial), false);
        o.onStale?.(silentMs);
      },
    });
    this.assembler = assembler;
    this.feed = feed;
    const socket = dgram.createSocket({ type: 'udp4', reuseAddr: true });
    socket.on('message', (packet) => {
      const check = checkVlp16Packet(packet);
      const timeNs = check.ok ? topOfHourToNs(check.header.timestampUs, now()) : 0n;
      for (const revolution of assembler.push(packet, timeNs)) feed.push(message(revolution));
    });
    socket.on('error', (error) => feed.fail(new SensorError('EAI_SENSOR_STREAM_ENDED', `UDP socket on port ${o.port ?? VLP16_DATA_PORT} failed: ${error.message}`, { cause: error })));
    try {
      await bind(socket, o.port ?? VLP16_DATA_PORT, o.address ?? '0.0.0.0');
      o.onListening?.(socket.address().port);
      try {
        // A revolution is ~90 packets; a larger kernel buffer rides out a busy event loop.
        socket.setRecvBufferSize(4 * 1024 * 1024);
      } catch {
        // net.core.rmem_max caps it; the default still works, with more drops under load.
      }
      yield* feed.read(signal);
    } finally {
      feed.end();
      socket.close();
    }
  }
}

export interface Vlp16ReplayOptions extends Vlp16Options {
  /** 1: original timing (default); 2: twice as fast; 0: as fast as the reader takes clouds. */
  readonly speed?: number;
  /** pcap captures: only UDP packets sent to this port (a capture may hold several sensors). Default: any port. */
  readonly port?: number;
  /**
   * Wall-clock time (ms) giving a raw recording's packets their hour (they carry only
   * microseconds past the hour). Default: when the replay starts. pcap files use their own
   * capture times instead.
   */
  readonly referenceTimeMs?: number;
}

/**
 * A recorded VLP-16: a pcap/pcapng-free capture (classic pcap, Ethernet, Linux cooked or raw IP;
 * UDP payloads of 1206 bytes) or raw payloads concatenated (as `vlp16_75packets.bin`), replayed
 * as PointClouds at the recording's timing (or faster). The revolution in progress at the end of
 * the file is emitted too. A missing file throws SensorError `EAI_SENSOR_NOT_FOUND`; a file of
 * another format `EAI_SENSOR_CONFIG` (neither is retryable).
 */
export class Vlp16Replay implements Sensor<PointCloud> {
  private assembler: Vlp16Assembler | undefined;

  constructor(
    readonly file: string,
    private readonly options: Vlp16ReplayOptions = {},
  ) {}

  get stats(): Vlp16Stats {
    return this.assembler?.stats ?? { packets: 0, badPackets: 0, revolutions: 0 };
  }

  async *messages(signal: AbortSignal): AsyncGenerator<SensorMessage<PointCloud>, void, void> {
    const assembler = new Vlp16Assembler(this.options);
    this.assembler = assembler;
    const clock = new ReplayClock(this.options.speed ?? 1);
    let referenceMs = this.options.referenceTimeMs ?? Date.now();
    for await (const record of readVlp16Recording(this.file, signal, this.options.port)) {
      const check = checkVlp16Packet(record.payload);
      // pcap records carry their capture time; raw payloads follow on from the previous packet.
      const timeNs = check.ok ? topOfHourToNs(check.header.timestampUs, record.captureMs ?? referenceMs) : 0n;
      if (check.ok) referenceMs = Number(timeNs / 1_000_000n);
      if (check.ok && !(await clock.waitFor(Number(timeNs / 1000n) / 1000, signal))) return;
      for (const revolution of assembler.push(record.payload, timeNs)) yield message(revolution);
      if (signal.aborted) return;
    }
    const last = assembler.flush();
    if (last !== undefined && !signal.aborted) yield message(last);
  }
}

const BLOCKS = 12;
const BLOCK_BYTES = 100;
const VLP16_PRODUCT = 0x22;
const DISTANCE_UNIT_M = 0.002;
const FIRING_US = 55.296;
const LASER_US = 2.304;
const BLOCK_US = 2 * FIRING_US;
const HOUR_MS = 3_600_000;
const MAX_PACKET_GAP_NS = 200_000_000n;
const RETURN_MODES = new Map<number, Vlp16ReturnMode>([
  [0x37, 'strongest'],
  [0x38, 'last'],
  [0x39, 'dual'],
]);
const RING_OF_LASER: readonly number[] = VLP16_VERTICAL_DEG.map((deg) => (deg + 15) / 2);

function hex(byte: number | undefined): string {
  return (byte ?? 0).toString(16).padStart(2, '0');
}

function message(revolution: Revolution): SensorMessage<PointCloud> {
  return { sensorTimeNs: revolution.sensorTimeNs, arrivalMs: performance.now(), value: revolution.cloud };
}

function bind(socket: dgram.Socket, port: number, address: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException): void => {
      reject(
        new SensorError('EAI_SENSOR_CONFIG', `cannot listen for VLP-16 packets on UDP ${address}:${port}: ${error.code === 'EADDRINUSE' ? 'the port is in use by another program (a second pipeline, or the vendor tool)' : error.message}; free the port or set params.port`, {
          cause: error,
          details: { port, address },
        }),
      );
    };
    socket.once('error', onError);
    socket.bind(port, address, () => {
      socket.off('error', onError);
      resolve();
    });
  });
}

interface RecordedPacket {
  readonly payload: Uint8Array;
  /** Capture time from a pcap record, ms since the epoch; absent for raw payloads. */
  readonly captureMs?: number;
}

/** Yields the VLP-16-sized UDP payloads of a pcap capture, or the packets of a raw file. */
async function* readVlp16Recording(file: string, signal: AbortSignal, port: number | undefined): AsyncGenerator<RecordedPacket, void, void> {
  let pcap: PcapUdpReader | undefined;
  let raw: Buffer | undefined;
  const stream = createReadStream(file, { highWaterMark: 1 << 20, signal });
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      if (pcap === undefined && raw === undefined) {
        if (isPcap(chunk)) pcap = new PcapUdpReader();
        else if (chunk[0] === 0xff && chunk[1] === 0xee) raw = Buffer.alloc(0);
        else throw notVlp16(file, chunk);
      }
      if (pcap !== undefined) {
        for (const d of pcap.push(chunk)) if (d.payload.length === VLP16_PACKET_BYTES && (port === undefined || d.port === port)) yield { payload: d.payload, captureMs: d.captureMs };
        continue;
      }
      let pending: Buffer = raw === undefined || raw.length === 0 ? chunk : Buffer.concat([raw, chunk]);
      for (; pending.length >= VLP16_PACKET_BYTES; pending = pending.subarray(VLP16_PACKET_BYTES)) yield { payload: pending.subarray(0, VLP16_PACKET_BYTES) };
      raw = pending;
    }
  } catch (error) {
    if (signal.aborted) return;
    if (error instanceof SensorError) throw error;
    const code = (error as NodeJS.ErrnoException).code;
    throw new SensorError('EAI_SENSOR_NOT_FOUND', `cannot read VLP-16 recording ${file}: ${code === 'ENOENT' ? 'no such file' : (error as Error).message}`, { cause: error, retryable: false, details: { file } });
  }
}

function notVlp16(file: string, head: Buffer): SensorError {
  const hint = isPcapng(head) ? ': it is pcapng — convert it with `editcap -F pcap in.pcapng out.pcap` (Wireshark)' : '';
  return new SensorError('EAI_SENSOR_CONFIG', `${file} is neither a pcap capture nor raw VLP-16 packets (it starts with ${head.subarray(0, 4).toString('hex')})${hint}`, { retryable: false, details: { file } });
}
