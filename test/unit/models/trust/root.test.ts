import { readFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AiosError } from '../../../../drivers/errors.js';
import { generateSigningKey, signBytes, type SigningKey } from '../../../../models/keys.js';
import { canonicalize } from '../../../../models/trust/canonical-json.js';
import {
  addKey,
  bumpVersion,
  checkRoleSignatures,
  createRoot,
  expiresAt,
  isExpired,
  parseRoot,
  removeKey,
  rfc3339,
  rootSigningBytes,
  serializeRoot,
  setThreshold,
  signRoot,
  TrustError,
  verifyRoleSignatures,
  verifyRoot,
  verifyRotation,
  type Root,
} from '../../../../models/trust/root.js';

const EXPIRES = '2030-01-01T00:00:00Z';
const [r1, r2, r3, m1, m2, d1, outsider] = Array.from({ length: 7 }, generateSigningKey) as [SigningKey, SigningKey, SigningKey, SigningKey, SigningKey, SigningKey, SigningKey];

function baseRoot(): Root {
  return createRoot({
    expires: EXPIRES,
    roles: { root: { keys: [r1, r2, r3], threshold: 2 }, models: { keys: [m1, m2], threshold: 1 }, deploy: { keys: [d1], threshold: 1 } },
  });
}

function thrown(fn: () => unknown): AiosError {
  try {
    fn();
  } catch (e) {
    if (e instanceof AiosError) return e;
    throw e;
  }
  throw new Error('expected an error');
}

