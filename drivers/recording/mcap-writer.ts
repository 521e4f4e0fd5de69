import { FileWritable } from './file-writable.js';
import { McapFileWriter } from './mcap-file-writer.js';
import { RecordingError } from './recording-error.js';

/** A schema as MCAP stores it: `foxglove.RawImage` / `jsonschema` / the JSON Schema text. */
export interface McapSchema {
  readonly name: string;
  readonly encoding: string;
  readonly data: Uint8Array | string;
}

/** One message to record. The recorder knows nothing of what the bytes mean. */
export interface RecordedMessage {
  readonly topic: string;
  /** `null` records the channel without a schema (allowed for `json`). */
  readonly schema: McapSchema | null;
  /** MCAP message encoding, e.g. `json`. */
  readonly messageEncoding: string;
  readonly data: Uint8Array;
  /** Log time: when the sensor says the data was taken, ns since the Unix epoch. */
  readonly logTimeNs: bigint;
  /** Publish time: when the data reached this process (wall clock), ns since the Unix epoch. */
  readonly publishTimeNs: bigint;
  /** MCAP sequence (uint32); a per-channel counter when absent. */
  readonly sequence?: number;
}

export interface McapRecorderOptions {
  /**
   * Where to write. `{index}` becomes the file's number (0000, 0001, ...; numbers whose file
   * already exists are skipped, so a restarted recorder never overwrites) and `{time}` the wall
   * time the file was opened (`20240131T120000.123Z`, UTC). With rotation on and neither
   * placeholder, `_{index}` is put before the extension.
   */
  readonly path: string;
  /** Close a chunk once its records pass this many bytes. Default 1 MiB. */
  readonly chunkSize?: number;
  /** Close a chunk this long after its first message, however small. Default 1000 ms. */
  readonly chunkDurationMs?: number;
  /** Start a new file before the data section would pass this many bytes. */
  readonly maxFileBytes?: number;
  /** Start a new file for the first message this long (wall time) after the file was opened. */
  readonly maxFileDurationMs?: number;
  /** fdatasync written chunks at most this often; `null` never (SIGKILL-safe, not power-loss safe). Default 1000 ms. */
  readonly fsyncIntervalMs?: number | null;
  /** Replace a file that exists (only without `{index}`). Default false: refuse. */
  readonly overwrite?: boolean;
  /** MCAP header profile ('' for none, as Foxglove's JSON recordings use). */
  readonly profile?: string;
  /** Wall clock in ms since the epoch: file times, chunk age, rotation. Tests inject one. */
  readonly now?: () => number;
}

/** A finished file: complete, indexed, readable by McapIndexedReader. */
export interface RecordedFile {
  readonly path: string;
  readonly messages: bigint;
  readonly bytes: bigint;
  readonly chunks: number;
}

/** Why `pattern` is not a usable recording path (empty, unknown placeholders), or undefined. */
export function recordingPathProblem(pattern: string): string | undefined {
  if (pattern.trim() === '') return 'the path is empty';
  const unknown = [...pattern.matchAll(/\{([^}]*)\}/gu)].map((m) => m[1]).filter((p) => p !== 'index' && p !== 'time');
  if (unknown.length > 0) return `the path ${pattern} has unknown placeholder(s) ${unknown.map((p) => `{${p}}`).join(', ')}; use {index} and {time}`;
  return undefined;
}

const MIB = 1024 * 1024;
const LIBRARY = 'aios';

/**
 * Records messages into MCAP files (https://mcap.dev): JSON and other encodings, chunked, indexed,
 * rotated by size and/or duration, each rotated file complete on its own.
 *
 * Crash safety: a chunk closes when it passes `chunkSize` or is `chunkDurationMs` old (a timer
 * closes idle chunks too) and is handed to the kernel at once, so a killed process leaves a file
 * that `McapStreamReader` reads up to the last closed chunk; `close()` (call it on SIGTERM / stop)
 * writes the summary and footer. With `fsyncIntervalMs`, closed chunks also reach the disk.
 *
 * Calls may overlap: writes queue in call order and the promise of `write` resolves once the
 * message is in the open chunk (and, when the chunk filled, once the chunk is written), which is
 * the backpressure a slow disk puts on the caller. After a write failure every later `write`
 * rejects with the same RecordingError; `close()` then only releases the file.
 */
export class McapRecorder {
  private file: OpenFile | undefined;
  private nextIndex = 0;
  private queue: Promise<void> = Promise.resolve();
  private failure: RecordingError | undefined;
  private closed = false;
  private readonly timer: NodeJS.Timeout;
  private readonly finished: RecordedFile[] = [];
  private readonly sequences = new Map<string, number>();
  private readonly chunkSize: number;
  private readonly chunkDurationMs: number;
  private readonly now: () => number;
  private lastSync: number;
  private unsynced = false;

