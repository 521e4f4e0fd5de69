import path from 'node:path';
import { Type } from '@sinclair/typebox';
import { McapRecorder, recordingPathProblem } from '../../../../drivers/recording/mcap-writer.js';
import { defineNode } from '../../definition.js';
import { toMcapJson } from '../../encode.js';
import { Duration } from '../../schema.js';
import { ProblemLog, SINK_INPUT, arrivalWallNs, durationMs, errorText, flowName } from './shared.js';

const MIB = 1024 * 1024;

const McapParams = Type.Object(
  {
    path: Type.String({ minLength: 1, description: "file to record to, relative to the pipeline file; '{index}' and '{time}' name rotated files, e.g. recordings/drive-{time}.mcap" }),
    chunkSize: Type.Integer({ minimum: 1024, default: MIB, description: 'close a chunk (and hand it to the disk) once it holds this many bytes' }),
    chunkDuration: Type.Union([...Duration.anyOf], { default: '1s', description: 'close a chunk this long after its first message: at most this much is lost if the process is killed' }),
    maxFileSize: Type.Optional(Type.Integer({ minimum: 4096, description: 'start a new file before one passes this many bytes' })),
    maxFileDuration: Type.Optional(Type.Union([...Duration.anyOf], { description: 'start a new file once one is this old' })),
    fsync: Type.Union([...Duration.anyOf, Type.Null()], { default: '1s', description: 'flush written chunks to the device at most this often, for power loss; null: never (still safe against a killed process)' }),
    overwrite: Type.Boolean({ default: false, description: 'replace an existing file at path (never done for {index} paths)' }),
  },
  { additionalProperties: false },
);

/** What the mcap sink holds while it runs. */
export interface McapSinkState {
  readonly recorder: McapRecorder;
  readonly problems: ProblemLog;
  recorded: number;
}

/**
 * `mcap`: records every message it receives into MCAP files that Foxglove opens: one channel per
 * flow (topic `/node/port` of the flow's upstream end), JSON message encoding with Foxglove's
 * schemas (foxglove.RawImage, RawAudio, PointCloud, LocationFix, ImageAnnotations for
 * detections; aios.Tensor; schemaless JSON otherwise), log time = sensor time, publish time =
 * arrival wall time, sequence = the message's sequence at its origin (gaps show drops).
 *
 * Crash safety comes from the recorder: chunks close at `chunkSize` or `chunkDuration`, so a
 * killed process loses at most the last chunk; `stop` writes the summary and footer, so the
 * embedding process must turn SIGTERM into a pipeline stop. A payload that cannot be encoded, or
 * a failed write, is counted and reported through `ctx.warn` (once per 10 s per kind) and never
 * stops the pipeline; `process` waits for the disk when a chunk is written, which is the
 * backpressure the queue policy in front of the sink acts on.
 */
export const mcapSink = defineNode({
  use: 'mcap',
  role: 'sink',
  description: 'Records every message it receives into MCAP files (Foxglove schemas, JSON encoding), chunked, rotated by size or duration, readable after a crash',
  params: McapParams,
  inputs: [SINK_INPUT],
  outputs: [],
  async check(params) {
    const problem = recordingPathProblem(params.path);
    return problem === undefined ? [] : [{ path: ['params', 'path'], message: problem }];
  },
  async start(ctx): Promise<McapSinkState> {
    const p = ctx.params;
    const recorder = await McapRecorder.open({
      path: path.resolve(ctx.baseDir, p.path),
      chunkSize: p.chunkSize,
      chunkDurationMs: durationMs(p.chunkDuration),
      maxFileBytes: p.maxFileSize,
      maxFileDurationMs: p.maxFileDuration === undefined ? undefined : durationMs(p.maxFileDuration),
      fsyncIntervalMs: p.fsync === null ? null : durationMs(p.fsync),
      overwrite: p.overwrite,
    });
    return { recorder, problems: new ProblemLog((m, cause) => ctx.warn(m, cause)), recorded: 0 };
  },
  async process(port, message, ctx, state) {
    const flow = flowName(port, message);
    let data: Uint8Array;
    let schema: ReturnType<typeof toMcapJson>['schema'];
    try {
      const encoded = toMcapJson(message.value, message.sensorTimeNs, message.origin);
      schema = encoded.schema;
      data = new TextEncoder().encode(JSON.stringify(encoded.message));
    } catch (err) {
      state.problems.report('encode', `${ctx.name}: cannot record a message from ${flow}: ${errorText(err)}`, err);
      return;
    }
    try {
      await state.recorder.write({
        topic: `/${flow.replaceAll('.', '/')}`,
        schema,
        messageEncoding: 'json',
        data,
        logTimeNs: message.sensorTimeNs,
        publishTimeNs: arrivalWallNs(message.arrivalMs),
        sequence: message.seq,
      });
      state.recorded++;
    } catch (err) {
      state.problems.report('write', `${ctx.name}: recording to ${state.recorder.currentPath ?? ctx.params.path} failed: ${errorText(err)}`, err);
    }
  },
  async stop(_ctx, state) {
    await state.recorder.close();
  },
});
