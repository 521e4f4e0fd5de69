import { describe, expect, it } from 'vitest';
import type { Envelope } from '../../../../../../runtime/pipeline/definition.js';
import { callbackSink } from '../../../../../../runtime/pipeline/nodes/sinks/callback.js';
import { envelope, startSink } from './sink-context.js';

describe('callback sink', () => {
  it("hands each message, unchanged, to the callback registered under the sink's name", async () => {
    const got: Envelope[] = [];
    const callbacks = new Map<string, (m: Envelope) => void>([['results', (m) => got.push(m)], ['other', () => { throw new Error('wrong sink'); }]]);
    const sink = await startSink(callbackSink, {}, { name: 'results', callbacks });
    const value = { boxes: [], imageWidth: 1, imageHeight: 1 };
    await sink.send('detect.boxes', envelope(value, { seq: 3 }));
    expect(got).toHaveLength(1);
    expect(got[0]?.value).toBe(value);
    expect(got[0]?.seq).toBe(3);
    expect(sink.state.delivered).toBe(1);
  });

  it('drops messages silently while no callback is registered, counting them, and finds one registered later', async () => {
    const callbacks = new Map<string, (m: Envelope) => void>();
    const sink = await startSink(callbackSink, {}, { name: 'results', callbacks });
    await sink.send('in', envelope(1));
    await sink.send('in', envelope(2));
    expect(sink.state.unclaimed).toBe(2);
    expect(sink.warnings).toEqual([]);
    const got: unknown[] = [];
    callbacks.set('results', (m) => got.push(m.value));
    await sink.send('in', envelope(3));
    expect(got).toEqual([3]);
  });

  it('awaits a callback that returns a promise, so a slow consumer pushes back', async () => {
    const order: string[] = [];
    const slow = async (m: Envelope): Promise<void> => {
      await new Promise((r) => setTimeout(r, 20));
      order.push(`done ${String(m.value)}`);
    };
    const sink = await startSink(callbackSink, {}, { name: 'cb', callbacks: new Map([['cb', slow as (m: Envelope) => void]]) });
    await sink.send('in', envelope(1));
    order.push('process returned');
    expect(order).toEqual(['done 1', 'process returned']);
  });

  it('counts and reports a callback that throws or rejects, without failing the pipeline', async () => {
    let calls = 0;
    const bad = (): Promise<void> => {
      calls++;
      return calls === 1 ? Promise.reject(new Error('consumer broke')) : Promise.resolve();
    };
    const sink = await startSink(callbackSink, {}, { name: 'cb', callbacks: new Map([['cb', bad as (m: Envelope) => void]]) });
    await sink.send('detect.boxes', envelope(1));
    await sink.send('detect.boxes', envelope(2));
    expect(sink.state.problems.count('callback')).toBe(1);
    expect(sink.state.delivered).toBe(1);
    expect(sink.warnings).toEqual(['cb: the result callback failed on a message from detect.boxes: consumer broke']);
  });
});
