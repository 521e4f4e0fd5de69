import { sleepUntil } from './clock.js';
import { SensorError } from './errors.js';
import { PIXEL_CHANNELS, type AudioFrame, type ImageFrame, type PixelFormat, type Sensor, type SensorMessage } from './types.js';

/** Test patterns: images (`color-bars`, `counter`, `noise`), audio (`sine`) or JSON (`json`). */
export type SyntheticPattern = 'color-bars' | 'counter' | 'noise' | 'sine' | 'json';

export interface SyntheticOptions {
  readonly pattern: SyntheticPattern;
  /** Messages per second (images, json). Default 30. Sine frames come at `sampleRate / frameSize`. */
  readonly rate?: number;
  /** Stop after this many messages; default never. */
  readonly count?: number;
  /** Images: default 320×240 rgb24. */
  readonly width?: number;
  readonly height?: number;
  readonly format?: PixelFormat;
  /** `noise`: seed of the pseudo-random sequence (same seed, same frames). Default 1. */
  readonly seed?: number;
  /** `sine`: tone in Hz (default 440), peak amplitude (default 0.5), rate and frame size. */
  readonly frequency?: number;
  readonly amplitude?: number;
  readonly sampleRate?: number;
  readonly frameSize?: number;
  /** Images and audio: a frame stays intact while it is one of the `poolSize` newest received. Default 8. */
  readonly poolSize?: number;
}

/** The value of a `json` message: its index from 0. */
export interface CounterValue {
  readonly n: number;
}

export type SyntheticValue = ImageFrame | AudioFrame | CounterValue;

export const SYNTHETIC_DEFAULTS = { rate: 30, width: 320, height: 240, format: 'rgb24', seed: 1, frequency: 440, amplitude: 0.5, sampleRate: 16_000, frameSize: 512, poolSize: 8 } as const;

/** Colours of the eight bars, left to right (100 % bars: white, yellow, cyan, green, magenta, red, blue, black). */
export const COLOR_BARS: readonly (readonly [number, number, number])[] = [
  [255, 255, 255],
  [255, 255, 0],
  [0, 255, 255],
  [0, 255, 0],
  [255, 0, 255],
  [255, 0, 0],
  [0, 0, 255],
  [0, 0, 0],
];

/**
 * A sensor that makes test patterns at an exact rate. Message k is due at start + k / rate and
 * carries exactly that sensor time (integer nanoseconds from one wall-clock reading); waits aim
 * at those absolute times, so lateness never accumulates. A consumer slower than the rate gets
 * the late messages back to back, still stamped on the grid (the pipeline's queue policy decides
 * what to drop).
 *
 * Patterns: `color-bars` eight vertical bars (`COLOR_BARS`, bar i spans columns
 * [floor(i·w/8), floor((i+1)·w/8))); `counter` every byte is `k mod 256` except the first four,
 * which hold k as a little-endian uint32; `noise` xorshift32 bytes from `seed`; `sine` mono
 * float32 samples `amplitude · sin(2π · frequency · s / sampleRate)` with s counted from the
 * first sample, continuous across frames; `json` the value `{ n: k }`.
 *
 * Buffers: image data and samples live in a ring of `poolSize` SharedArrayBuffer views owned by
 * the sensor; a frame stays intact while it is one of the `poolSize` newest received.
 */
export class SyntheticSensor implements Sensor<SyntheticValue> {
  readonly pattern: SyntheticPattern;
  /** Nanoseconds from message 0 to message k, exactly: k · periodNum / periodDen. */
  private readonly periodNum: bigint;
  private readonly periodDen: bigint;
  private readonly options: SyntheticOptions;

  constructor(options: SyntheticOptions) {
    if (!PATTERNS.includes(options.pattern)) throw config(`unknown pattern '${String(options.pattern)}': use ${PATTERNS.join(', ')}`);
    this.pattern = options.pattern;
    this.options = options;
    const o = resolve(options);
    if (options.pattern === 'sine') {
      whole('sampleRate', o.sampleRate);
      whole('frameSize', o.frameSize);
      this.periodNum = BigInt(o.frameSize) * 1_000_000_000n;
      this.periodDen = BigInt(o.sampleRate);
    } else {
      if (!(Number.isFinite(o.rate) && o.rate > 0 && o.rate <= 100_000)) throw config(`rate must be a number of Hz above 0, at most 100000 (found ${o.rate})`);
      // Milli-hertz precision keeps periods such as 1/29.97 s exact in integer arithmetic.
      this.periodNum = 1_000_000_000_000n;
      this.periodDen = BigInt(Math.round(o.rate * 1000));
    }
    if (isImage(options.pattern)) {
      whole('width', o.width);
      whole('height', o.height);
      if (!(o.format in PIXEL_CHANNELS)) throw config(`unknown pixel format '${String(o.format)}': use rgb24, bgr24, rgba or gray8`);
    }
    if (options.count !== undefined && !(Number.isInteger(options.count) && options.count >= 0)) throw config(`count must be a whole number (found ${options.count})`);
    whole('poolSize', o.poolSize);
  }

