import { SensorError } from './errors.js';
import { sleepUntil, wallClock } from './clock.js';
import { assertInputExists, ffmpegFrames, inputArgs, inputKind, type InputKind, type StderrListener } from './ffmpeg.js';
import { PIXEL_CHANNELS, type ImageFrame, type PixelFormat, type Sensor, type SensorMessage } from './types.js';

export interface VideoOptions {
  /** A file path, a stream URL (`rtsp://`, `http://`, ...) or a V4L2 camera (`/dev/video0`). */
  readonly url: string;
  /** Every frame is scaled to exactly this size (aspect ratio is not kept). */
  readonly width: number;
  readonly height: number;
  /** Default `rgb24`. */
  readonly format?: PixelFormat;
  /** Output frame rate (ffmpeg's `fps` filter drops or repeats frames); default: the input's. */
  readonly fps?: number;
  /** Files: deliver frames at the pace of their timestamps, like a camera (default), or as fast as they are read. */
  readonly realtime?: boolean;
  /** Files: play again from the start at the end, forever. */
  readonly loop?: boolean;
  /** Default: true for cameras and stream URLs, false for files (see `VideoSensor`). */
  readonly live?: boolean;
  /** A frame's data stays intact while it is one of the `poolSize` newest received. Default 8. */
  readonly poolSize?: number;
  /** ffmpeg input options placed before `-i`, e.g. `['-rtsp_transport', 'tcp']`, `['-input_format', 'mjpeg']`. */
  readonly inputOptions?: readonly string[];
  /**
   * Fail with `EAI_SENSOR_STALLED` when no frame data comes for this long, counted from the start
   * too (so it must exceed the input's connect and probe time); 0 never. Default 10000.
   */
  readonly stallTimeoutMs?: number;
  /** The ffmpeg executable; default `ffmpeg` on PATH. */
  readonly ffmpegPath?: string;
}

export const VIDEO_DEFAULTS = { format: 'rgb24', realtime: true, loop: false, poolSize: 8, stallTimeoutMs: 10_000 } as const;

/**
 * Video frames decoded by ffmpeg, scaled to `width`×`height` in `format`.
 *
 * Time: for a file (not live), a frame's sensor time is the wall time of the first frame plus the
 * frame's presentation timestamp (read per frame from ffmpeg's `showinfo`), so spacing follows the
 * file exactly and looping keeps counting up; with `realtime` the frame is also held back until
 * that moment, and `arrivalMs` is when it was released. For a live input the sensor time is the
 * wall clock when the frame's last byte arrived (ffmpeg's stream timestamps have no common epoch).
 *
 * Buffers: `value.data` is a view into a SharedArrayBuffer pool (the sensor owns it). It stays
 * intact while the frame is one of the `poolSize` newest the consumer has received, and is
 * overwritten after that: copy it to keep it longer.
 *
 * Flow: a file is decoded only as fast as frames are taken. A live input keeps at most two
 * decoded frames waiting and drops the oldest, so a slow consumer sees the newest frames.
 *
 * Failures end the iteration with a `SensorError` (see `ffmpegFrames`); a live input that ends
 * throws `EAI_SENSOR_STREAM_ENDED`, a file that ends simply returns. `messages` may be called
 * again (to restart) after an iteration ended — a file then plays from its start — but two
 * iterations should not overlap (each runs its own ffmpeg and pool, so they would not corrupt
 * each other, but a camera can be opened only once).
 */
export class VideoSensor implements Sensor<ImageFrame> {
  readonly kind: InputKind;
  readonly live: boolean;
  readonly format: PixelFormat;
  readonly frameBytes: number;
  private readonly options: VideoOptions;

  constructor(options: VideoOptions) {
    checkSize('width', options.width);
    checkSize('height', options.height);
    const format = options.format ?? VIDEO_DEFAULTS.format;
    if (!(format in FFMPEG_PIXEL_FORMAT)) throw new SensorError('EAI_SENSOR_CONFIG', `unknown pixel format '${String(format)}': use rgb24, bgr24, rgba or gray8`, { retryable: false });
    if (options.fps !== undefined && !(Number.isFinite(options.fps) && options.fps > 0)) throw new SensorError('EAI_SENSOR_CONFIG', `fps must be a positive number (found ${options.fps})`, { retryable: false });
    checkCount('poolSize', options.poolSize ?? VIDEO_DEFAULTS.poolSize);
    this.options = options;
    this.kind = inputKind(options.url);
    this.live = options.live ?? this.kind !== 'file';
    this.format = format;
    this.frameBytes = options.width * options.height * PIXEL_CHANNELS[format];
  }

  /** The ffmpeg arguments (after the executable) this sensor runs with. */
  args(): string[] {
    const o = this.options;
    const showinfo = !this.live;
    const filters = [...(o.fps === undefined ? [] : [`fps=${o.fps}`]), `scale=${o.width}:${o.height}`, ...(showinfo ? ['showinfo'] : [])];
    return [
      // showinfo logs at info level; otherwise only errors matter.
      ...['-loglevel', showinfo ? 'info' : 'error'],
      // A corrupt or truncated file fails instead of silently ending early; live streams ride over glitches.
      ...(this.live ? [] : ['-xerror']),
      ...inputArgs(o.url, { loop: o.loop === true && this.kind === 'file', inputOptions: o.inputOptions ?? [] }),
      ...['-map', '0:v:0', '-an', '-sn', '-vf', filters.join(',')],
      // One output frame per filtered frame: no duplicates or drops after the filter graph.
      ...['-vsync', '0', '-pix_fmt', FFMPEG_PIXEL_FORMAT[this.format], '-f', 'rawvideo', 'pipe:1'],
    ];
  }

