import { mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { generateSigningKey, signBytes, type SigningKey } from '../../../../models/keys.js';
import { addKey, bumpVersion, createRoot, removeKey, serializeRoot, signRoot, type Root } from '../../../../models/trust/root.js';
import { STATE_FILE, TrustStore } from '../../../../models/trust/trust-store.js';

const [r1, r2, r3, r4, m1, m2, d1, attacker] = Array.from({ length: 8 }, generateSigningKey) as [SigningKey, SigningKey, SigningKey, SigningKey, SigningKey, SigningKey, SigningKey, SigningKey];
const T0 = new Date('2026-01-01T00:00:00Z');
const clock = { now: T0 };
const options = { now: (): Date => clock.now };

/** v1: root keys r1 r2 r3, threshold 2; models m1 m2 (1); deploy d1 (1); expires 2027. */
function v1(expires = '2027-01-01T00:00:00Z'): Root {
  return signRoot(createRoot({ expires, roles: { root: { keys: [r1, r2, r3], threshold: 2 }, models: { keys: [m1, m2], threshold: 1 }, deploy: { keys: [d1], threshold: 1 } } }), [r1, r2]);
}

const manifest = Buffer.from('{"name":"detector","version":"1.2.0"}');
const sig = (key: SigningKey, message: Uint8Array = manifest): { keyid: string; sig: string } => ({ keyid: key.keyid, sig: signBytes(key, message).toString('hex') });

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'aios-trust-'));
  clock.now = T0;
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('TrustStore: first use and persistence', () => {
  it('trusts the installer root on init and finds it again after reopening', async () => {
    const store = await TrustStore.init(dir, serializeRoot(v1()), options);
    expect(store.root.signed.version).toBe(1);
    await store.accept('bundle:detector', 7, { role: 'models' });
    await store.accept('deploy-seq', 1234, { role: 'deploy' });
    const again = await TrustStore.open(dir, options);
    expect(again.root).toEqual(store.root);
    expect(again.versions).toEqual({ 'bundle:detector': 7, 'deploy-seq': 1234 });
    const state = JSON.parse(await readFile(path.join(dir, STATE_FILE), 'utf8')) as Record<string, unknown>;
    expect(Object.keys(state)).toEqual(['format', 'root', 'versions', 'kindRoles']);
    expect(state).toMatchObject({ format: 'aios-trust-state/1', versions: { 'bundle:detector': 7, 'deploy-seq': 1234 }, kindRoles: { 'bundle:detector': 'models', 'deploy-seq': 'deploy' } });
    expect(await readdir(dir)).toEqual([STATE_FILE]);
  });

  it('refuses a first root that is not self-signed, a second init, and a directory with no state', async () => {
    const unsigned = createRoot({ expires: '2027-01-01T00:00:00Z', roles: { root: { keys: [r1, r2], threshold: 2 }, models: { keys: [m1], threshold: 1 }, deploy: { keys: [d1], threshold: 1 } } });
    await expect(TrustStore.init(dir, signRoot(unsigned, [r1]), options)).rejects.toMatchObject({ code: 'EAI_TRUST_THRESHOLD' });
    await expect(TrustStore.open(dir, options)).rejects.toMatchObject({ code: 'EAI_TRUST_NOT_INITIALISED' });
    await TrustStore.init(dir, v1(), options);
    await expect(TrustStore.init(dir, v1(), options)).rejects.toMatchObject({ code: 'EAI_TRUST_ALREADY_INITIALISED' });
    // A directory that cannot be made (a file is in the way).
    await expect(TrustStore.init(path.join(dir, STATE_FILE, 'trust'), v1(), options)).rejects.toMatchObject({ code: 'EAI_TRUST_STATE_WRITE' });
  });

  it('keeps the previous state when a write was cut short (a temp file left behind)', async () => {
    const store = await TrustStore.init(dir, v1(), options);
    await store.accept('bundle:detector', 3);
    const before = await readFile(path.join(dir, STATE_FILE), 'utf8');
    // What a power cut mid-write leaves: a truncated temporary file, the rename never done.
    const stale = path.join(dir, `${STATE_FILE}.4242.0123456789ab.tmp`);
    const fresh = path.join(dir, `${STATE_FILE}.4243.0123456789ab.tmp`);
    await writeFile(stale, before.slice(0, before.length / 2));
    await writeFile(fresh, '{"format":');
    await utimes(stale, new Date(Date.now() - 3_600_000), new Date(Date.now() - 3_600_000));
    const again = await TrustStore.open(dir, options);
    expect(again.highest('bundle:detector')).toBe(3);
    expect(await readFile(path.join(dir, STATE_FILE), 'utf8')).toBe(before);
    // The hour-old leftover is cleaned; a recent one may belong to a write in progress.
    expect((await readdir(dir)).sort()).toEqual([STATE_FILE, path.basename(fresh)]);
    await again.accept('bundle:detector', 4);
    expect((await TrustStore.open(dir, options)).highest('bundle:detector')).toBe(4);
  });

  it('reports a damaged state.json instead of starting over', async () => {
    await TrustStore.init(dir, v1(), options);
    const file = path.join(dir, STATE_FILE);
    const text = await readFile(file, 'utf8');
    await writeFile(file, text.slice(0, 100));
    await expect(TrustStore.open(dir, options)).rejects.toMatchObject({ code: 'EAI_TRUST_STATE_CORRUPT' });
    // An edited root (its signatures no longer match) is damage too.
    await writeFile(file, text.replace('"version": 1', '"version": 9'));
    await expect(TrustStore.open(dir, options)).rejects.toMatchObject({ code: 'EAI_TRUST_STATE_CORRUPT' });
    await writeFile(file, text.replace('"versions": {}', '"versions": {"bundle:x": -1}'));
    await expect(TrustStore.open(dir, options)).rejects.toMatchObject({ code: 'EAI_TRUST_STATE_CORRUPT' });
  });
});

