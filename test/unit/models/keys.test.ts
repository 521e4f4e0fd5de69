import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { generateSigningKey, keyId, privateKeyFromPem, privateKeyPem, publicKeyFromPem, publicKeyFromRaw, publicKeyPem, rawPublicKey, signBytes, verifyBytes } from '../../../models/keys.js';
import { findBinary } from '../../support/wait.js';

const openssl = findBinary('openssl');

describe('Ed25519 keys', () => {
  it('round-trips through PEM and raw hex with the same key id', () => {
    const key = generateSigningKey();
    expect(key.keyid).toMatch(/^[0-9a-f]{64}$/u);
    expect(privateKeyFromPem(privateKeyPem(key.privateKey)).keyid).toBe(key.keyid);
    expect(publicKeyFromPem(publicKeyPem(key.publicKey)).keyid).toBe(key.keyid);
    expect(publicKeyFromRaw(rawPublicKey(key.publicKey).toString('hex')).keyid).toBe(key.keyid);
    expect(key.keyid).toBe(createHash('sha256').update(rawPublicKey(key.publicKey)).digest('hex'));
  });

  it('signs and verifies, and a changed message or signature does not verify', () => {
    const key = generateSigningKey();
    const message = Buffer.from('aios bundle manifest');
    const sig = signBytes(key, message);
    expect(sig).toHaveLength(64);
    expect(verifyBytes(key, message, sig)).toBe(true);
    expect(verifyBytes(key, Buffer.from('aios bundle manifesT'), sig)).toBe(false);
    const bad = Buffer.from(sig);
    bad[10] = (bad[10] as number) ^ 1;
    expect(verifyBytes(key, message, bad)).toBe(false);
    expect(verifyBytes(key, message, sig.subarray(0, 63))).toBe(false);
    expect(verifyBytes(generateSigningKey(), message, sig)).toBe(false);
  });

  it('refuses what is not an Ed25519 key, saying what was expected', () => {
    expect(() => privateKeyFromPem('not a key', 'keys/dev.pem')).toThrow(expect.objectContaining({ code: 'EAI_KEY_UNREADABLE', message: expect.stringContaining('keys/dev.pem is not a PEM private key') }));
    expect(() => publicKeyFromRaw('abc')).toThrow(expect.objectContaining({ code: 'EAI_KEY_UNREADABLE' }));
  });

  it.skipIf(openssl === undefined)('agrees with openssl on keys it generates and on the key id', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'aios-keys-'));
    const pem = path.join(dir, 'key.pem');
    execFileSync(openssl as string, ['genpkey', '-algorithm', 'ed25519', '-out', pem]);
    const key = privateKeyFromPem(execFileSync('cat', [pem]));
    const pub = path.join(dir, 'key.pub');
    execFileSync(openssl as string, ['pkey', '-in', pem, '-pubout', '-out', pub]);
    const der = execFileSync(openssl as string, ['pkey', '-pubin', '-in', pub, '-outform', 'DER']);
    expect(createHash('sha256').update(der.subarray(der.length - 32)).digest('hex')).toBe(key.keyid);
    // A signature openssl makes verifies here.
    const msg = path.join(dir, 'msg');
    writeFileSync(msg, 'signed by openssl');
    const sig = execFileSync(openssl as string, ['pkeyutl', '-sign', '-rawin', '-inkey', pem, '-in', msg]);
    expect(verifyBytes(publicKeyFromPem(execFileSync('cat', [pub])), Buffer.from('signed by openssl'), sig)).toBe(true);
    expect(keyId(key.publicKey)).toBe(key.keyid);
  });
});
