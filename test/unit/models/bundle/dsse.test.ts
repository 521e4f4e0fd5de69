import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { addSignature, encodeEnvelope, IN_TOTO_PAYLOAD_TYPE, pae, parseEnvelope, signEnvelope, verifyEnvelope, type DsseEnvelope } from '../../../../models/bundle/dsse.js';
import { generateSigningKey, privateKeyFromPem, publicKeyFromPem, publicKeyPem, type SigningKey } from '../../../../models/keys.js';
import { findBinary } from '../../../support/wait.js';

const OPENSSL = findBinary('openssl');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-dsse-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const [a, b, c] = [generateSigningKey(), generateSigningKey(), generateSigningKey()] as [SigningKey, SigningKey, SigningKey];
const pub = (k: SigningKey): { keyid: string; publicKey: SigningKey['publicKey'] } => ({ keyid: k.keyid, publicKey: k.publicKey });
const payload = Buffer.from('{"_type":"https://in-toto.io/Statement/v1"}');

function throwsCode(fn: () => unknown, code: string): void {
  expect(fn).toThrow(expect.objectContaining({ code }));
}

describe('PAE', () => {
  it('is the DSSE v1 encoding (the spec example)', () => {
    expect(pae('http://example.com/HelloWorld', Buffer.from('hello world')).toString()).toBe('DSSEv1 29 http://example.com/HelloWorld 11 hello world');
    expect(pae(IN_TOTO_PAYLOAD_TYPE, Buffer.alloc(0)).toString()).toBe('DSSEv1 28 application/vnd.in-toto+json 0 ');
  });
});

describe('signing and verifying', () => {
  it('verifies with one key and returns the payload bytes and the signers', () => {
    const env = signEnvelope(payload, [a]);
    expect(env.signatures).toEqual([{ keyid: a.keyid, sig: expect.stringMatching(/^[A-Za-z0-9+/]{86}==$/u) }]);
    const v = verifyEnvelope(parseEnvelope(encodeEnvelope(env)), { keys: [pub(a)], threshold: 1 });
    expect(v.payload.equals(payload)).toBe(true);
    expect(v.keyids).toEqual([a.keyid]);
  });

  it('counts distinct trusted keys: unknown keys and repeated keyids do not count', () => {
    const env = signEnvelope(payload, [a, c]);
    expect(verifyEnvelope(env, { keys: [pub(a), pub(b)], threshold: 1 }).keyids).toEqual([a.keyid]);
    throwsCode(() => verifyEnvelope(env, { keys: [pub(a), pub(b)], threshold: 2 }), 'EAI_BUNDLE_SIGNATURE_THRESHOLD');
    const repeated: DsseEnvelope = { ...env, signatures: [env.signatures[0], env.signatures[0], env.signatures[0]] as DsseEnvelope['signatures'] };
    throwsCode(() => verifyEnvelope(repeated, { keys: [pub(a), pub(b)], threshold: 2 }), 'EAI_BUNDLE_SIGNATURE_THRESHOLD');
    expect(verifyEnvelope(addSignature(env, b), { keys: [pub(a), pub(b)], threshold: 2 }).keyids).toEqual([a.keyid, b.keyid]);
    throwsCode(() => verifyEnvelope(env, { keys: [pub(b)], threshold: 1 }), 'EAI_BUNDLE_SIGNATURE_UNKNOWN_KEY');
  });

  it('refuses a bad signature by a trusted key even when others meet the threshold', () => {
    const env = signEnvelope(payload, [a, b]);
    const sig = Buffer.from(env.signatures[1]?.sig ?? '', 'base64');
    sig[10] = (sig[10] as number) ^ 1;
    const bad = { ...env, signatures: [env.signatures[0], { keyid: b.keyid, sig: sig.toString('base64') }] } as DsseEnvelope;
    throwsCode(() => verifyEnvelope(bad, { keys: [pub(a), pub(b)], threshold: 1 }), 'EAI_BUNDLE_SIGNATURE_INVALID');
    const otherPayload = { ...env, payload: Buffer.from('{"_type":"https://in-toto.io/Statement/v2"}').toString('base64') };
    throwsCode(() => verifyEnvelope(otherPayload, { keys: [pub(a)], threshold: 1 }), 'EAI_BUNDLE_SIGNATURE_INVALID');
    throwsCode(() => verifyEnvelope({ ...env, payloadType: 'text/plain' }, { keys: [pub(a)], threshold: 1 }), 'EAI_BUNDLE_PAYLOAD_TYPE');
  });

  it('refuses a policy that cannot mean "signed"', () => {
    const env = signEnvelope(payload, [a]);
    throwsCode(() => verifyEnvelope(env, { keys: [pub(a)], threshold: 0 }), 'EAI_BUNDLE_POLICY');
    throwsCode(() => verifyEnvelope(env, { keys: [pub(a), pub(a)], threshold: 2 }), 'EAI_BUNDLE_POLICY');
    throwsCode(() => verifyEnvelope(env, { keys: [], threshold: 1 }), 'EAI_BUNDLE_POLICY');
    throwsCode(() => verifyEnvelope(env, { keys: [pub(a)], threshold: 1.5 }), 'EAI_BUNDLE_POLICY');
  });

  it('addSignature leaves an envelope its key already signed unchanged', () => {
    const env = signEnvelope(payload, [a]);
    expect(addSignature(env, a)).toBe(env);
  });
});