  private constructor(private readonly options: McapRecorderOptions) {
    this.chunkSize = options.chunkSize ?? MIB;
    this.chunkDurationMs = options.chunkDurationMs ?? 1000;
    this.now = options.now ?? Date.now;
    this.lastSync = this.now();
    const period = Math.max(10, Math.min(this.chunkDurationMs, options.fsyncIntervalMs ?? Infinity, 1000) / 2);
    this.timer = setInterval(() => this.tick(), period);
    this.timer.unref();
  }

  /**
   * Checks the options and creates the first file, so a bad path fails at start, not at the
   * first message.
   *
   * @throws RecordingError `EAI_RECORDING_PATH` (unknown placeholder, bad sizes),
   *   `EAI_RECORDING_EXISTS`, `EAI_RECORDING_OPEN`.
   */
  static async open(options: McapRecorderOptions): Promise<McapRecorder> {
    checkOptions(options);
    const recorder = new McapRecorder(options);
    try {
      await recorder.openNext();
    } catch (err) {
      clearInterval(recorder.timer);
      throw err;
    }
    return recorder;
  }

  /** Files completed so far (rotated, or closed by `close()`), oldest first. */
  get files(): readonly RecordedFile[] {
    return this.finished;
  }

  /** The file being written, if any. */
  get currentPath(): string | undefined {
    return this.file?.writable.path;
  }

  /** Queues a message. @throws RecordingError `EAI_RECORDING_CLOSED`, or the write failure. */
  write(message: RecordedMessage): Promise<void> {
    if (this.closed) return Promise.reject(new RecordingError('EAI_RECORDING_CLOSED', `The recording ${this.options.path} is closed; messages after close() are not recorded.`, { details: { path: this.options.path } }));
    return this.serial(() => this.add(message));
  }

  /** Closes the open chunk now: everything written so far is on its way to disk. */
  flush(): Promise<void> {
    return this.serial(async () => {
      await this.file?.writer.flushChunk();
      this.unsynced = true;
    });
  }

  /** Writes the summary and footer of the current file and closes it. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return this.queue;
    this.closed = true;
    clearInterval(this.timer);
    const done = this.queue.then(() => this.finish());
    this.queue = done.catch(() => undefined);
    return done;
  }

  private serial(task: () => Promise<void>): Promise<void> {
    const run = this.queue.then(() => {
      if (this.failure !== undefined) throw this.failure;
      return task();
    });
    this.queue = run.catch((err: unknown) => {
      if (err instanceof RecordingError && err.code === 'EAI_RECORDING_WRITE') this.failure = err;
    });
    return run;
  }

  private async add(message: RecordedMessage): Promise<void> {
    const { maxFileBytes, maxFileDurationMs } = this.options;
    let file = this.file;
    if (file !== undefined && file.writer.statistics.messageCount > 0n) {
      const tooBig = maxFileBytes !== undefined && file.writer.size + BigInt(message.data.byteLength) > BigInt(maxFileBytes);
      const tooOld = maxFileDurationMs !== undefined && this.now() - file.openedAt >= maxFileDurationMs;
      if (tooBig || tooOld) {
        await this.finish();
        file = undefined;
      }
    }
    file ??= await this.openNext();
    const channelId = channelFor(file, message);
    // Counters run on across rotated files, so a reader can see gaps between files too.
    const sequence = message.sequence ?? this.sequences.get(message.topic) ?? 0;
    this.sequences.set(message.topic, sequence + 1);
    if (file.writer.pendingMessages === 0) file.chunkOpenedAt = this.now();
    const chunksBefore = file.writer.statistics.chunkCount;
    await file.writer.addMessage({ channelId, sequence: sequence >>> 0, logTime: message.logTimeNs, publishTime: message.publishTimeNs, data: message.data });
    if (file.writer.statistics.chunkCount !== chunksBefore) this.unsynced = true;
    else if (this.now() - file.chunkOpenedAt >= this.chunkDurationMs) await this.flushOpenChunk(file);
  }

  private async openNext(): Promise<OpenFile> {
    const { path, overwrite = false, profile = '' } = this.options;
    const rotating = this.options.maxFileBytes !== undefined || this.options.maxFileDurationMs !== undefined;
    const pattern = rotating && !/\{(index|time)\}/u.test(path) ? path.replace(/(\.[^./\\]*)?$/u, '_{index}$1') : path;
    for (;;) {
      const index = this.nextIndex++;
      const openedAt = this.now();
      const target = pattern.replaceAll('{index}', String(index).padStart(4, '0')).replaceAll('{time}', fileTime(openedAt));
      try {
        const writable = await FileWritable.create(target, { overwrite: overwrite && !pattern.includes('{index}') });
        const writer = new McapFileWriter(writable, this.chunkSize);
        this.file = { index, writable, writer, openedAt, chunkOpenedAt: openedAt, channels: new Map(), schemas: new Map() };
        await writer.start({ profile, library: LIBRARY });
        return this.file;
      } catch (err) {
        // A numbered file left by an earlier run: take the next number rather than overwrite it.
        if (err instanceof RecordingError && err.code === 'EAI_RECORDING_EXISTS' && pattern.includes('{index}') && index < 100_000) continue;
        throw err;
      }
    }
  }

  /** Ends the current file (summary, footer) and records it in `files`. */
  private async finish(): Promise<void> {
    const file = this.file;
    if (file === undefined) return;
    this.file = undefined;
    try {
      if (this.failure === undefined) {
        await file.writer.end();
        if (this.options.fsyncIntervalMs !== null) await file.writable.sync();
        const s = file.writer.statistics;
        this.finished.push({ path: file.writable.path, messages: s.messageCount, bytes: file.writable.position(), chunks: s.chunkCount });
      }
    } finally {
      await file.writable.close();
    }
  }