  /** Nanoseconds between consecutive messages (rounded down for display; times stay exact). */
  get periodNs(): bigint {
    return this.periodNum / this.periodDen;
  }

  async *messages(signal: AbortSignal): AsyncGenerator<SensorMessage<SyntheticValue>, void, undefined> {
    const o = resolve(this.options);
    const make = this.maker(o);
    const startWallNs = BigInt(Date.now()) * 1_000_000n;
    const startMs = performance.now();
    for (let k = 0; this.options.count === undefined || k < this.options.count; k++) {
      const offsetNs = (BigInt(k) * this.periodNum) / this.periodDen;
      if (!(await sleepUntil(startMs + Number(offsetNs) / 1e6, signal))) return;
      yield { sensorTimeNs: startWallNs + offsetNs, arrivalMs: performance.now(), value: make(k) };
    }
  }

  private maker(o: Resolved): (k: number) => SyntheticValue {
    if (o.pattern === 'json') return (n) => ({ n });
    if (o.pattern === 'sine') {
      const ring = new Ring(o.frameSize * 4, o.poolSize);
      return (k) => {
        const bytes = ring.next();
        const samples = new Float32Array(bytes.buffer, bytes.byteOffset, o.frameSize);
        // Phase from the absolute sample index, reduced to one cycle, so it never drifts.
        const first = k * o.frameSize;
        for (let i = 0; i < o.frameSize; i++) {
          const cycles = (o.frequency * (first + i)) / o.sampleRate;
          samples[i] = o.amplitude * Math.sin(2 * Math.PI * (cycles - Math.floor(cycles)));
        }
        return { sampleRate: o.sampleRate, channels: 1, samples };
      };
    }
    const channels = PIXEL_CHANNELS[o.format];
    const ring = new Ring(o.width * o.height * channels, o.poolSize);
    const frame = (data: Uint8Array): ImageFrame => ({ width: o.width, height: o.height, format: o.format, data });
    if (o.pattern === 'color-bars') {
      const row = colorBarRow(o.width, o.format);
      return () => {
        const data = ring.next();
        for (let y = 0; y < o.height; y++) data.set(row, y * row.length);
        return frame(data);
      };
    }
    if (o.pattern === 'counter') {
      return (k) => {
        const data = ring.next();
        data.fill(k & 0xff);
        for (let i = 0; i < 4 && i < data.length; i++) data[i] = (k >>> (8 * i)) & 0xff;
        return frame(data);
      };
    }
    let state = o.seed >>> 0 || 1;
    return () => {
      const data = ring.next();
      for (let i = 0; i < data.length; i += 4) {
        state ^= state << 13;
        state ^= state >>> 17;
        state ^= state << 5;
        state >>>= 0;
        for (let b = 0; b < 4 && i + b < data.length; b++) data[i + b] = (state >>> (8 * b)) & 0xff;
      }
      return frame(data);
    };
  }
}

type Resolved = Required<Omit<SyntheticOptions, 'count'>>;

/** The options with defaults for those not given (an explicit `undefined` counts as not given). */
function resolve(options: SyntheticOptions): Resolved {
  const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Partial<SyntheticOptions>;
  return { ...SYNTHETIC_DEFAULTS, ...given, pattern: options.pattern };
}

const PATTERNS: readonly SyntheticPattern[] = ['color-bars', 'counter', 'noise', 'sine', 'json'];

/** Whether `pattern` makes images (as opposed to audio or JSON). */
export function isImage(pattern: SyntheticPattern): boolean {
  return pattern === 'color-bars' || pattern === 'counter' || pattern === 'noise';
}

/**
 * `poolSize` equal views of one SharedArrayBuffer, handed out in turn. A view is rewritten only
 * when the next message is asked for, by which time its frame is no longer among the newest
 * `poolSize` received.
 */
class Ring {
  private readonly views: Uint8Array[] = [];
  private at = 0;

  constructor(bytes: number, poolSize: number) {
    const shared = new SharedArrayBuffer(bytes * poolSize);
    for (let i = 0; i < poolSize; i++) this.views.push(new Uint8Array(shared, i * bytes, bytes));
  }

  next(): Uint8Array {
    const view = this.views[this.at] as Uint8Array;
    this.at = (this.at + 1) % this.views.length;
    return view;
  }
}

function colorBarRow(width: number, format: PixelFormat): Uint8Array {
  const channels = PIXEL_CHANNELS[format];
  const row = new Uint8Array(width * channels);
  for (let x = 0; x < width; x++) {
    const [r, g, b] = COLOR_BARS[Math.floor((x * 8) / width)] ?? [0, 0, 0];
    const px = format === 'gray8' ? [Math.round(0.299 * r + 0.587 * g + 0.114 * b)] : format === 'bgr24' ? [b, g, r] : format === 'rgba' ? [r, g, b, 255] : [r, g, b];
    row.set(px, x * channels);
  }
  return row;
}


function whole(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 1) throw config(`${name} must be a positive integer (found ${value})`);
}

function config(message: string): SensorError {
  return new SensorError('EAI_SENSOR_CONFIG', message, { retryable: false });
}
