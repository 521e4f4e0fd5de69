import { SensorError } from './errors.js';
import { sleepUntil, wallClock } from './clock.js';
import { assertInputExists, ffmpegFrames, inputArgs, inputKind, type InputKind } from './ffmpeg.js';
import type { AudioFrame, Sensor, SensorMessage } from './types.js';

export interface AudioOptions {
  /**
   * A file path, a stream URL (`rtsp://`, `http://`, ...) or a capture device (`alsa:hw:0`,
   * `pulse:default`). Headerless PCM needs its layout in `inputOptions`
   * (`['-f', 's16le', '-ar', '16000', '-ac', '1']`).
   */
  readonly url: string;
  /** Samples per second per channel after resampling. Default 16000. */
  readonly sampleRate?: number;
  /** Default 1 (mono; ffmpeg downmixes). */
  readonly channels?: number;
  /** Samples per channel in every frame. Default 512. */
  readonly frameSize?: number;
  /** Files: deliver each frame when its last sample would have been captured (default), or as fast as decoded. */
  readonly realtime?: boolean;
  /** Files: play again from the start at the end, forever. */
  readonly loop?: boolean;
  /** Default: true for devices and stream URLs, false for files. */
  readonly live?: boolean;
  /** A frame's samples stay intact while it is one of the `poolSize` newest received. Default 8. */
  readonly poolSize?: number;
  readonly inputOptions?: readonly string[];
  /** Fail with `EAI_SENSOR_STALLED` when no samples come for this long; 0 never. Default 10000. */
  readonly stallTimeoutMs?: number;
  readonly ffmpegPath?: string;
}

export const AUDIO_DEFAULTS = { sampleRate: 16_000, channels: 1, frameSize: 512, realtime: true, loop: false, poolSize: 8, stallTimeoutMs: 10_000 } as const;

/**
 * Audio decoded and resampled by ffmpeg into frames of exactly `frameSize` samples per channel,
 * interleaved float32 in [-1, 1] (ffmpeg converts to f32le, which is exact for 16-bit sources:
 * sample / 32768; values outside [-1, 1] from float sources are clamped).
 *
 * The last partial frame of a file is zero-padded rather than dropped, so the end of an utterance
 * still reaches a VAD or recogniser; its sensor time is that of its first sample.
 *
 * Time: for a file, frame k's sensor time is the wall time of the first frame plus
 * `k * frameSize / sampleRate` exactly (samples are continuous after resampling); with `realtime`
 * it is delivered when its last sample would have been captured. For a live input the sensor
 * time is the wall clock at arrival minus the frame's duration (the time of its first sample).
 *
 * Buffers: `value.samples` views a SharedArrayBuffer pool (the sensor owns it), intact while the
 * frame is one of the `poolSize` newest the consumer has received. A live input keeps at most 32 frames waiting and drops
 * the oldest. Failures as for `VideoSensor`; each `messages` call runs its own ffmpeg.
 */
export class AudioSensor implements Sensor<AudioFrame> {
  readonly kind: InputKind;
  readonly live: boolean;
  readonly sampleRate: number;
  readonly channels: number;
  readonly frameSize: number;
  private readonly options: AudioOptions;

  constructor(options: AudioOptions) {
    this.sampleRate = positiveInteger('sampleRate', options.sampleRate ?? AUDIO_DEFAULTS.sampleRate);
    this.channels = positiveInteger('channels', options.channels ?? AUDIO_DEFAULTS.channels);
    this.frameSize = positiveInteger('frameSize', options.frameSize ?? AUDIO_DEFAULTS.frameSize);
    positiveInteger('poolSize', options.poolSize ?? AUDIO_DEFAULTS.poolSize);
    this.options = options;
    this.kind = inputKind(options.url);
    this.live = options.live ?? this.kind !== 'file';
  }

  /** The ffmpeg arguments (after the executable) this sensor runs with. */
  args(): string[] {
    const o = this.options;
    return [
      ...['-loglevel', 'error'],
      ...(this.live ? [] : ['-xerror']),
      ...inputArgs(o.url, { loop: o.loop === true && this.kind === 'file', inputOptions: o.inputOptions ?? [] }),
      ...['-map', '0:a:0', '-vn', '-sn', '-ac', String(this.channels), '-ar', String(this.sampleRate)],
      ...['-c:a', 'pcm_f32le', '-f', 'f32le', 'pipe:1'],
    ];
  }

  async *messages(signal: AbortSignal): AsyncGenerator<SensorMessage<AudioFrame>, void, undefined> {
    const o = this.options;
    await assertInputExists(o.url);
    const length = this.frameSize * this.channels;
    const frames = ffmpegFrames(
      {
        args: this.args(),
        frameBytes: length * 4,
        poolSize: o.poolSize ?? AUDIO_DEFAULTS.poolSize,
        // ffmpeg writes audio in bursts of many small frames; room for a burst before dropping.
        queue: this.live ? 32 : 4,
        live: this.live,
        partial: 'pad',
        stallTimeoutMs: o.stallTimeoutMs ?? AUDIO_DEFAULTS.stallTimeoutMs,
        ...(o.ffmpegPath === undefined ? {} : { ffmpegPath: o.ffmpegPath }),
      },
      signal,
    );
    const wall = wallClock();
    const realtime = o.realtime ?? AUDIO_DEFAULTS.realtime;
    const rate = BigInt(this.sampleRate);
    const durationMs = (this.frameSize * 1000) / this.sampleRate;
    let first: { monoMs: number; wallNs: bigint } | undefined;
    for await (const raw of frames) {
      const samples = new Float32Array(raw.data.buffer, raw.data.byteOffset, length);
      clamp(samples);
      let sensorTimeNs: bigint;
      let arrivalMs = raw.arrivalMs;
      if (this.live) {
        sensorTimeNs = wall(raw.arrivalMs - durationMs);
      } else {
        first ??= { monoMs: raw.arrivalMs, wallNs: wall(raw.arrivalMs) };
        sensorTimeNs = first.wallNs + (BigInt(raw.index * this.frameSize) * 1_000_000_000n) / rate;
        if (realtime) {
          if (!(await sleepUntil(first.monoMs + (raw.index + 1) * durationMs, signal))) return;
          arrivalMs = Math.max(raw.arrivalMs, performance.now());
        }
      }
      yield { sensorTimeNs, arrivalMs, value: { sampleRate: this.sampleRate, channels: this.channels, samples } };
    }
    if (this.live && !signal.aborted) throw new SensorError('EAI_SENSOR_STREAM_ENDED', `the live input ${o.url} ended`, { details: { url: o.url } });
  }
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) throw new SensorError('EAI_SENSOR_CONFIG', `${name} must be a positive integer (found ${value})`, { retryable: false });
  return value;
}

function clamp(samples: Float32Array): void {
  for (let i = 0; i < samples.length; i++) {
    const v = samples[i] as number;
    if (v > 1) samples[i] = 1;
    else if (v < -1) samples[i] = -1;
    else if (v !== v) samples[i] = 0; // NaN
  }
}
