import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { SensorError } from './errors.js';
import { LiveFeed } from './live-feed.js';
import { ReplayClock } from './replay-clock.js';
import type { CanFrame, Sensor, SensorMessage } from './types.js';

/** A CAN frame with what candump's format adds to it. */
export interface CanRecord extends CanFrame {
  /** A remote transmission request (`R`): no data, asks the owner of `id` to send. */
  readonly remote?: boolean;
  /** CAN FD bit rate switch: the data phase ran at the faster rate. */
  readonly brs?: boolean;
  /** CAN FD error state indicator: the sender was error-passive. */
  readonly esi?: boolean;
  /** Data length code when it says more than the data holds (RTR length, classic DLC 9..15). */
  readonly dlc?: number;
}

/**
 * What `parseCandumpLine` made of a line: a frame with its timestamp (ns since the epoch, the
 * kernel's receive time), or why not — `error-frame` (a bus error report, CAN_ERR_FLAG set),
 * `unsupported` (CAN XL), `malformed` (anything else).
 */
export type CandumpParse = { readonly ok: true; readonly timeNs: bigint; readonly frame: CanRecord } | { readonly ok: false; readonly reason: 'malformed' | 'error-frame' | 'unsupported' };

/**
 * Parses one line of `candump -l` / `candump -L` output (can-utils' log format):
 * `(1436509052.249713) vcan0 044#2A366C2A` — 3 hex digits for an 11-bit id, 8 for a 29-bit
 * one; `#R` (optionally with a length digit) for a remote request; `##<flags><data>` for CAN FD
 * (flags: 1 BRS, 2 ESI); classic data may end `_<dlc>` for DLCs 9..15. Never throws.
 */
