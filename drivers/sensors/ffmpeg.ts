import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { SensorError } from './errors.js';
import { FrameRing } from './frame-ring.js';

/**
 * ffmpeg as a sensor back end: it opens files, network streams and capture devices, decodes and
 * scales, and writes fixed-size raw frames to a pipe, which this module cuts into frames held in a
 * small pool of reusable shared buffers. Restarts are the caller's choice, with `restarting`.
 */

/** Where an input comes from: decides how ffmpeg opens it and where frame times come from. */
export type InputKind = 'file' | 'stream' | 'v4l2' | 'alsa' | 'pulse';

/**
 * `/dev/videoN` (or a `/dev/v4l/...` link) is a V4L2 camera, `alsa:hw:0` / `pulse:default` an
 * audio capture device, `scheme://...` (rtsp, http, udp, srt, ...) a network stream, anything
 * else a file path.
 */
export function inputKind(url: string): InputKind {
  if (/^\/dev\/(video\d+|v4l\/)/u.test(url)) return 'v4l2';
  if (url.startsWith('alsa:')) return 'alsa';
  if (url.startsWith('pulse:')) return 'pulse';
  if (/^[a-z][a-z0-9+.-]*:\/\//iu.test(url)) return 'stream';
  return 'file';
}

/** ffmpeg arguments that open `url` as the input: demuxer, looping and user options, then `-i`. */
export function inputArgs(url: string, options: { readonly loop?: boolean; readonly inputOptions?: readonly string[] } = {}): string[] {
  const kind = inputKind(url);
  const user = options.inputOptions ?? [];
  switch (kind) {
    case 'v4l2':
      return ['-f', 'v4l2', ...user, '-i', url];
    case 'alsa':
    case 'pulse':
      return ['-f', kind, ...user, '-i', url.slice(kind.length + 1)];
    case 'stream':
      return [...user, '-i', url];
    case 'file':
      // A colon would make ffmpeg read the path as a protocol name.
      return [...(options.loop === true ? ['-stream_loop', '-1'] : []), ...user, '-i', url.includes(':') ? `file:${url}` : url];
  }
}

/**
 * Throws `EAI_SENSOR_NOT_FOUND` when a file or capture device named by `url` does not exist
 * (network streams and audio devices are left to ffmpeg).
 */
export async function assertInputExists(url: string): Promise<void> {
  const kind = inputKind(url);
  if (kind !== 'file' && kind !== 'v4l2') return;
  const what = kind === 'file' ? 'file' : 'camera device';
  try {
    const s = await stat(url);
    if (kind === 'file' && !s.isFile()) throw new SensorError('EAI_SENSOR_NOT_FOUND', `${url} is not a file: give the path of a video or audio file`);
  } catch (error) {
    if (error instanceof SensorError) throw error;
    const fix = kind === 'file' ? 'check the path (relative paths resolve against the pipeline file)' : 'check the camera is plugged in (`ls /dev/video*`, `v4l2-ctl --list-devices`)';
    throw new SensorError('EAI_SENSOR_NOT_FOUND', `${what} ${url} does not exist: ${fix}`, { cause: error, details: { url } });
  }
}

/** The ffmpeg executable `name` resolves to (a path, or a name looked up on PATH), or undefined. */
export function findFfmpeg(name = 'ffmpeg'): string | undefined {
  const candidates = name.includes('/') ? [name] : (process.env['PATH'] ?? '').split(path.delimiter).filter((d) => d !== '').map((d) => path.join(d, name));
  for (const file of candidates) {
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // not here; try the next PATH entry
    }
  }
  return undefined;
}

/** One frame of ffmpeg's output, in a `FrameRing` buffer (see its ownership rules). */
export interface RawFrame {
  readonly data: Uint8Array;
  /** Position in this ffmpeg run's output, from 0; frames dropped for a slow reader leave gaps. */
  readonly index: number;
  /** `performance.now()` when the frame's last byte was read. */
  readonly arrivalMs: number;
}

/** Receives ffmpeg's stderr, one line at a time, then `end` once it closes. */
export interface StderrListener {
  line(text: string): void;
  end(): void;
}

export interface FfmpegFramesOptions {
  /** Arguments after the executable; `-hide_banner -nostdin -nostats` are prepended. */
  readonly args: readonly string[];
  readonly frameBytes: number;
  /** A frame stays intact while it is one of the `poolSize` newest delivered (`FrameRing.hold`). */
  readonly poolSize: number;
  /** Complete frames kept waiting for the consumer. */
  readonly queue: number;
  /**
   * Live input: a full queue drops its oldest frame so ffmpeg keeps up with the camera. Not live:
   * a full queue stops reading, and ffmpeg waits (a file is decoded only as fast as it is used).
   */
  readonly live: boolean;
  /** Output that ends inside a frame: zero-fill and deliver it (`pad`) or fail (`error`). */
  readonly partial: 'pad' | 'error';
  /** Fail with `EAI_SENSOR_STALLED` after this long waiting for data; 0 waits forever. */
  readonly stallTimeoutMs: number;
  readonly ffmpegPath?: string;
  readonly stderr?: StderrListener;
}

