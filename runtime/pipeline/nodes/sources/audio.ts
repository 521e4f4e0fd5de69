import { Type, type Static } from '@sinclair/typebox';
import { AUDIO_DEFAULTS, AudioSensor } from '../../../../drivers/sensors/audio.js';
import { defineNode } from '../../definition.js';
import { runSensor } from './sensor-loop.js';
import { checkInput, resolveUrl, RestartParams } from './video.js';

const AudioParams = Type.Object(
  {
    url: Type.String({ minLength: 1, description: 'an audio or video file (relative to the pipeline file), a stream URL, or a capture device (alsa:hw:0, pulse:default)' }),
    sampleRate: Type.Integer({ minimum: 1, maximum: 384_000, default: AUDIO_DEFAULTS.sampleRate, description: 'samples per second after resampling' }),
    channels: Type.Integer({ minimum: 1, maximum: 32, default: AUDIO_DEFAULTS.channels, description: 'channels after mixing (interleaved)' }),
    frameSize: Type.Integer({ minimum: 1, maximum: 1_048_576, default: AUDIO_DEFAULTS.frameSize, description: 'samples per channel in every frame' }),
    realtime: Type.Boolean({ default: AUDIO_DEFAULTS.realtime, description: 'files: deliver frames at the pace of a microphone; false: as fast as the pipeline takes them' }),
    loop: Type.Boolean({ default: AUDIO_DEFAULTS.loop, description: 'files: replay from the start forever' }),
    live: Type.Optional(Type.Boolean({ description: 'treat the input as live; default: true for URLs and devices' })),
    poolSize: Type.Integer({ minimum: 1, maximum: 4096, default: AUDIO_DEFAULTS.poolSize, description: 'a frame stays intact while it is one of this many newest frames' }),
    inputOptions: Type.Array(Type.String(), { default: [], description: 'ffmpeg input options before -i; headerless PCM needs its layout, e.g. ["-f", "s16le", "-ar", "16000", "-ac", "1"]' }),
    stallTimeoutMs: Type.Integer({ minimum: 0, default: AUDIO_DEFAULTS.stallTimeoutMs, description: 'restart when no samples arrive for this long (0: never)' }),
    restart: RestartParams,
  },
  { additionalProperties: false },
);

/**
 * `use: audio` — PCM frames decoded and resampled by ffmpeg (see `AudioSensor`): output `audio`,
 * `frameSize` float32 samples per channel in [-1, 1], interleaved; the last partial frame of a
 * file is zero-padded. Failures are warned about and the input reopened with backoff; a file
 * that ends (without `loop`) ends the source. Samples stay intact while the frame is one of the
 * `poolSize` newest emitted.
 */
export const audioSource = defineNode({
  use: 'audio',
  role: 'source',
  description: 'audio frames from a file, stream URL or capture device (ffmpeg)',
  params: AudioParams,
  inputs: [],
  outputs: ['audio'],
  types(params) {
    return { audio: { kind: 'audio', sampleRate: params.sampleRate, channels: params.channels, frameSize: params.frameSize } };
  },
  async check(params, env) {
    return checkInput('audio', params.url, env.baseDir, params.restart);
  },
  async run(ctx) {
    const p = ctx.params;
    const sensor = new AudioSensor({
      url: resolveUrl(p.url, ctx.baseDir),
      sampleRate: p.sampleRate,
      channels: p.channels,
      frameSize: p.frameSize,
      realtime: p.realtime,
      loop: p.loop,
      poolSize: p.poolSize,
      inputOptions: p.inputOptions,
      stallTimeoutMs: p.stallTimeoutMs,
      ...(p.live === undefined ? {} : { live: p.live }),
    });
    await runSensor(ctx, 'audio', sensor, p.restart);
  },
});

export type AudioSourceParams = Static<typeof AudioParams>;