export function parseCandumpLine(line: string): CandumpParse {
  const m = /^\s*\((\d+)\.(\d{1,9})\)\s+(\S+)\s+(\S+)\s*$/u.exec(line);
  if (m === null) return { ok: false, reason: 'malformed' };
  const timeNs = BigInt(m[1] ?? '0') * 1_000_000_000n + BigInt((m[2] ?? '').padEnd(9, '0'));
  const iface = m[3] ?? '';
  const text = m[4] ?? '';
  // CAN XL: priority#flags:SDT:AF#data.
  if (/^[0-9A-Fa-f]{3}#[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{8}#/u.test(text)) return { ok: false, reason: 'unsupported' };
  const hash = text.indexOf('#');
  const idText = text.slice(0, hash);
  if (hash < 0 || !/^([0-9A-Fa-f]{3}|[0-9A-Fa-f]{8})$/u.test(idText)) return { ok: false, reason: 'malformed' };
  const raw = Number.parseInt(idText, 16);
  const extended = idText.length === 8;
  if (extended && (raw & CAN_ERR_FLAG) !== 0) return { ok: false, reason: 'error-frame' };
  const id = extended ? raw & CAN_EFF_MASK : raw;
  if (!extended && id > CAN_SFF_MASK) return { ok: false, reason: 'malformed' };
  const rest = text.slice(hash + 1);
  const base = { interface: iface, id, extended };
  if (rest.startsWith('#')) {
    const flags = Number.parseInt(rest.slice(1, 2), 16);
    const data = hexBytes(rest.slice(2));
    if (Number.isNaN(flags) || data === undefined || !FD_LENGTHS.has(data.length)) return { ok: false, reason: 'malformed' };
    return { ok: true, timeNs, frame: { ...base, data, fd: true, ...((flags & 1) !== 0 ? { brs: true } : {}), ...((flags & 2) !== 0 ? { esi: true } : {}) } };
  }
  if (/^[Rr]/u.test(rest)) {
    const dlc = rest.length > 1 ? Number.parseInt(rest.slice(1, 2), 16) : undefined;
    if (dlc !== undefined && (Number.isNaN(dlc) || dlc > 8)) return { ok: false, reason: 'malformed' };
    return { ok: true, timeNs, frame: { ...base, data: new Uint8Array(0), remote: true, ...(dlc === undefined ? {} : { dlc }) } };
  }
  const [dataText = '', dlcText] = rest.split('_');
  const data = hexBytes(dataText);
  const dlc = dlcText === undefined ? undefined : Number.parseInt(dlcText, 16);
  if (data === undefined || data.length > 8 || (dlc !== undefined && (Number.isNaN(dlc) || dlc < 9 || dlc > 15 || data.length !== 8))) return { ok: false, reason: 'malformed' };
  return { ok: true, timeNs, frame: { ...base, data, ...(dlc === undefined ? {} : { dlc }) } };
}

export interface CandumpStats {
  readonly frames: number;
  readonly errorFrames: number;
  /** Lines that did not parse (or CAN XL frames), skipped. */
  readonly badLines: number;
}

export interface CandumpReplayOptions {
  /** 1: original timing (default); 2: twice as fast; 0: as fast as the reader takes frames. */
  readonly speed?: number;
  /** Replay only frames from these interfaces (as named in the log); default all. */
  readonly interfaces?: readonly string[];
}

/**
 * A `candump -l` log replayed with the recorded timing (or faster); sensor time is the logged
 * kernel timestamp. Error frames and malformed lines are counted and skipped. A missing file
 * throws SensorError `EAI_SENSOR_NOT_FOUND` (not retryable).
 */
export class CandumpReplay implements Sensor<CanRecord> {
  private counts = { frames: 0, errorFrames: 0, badLines: 0 };

  constructor(
    readonly file: string,
    private readonly options: CandumpReplayOptions = {},
  ) {}

  get stats(): CandumpStats {
    return { ...this.counts };
  }

  async *messages(signal: AbortSignal): AsyncGenerator<SensorMessage<CanRecord>, void, void> {
    try {
      await (await open(this.file, 'r')).close();
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      throw new SensorError('EAI_SENSOR_NOT_FOUND', `cannot read CAN log ${this.file}: ${code === 'ENOENT' ? 'no such file' : (error as Error).message}`, { cause: error, retryable: false, details: { file: this.file } });
    }
    const clock = new ReplayClock(this.options.speed ?? 1);
    const wanted = this.options.interfaces;
    const input = createReadStream(this.file, { encoding: 'utf8' });
    const lines = createInterface({ input, crlfDelay: Infinity });
    try {
      for await (const line of lines) {
        if (line.trim() === '') continue;
        const parsed = this.count(parseCandumpLine(line));
        if (parsed === undefined || (wanted !== undefined && wanted.length > 0 && !wanted.includes(parsed.frame.interface))) continue;
        if (!(await clock.waitFor(Number(parsed.timeNs / 1000n) / 1000, signal))) return;
        yield { sensorTimeNs: parsed.timeNs, arrivalMs: performance.now(), value: parsed.frame };
      }
    } finally {
      lines.close();
      // Closing readline leaves its input open: a replay stopped early must not hold the file.
      input.destroy();
    }
  }

  private count(parsed: CandumpParse): Extract<CandumpParse, { ok: true }> | undefined {
    if (parsed.ok) this.counts.frames += 1;
    else if (parsed.reason === 'error-frame') this.counts.errorFrames += 1;
    else this.counts.badLines += 1;
    return parsed.ok ? parsed : undefined;
  }
}

export interface SocketCanOptions {
  /** The candump executable. Default 'candump' (can-utils) on PATH. */
  readonly candump?: string;
  /** Frames held for a slow reader before the oldest is dropped. Default 1024 (about 0.25 s of a busy 500 kbit/s bus). */
  readonly capacity?: number;
  /** Silence after which `onStale` is told, ms. Default 1000; 0 for buses that are quiet by design. */
  readonly staleAfterMs?: number;
  readonly onStale?: (silentMs: number) => void;
}

/**
 * A live SocketCAN interface, read through `candump -L <interface>` (can-utils), which prints
 * every frame in log format with the kernel's receive timestamp (the sensor time) and flushes
 * per frame. The child process lives as long as one `messages()` call.
 *
 * Failures: candump missing throws SensorError `EAI_SENSOR_NOT_FOUND` (not retryable); an
 * interface that does not exist or is down `EAI_SENSOR_NOT_FOUND` (retryable: it may come up);
 * candump exiting otherwise `EAI_SENSOR_STREAM_ENDED`. Each names the fix.
 */
export class SocketCan implements Sensor<CanRecord> {
  private counts = { frames: 0, errorFrames: 0, badLines: 0 };
  private feed: LiveFeed<SensorMessage<CanRecord>> | undefined;

  constructor(
    readonly iface: string,
    private readonly options: SocketCanOptions = {},
  ) {}

  get stats(): CandumpStats & { readonly dropped: number } {
    return { ...this.counts, dropped: this.feed?.dropped ?? 0 };
  }

  async *messages(signal: AbortSignal): AsyncGenerator<SensorMessage<CanRecord>, void, void> {
    const program = this.options.candump ?? 'candump';
    const feed = new LiveFeed<SensorMessage<CanRecord>>({ capacity: this.options.capacity ?? 1024, staleAfterMs: this.options.staleAfterMs ?? 1000, ...(this.options.onStale === undefined ? {} : { onStale: this.options.onStale }) });
    this.feed = feed;
    const child = spawn(program, ['-L', this.iface], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (text: string) => {
      stderr = (stderr + text).slice(-2000);
    });
    const lines = createInterface({ input: child.stdout, crlfDelay: Infinity });
    lines.on('line', (line) => {
      const parsed = parseCandumpLine(line);
      if (parsed.ok) {
        this.counts.frames += 1;
        feed.push({ sensorTimeNs: parsed.timeNs, arrivalMs: performance.now(), value: parsed.frame });
      } else if (parsed.reason === 'error-frame') this.counts.errorFrames += 1;
      else this.counts.badLines += 1;
    });
    child.on('error', (error: NodeJS.ErrnoException) => {
      feed.fail(
        error.code === 'ENOENT'
          ? new SensorError('EAI_SENSOR_NOT_FOUND', `${program} is not installed: install can-utils (\`sudo apt install can-utils\`) or set the candump path`, { cause: error, retryable: false })
          : new SensorError('EAI_SENSOR_STREAM_ENDED', `cannot run ${program}: ${error.message}`, { cause: error }),
      );
    });
    child.on('close', (code, sig) => {
      if (signal.aborted) return feed.end();
      feed.fail(exitError(this.iface, stderr, code, sig));
    });
    try {
      yield* feed.read(signal);
    } finally {
      lines.close();
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    }
  }
}

const CAN_SFF_MASK = 0x7ff;
const CAN_EFF_MASK = 0x1fffffff;
const CAN_ERR_FLAG = 0x20000000;
const FD_LENGTHS = new Set([0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64]);

/** Hex pairs, optionally separated by '.', to bytes; undefined when not hex. */
function hexBytes(text: string): Uint8Array | undefined {
  const hex = text.replaceAll('.', '');
  if (hex.length % 2 !== 0 || !/^[0-9A-Fa-f]*$/u.test(hex)) return undefined;
  return Uint8Array.from(Buffer.from(hex, 'hex'));
}

function exitError(iface: string, stderr: string, code: number | null, sig: NodeJS.Signals | null): SensorError {
  const said = stderr.trim().split('\n').slice(-3).join(' / ');
  const how = sig === null ? `exited with code ${code ?? '?'}` : `was killed by ${sig}`;
  if (/No such device/u.test(stderr)) {
    return new SensorError('EAI_SENSOR_NOT_FOUND', `CAN interface ${iface} does not exist (candump: ${said}): bring it up — \`sudo ip link set ${iface} up type can bitrate 500000\` for a CAN adapter, \`sudo modprobe vcan && sudo ip link add dev ${iface} type vcan && sudo ip link set up ${iface}\` for a virtual one`, { details: { iface } });
  }
  if (/Network is down/u.test(stderr)) {
    return new SensorError('EAI_SENSOR_NOT_FOUND', `CAN interface ${iface} is down (candump: ${said}): \`sudo ip link set ${iface} up\``, { details: { iface } });
  }
  return new SensorError('EAI_SENSOR_STREAM_ENDED', `candump on ${iface} ${how}${said === '' ? '' : `: ${said}`}`, { details: { iface, code, signal: sig } });
}
