import { mkdir, open, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { Type } from '@sinclair/typebox';
import type { ImageFrame, AudioFrame, PointCloud } from '../../../../drivers/sensors/types.js';
import { PIXEL_CHANNELS } from '../../../../drivers/sensors/types.js';
import { writeNpy } from '../../../../drivers/tensor/npy.js';
import { Tensor, type DType, type DTypeArrays } from '../../../../drivers/tensor/tensor.js';
import { defineNode, type Envelope } from '../../definition.js';
import { payloadKind } from '../../encode.js';
import { Duration } from '../../schema.js';
import { ProblemLog, SINK_INPUT, durationMs, errorText, flowName, messageJson } from './shared.js';

const FileParams = Type.Object(
  {
    path: Type.String({ minLength: 1, description: 'jsonl: the file lines are appended to; npy: the folder files are written into (relative to the pipeline file)' }),
    format: Type.Union([Type.Literal('jsonl'), Type.Literal('npy')], { default: 'jsonl', description: 'jsonl: one JSON object per message; npy: one NumPy file per message (tensors, images, audio, point clouds)' }),
    name: Type.String({ minLength: 1, default: '{seq}.npy', description: "npy file name: {seq}, {origin}, {flow} (upstream node.port) and, for several tensors in one message, {key}; add {flow} when several flows end here" }),
    bufferSize: Type.Integer({ minimum: 1, default: 256 * 1024, description: 'jsonl: bytes held before they are written (the sink waits for the disk beyond this)' }),
    flushInterval: Type.Union([...Duration.anyOf], { default: '1s', description: 'jsonl: write buffered lines at least this often' }),
  },
  { additionalProperties: false },
);

/** What the file sink holds while it runs. */
export interface FileSinkState {
  readonly problems: ProblemLog;
  readonly jsonl?: LineWriter;
  readonly folder?: string;
  written: number;
}

/**
 * `file`: writes messages to disk as JSON lines or NumPy files.
 *
 * `jsonl`: one line per message, `{"time":"<sensor ns>","origin":"camera","seq":12,
 * "port":"detect.boxes","value":...}`, the value in the shared JSON encoding (encode.ts). Lines
 * are appended; at most `bufferSize` bytes wait in memory (past that `process` waits for the
 * write, which is the backpressure the sink's queue policy acts on), a timer writes them every
 * `flushInterval`, and `stop` writes the rest.
 *
 * `npy`: one `.npy` per message in the folder `path`, named by `name`: tensors as they are, images
 * as uint8 [height, width, channels], audio as float32 [frames, channels], point clouds as
 * float32 [count, 3]; a message of several tensors writes one file per tensor. Files appear
 * whole (written beside and renamed). Payloads with no array form are counted and reported.
 *
 * Nothing a message holds stops the pipeline: unencodable payloads and failed writes are counted
 * and reported through `ctx.warn` (once per 10 s per kind).
 */
export const fileSink = defineNode({
  use: 'file',
  role: 'sink',
  description: 'Writes messages as JSON lines, or as one NumPy .npy file per message',
  params: FileParams,
  inputs: [SINK_INPUT],
  outputs: [],
  async start(ctx): Promise<FileSinkState> {
    const target = path.resolve(ctx.baseDir, ctx.params.path);
    const problems = new ProblemLog((m, cause) => ctx.warn(m, cause));
    if (ctx.params.format === 'npy') {
      await mkdir(target, { recursive: true });
      return { problems, folder: target, written: 0 };
    }
    const jsonl = await LineWriter.open(target, ctx.params.bufferSize, durationMs(ctx.params.flushInterval), (err) => problems.report('write', `${ctx.name}: writing ${target} failed: ${errorText(err)}`, err));
    return { problems, jsonl, written: 0 };
  },
  async process(port, message, ctx, state) {
    const flow = flowName(port, message);
    if (state.jsonl !== undefined) {
      let line: string;
      try {
        line = JSON.stringify(messageJson(flow, message));
      } catch (err) {
        state.problems.report('encode', `${ctx.name}: cannot write a message from ${flow} as JSON: ${errorText(err)}`, err);
        return;
      }
      await state.jsonl.add(`${line}\n`);
      state.written++;
      return;
    }
    let tensors: [string, Tensor][] | undefined;
    try {
      tensors = asTensors(message.value);
    } catch (err) {
      state.problems.report('encode', `${ctx.name}: a message from ${flow} is not a well-formed array: ${errorText(err)}`, err);
      return;
    }
    if (tensors === undefined) {
      state.problems.report('encode', `${ctx.name}: a ${payloadKind(message.value)} message from ${flow} has no array form to write as .npy; use format: jsonl for it`);
      return;
    }
    for (const [key, tensor] of tensors) {
      const file = path.join(state.folder ?? '.', fileName(ctx.params.name, message, flow, key, tensors.length > 1));
      try {
        await mkdir(path.dirname(file), { recursive: true });
        await writeNpy(file, tensor);
        state.written++;
      } catch (err) {
        state.problems.report('write', `${ctx.name}: writing ${file} failed: ${errorText(err)}`, err);
      }
    }
  },
  async stop(_ctx, state) {
    await state.jsonl?.close();
  },
});

/**
 * Appends text to a file through a bounded buffer. `add` resolves at once while the buffer has
 * room and after a write otherwise; writes never overlap. A failed write is reported and its
 * lines are dropped, so a full disk does not grow memory.
 */
class LineWriter {
  private pending: string[] = [];
  private pendingBytes = 0;
  private writing: Promise<void> = Promise.resolve();
  private readonly timer: NodeJS.Timeout;

  private constructor(
    private readonly handle: FileHandle,
    private readonly limit: number,
    flushMs: number,
    private readonly onError: (err: unknown) => void,
  ) {
    this.timer = setInterval(() => void this.flush(), Math.max(10, flushMs));
    this.timer.unref();
  }

  static async open(file: string, limit: number, flushMs: number, onError: (err: unknown) => void): Promise<LineWriter> {
    await mkdir(path.dirname(file), { recursive: true });
    return new LineWriter(await open(file, 'a'), limit, flushMs, onError);
  }

  async add(text: string): Promise<void> {
    this.pending.push(text);
    this.pendingBytes += Buffer.byteLength(text);
    if (this.pendingBytes >= this.limit) await this.flush();
  }

  flush(): Promise<void> {
    if (this.pending.length === 0) return this.writing;
    const text = this.pending.join('');
    this.pending = [];
    this.pendingBytes = 0;
    this.writing = this.writing.then(() => this.handle.appendFile(text)).catch((err: unknown) => this.onError(err));
    return this.writing;
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.flush();
    await this.handle.close();
  }
}

/** The arrays a payload is written as, by key ('' for a single array); undefined: none. */
function asTensors(value: unknown): [string, Tensor][] | undefined {
  switch (payloadKind(value)) {
    case 'tensor':
      return [['', toTensor(value)]];
    case 'tensors':
      return Object.entries(value as Record<string, unknown>).map(([k, t]) => [k, toTensor(t)]);
    case 'image': {
      const f = value as ImageFrame;
      const c = PIXEL_CHANNELS[f.format];
      return [['', new Tensor('uint8', [f.height, f.width, c], f.data.subarray(0, f.height * f.width * c))]];
    }
    case 'audio': {
      const a = value as AudioFrame;
      return [['', new Tensor('float32', [Math.floor(a.samples.length / a.channels), a.channels], a.samples.subarray(0, Math.floor(a.samples.length / a.channels) * a.channels))]];
    }
    case 'pointcloud': {
      const p = value as PointCloud;
      return [['', new Tensor('float32', [p.count, 3], p.xyz.subarray(0, p.count * 3))]];
    }
    default:
      return undefined;
  }
}

/** A Tensor from this package or one shaped like it (another copy of aios). */
function toTensor(value: unknown): Tensor {
  if (value instanceof Tensor) return value;
  const t = value as { dtype: DType; shape: readonly number[]; data: DTypeArrays[DType] };
  return new Tensor(t.dtype, t.shape, t.data);
}

function fileName(pattern: string, message: Envelope, flow: string, key: string, several: boolean): string {
  // Several tensors in one message need the key in the name, or they overwrite each other.
  const named = several && !pattern.includes('{key}') ? pattern.replace(/(\.npy)?$/u, '.{key}$1') : pattern;
  return named.replaceAll('{seq}', String(message.seq)).replaceAll('{origin}', message.origin).replaceAll('{flow}', flow).replaceAll('{key}', key.replace(/[/\\]/gu, '_'));
}
