import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AudioSensor, type AudioOptions } from '../../../../drivers/sensors/audio.js';
import { SensorError } from '../../../../drivers/sensors/errors.js';
import { FFMPEG } from './processes.js';

const GOFORWARD = path.resolve(import.meta.dirname, '../../../fixtures/audio/goforward.raw'); // 16 kHz s16le mono, 44580 samples
const RAW_16K = ['-f', 's16le', '-ar', '16000', '-ac', '1'];

interface Frame {
  readonly sensorTimeNs: bigint;
  readonly arrivalMs: number;
  readonly samples: Float32Array;
  readonly channels: number;
  readonly sampleRate: number;
}

/** Reads up to `limit` frames, copying the samples (their buffers are reused). */
async function collect(options: AudioOptions, limit = Infinity): Promise<Frame[]> {
  const out: Frame[] = [];
  for await (const m of new AudioSensor(options).messages(new AbortController().signal)) {
    out.push({ sensorTimeNs: m.sensorTimeNs, arrivalMs: m.arrivalMs, samples: m.value.samples.slice(), channels: m.value.channels, sampleRate: m.value.sampleRate });
    if (out.length >= limit) break;
  }
  return out;
}

function pcm16(file: string): Int16Array {
  const bytes = readFileSync(file);
  return new Int16Array(bytes.buffer, bytes.byteOffset, bytes.length / 2);
}

describe.skipIf(FFMPEG === undefined)('AudioSensor on real speech (ffmpeg)', () => {
  it('frames of exactly frameSize samples equal to the raw file / 32768, last frame zero-padded, 32 ms apart', async () => {
    const raw = pcm16(GOFORWARD);
    expect(raw.length).toBe(44_580);
    const frames = await collect({ url: GOFORWARD, inputOptions: RAW_16K, frameSize: 512, realtime: false });
    expect(frames).toHaveLength(Math.ceil(44_580 / 512)); // 88: 87 full frames and 36 samples
    for (const [k, f] of frames.entries()) {
      expect(f.samples).toHaveLength(512);
      expect(f.sampleRate).toBe(16_000);
      expect(f.channels).toBe(1);
      for (let i = 0; i < 512; i++) {
        const s = k * 512 + i;
        expect(f.samples[i]).toBe(s < raw.length ? (raw[s] as number) / 32768 : 0);
      }
    }
    // The speech is really there: the loudest sample is a large fraction of full scale.
    const peak = Math.max(...frames.map((f) => Math.max(...f.samples.map(Math.abs))));
    expect(peak).toBeGreaterThan(0.1);
    const steps = frames.slice(1).map((f, k) => f.sensorTimeNs - (frames[k] as Frame).sensorTimeNs);
    expect(steps).toEqual(Array(87).fill(32_000_000n)); // 512 / 16000 s
  });

  it('resamples and upmixes: 8 kHz stereo has half the frames per second and identical channels', async () => {
    const frames = await collect({ url: GOFORWARD, inputOptions: RAW_16K, sampleRate: 8000, channels: 2, frameSize: 160, realtime: false });
    expect(frames.length).toBe(Math.ceil(22_290 / 160));
    for (const f of frames) {
      expect(f.samples).toHaveLength(320);
      for (let i = 0; i < 320; i += 2) expect(f.samples[i]).toBe(f.samples[i + 1]);
    }
    expect((frames[1] as Frame).sensorTimeNs - (frames[0] as Frame).sensorTimeNs).toBe(20_000_000n);
  });

  it('realtime delivers each frame when its last sample would have been captured', async () => {
    const started = performance.now();
    const frames = await collect({ url: GOFORWARD, inputOptions: RAW_16K, frameSize: 1600, realtime: true }, 6);
    const elapsed = performance.now() - started;
    // Frame k (100 ms each) is due 100·(k+1) ms after the first arrived: 600 ms for six.
    expect(elapsed).toBeGreaterThanOrEqual(590);
    expect(elapsed).toBeLessThan(1000);
    const gaps = frames.slice(1).map((f, k) => f.arrivalMs - (frames[k] as Frame).arrivalMs);
    for (const gap of gaps) expect(gap).toBeGreaterThan(60);
  });

  it('loop keeps the sample clock running across the restart of the file', async () => {
    const frames = await collect({ url: GOFORWARD, inputOptions: RAW_16K, frameSize: 4458, realtime: false, loop: true }, 25);
    // 44580 = 10 × 4458: frame 10 starts the second pass.
    expect(Array.from((frames[10] as Frame).samples)).toEqual(Array.from((frames[0] as Frame).samples));
    expect((frames[24] as Frame).sensorTimeNs - (frames[0] as Frame).sensorTimeNs).toBe((24n * 4458n * 1_000_000_000n) / 16_000n);
  });

  it('a missing file is EAI_SENSOR_NOT_FOUND', async () => {
    await expect(collect({ url: '/nonexistent/speech.wav' })).rejects.toMatchObject({ code: 'EAI_SENSOR_NOT_FOUND' });
  });

  it('a file without an audio stream is EAI_SENSOR_FFMPEG_EXIT quoting ffmpeg', async () => {
    const video = path.resolve(import.meta.dirname, '../../../fixtures/video/vtest-3s.avi');
    const error = await collect({ url: video, realtime: false }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SensorError);
    expect((error as SensorError).code).toBe('EAI_SENSOR_FFMPEG_EXIT');
    expect((error as SensorError).message).toMatch(/matches no streams/u);
  });
});

describe('AudioSensor arguments', () => {
  it('asks ffmpeg for float32 at the rate and channels wanted, from ALSA devices as live input', () => {
    const mic = new AudioSensor({ url: 'alsa:hw:1,0', sampleRate: 48_000, channels: 2 });
    expect(mic.live).toBe(true);
    expect(mic.args()).toEqual(['-loglevel', 'error', '-f', 'alsa', '-i', 'hw:1,0', '-map', '0:a:0', '-vn', '-sn', '-ac', '2', '-ar', '48000', '-c:a', 'pcm_f32le', '-f', 'f32le', 'pipe:1']);
    expect(new AudioSensor({ url: 'speech.wav' }).args()).toContain('-xerror');
  });

  it('rejects impossible options with EAI_SENSOR_CONFIG', () => {
    expect(() => new AudioSensor({ url: 'a.wav', frameSize: 0 })).toThrow(expect.objectContaining({ code: 'EAI_SENSOR_CONFIG' }));
    expect(() => new AudioSensor({ url: 'a.wav', sampleRate: 44_100.5 })).toThrow(/sampleRate/u);
  });
});
