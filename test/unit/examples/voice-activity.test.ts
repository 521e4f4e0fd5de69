import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Pipeline } from '../../../runtime/pipeline/pipeline.js';

const repo = path.resolve(import.meta.dirname, '../../..');

describe('examples/pipelines/voice-activity.yaml', () => {
  it('finds the one utterance in the real recording: speech starts, then stops ~1.6 s later, no frame dropped', async () => {
    await rm(path.join(repo, 'out/voice-activity.jsonl'), { force: true });
    const pipeline = await Pipeline.fromFile(path.join(repo, 'examples/pipelines/voice-activity.yaml'), { statsIntervalMs: 0 });
    const done = pipeline.finished();
    await pipeline.start();
    await done;
    await pipeline.stop();
    const stats = Object.fromEntries(pipeline.stats().nodes.map((n) => [n.node, n]));
    // goforward.raw: 87 frames of 512 samples at 16 kHz; the VAD state needs every one of them.
    expect(stats['vad']).toMatchObject({ in: 87, out: 87, dropped: 0, errors: 0 });
    const events = (await readFile(path.join(repo, 'out/voice-activity.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { value: { state: string; probability: number; previousMs: number } });
    expect(events.map((e) => e.value.state)).toEqual(['active', 'inactive']);
    expect(events[0]?.value.probability).toBeGreaterThan(0.5);
    const speechMs = events[1]?.value.previousMs ?? 0;
    expect(speechMs).toBeGreaterThan(1000);
    expect(speechMs).toBeLessThan(2500);
  }, 60_000);
});
