import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSigningKey } from '../../../../models/keys.js';
import { channelKind, verifyChannelRecord } from '../../../../models/registry/channel-record.js';
import { Registry } from '../../../../models/registry/registry.js';
import { createRoot, signRoot } from '../../../../models/trust/root.js';
import { TrustStore } from '../../../../models/trust/trust-store.js';
import { faceMetadata, makeBundle, pub, tempDir } from './fixtures.js';

const rootKey = generateSigningKey();
const release = generateSigningKey();
const mallory = generateSigningKey();
const policy = { keys: [pub(release)], threshold: 1 };
const { dir: tmp, cleanup } = tempDir('aios-channels-test-');
let reg: Registry;
let clock = new Date('2026-02-01T00:00:00Z');

beforeAll(async () => {
  reg = await Registry.open(path.join(tmp, 'reg'), { now: () => clock });
  for (const [v, parent] of [['1.0.0', undefined], ['1.1.0', '1.0.0'], ['1.2.0', '1.1.0']] as const) {
    await reg.push(await makeBundle(tmp, release, faceMetadata(v, parent === undefined ? {} : { parentVersion: parent })), policy);
  }
});
afterAll(() => {
  reg.close();
  cleanup();
});

describe('channels', () => {
  it('set and rollback are new signed releases with strictly increasing metadataVersion', async () => {
    const a = await reg.setChannel('blazeface-front', 'stable', '1.0.0', release);
    const b = await reg.setChannel('blazeface-front', 'stable', '1.1.0', release);
    const c = await reg.setChannel('blazeface-front', 'stable', '1.2.0', release);
    expect([a.metadataVersion, b.metadataVersion, c.metadataVersion]).toEqual([1, 2, 3]);
    expect(c.from).toBe('1.1.0');
    const r = await reg.rollback('blazeface-front', 'stable', release);
    expect(r).toMatchObject({ version: '1.1.0', metadataVersion: 4, action: 'rollback', from: '1.2.0' });
    const r2 = await reg.rollback('blazeface-front', 'stable', release, { to: '1.0.0' });
    expect(r2).toMatchObject({ version: '1.0.0', metadataVersion: 5 });
    expect(reg.channel('blazeface-front', 'stable')).toMatchObject({ version: '1.0.0', metadataVersion: 5, manifestDigest: reg.show('blazeface-front', '1.0.0').manifestDigest });
    expect(reg.channelHistory('blazeface-front', 'stable').map((h) => [h.metadataVersion, h.version, h.action])).toEqual([
      [5, '1.0.0', 'rollback'], [4, '1.1.0', 'rollback'], [3, '1.2.0', 'set'], [2, '1.1.0', 'set'], [1, '1.0.0', 'set'],
    ]);
    expect(reg.show('blazeface-front', '1.0.0').channels).toEqual(['stable']);
    expect(reg.list()[0]?.channels).toEqual({ stable: '1.0.0' });
    await expect(reg.rollback('blazeface-front', 'stable', release, { to: '1.0.0' })).rejects.toMatchObject({ code: 'EAI_REGISTRY_ROLLBACK_SAME' });
    await reg.setChannel('blazeface-front', 'canary', '1.2.0', release);
    await expect(reg.rollback('blazeface-front', 'canary', release)).rejects.toMatchObject({ code: 'EAI_REGISTRY_ROLLBACK_NO_PREVIOUS' });
    await expect(reg.setChannel('blazeface-front', 'beta', '7.0.0', release)).rejects.toMatchObject({ code: 'EAI_REGISTRY_VERSION_UNKNOWN' });
    await expect(reg.setChannel('blazeface-front', 'bad/name', '1.0.0', release)).rejects.toMatchObject({ code: 'EAI_REGISTRY_NAME_INVALID' });
    expect(() => reg.channel('blazeface-front', 'beta')).toThrow(expect.objectContaining({ code: 'EAI_REGISTRY_CHANNEL_UNKNOWN' }));
  });

  it('a device accepts newer records and refuses a replayed older one', async () => {
    const root = signRoot(createRoot({ version: 1, expires: new Date('2030-01-01T00:00:00Z'), roles: { root: { keys: [pub(rootKey)], threshold: 1 }, models: { keys: [pub(release)], threshold: 1 }, deploy: { keys: [pub(release)], threshold: 1 } } }), [rootKey]);
    const store = await TrustStore.init(path.join(tmp, 'device-trust'), root);
    const first = await reg.setChannel('blazeface-front', 'beta', '1.2.0', release);
    const second = await reg.rollback('blazeface-front', 'beta', release, { to: '1.1.0' });
    expect(second.metadataVersion).toBeGreaterThan(first.metadataVersion);
    await expect(verifyChannelRecord(first.record, policy, store, { now: clock })).resolves.toMatchObject({ version: '1.2.0', metadataVersion: 1 });
    await expect(verifyChannelRecord(second.record, policy, store, { now: clock })).resolves.toMatchObject({ version: '1.1.0', metadataVersion: 2 });
    expect(store.highest(channelKind('blazeface-front', 'beta'))).toBe(2);
    // The attacker replays the older, validly signed record.
    await expect(verifyChannelRecord(first.record, policy, store, { now: clock })).rejects.toMatchObject({ code: 'EAI_REGISTRY_CHANNEL_REPLAYED' });
    await expect(verifyChannelRecord(second.record, policy, store, { now: clock })).rejects.toMatchObject({ code: 'EAI_REGISTRY_CHANNEL_REPLAYED' });
    await expect(verifyChannelRecord(second.record, policy, store, { now: clock, allowSame: true })).resolves.toMatchObject({ metadataVersion: 2 });
    // Survives a device restart.
    const reopened = await TrustStore.open(path.join(tmp, 'device-trust'));
    await expect(verifyChannelRecord(first.record, policy, reopened)).rejects.toMatchObject({ code: 'EAI_REGISTRY_CHANNEL_REPLAYED' });
  });

  it('refuses records signed by others, for another channel, or expired', async () => {
    const forged = await reg.setChannel('blazeface-front', 'nightly', '1.0.0', mallory);
    await expect(verifyChannelRecord(forged.record, policy)).rejects.toMatchObject({ code: 'EAI_BUNDLE_SIGNATURE_UNKNOWN_KEY' });
    const ok = await reg.setChannel('blazeface-front', 'nightly', '1.0.0', release, { expires: new Date('2026-03-01T00:00:00Z') });
    await expect(verifyChannelRecord(ok.record, policy, undefined, { now: clock, expect: { channel: 'stable' } })).rejects.toMatchObject({ code: 'EAI_REGISTRY_CHANNEL_INVALID' });
    await expect(verifyChannelRecord(ok.record, policy, undefined, { now: new Date('2026-04-01T00:00:00Z') })).rejects.toMatchObject({ code: 'EAI_REGISTRY_CHANNEL_EXPIRED' });
    const bytes = Buffer.from(JSON.stringify(ok.record));
    await expect(verifyChannelRecord(bytes, policy, undefined, { now: clock })).resolves.toMatchObject({ channel: 'nightly', metadataVersion: 2 });
    clock = new Date('2026-02-02T00:00:00Z');
  });
});