describe('TrustStore: anti-rollback of metadata', () => {
  it('refuses an older version, and the same one unless the caller allows it', async () => {
    const store = await TrustStore.init(dir, v1(), options);
    await store.accept('bundle:detector', 7);
    await expect(store.accept('bundle:detector', 6)).rejects.toMatchObject({ code: 'EAI_TRUST_ROLLBACK', details: { kind: 'bundle:detector', version: 6, highest: 7 } });
    await expect(store.accept('bundle:detector', 7)).rejects.toMatchObject({ code: 'EAI_TRUST_ROLLBACK' });
    await store.accept('bundle:detector', 7, { allowEqual: true });
    await store.accept('bundle:other', 1);
    await store.accept('bundle:detector', 8);
    const again = await TrustStore.open(dir, options);
    await expect(again.accept('bundle:detector', 7, { allowEqual: true })).rejects.toMatchObject({ code: 'EAI_TRUST_ROLLBACK' });
    expect(again.versions).toEqual({ 'bundle:detector': 8, 'bundle:other': 1 });
  });

  it('applies overlapping calls one at a time, in order', async () => {
    const store = await TrustStore.init(dir, v1(), options);
    await Promise.all(Array.from({ length: 20 }, (_, i) => store.accept('deploy-seq', i + 1)));
    expect((await TrustStore.open(dir, options)).highest('deploy-seq')).toBe(20);
  });

  it('checks its arguments, including names that are Object.prototype members', async () => {
    const store = await TrustStore.init(dir, v1(), options);
    await expect(store.accept('', 1)).rejects.toMatchObject({ code: 'EAI_TRUST_ACCEPT_INVALID' });
    await expect(store.accept('x', 1.5)).rejects.toMatchObject({ code: 'EAI_TRUST_ACCEPT_INVALID' });
    await expect(store.accept('x', -1)).rejects.toMatchObject({ code: 'EAI_TRUST_ACCEPT_INVALID' });
    await store.accept('x', 1, { role: 'models' });
    await expect(store.accept('x', 2, { role: 'deploy' })).rejects.toMatchObject({ code: 'EAI_TRUST_ACCEPT_INVALID' });
    for (const kind of ['constructor', '__proto__', 'toString']) await store.accept(kind, 0, { role: 'deploy' });
    const again = await TrustStore.open(dir, options);
    expect(again.highest('__proto__')).toBe(0);
    expect(again.highest('hasOwnProperty')).toBeUndefined();
  });
});