describe('parseEnvelope', () => {
  const good = JSON.parse(encodeEnvelope(signEnvelope(payload, [a])).toString()) as Record<string, unknown>;
  const bytes = (v: unknown): Buffer => Buffer.from(JSON.stringify(v));
  it.each([
    ['not JSON', Buffer.from('{"payloadType":')],
    ['not UTF-8', Buffer.from([0x7b, 0xff, 0x7d])],
    ['an array', bytes([good])],
    ['an extra field', bytes({ ...good, extra: 1 })],
    ['a missing field', bytes({ payloadType: good['payloadType'], payload: good['payload'] })],
    ['no signatures', bytes({ ...good, signatures: [] })],
    ['65 signatures', bytes({ ...good, signatures: Array.from({ length: 65 }, () => (good['signatures'] as unknown[])[0]) })],
    ['a signature without keyid', bytes({ ...good, signatures: [{ sig: 'AAAA' }] })],
    ['a signature with an extra field', bytes({ ...good, signatures: [{ keyid: 'k', sig: 'AAAA', cert: 'x' }] })],
    ['URL-safe base64', bytes({ ...good, payload: '-_-_' })],
    ['unpadded base64', bytes({ ...good, payload: 'QQ' })],
    ['non-canonical base64 padding bits', bytes({ ...good, payload: 'QR==' })],
    ['base64 with whitespace', bytes({ ...good, payload: 'QU FB' })],
  ])('refuses %s', (_what, input) => {
    throwsCode(() => parseEnvelope(input), 'EAI_BUNDLE_ENVELOPE_INVALID');
  });
});

describe.skipIf(OPENSSL === undefined)('openssl interop (pkeyutl -rawin, OpenSSL 3)', () => {
  it('openssl verifies our signature over the PAE', () => {
    const env = signEnvelope(payload, [a]);
    writeFileSync(path.join(tmp, 'key.pub'), publicKeyPem(a.publicKey));
    writeFileSync(path.join(tmp, 'pae.bin'), pae(env.payloadType, Buffer.from(env.payload, 'base64')));
    writeFileSync(path.join(tmp, 'sig.bin'), Buffer.from(env.signatures[0]?.sig ?? '', 'base64'));
    const ok = spawnSync(OPENSSL as string, ['pkeyutl', '-verify', '-pubin', '-inkey', 'key.pub', '-rawin', '-in', 'pae.bin', '-sigfile', 'sig.bin'], { cwd: tmp, encoding: 'utf8' });
    expect(ok.status, ok.stderr).toBe(0);
    expect(ok.stdout).toContain('Signature Verified Successfully');
    writeFileSync(path.join(tmp, 'pae.bin'), pae(env.payloadType, Buffer.from('{"_type":"tampered"}')));
    expect(spawnSync(OPENSSL as string, ['pkeyutl', '-verify', '-pubin', '-inkey', 'key.pub', '-rawin', '-in', 'pae.bin', '-sigfile', 'sig.bin'], { cwd: tmp }).status).not.toBe(0);
  });

  it('we verify a signature openssl made over the PAE, with its key read from PEM', () => {
    const o = (...args: string[]): Buffer => execFileSync(OPENSSL as string, args, { cwd: tmp });
    o('genpkey', '-algorithm', 'ed25519', '-out', 'ossl.pem');
    o('pkey', '-in', 'ossl.pem', '-pubout', '-out', 'ossl.pub');
    writeFileSync(path.join(tmp, 'pae2.bin'), pae(IN_TOTO_PAYLOAD_TYPE, payload));
    o('pkeyutl', '-sign', '-inkey', 'ossl.pem', '-rawin', '-in', 'pae2.bin', '-out', 'sig2.bin');
    const key = publicKeyFromPem(readFileSync(path.join(tmp, 'ossl.pub')));
    // The keyid openssl users compute by hand (docs/bundles.md) is ours.
    const byHand = execFileSync('bash', ['-c', `${OPENSSL} pkey -pubin -in ossl.pub -outform DER | tail -c 32 | sha256sum | cut -d' ' -f1`], { cwd: tmp, encoding: 'utf8' }).trim();
    expect(byHand).toBe(key.keyid);
    expect(privateKeyFromPem(readFileSync(path.join(tmp, 'ossl.pem'))).keyid).toBe(key.keyid);
    const env: DsseEnvelope = { payloadType: IN_TOTO_PAYLOAD_TYPE, payload: payload.toString('base64'), signatures: [{ keyid: key.keyid, sig: readFileSync(path.join(tmp, 'sig2.bin')).toString('base64') }] };
    expect(verifyEnvelope(parseEnvelope(encodeEnvelope(env)), { keys: [key], threshold: 1 }).payload.equals(payload)).toBe(true);
  });
});