/**
 * Runs ffmpeg once and yields its output as fixed-size frames, until ffmpeg exits 0 (return) or
 * fails (throws `SensorError`: `EAI_SENSOR_FFMPEG_MISSING`, `EAI_SENSOR_NOT_FOUND`,
 * `EAI_SENSOR_FFMPEG_EXIT` with ffmpeg's last stderr line, `EAI_SENSOR_TRUNCATED`,
 * `EAI_SENSOR_STALLED`). Frames queued before a failure are yielded first. When `signal` aborts or
 * the consumer stops iterating, ffmpeg is terminated (SIGTERM, SIGKILL after a second) and the
 * iteration ends only once it has exited, so no process outlives it.
 */
export async function* ffmpegFrames(options: FfmpegFramesOptions, signal: AbortSignal): AsyncGenerator<RawFrame, void, undefined> {
  if (signal.aborted) return;
  const run = new FfmpegRun(options);
  const onAbort = (): void => void run.stop();
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    for (;;) {
      if (signal.aborted) return;
      const frame = run.next();
      if (frame !== undefined) {
        yield frame;
        continue;
      }
      const outcome = run.outcome();
      if (outcome === 'done') return;
      if (outcome !== 'running') throw outcome;
      await run.changed();
    }
  } finally {
    signal.removeEventListener('abort', onAbort);
    await run.stop();
  }
}

const KILL_GRACE_MS = 1000;
const STDERR_TAIL = 20;

/** One ffmpeg process and the frames cut from its stdout. */
class FfmpegRun {
  private readonly child: ChildProcess;
  private readonly pool: FrameRing;
  private readonly queue: RawFrame[] = [];
  private filling: Uint8Array | undefined;
  private filled = 0;
  /** Rest of a chunk not yet cut while the queue is full (not live). */
  private pending: Buffer | undefined;
  private index = 0;
  private result: 'running' | 'done' | SensorError = 'running';
  private stopping: Promise<void> | undefined;
  private readonly closed: Promise<void>;
  private lastActivityMs = performance.now();
  private wake: (() => void) | undefined;
  private readonly stderrTail: string[] = [];
  private stderrRest = '';

  constructor(private readonly options: FfmpegFramesOptions) {
    this.pool = new FrameRing(options.frameBytes, options.poolSize, options.queue + 1);
    const executable = options.ffmpegPath ?? 'ffmpeg';
    this.child = spawn(executable, ['-hide_banner', '-nostdin', '-nostats', ...options.args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let onClosed: () => void = () => undefined;
    this.closed = new Promise((resolve) => (onClosed = resolve));
    this.child.on('error', (error: NodeJS.ErrnoException) => {
      if (this.result === 'running') {
        const missing = error.code === 'ENOENT' || error.code === 'EACCES';
        this.result = missing
          ? new SensorError('EAI_SENSOR_FFMPEG_MISSING', `ffmpeg (${executable}) is not installed or not executable. Fix: apt install ffmpeg`, { cause: error, retryable: false })
          : new SensorError('EAI_SENSOR_FFMPEG_EXIT', `ffmpeg could not be started: ${error.message}`, { cause: error });
      }
      // A process that never started emits no 'close' on every Node version.
      if (this.child.pid === undefined) onClosed();
      this.notify();
    });
    this.child.on('close', (code, sig) => {
      this.finish(code, sig);
      onClosed();
      this.notify();
    });
    this.child.stdout?.on('data', (chunk: Buffer) => this.cut(chunk));
    this.child.stderr?.setEncoding('utf8');
    this.child.stderr?.on('data', (text: string) => this.readStderr(text));
    this.child.stderr?.on('end', () => this.readStderr(null));
  }

  /** The next queued frame, handed to the consumer; reading resumes if it was held back. */
  next(): RawFrame | undefined {
    const frame = this.queue.shift();
    if (frame === undefined) return undefined;
    this.pool.deliver(frame.data);
    const rest = this.pending;
    if (rest !== undefined) {
      this.pending = undefined;
      this.cut(rest);
      if (this.pending === undefined) {
        this.lastActivityMs = performance.now();
        this.child.stdout?.resume();
      }
    }
    return frame;
  }

  outcome(): 'running' | 'done' | SensorError {
    return this.result;
  }

  /** Waits for a frame or the end; fails the run when no data came for `stallTimeoutMs`. */
  async changed(): Promise<void> {
    const limit = this.options.stallTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.wake = resolve;
      if (limit > 0) timer = setTimeout(resolve, Math.max(1, this.lastActivityMs + limit - performance.now()));
    });
    clearTimeout(timer);
    this.wake = undefined;
    if (limit > 0 && this.result === 'running' && this.queue.length === 0 && performance.now() - this.lastActivityMs >= limit) {
      this.result = new SensorError('EAI_SENSOR_STALLED', `no data from ffmpeg for ${limit} ms (${this.lastLine() ?? 'it printed nothing'}); the stream is stalled`, { details: { stderr: [...this.stderrTail] } });
      await this.stop();
    }
  }