  private async flushOpenChunk(file: OpenFile): Promise<void> {
    await file.writer.flushChunk();
    this.unsynced = true;
  }

  /** Timer: closes chunks that are old enough and syncs written ones, both through the queue. */
  private tick(): void {
    const file = this.file;
    if (file === undefined || this.closed || this.failure !== undefined) return;
    const now = this.now();
    const stale = file.writer.pendingMessages > 0 && now - file.chunkOpenedAt >= this.chunkDurationMs;
    const interval = this.options.fsyncIntervalMs === undefined ? 1000 : this.options.fsyncIntervalMs;
    const sync = interval !== null && (this.unsynced || stale) && now - this.lastSync >= interval;
    if (!stale && !sync) return;
    // Errors surface on the next write (serial() records them); the timer has nobody to tell.
    this.serial(async () => {
      if (this.file !== file) return;
      if (stale) await this.flushOpenChunk(file);
      if (sync) {
        this.lastSync = this.now();
        this.unsynced = false;
        await file.writable.sync();
      }
    }).catch(() => undefined);
  }
}

interface OpenFile {
  readonly index: number;
  readonly writable: FileWritable;
  readonly writer: McapFileWriter;
  readonly openedAt: number;
  chunkOpenedAt: number;
  /** `topic / schema / encoding` to channel id, per file (each file is self-contained). */
  readonly channels: Map<string, number>;
  readonly schemas: Map<string, number>;
}

function channelFor(file: OpenFile, message: RecordedMessage): number {
  const { schema } = message;
  const key = `${message.topic}\u0000${schema?.name ?? ''}\u0000${schema?.encoding ?? ''}\u0000${message.messageEncoding}`;
  let channelId = file.channels.get(key);
  if (channelId !== undefined) return channelId;
  let schemaId = 0;
  if (schema !== null) {
    const schemaKey = `${schema.name}\u0000${schema.encoding}`;
    schemaId = file.schemas.get(schemaKey) ?? file.writer.addSchema({ name: schema.name, encoding: schema.encoding, data: typeof schema.data === 'string' ? new TextEncoder().encode(schema.data) : schema.data });
    file.schemas.set(schemaKey, schemaId);
  }
  channelId = file.writer.addChannel({ topic: message.topic, schemaId, messageEncoding: message.messageEncoding, metadata: new Map() });
  file.channels.set(key, channelId);
  return channelId;
}

function checkOptions(o: McapRecorderOptions): void {
  const bad = (what: string): never => {
    throw new RecordingError('EAI_RECORDING_PATH', `Recording options: ${what}.`, { details: { path: o.path } });
  };
  const pathProblem = recordingPathProblem(o.path);
  if (pathProblem !== undefined) bad(pathProblem);
  const positive = { chunkSize: o.chunkSize, chunkDurationMs: o.chunkDurationMs, maxFileBytes: o.maxFileBytes, maxFileDurationMs: o.maxFileDurationMs };
  for (const [name, v] of Object.entries(positive)) if (v !== undefined && !(v > 0)) bad(`${name} must be a positive number, got ${v}`);
  if (o.fsyncIntervalMs !== undefined && o.fsyncIntervalMs !== null && !(o.fsyncIntervalMs >= 0)) bad(`fsyncIntervalMs must be >= 0 or null, got ${o.fsyncIntervalMs}`);
}

/** `20240131T120000.123Z`: sortable, no characters file systems dislike. */
function fileTime(ms: number): string {
  return new Date(ms).toISOString().replace(/[-:]/gu, '');
}
