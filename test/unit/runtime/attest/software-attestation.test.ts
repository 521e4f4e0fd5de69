import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSigningKey } from '../../../../models/keys.js';
import { ChallengeBook } from '../../../../runtime/attest/challenge.js';
import { decodeEvidence, encodeEvidence, type Evidence, type SoftwareEvidence } from '../../../../runtime/attest/evidence.js';
import { bytesDigest } from '../../../../runtime/attest/file-digest.js';
import type { Policy } from '../../../../runtime/attest/policy.js';
import { SoftwareAttester } from '../../../../runtime/attest/software-attester.js';
import { verifyEvidence } from '../../../../runtime/attest/verify.js';

/**
 * The software attester (no TPM) and the verifier's refusals that need no TPM: policy on the
 * evidence kind, signatures by the device key, the nonce book, and malformed evidence of every
 * shape answered with `untrusted`, never an exception.
 */
const RUNTIME = bytesDigest('runtime');
const policy: Policy = { requireTpm: false, maxAgeMs: 60_000, allowedRuntimeDigests: [RUNTIME], allowedTrustRootDigests: [], allowedPipelineConfigs: [], expectedModelBundles: [] };
const codes = (r: { reasons: readonly { code: string }[] }) => r.reasons.map((x) => x.code);

describe('software attestation', () => {
  let dir: string;
  const key = generateSigningKey();
  let attester: SoftwareAttester;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'aios-attest-sw-'));
    attester = await SoftwareAttester.open({ stateDir: dir, privateKey: key.privateKey, bootId: 'boot-1' });
    await attester.measure('runtime', 'aios@0.1.0', RUNTIME);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const answer = async (p: Policy = policy, device: { softwareKey?: Uint8Array | typeof key.publicKey } = { softwareKey: key.publicKey }) => {
    const book = new ChallengeBook();
    const challenge = book.issue('d');
    const evidence = await attester.evidence(challenge.nonce);
    return { evidence, challenge, verify: (e: Evidence = evidence) => verifyEvidence({ evidence: e, device, challenge, policy: p }) };
  };

  it('is accepted when the policy does not demand a TPM, and always says kind software', async () => {
    const { evidence, verify } = await answer();
    expect(evidence.kind).toBe('software');
    expect((evidence as SoftwareEvidence).keyid).toBe(key.keyid);
    const result = verify();
    expect([result.status, result.reasons, result.claims['aios.evidence-kind']]).toEqual(['trusted', [], 'software']);
    // The JSON form carries it too, and SPKI DER bytes work as the registered key.
    const der = key.publicKey.export({ type: 'spki', format: 'der' });
    expect(verifyEvidence({ evidence: decodeEvidence(encodeEvidence(evidence)), device: { softwareKey: der }, challenge: (await answer()).challenge, policy }).reasons.map((r) => r.code)).toEqual(['EAI_ATTEST_NONCE_MISMATCH']);
  });

  it('is refused when the policy demands a TPM', async () => {
    const result = (await answer({ ...policy, requireTpm: true })).verify();
    expect([result.status, codes(result)]).toEqual(['untrusted', ['EAI_ATTEST_KIND']]);
    expect(result.reasons[0]?.message).toMatch(/requires a TPM quote/u);
  });

  it('refuses another device key, an altered log, a replayed statement, and a device without a registered key', async () => {
    expect(codes((await answer(policy, { softwareKey: generateSigningKey().publicKey })).verify())).toEqual(['EAI_ATTEST_SIGNATURE']);
    const { evidence, verify } = await answer();
    const log = [{ ...evidence.log[0]!, time: '2030-01-01T00:00:00.000Z' }];
    expect(codes(verify({ ...evidence, log }))).toEqual(['EAI_ATTEST_LOG_REPLAY']);
    const next = await answer();
    expect(codes(next.verify({ ...evidence, nonce: next.challenge.nonce }))).toEqual(['EAI_ATTEST_QUOTE_NONCE']);
    expect(codes((await answer(policy, {})).verify())).toEqual(['EAI_ATTEST_NO_KEY']);
  });

  it('signs with an EC device key too', async () => {
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const a = await SoftwareAttester.open({ stateDir: mkdtempSync(path.join(dir, 'ec-')), privateKey: ec.privateKey, bootId: 'boot-1' });
    await a.measure('runtime', 'aios@0.1.0', RUNTIME);
    const book = new ChallengeBook();
    const challenge = book.issue('d');
    const evidence = await a.evidence(challenge.nonce);
    expect(verifyEvidence({ evidence, device: { softwareKey: ec.publicKey }, challenge: book.redeem('d', challenge.nonce), policy }).status).toBe('trusted');
    await expect(SoftwareAttester.open({ stateDir: dir, privateKey: ec.publicKey })).rejects.toMatchObject({ code: 'EAI_ATTEST_ARGUMENT' });
  });

  it('keeps its log and software PCR across a restart, and starts over on a new boot', async () => {
    const again = await SoftwareAttester.open({ stateDir: dir, privateKey: key.privateKey, bootId: 'boot-1' });
    expect(again.events).toEqual(attester.events);
    const rebooted = await SoftwareAttester.open({ stateDir: mkdtempSync(path.join(dir, 'copy-')), privateKey: key.privateKey, bootId: 'boot-2' });
    expect(rebooted.events).toEqual([]);
  });
});

