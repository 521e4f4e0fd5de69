import { stat } from 'node:fs/promises';
import path from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import { findFfmpeg, inputKind } from '../../../../drivers/sensors/ffmpeg.js';
import type { Backoff } from '../../../../drivers/sensors/restart.js';
import { VIDEO_DEFAULTS, VideoSensor } from '../../../../drivers/sensors/video.js';
import { defineNode, type ConfigProblem } from '../../definition.js';
import { runSensor } from './sensor-loop.js';

/** Backoff between restarts of a failed sensor; shared by the ffmpeg-based sources. */
export const RestartParams = Type.Object(
  {
    initialMs: Type.Integer({ minimum: 1, default: 500, description: 'wait before the first restart, ms' }),
    maxMs: Type.Integer({ minimum: 1, default: 30_000, description: 'longest wait between restarts (the wait doubles up to this), ms' }),
  },
  { additionalProperties: false, default: {}, description: 'restart with exponential backoff when the input fails' },
);

const VideoParams = Type.Object(
  {
    url: Type.String({ minLength: 1, description: 'a video file (relative to the pipeline file), a stream URL (rtsp://, http://, ...) or a V4L2 camera (/dev/video0)' }),
    width: Type.Integer({ minimum: 1, maximum: 16384, description: 'frame width: every frame is scaled to width×height' }),
    height: Type.Integer({ minimum: 1, maximum: 16384, description: 'frame height' }),
    format: Type.Union([Type.Literal('rgb24'), Type.Literal('bgr24'), Type.Literal('rgba'), Type.Literal('gray8')], { default: VIDEO_DEFAULTS.format, description: 'pixel layout' }),
    fps: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1000, description: 'output frame rate (frames are dropped or repeated); default: the input rate' })),
    realtime: Type.Boolean({ default: VIDEO_DEFAULTS.realtime, description: 'files: deliver frames at the pace of their timestamps like a camera; false: as fast as the pipeline takes them' }),
    loop: Type.Boolean({ default: VIDEO_DEFAULTS.loop, description: 'files: replay from the start forever' }),
    live: Type.Optional(Type.Boolean({ description: 'treat the input as live (wall-clock times, drop oldest when behind, restart when it ends); default: true for URLs and cameras' })),
    poolSize: Type.Integer({ minimum: 1, maximum: 256, default: VIDEO_DEFAULTS.poolSize, description: 'a frame stays intact while it is one of this many newest frames: downstream queues must be shorter' }),
    inputOptions: Type.Array(Type.String(), { default: [], description: 'ffmpeg input options before -i, e.g. ["-rtsp_transport", "tcp"]' }),
    stallTimeoutMs: Type.Integer({ minimum: 0, default: VIDEO_DEFAULTS.stallTimeoutMs, description: 'restart when no frame data arrives for this long (0: never)' }),
    restart: RestartParams,
  },
  { additionalProperties: false },
);

/**
 * `use: video` — frames from a file, a network stream or a V4L2 camera, decoded by ffmpeg (see
 * `VideoSensor` for times and buffer reuse). Output `frames`: images of exactly
 * `width`×`height` in `format`.
 *
 * A failure (stream dropped, ffmpeg killed, file truncated or missing) is reported with
 * `ctx.warn` and the input reopened with backoff until the pipeline stops; one that cannot fix
 * itself (ffmpeg not installed) is warned about once and ends the source (see `runSensor`); a
 * file that ends (without `loop`) ends the source.
 *
 * Frame data stays intact while the frame is one of the `poolSize` newest emitted, so stages
 * that queue frames must keep their queues shorter than that, or copy.
 */
export const videoSource = defineNode({
  use: 'video',
  role: 'source',
  description: 'video frames from a file, stream URL or V4L2 camera (ffmpeg)',
  params: VideoParams,
  inputs: [],
  outputs: ['frames'],
  types(params) {
    return { frames: { kind: 'image', width: params.width, height: params.height, format: params.format } };
  },
  async check(params, env) {
    return checkInput('video', params.url, env.baseDir, params.restart);
  },
  async run(ctx) {
    const p = ctx.params;
    const sensor = new VideoSensor({
      url: resolveUrl(p.url, ctx.baseDir),
      width: p.width,
      height: p.height,
      format: p.format,
      realtime: p.realtime,
      loop: p.loop,
      poolSize: p.poolSize,
      inputOptions: p.inputOptions,
      stallTimeoutMs: p.stallTimeoutMs,
      ...(p.fps === undefined ? {} : { fps: p.fps }),
      ...(p.live === undefined ? {} : { live: p.live }),
    });
    await runSensor(ctx, 'frames', sensor, p.restart);
  },
});

export type VideoSourceParams = Static<typeof VideoParams>;

/** A file path resolved against the pipeline's folder; URLs and devices unchanged. */
export function resolveUrl(url: string, baseDir: string): string {
  return inputKind(url) === 'file' ? path.resolve(baseDir, url) : url;
}

/**
 * Validation-time checks shared by ffmpeg sources: the file exists (URLs and devices are only
 * known at run time), ffmpeg is installed, the backoff is ordered.
 */
export async function checkInput(use: string, url: string, baseDir: string, restart: Backoff): Promise<ConfigProblem[]> {
  const problems: ConfigProblem[] = [];
  if (inputKind(url) === 'file') {
    const file = path.resolve(baseDir, url);
    try {
      if (!(await stat(file)).isFile()) problems.push({ path: ['params', 'url'], message: `${file} is not a file` });
    } catch {
      problems.push({ path: ['params', 'url'], message: `file ${file} does not exist (relative paths resolve against the pipeline file's folder)` });
    }
  }
  if (findFfmpeg() === undefined) problems.push({ path: ['use'], message: `${use} needs ffmpeg, which is not installed or not on PATH: apt install ffmpeg` });
  if (restart.maxMs < restart.initialMs) problems.push({ path: ['params', 'restart', 'maxMs'], message: `maxMs (${restart.maxMs}) must be at least initialMs (${restart.initialMs})` });
  return problems;
}