  /** Terminates ffmpeg (idempotent) and resolves once it has exited and been reaped. */
  stop(): Promise<void> {
    this.stopping ??= this.terminate();
    return this.stopping;
  }

  private async terminate(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null && this.child.pid !== undefined) {
      if (this.result === 'running') this.result = 'done';
      // Closing our end first unblocks an ffmpeg stuck writing to a full pipe.
      this.child.stdout?.destroy();
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), KILL_GRACE_MS);
      await this.closed;
      clearTimeout(timer);
    } else {
      await this.closed;
    }
    for (const frame of this.queue.splice(0)) this.pool.release(frame.data);
  }

  private cut(chunk: Buffer): void {
    if (this.pending !== undefined) {
      // A chunk already on its way when reading paused: keep it behind the held-back rest.
      this.pending = Buffer.concat([this.pending, chunk]);
      return;
    }
    const size = this.options.frameBytes;
    let offset = 0;
    this.lastActivityMs = performance.now();
    while (offset < chunk.length) {
      if (this.filling === undefined) {
        if (!this.options.live && this.queue.length >= this.options.queue) {
          // The consumer is behind: keep the rest and stop reading so ffmpeg waits.
          this.pending = chunk.subarray(offset);
          this.child.stdout?.pause();
          return;
        }
        this.filling = this.pool.take();
        this.filled = 0;
      }
      const n = Math.min(size - this.filled, chunk.length - offset);
      this.filling.set(chunk.subarray(offset, offset + n), this.filled);
      this.filled += n;
      offset += n;
      if (this.filled === size) this.complete(this.filling);
    }
  }

  private complete(data: Uint8Array): void {
    this.queue.push({ data, index: this.index++, arrivalMs: performance.now() });
    this.filling = undefined;
    this.filled = 0;
    if (this.options.live && this.queue.length > this.options.queue) this.pool.release((this.queue.shift() as RawFrame).data);
    this.notify();
  }

  private finish(code: number | null, sig: NodeJS.Signals | null): void {
    if (this.result !== 'running') return;
    const last = this.lastLine();
    const details = { exitCode: code, signal: sig, stderr: [...this.stderrTail], args: this.options.args };
    if (sig !== null) {
      // Its last words predate the signal and would only mislead; they stay in details.
      this.result = new SensorError('EAI_SENSOR_FFMPEG_EXIT', `ffmpeg was killed by ${sig} mid-stream`, { details });
    } else if (code !== 0) {
      const notFound = this.stderrTail.some((l) => /No such file or directory/u.test(l));
      this.result = notFound
        ? new SensorError('EAI_SENSOR_NOT_FOUND', `ffmpeg cannot open the input: ${last ?? 'no such file or directory'}`, { details })
        : new SensorError('EAI_SENSOR_FFMPEG_EXIT', `ffmpeg exited with code ${String(code)}: ${last ?? '(no message)'}`, { details });
    } else if (this.filling !== undefined) {
      if (this.options.partial === 'pad') {
        this.filling.fill(0, this.filled);
        this.complete(this.filling);
        this.result = 'done';
      } else {
        this.result = new SensorError('EAI_SENSOR_TRUNCATED', `ffmpeg's output ended inside a frame (${this.filled} of ${this.options.frameBytes} bytes)`, { details });
      }
    } else {
      this.result = 'done';
    }
  }

  private readStderr(text: string | null): void {
    const listener = this.options.stderr;
    if (text === null) {
      if (this.stderrRest !== '') this.stderrLine(this.stderrRest);
      this.stderrRest = '';
      listener?.end();
      return;
    }
    const lines = (this.stderrRest + text).split(/\r?\n|\r/u);
    this.stderrRest = lines.pop() ?? '';
    for (const line of lines) this.stderrLine(line);
  }

  private stderrLine(line: string): void {
    this.options.stderr?.line(line);
    // Per-frame filter output is not what a user needs to see in an error.
    if (line.trim() === '' || line.includes('Parsed_showinfo')) return;
    this.stderrTail.push(line);
    if (this.stderrTail.length > STDERR_TAIL) this.stderrTail.shift();
  }

  /** The last stderr line that says something (not ffmpeg's closing summary). */
  private lastLine(): string | undefined {
    for (let i = this.stderrTail.length - 1; i >= 0; i--) {
      const line = (this.stderrTail[i] ?? '').trim();
      if (!/^(Conversion failed!|Exiting normally|To ignore this|frame=|video:|size=|\[q\] command)/u.test(line)) return line;
    }
    return undefined;
  }

  private notify(): void {
    this.wake?.();
  }
}