describe('TrustStore: rotation', () => {
  /** v2 revokes r3 and m2 and adds r4: signed by v1's r1 r2 and its own r1 r4. */
  function v2(expires = '2028-01-01T00:00:00Z'): Root {
    const next = addKey(removeKey(removeKey(bumpVersion(v1(), { expires }), 'root', r3), 'models', m2), 'root', r4);
    return signRoot(next, [r1, r2, r4]);
  }

  it('moves to N+1 signed by both thresholds; revoked keys stop counting', async () => {
    const store = await TrustStore.init(dir, v1(), options);
    expect(store.verifyRole('models', manifest, [sig(m2)]).keyids).toEqual([m2.keyid]);
    expect(await store.updateRoot(serializeRoot(v2()))).toEqual({ from: 1, to: 2, changed: true, expired: false, reset: [] });
    expect((await TrustStore.open(dir, options)).root.signed.version).toBe(2);
    await expect(Promise.resolve().then(() => store.verifyRole('models', manifest, [sig(m2)]))).rejects.toMatchObject({ code: 'EAI_TRUST_UNKNOWN_KEY' });
    expect(store.verifyRole('models', manifest, [sig(m2), sig(m1)]).rejected).toEqual([{ keyid: m2.keyid, reason: 'unknown-key' }]);
    // r3, revoked in v2, no longer helps sign v3.
    const v3 = bumpVersion(v2());
    await expect(store.updateRoot(signRoot(v3, [r1, r3]))).rejects.toMatchObject({ code: 'EAI_TRUST_UNKNOWN_KEY' });
    expect((await store.updateRoot(signRoot(v3, [r1, r4]))).to).toBe(3);
  });

  it('rejects a rotation not signed by the old threshold, and leaves the state as it was', async () => {
    const store = await TrustStore.init(dir, v1(), options);
    const onlyNew = signRoot(bumpVersion(v1()), [r1]);
    await expect(store.updateRoot(onlyNew)).rejects.toMatchObject({ code: 'EAI_TRUST_THRESHOLD' });
    // A root the attacker made with their own keys: consistent with itself, unknown to v1.
    const forged = signRoot(createRoot({ version: 2, expires: '2099-01-01T00:00:00Z', roles: { root: { keys: [attacker], threshold: 1 }, models: { keys: [attacker], threshold: 1 }, deploy: { keys: [attacker], threshold: 1 } } }), [attacker]);
    await expect(store.updateRoot(forged)).rejects.toMatchObject({ code: 'EAI_TRUST_UNKNOWN_KEY' });
    expect(store.root.signed.version).toBe(1);
    expect((await TrustStore.open(dir, options)).root.signed.version).toBe(1);
  });

  it('rejects a skipped version, an older root and another root of the trusted version; the same root again is a no-op', async () => {
    const store = await TrustStore.init(dir, v1(), options);
    const v3 = signRoot(bumpVersion(v2()), [r1, r4]);
    await expect(store.updateRoot(v3)).rejects.toMatchObject({ code: 'EAI_TRUST_VERSION_SKIP' });
    await store.updateRoot(v2());
    await expect(store.updateRoot(v1())).rejects.toMatchObject({ code: 'EAI_TRUST_ROLLBACK' });
    const twin = signRoot(bumpVersion(v1(), { expires: '2029-01-01T00:00:00Z' }), [r1, r2]);
    await expect(store.updateRoot(twin)).rejects.toMatchObject({ code: 'EAI_TRUST_ROLLBACK' });
    expect(await store.updateRoot(v2())).toMatchObject({ from: 2, to: 2, changed: false });
  });

  it('walks a chain given in any order, skipping roots it already has', async () => {
    const store = await TrustStore.init(dir, v1(), options);
    const v3 = signRoot(bumpVersion(v2()), [r1, r4]);
    expect(await store.updateRoots([v3, v1(), serializeRoot(v2())])).toEqual({ from: 1, to: 3, changed: true, expired: false, reset: [] });
    expect((await TrustStore.open(dir, options)).root.signed.version).toBe(3);
    // A bad link keeps the progress made before it.
    await rm(dir, { recursive: true });
    const again = await TrustStore.init(dir, v1(), options);
    await expect(again.updateRoots([v2(), signRoot(bumpVersion(v2()), [r1, r3])])).rejects.toMatchObject({ code: 'EAI_TRUST_UNKNOWN_KEY' });
    expect((await TrustStore.open(dir, options)).root.signed.version).toBe(2);
  });

  it('forgets the highest version of kinds whose role lost a key (fast-forward recovery)', async () => {
    const store = await TrustStore.init(dir, v1(), options);
    // m2 was stolen and signed an absurd version; the fleet revokes m2 in v2.
    await store.accept('bundle:detector', Number.MAX_SAFE_INTEGER, { role: 'models' });
    await store.accept('deploy-seq', 55, { role: 'deploy' });
    await store.accept('unbound', 3);
    expect(await store.updateRoot(v2())).toMatchObject({ reset: ['bundle:detector'] });
    expect(store.highest('bundle:detector')).toBeUndefined();
    expect(store.versions).toEqual({ 'deploy-seq': 55, unbound: 3 });
    await store.accept('bundle:detector', 8);
    expect((await TrustStore.open(dir, options)).highest('bundle:detector')).toBe(8);
  });

  it('sees a rotation another process made, and refuses a state file replaced by an older copy', async () => {
    const agent = await TrustStore.init(dir, v1(), options);
    const oldCopy = await readFile(path.join(dir, STATE_FILE));
    const cli = await TrustStore.open(dir, options);
    await cli.updateRoot(v2());
    await agent.accept('deploy-seq', 1);
    expect(agent.root.signed.version).toBe(2);
    await writeFile(path.join(dir, STATE_FILE), oldCopy);
    await expect(agent.accept('deploy-seq', 2)).rejects.toMatchObject({ code: 'EAI_TRUST_STATE_CORRUPT' });
  });
});

