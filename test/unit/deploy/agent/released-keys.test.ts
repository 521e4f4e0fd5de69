import { describe, expect, it } from 'vitest';
import { ReleasedKeys } from '../../../../deploy/agent/released-keys.js';

describe('released model keys on the device', () => {
  it('hands a key to the deployment waiting for it, or to one that asks after it arrived', async () => {
    const keys = new ReleasedKeys({ device: 'robot-1', signal: new AbortController().signal });
    const waiting = keys.wait('face-2');
    keys.put('face-2', Buffer.from('k2'));
    await expect(waiting).resolves.toEqual(Buffer.from('k2'));
    keys.put('face-3', Buffer.from('k3'));
    expect(keys.has('face-3')).toBe(true);
    await expect(keys.wait('face-3')).resolves.toEqual(Buffer.from('k3'));
  });

  it('gives up after its wait with EAI_OTA_KEY_NOT_RELEASED, and with EAI_OTA_CANCELLED when the agent stops', async () => {
    const stop = new AbortController();
    const keys = new ReleasedKeys({ device: 'robot-1', signal: stop.signal, waitMs: 20 });
    await expect(keys.wait('face-4')).rejects.toMatchObject({ code: 'EAI_OTA_KEY_NOT_RELEASED' });
    const slow = new ReleasedKeys({ device: 'robot-1', signal: stop.signal, waitMs: 60_000 });
    const waiting = slow.wait('face-5');
    stop.abort();
    await expect(waiting).rejects.toMatchObject({ code: 'EAI_OTA_CANCELLED' });
  });
});