describe('root format', () => {
  it('creates a TUF-shaped root whose key ids are the SHA-256 of the raw key, and round-trips through JSON', () => {
    const root = signRoot(baseRoot(), [r1, r2]);
    expect(root.signed).toMatchObject({ _type: 'root', spec_version: '1.0', version: 1, expires: EXPIRES });
    expect(root.signed.keys[r1.keyid]).toEqual({ keytype: 'ed25519', scheme: 'ed25519', keyval: { public: expect.stringMatching(/^[0-9a-f]{64}$/u) } });
    expect(root.signed.roles.root).toEqual({ keyids: [r1.keyid, r2.keyid, r3.keyid], threshold: 2 });
    expect(root.signatures.map((s) => s.keyid)).toEqual([r1.keyid, r2.keyid]);
    expect(root.signatures[0]?.sig).toMatch(/^[0-9a-f]{128}$/u);
    const again = parseRoot(serializeRoot(root));
    expect(again).toEqual(root);
    expect(Object.isFrozen(again.signed.roles.root.keyids)).toBe(true);
    expect(verifyRoot(again).keyids).toEqual([r1.keyid, r2.keyid]);
    // The signature covers the canonical JSON, so whitespace and member order in the file do not matter.
    expect(verifyRoot(parseRoot(Buffer.from(JSON.stringify({ signatures: root.signatures, signed: root.signed })))).keyids).toHaveLength(2);
    expect(rootSigningBytes(root.signed).toString()).toBe(canonicalize(root.signed));
  });

  it('reads and verifies the example in docs/trust.md', () => {
    const doc = readFileSync(path.resolve(import.meta.dirname, '../../../../docs/trust.md'), 'utf8');
    const example = /```json\n(\{\n  "signed"[\s\S]*?)\n```/u.exec(doc)?.[1];
    expect(example).toBeDefined();
    const root = parseRoot(example ?? '', 'docs/trust.md');
    expect(verifyRoot(root).keyids).toHaveLength(2);
    expect(serializeRoot(root)).toBe(`${example ?? ''}\n`);
  });

  it('reports every structural problem at once', () => {
    const root = signRoot(baseRoot(), [r1, r2]);
    const bad = JSON.parse(serializeRoot(root)) as { signed: Record<string, unknown> & { roles: Record<string, Record<string, unknown>>; keys: Record<string, unknown> }; signatures: unknown[] };
    bad.signed.spec_version = '2.0';
    bad.signed.expires = '2030-02-30T00:00:00Z';
    bad.signed.roles.models = { keyids: [m1.keyid], threshold: 2 };
    bad.signed.roles.deploy = { keyids: [d1.keyid], treshold: 1 };
    bad.signed.extra = true;
    bad.signatures.push({ keyid: r3.keyid, sig: 'AB'.repeat(64) });
    const error = thrown(() => parseRoot(bad, 'root.json'));
    expect(error).toBeInstanceOf(TrustError);
    expect(error.code).toBe('EAI_TRUST_ROOT_INVALID');
    const issues = error.details.issues as string[];
    expect(issues.join('\n')).toMatch(/signed: unknown field 'extra'/u);
    expect(issues.join('\n')).toMatch(/spec_version/u);
    expect(issues.join('\n')).toMatch(/signed\.expires/u);
    expect(issues.join('\n')).toMatch(/roles\.models\.threshold/u);
    expect(issues.join('\n')).toMatch(/roles\.deploy: unknown field 'treshold'/u);
    expect(issues.join('\n')).toMatch(/signatures\[2\]\.sig/u);
  });

  it('refuses a key listed under an id that is not its hash (one key must not count twice)', () => {
    const root = JSON.parse(serializeRoot(baseRoot())) as { signed: { keys: Record<string, unknown>; roles: { root: { keyids: string[] } } } };
    const fake = 'f'.repeat(64);
    root.signed.keys[fake] = root.signed.keys[r1.keyid];
    root.signed.roles.root.keyids.push(fake);
    expect(thrown(() => parseRoot(root)).details.issues).toContainEqual(expect.stringMatching(/signed\.keys\.f{64}: the key id is not the SHA-256 of its public key/u));
  });

  it('refuses text that is not UTF-8 JSON, and roles it does not know', () => {
    expect(thrown(() => parseRoot(Buffer.from([0x7b, 0xff, 0x7d]))).code).toBe('EAI_TRUST_ROOT_INVALID');
    expect(thrown(() => parseRoot('{"signed":')).code).toBe('EAI_TRUST_ROOT_INVALID');
    const root = JSON.parse(serializeRoot(baseRoot())) as { signed: { roles: Record<string, unknown> } };
    root.signed.roles.targets = root.signed.roles.models;
    delete root.signed.roles.deploy;
    const issues = thrown(() => parseRoot(root)).details.issues as string[];
    expect(issues).toEqual([expect.stringMatching(/unknown role\(s\) 'targets'/u), expect.stringMatching(/roles\.deploy: missing/u)]);
  });

  it('reads RFC 3339 times strictly', () => {
    expect(rfc3339('2030-01-01T00:00:00Z')).toBe(Date.UTC(2030, 0, 1));
    expect(rfc3339('2030-01-01T02:30:00+02:30')).toBe(Date.UTC(2030, 0, 1));
    expect(rfc3339('2029-12-31T23:00:00.5-01:00')).toBe(Date.UTC(2030, 0, 1, 0, 0, 0, 500));
    expect(rfc3339('2024-02-29T00:00:00Z')).toBe(Date.UTC(2024, 1, 29));
    for (const bad of ['2023-02-29T00:00:00Z', '2030-13-01T00:00:00Z', '2030-01-01T24:00:00Z', '2030-01-01 00:00:00Z', '2030-01-01T00:00:00', '2030-01-01']) expect(rfc3339(bad), bad).toBeUndefined();
    const root = baseRoot();
    expect(expiresAt(root.signed).toISOString()).toBe('2030-01-01T00:00:00.000Z');
    expect(isExpired(root.signed, new Date('2029-12-31T23:59:59Z'))).toBe(false);
    expect(isExpired(root.signed, new Date(EXPIRES))).toBe(true);
  });
});