describe('TrustStore: expiry (freeze) and recovery', () => {
  const expired = new Date('2027-06-01T00:00:00Z');

  /** The successor an operator carries to a device that was offline past v1's expiry. */
  function successor(expires: string): Root {
    return signRoot(bumpVersion(v1(), { expires }), [r1, r2]);
  }

  it('fails every verification once the root is expired, with a code that says so', async () => {
    const store = await TrustStore.init(dir, v1(), options);
    expect(store.verifyRole('deploy', manifest, [sig(d1)], new Date('2026-12-31T23:59:59Z')).keyids).toEqual([d1.keyid]);
    clock.now = expired;
    expect(store.isExpired()).toBe(true);
    let error: unknown;
    try {
      store.verifyRole('deploy', manifest, [sig(d1)]);
    } catch (e) {
      error = e;
    }
    expect(error).toMatchObject({ code: 'EAI_TRUST_ROOT_EXPIRED', details: { rootVersion: 1, expires: '2027-01-01T00:00:00Z' } });
    expect((error as Error).message).toMatch(/aios trust rotate --file 2\.root\.json/u);
  });

  it('recovers through a successor signed by the expired root, carried out of band', async () => {
    const store = await TrustStore.init(dir, v1(), options);
    await store.accept('bundle:detector', 5, { role: 'models' });
    clock.now = expired;
    expect(await store.updateRoot(serializeRoot(successor('2028-06-01T00:00:00Z')))).toEqual({ from: 1, to: 2, changed: true, expired: false, reset: [] });
    expect(store.verifyRole('deploy', manifest, [sig(d1)]).rootVersion).toBe(2);
    // Anti-rollback survives the recovery.
    await expect(store.accept('bundle:detector', 4)).rejects.toMatchObject({ code: 'EAI_TRUST_ROLLBACK' });
  });

  it('takes an expired successor too (progress), but verification still waits for a current one', async () => {
    const store = await TrustStore.init(dir, v1('2026-06-01T00:00:00Z'), options);
    clock.now = expired;
    expect(await store.updateRoot(successor('2027-03-01T00:00:00Z'))).toMatchObject({ to: 2, expired: true });
    expect(() => store.verifyRole('deploy', manifest, [sig(d1)])).toThrow(expect.objectContaining({ code: 'EAI_TRUST_ROOT_EXPIRED' }));
    const v3 = signRoot(bumpVersion(successor('2027-03-01T00:00:00Z'), { expires: '2029-01-01T00:00:00Z' }), [r1, r2]);
    expect(await store.updateRoot(v3)).toMatchObject({ to: 3, expired: false });
    expect(store.verifyRole('deploy', manifest, [sig(d1)]).rootVersion).toBe(3);
  });

  it('gives an attacker nothing on the recovery path: unsigned, self-signed, older or same-version roots are refused', async () => {
    const store = await TrustStore.init(dir, v1(), options);
    await store.updateRoot(successor('2027-03-01T00:00:00Z'));
    clock.now = expired;
    const v2expired = store.root;
    const unsigned = bumpVersion(v2expired, { expires: '2099-01-01T00:00:00Z' });
    await expect(store.updateRoot(unsigned)).rejects.toMatchObject({ code: 'EAI_TRUST_THRESHOLD' });
    const forged = signRoot(addKey(unsigned, 'root', attacker), [attacker]);
    await expect(store.updateRoot(forged)).rejects.toMatchObject({ code: 'EAI_TRUST_UNKNOWN_KEY' });
    // The old v1 is signed correctly, and still older.
    await expect(store.updateRoot(v1('2099-01-01T00:00:00Z'))).rejects.toMatchObject({ code: 'EAI_TRUST_ROLLBACK' });
    // A different v2 with a later expiry, signed by v1's keys: the trusted version is never replaced.
    await expect(store.updateRoot(successor('2099-01-01T00:00:00Z'))).rejects.toMatchObject({ code: 'EAI_TRUST_ROLLBACK' });
    // A tampered copy of a good successor.
    const good = JSON.parse(serializeRoot(signRoot(bumpVersion(v2expired, { expires: '2030-01-01T00:00:00Z' }), [r1, r2]))) as { signed: { expires: string } };
    good.signed.expires = '2099-01-01T00:00:00Z';
    await expect(store.updateRoot(JSON.stringify(good))).rejects.toMatchObject({ code: 'EAI_TRUST_SIGNATURE_INVALID' });
    expect(store.root).toEqual(v2expired);
    expect(store.isExpired()).toBe(true);
  });
});