describe('the nonce book', () => {
  it('answers each nonce once, per device, and forgets the oldest', () => {
    let now = 1_000;
    const book = new ChallengeBook({ keep: 2, clock: () => now });
    const a = book.issue('d1');
    expect(book.redeem('d2', a.nonce)).toBeUndefined();
    now = 2_000;
    expect(book.redeem('d1', a.nonce)).toEqual({ nonce: a.nonce, issuedAt: 1_000 });
    expect(book.redeem('d1', a.nonce)).toEqual({ nonce: a.nonce, issuedAt: 1_000, answeredAt: 2_000 });
    book.issue('d1');
    book.issue('d1');
    expect(book.redeem('d1', a.nonce)).toBeUndefined();
    expect(() => new ChallengeBook({ nonceBytes: 8 })).toThrow(/16 to 64 bytes/u);
  });
});

describe('malformed evidence is untrusted, never an exception', () => {
  const key = generateSigningKey();
  let good: SoftwareEvidence;
  let json: string;

  beforeAll(async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'aios-attest-bad-'));
    const a = await SoftwareAttester.open({ stateDir: dir, privateKey: key.privateKey, bootId: 'b' });
    await a.measure('runtime', 'aios@0.1.0', RUNTIME);
    good = await a.evidence(Buffer.alloc(32, 1));
    json = encodeEvidence(good);
    rmSync(dir, { recursive: true, force: true });
  });

  const verify = (evidence: unknown) => verifyEvidence({ evidence: evidence as Evidence, device: { softwareKey: key.publicKey }, challenge: { nonce: Buffer.alloc(32, 1), issuedAt: Date.now() }, policy });

  it('names the field at fault', () => {
    for (const [bad, why] of [
      [null, /evidence is not an object/u],
      [{ ...good, kind: 'sgx' }, /kind is "sgx"/u],
      [{ ...good, nonce: 'abc' }, /nonce is not bytes/u],
      [{ ...good, log: [{ ...good.log[0], type: 'firmware' }] }, /log\[0\] .*not one of runtime/u],
      [{ ...good, pcrs: [{ hash: 'sha256', index: 23, value: Buffer.alloc(20) }] }, /pcrs\[0\]\.value is 20 bytes, expected 32/u],
      [{ ...good, format: 'v0' }, /format is "v0"/u],
    ] as const) {
      const r = verify(bad);
      expect([r.status, codes(r)]).toEqual(['untrusted', ['EAI_ATTEST_MALFORMED']]);
      expect(r.reasons[0]?.message).toMatch(why);
    }
    expect(() => decodeEvidence('{"format":')).toThrow(/not JSON/u);
  });

  it('random edits of the JSON form decode to an error or verify to a result', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(json.length - 1), fc.string({ minLength: 1, maxLength: 1 })), { minLength: 1, maxLength: 4 }), (edits) => {
        const chars = [...json];
        for (const [i, c] of edits) chars[i] = c;
        let evidence: Evidence;
        try {
          evidence = decodeEvidence(chars.join(''));
        } catch (error) {
          expect(error).toMatchObject({ code: 'EAI_ATTEST_MALFORMED' });
          return;
        }
        expect(['trusted', 'untrusted', 'stale']).toContain(verify(evidence).status);
      }),
      { numRuns: 300 },
    );
  });

  it('a missing policy is the caller\'s mistake: it throws', () => {
    expect(() => verifyEvidence({ evidence: good, device: {}, challenge: undefined, policy: undefined as unknown as Policy })).toThrow(/policy is missing/u);
    expect(() => verifyEvidence({ evidence: good, device: {}, challenge: undefined, policy: { ...policy, expectedModelBundles: ['XYZ'] } })).toThrow(/expectedModelBundles/u);
  });
});