describe('role signatures', () => {
  const root = baseRoot().signed;
  const message = Buffer.from('a bundle manifest');
  const sig = (key: SigningKey, bytes: Uint8Array = message): { keyid: string; sig: string } => ({ keyid: key.keyid, sig: signBytes(key, bytes).toString('hex') });

  it('passes when a threshold of distinct role keys signed, and says which', () => {
    expect(verifyRoleSignatures(root, 'root', message, [sig(r1), sig(r3)])).toEqual({ role: 'root', rootVersion: 1, threshold: 2, keyids: [r1.keyid, r3.keyid], rejected: [] });
  });

  it('fails below the threshold with EAI_TRUST_THRESHOLD', () => {
    const error = thrown(() => verifyRoleSignatures(root, 'root', message, [sig(r1)]));
    expect(error.code).toBe('EAI_TRUST_THRESHOLD');
    expect(error.message).toMatch(/needs signatures from 2 distinct root key\(s\) of trust root v1 and has 1/u);
    expect(thrown(() => verifyRoleSignatures(root, 'models', message, [])).code).toBe('EAI_TRUST_THRESHOLD');
  });

  it('counts a key that signs twice once', () => {
    const error = thrown(() => verifyRoleSignatures(root, 'root', message, [sig(r1), sig(r1)]));
    expect(error.code).toBe('EAI_TRUST_THRESHOLD');
    expect(error.details.rejected).toEqual([{ keyid: r1.keyid, reason: 'duplicate' }]);
  });

  it('ignores unknown keys and keys of other roles, and names them when the threshold is not met', () => {
    const ok = verifyRoleSignatures(root, 'models', message, [sig(outsider), sig(d1), sig(m2)]);
    expect(ok.keyids).toEqual([m2.keyid]);
    expect(ok.rejected).toEqual([
      { keyid: outsider.keyid, reason: 'unknown-key' },
      { keyid: d1.keyid, reason: 'not-in-role' },
    ]);
    const error = thrown(() => verifyRoleSignatures(root, 'models', message, [sig(outsider), sig(d1)]));
    expect(error.code).toBe('EAI_TRUST_UNKNOWN_KEY');
    expect(error.message).toMatch(/newer trust root/u);
  });

  it('names a signature that does not verify EAI_TRUST_SIGNATURE_INVALID', () => {
    expect(thrown(() => verifyRoleSignatures(root, 'models', message, [sig(m1, Buffer.from('another manifest'))])).code).toBe('EAI_TRUST_SIGNATURE_INVALID');
    expect(thrown(() => verifyRoleSignatures(root, 'models', message, [{ keyid: m1.keyid, sig: 'not a signature' }])).code).toBe('EAI_TRUST_SIGNATURE_INVALID');
    expect(checkRoleSignatures(root, 'models', message, [{ keyid: m1.keyid, sig: new Uint8Array(10) }]).rejected).toEqual([{ keyid: m1.keyid, reason: 'bad-signature' }]);
  });

  it('takes signatures as bytes, hex, base64 (DSSE) or base64url', () => {
    const raw = signBytes(m1, message);
    for (const s of [raw, raw.toString('hex'), raw.toString('base64'), raw.toString('base64url')]) {
      expect(verifyRoleSignatures(root, 'models', message, [{ keyid: m1.keyid, sig: s }]).keyids).toEqual([m1.keyid]);
    }
  });

  it('rejects every random change to a signed root (property)', () => {
    // n-of-n, so that a change to any one signature matters too.
    const signed = signRoot(setThreshold(baseRoot(), 'root', 3), [r1, r2, r3]);
    const original = Buffer.from(JSON.stringify(signed));
    fc.assert(
      fc.property(fc.uniqueArray(fc.record({ at: fc.nat({ max: original.length - 1 }), byte: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 3, selector: (e) => e.at }), (edits) => {
        const bytes = Buffer.from(original);
        for (const { at, byte } of edits) bytes[at] = byte;
        fc.pre(!bytes.equals(original));
        let error: unknown;
        try {
          verifyRoot(parseRoot(bytes));
        } catch (e) {
          error = e;
        }
        expect(error).toBeInstanceOf(TrustError);
      }),
      { numRuns: 1000 },
    );
  });
});

describe('authoring', () => {
  it('drops signatures on any change and keeps others when a holder signs again', () => {
    const signed = signRoot(baseRoot(), [r1, r2]);
    expect(signRoot(signed, [r3, r1]).signatures.map((s) => s.keyid)).toEqual([r2.keyid, r3.keyid, r1.keyid]);
    expect(signRoot(signed, [r1, r1]).signatures).toHaveLength(2);
    const edited = [addKey(signed, 'models', outsider), removeKey(signed, 'models', m2), setThreshold(signed, 'root', 3), bumpVersion(signed)];
    for (const root of edited) expect(root.signatures).toEqual([]);
  });

  it('adds and removes keys, keeping a key another role still uses', () => {
    let root = addKey(baseRoot(), 'deploy', m1);
    expect(root.signed.roles.deploy.keyids).toEqual([d1.keyid, m1.keyid]);
    expect(addKey(root, 'deploy', m1).signed.roles.deploy.keyids).toHaveLength(2);
    root = removeKey(root, 'models', m1.keyid);
    expect(root.signed.roles.models.keyids).toEqual([m2.keyid]);
    expect(Object.keys(root.signed.keys)).toContain(m1.keyid);
    root = removeKey(root, 'deploy', m1);
    expect(Object.keys(root.signed.keys)).not.toContain(m1.keyid);
  });

  it('refuses to leave a role with fewer keys than its threshold', () => {
    const error = thrown(() => removeKey(baseRoot(), 'deploy', d1));
    expect(error.code).toBe('EAI_TRUST_ROOT_INVALID');
    expect(error.message).toMatch(/below its threshold of 1/u);
    expect(thrown(() => removeKey(baseRoot(), 'deploy', outsider)).code).toBe('EAI_TRUST_ROOT_INVALID');
    expect(thrown(() => setThreshold(baseRoot(), 'models', 3)).code).toBe('EAI_TRUST_ROOT_INVALID');
    expect(thrown(() => createRoot({ expires: new Date(Number.NaN), roles: { root: { keys: [r1], threshold: 1 }, models: { keys: [m1], threshold: 1 }, deploy: { keys: [d1], threshold: 1 } } })).code).toBe('EAI_TRUST_ROOT_INVALID');
  });

  it('bumps the version and optionally the expiry', () => {
    const next = bumpVersion(baseRoot(), { expires: new Date(Date.UTC(2031, 5, 1, 12)) });
    expect(next.signed.version).toBe(2);
    expect(next.signed.expires).toBe('2031-06-01T12:00:00Z');
  });
});

describe('verifyRotation', () => {
  const v1 = signRoot(baseRoot(), [r1, r2]);
  // v2 revokes r3 and adds a new root key; the threshold stays 2.
  const fresh = generateSigningKey();
  const v2unsigned = addKey(removeKey(bumpVersion(v1), 'root', r3), 'root', fresh);

  it('accepts N+1 signed by a threshold of the old root keys and of its own', () => {
    const { byTrusted, bySelf } = verifyRotation(v1.signed, signRoot(v2unsigned, [r1, r2, fresh]));
    expect(byTrusted.keyids).toEqual([r1.keyid, r2.keyid]);
    expect(bySelf.keyids).toEqual([r1.keyid, r2.keyid, fresh.keyid]);
  });

  it('rejects N+1 without the old threshold, or without its own', () => {
    // r2 + fresh: two of the new keys, but only one of the old root's.
    expect(thrown(() => verifyRotation(v1.signed, signRoot(v2unsigned, [r2, fresh]))).message).toMatch(/checked against the trusted root v1/u);
    // r1 + r3: the old threshold, but r3 is revoked in v2, so only one of its own.
    const error = thrown(() => verifyRotation(v1.signed, signRoot(v2unsigned, [r1, r3])));
    expect(error.code).toBe('EAI_TRUST_UNKNOWN_KEY');
    expect(error.message).toMatch(/checked against its own root keys/u);
  });

  it('rejects older, equal and skipped versions', () => {
    expect(thrown(() => verifyRotation(v1.signed, v1)).code).toBe('EAI_TRUST_ROLLBACK');
    const v3 = signRoot(bumpVersion(v2unsigned), [r1, r2, fresh]);
    const error = thrown(() => verifyRotation(v1.signed, v3));
    expect(error.code).toBe('EAI_TRUST_VERSION_SKIP');
    expect(error.message).toMatch(/apply 2\.root\.json first/u);
  });
});