  async *messages(signal: AbortSignal): AsyncGenerator<SensorMessage<ImageFrame>, void, undefined> {
    const o = this.options;
    await assertInputExists(o.url);
    const clock = this.live ? undefined : new ShowinfoClock();
    const frames = ffmpegFrames(
      {
        args: this.args(),
        frameBytes: this.frameBytes,
        poolSize: o.poolSize ?? VIDEO_DEFAULTS.poolSize,
        queue: 2,
        live: this.live,
        partial: 'error',
        stallTimeoutMs: o.stallTimeoutMs ?? VIDEO_DEFAULTS.stallTimeoutMs,
        ...(o.ffmpegPath === undefined ? {} : { ffmpegPath: o.ffmpegPath }),
        ...(clock === undefined ? {} : { stderr: clock }),
      },
      signal,
    );
    const wall = wallClock();
    const realtime = o.realtime ?? VIDEO_DEFAULTS.realtime;
    let first: { monoMs: number; wallNs: bigint; ptsNs: bigint } | undefined;
    for await (const raw of frames) {
      let sensorTimeNs: bigint;
      let arrivalMs = raw.arrivalMs;
      if (clock === undefined) {
        sensorTimeNs = wall(raw.arrivalMs);
      } else {
        const ptsNs = await clock.ptsNs(raw.index, signal);
        if (signal.aborted) return;
        first ??= { monoMs: raw.arrivalMs, wallNs: wall(raw.arrivalMs), ptsNs };
        const offsetNs = ptsNs - first.ptsNs;
        sensorTimeNs = first.wallNs + offsetNs;
        if (realtime) {
          if (!(await sleepUntil(first.monoMs + Number(offsetNs) / 1e6, signal))) return;
          arrivalMs = Math.max(raw.arrivalMs, performance.now());
        }
      }
      yield { sensorTimeNs, arrivalMs, value: { width: o.width, height: o.height, format: this.format, data: raw.data } };
    }
    if (this.live && !signal.aborted) throw new SensorError('EAI_SENSOR_STREAM_ENDED', `the live input ${o.url} ended`, { details: { url: o.url } });
  }
}

const FFMPEG_PIXEL_FORMAT: Readonly<Record<PixelFormat, string>> = { rgb24: 'rgb24', bgr24: 'bgr24', rgba: 'rgba', gray8: 'gray' };

function checkSize(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 1 || value > 16384) throw new SensorError('EAI_SENSOR_CONFIG', `${name} must be an integer from 1 to 16384 (found ${value})`, { retryable: false });
}

function checkCount(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 1) throw new SensorError('EAI_SENSOR_CONFIG', `${name} must be a positive integer (found ${value})`, { retryable: false });
}

/**
 * Frame timestamps from ffmpeg's `showinfo` filter on stderr. Each frame's line is written before
 * the frame itself, but the two pipes are read independently, so a frame may wait briefly here
 * for its line.
 */
class ShowinfoClock implements StderrListener {
  /** Presentation time in ns by output frame index (null: the frame had none); dropped once asked for. */
  private readonly pts = new Map<number, bigint | null>();
  private num = 1n;
  private den = 1n;
  /** showinfo numbers frames from 0 again when ffmpeg rebuilds the filter graph. */
  private base = 0;
  private seen = 0;
  private ended = false;
  private last: { index: number; ns: bigint; stepNs: bigint } | undefined;
  private wake: (() => void) | undefined;

  line(text: string): void {
    if (!text.includes('Parsed_showinfo')) return;
    const config = /config in time_base: (\d+)\/(\d+)/u.exec(text);
    if (config !== null) {
      this.num = BigInt(config[1] ?? '1');
      this.den = BigInt(config[2] ?? '1');
      this.base = this.seen;
      return;
    }
    const frame = /\bn:\s*(\d+)\s+pts:\s*(-?\d+|NOPTS)/u.exec(text);
    if (frame === null) return;
    const pts = frame[2] === undefined || frame[2] === 'NOPTS' || this.den === 0n ? null : (BigInt(frame[2]) * this.num * 1_000_000_000n) / this.den;
    this.pts.set(this.base + Number(frame[1]), pts);
    this.seen += 1;
    this.wake?.();
  }

  end(): void {
    this.ended = true;
    this.wake?.();
  }

  async ptsNs(index: number, signal: AbortSignal): Promise<bigint> {
    while (!this.pts.has(index) && !this.ended && !signal.aborted) {
      await new Promise<void>((resolve) => {
        const onAbort = (): void => resolve();
        this.wake = () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        };
        signal.addEventListener('abort', onAbort, { once: true });
      });
    }
    this.wake = undefined;
    for (const key of this.pts.keys()) if (key < index) this.pts.delete(key);
    const known = this.pts.get(index);
    this.pts.delete(index);
    // A frame without a timestamp (or its line): continue the previous spacing rather than fail it.
    const ns = known ?? (this.last === undefined ? 0n : this.last.ns + this.last.stepNs * BigInt(index - this.last.index));
    const stepNs = this.last === undefined || index === this.last.index ? 0n : (ns - this.last.ns) / BigInt(index - this.last.index);
    this.last = { index, ns, stepNs };
    return ns;
  }
}
