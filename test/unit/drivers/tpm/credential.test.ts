import { execFile } from 'node:child_process';
import { constants, createDecipheriv, createHmac, generateKeyPairSync, privateDecrypt, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { decodeCredentialFile, encodeCredentialFile, makeCredential, type Credential } from '../../../../drivers/tpm/credential.js';
import { kdfa } from '../../../../drivers/tpm/kdf.js';
import { objectName } from '../../../../drivers/tpm/names.js';
import { decodePublic, decodePublicArea, encodePublic, type PublicArea } from '../../../../drivers/tpm/public-area.js';
import { findBinary } from '../../../support/wait.js';

/**
 * MakeCredential without a TPM: an "EK" whose private key the test holds (a software RSA key in
 * the TCG EK template), opened by a software ActivateCredential written here from Part 1 §24.
 * tpm2_makecredential -T none seals to the same EK, so the opener is checked against tpm2-tools
 * before it checks us. (tpm.test.ts does the same against a real TPM.)
 */
const exec = promisify(execFile);
if (findBinary('tpm2_makecredential') === undefined) console.warn('cross-check with tpm2_makecredential skipped: tpm2-tools not installed (apt install tpm2-tools)');
const work = mkdtempSync(path.join(os.tmpdir(), 'aios-tpm-cred-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const ek = softwareEk(publicKey);
const akName = Buffer.from(`000b${'ab'.repeat(32)}`, 'hex');

describe('makeCredential', () => {
  it('seals a secret that the EK private key and the right name open', () => {
    const secret = randomBytes(32);
    expect(activate(makeCredential(ek, akName, secret), akName)).toEqual(secret);
  });

  it('fails the integrity check for another name, and for any changed byte', () => {
    const c = makeCredential(ek, akName, randomBytes(32));
    expect(() => activate(c, Buffer.from(`000b${'cd'.repeat(32)}`, 'hex'))).toThrow(/integrity/u);
    for (let i = 2; i < c.credentialBlob.length; i++) {
      const blob = Buffer.from(c.credentialBlob);
      blob[i] = blob[i]! ^ 1;
      expect(() => activate({ ...c, credentialBlob: blob }, akName), `byte ${i}`).toThrow(/integrity/u);
    }
  });

  it('is fresh every time: two credentials for one secret share no bytes of ciphertext', () => {
    const secret = randomBytes(32);
    const [a, b] = [makeCredential(ek, akName, secret), makeCredential(ek, akName, secret)];
    expect(a.encryptedSecret.equals(b.encryptedSecret)).toBe(false);
    expect(a.credentialBlob.equals(b.credentialBlob)).toBe(false);
    expect([a.credentialBlob.length, a.encryptedSecret.length]).toEqual([2 + 2 + 32 + 2 + 32, 2 + 256]);
  });

  it('refuses a key that is not an EK, secrets of 0 or more than 64 bytes, a short name', () => {
    const ak = decodePublic(readFileSync(path.resolve(import.meta.dirname, '../../../fixtures/tpm/ak-rsassa.pub')));
    expect(() => makeCredential(ak, akName, randomBytes(32))).toThrow(expect.objectContaining({ code: 'EAI_TPM_KEY_TYPE' }));
    expect(() => makeCredential(ek, akName, Buffer.alloc(0))).toThrow(expect.objectContaining({ code: 'EAI_TPM_ARGUMENT' }));
    expect(() => makeCredential(ek, akName, Buffer.alloc(65))).toThrow(expect.objectContaining({ code: 'EAI_TPM_ARGUMENT' }));
    expect(() => makeCredential(ek, Buffer.from('000b', 'hex'), Buffer.alloc(8))).toThrow(expect.objectContaining({ code: 'EAI_TPM_ARGUMENT' }));
  });

  it('writes and reads the tpm2-tools credential file strictly', () => {
    const c = makeCredential(ek, akName, randomBytes(20));
    const file = encodeCredentialFile(c);
    expect(file.subarray(0, 8).toString('hex')).toBe('badcc0de00000001');
    expect(decodeCredentialFile(file)).toEqual(c);
    for (let n = 0; n < file.length; n++) expect(() => decodeCredentialFile(file.subarray(0, n))).toThrow(expect.objectContaining({ code: 'EAI_TPM_MALFORMED' }));
    expect(() => decodeCredentialFile(Buffer.concat([file, Buffer.from([0])]))).toThrow(/trailing/u);
    const v2 = Buffer.from(file);
    v2.writeUInt32BE(2, 4);
    expect(() => decodeCredentialFile(v2)).toThrow(/version 2/u);
  });

  it('KDFa gives the documented lengths and masks a partial first byte', () => {
    const k = kdfa('sha256', Buffer.alloc(32, 7), 'STORAGE', akName, Buffer.alloc(0), 128);
    expect(k).toHaveLength(16);
    expect(kdfa('sha256', Buffer.alloc(32, 7), 'STORAGE\0', akName, Buffer.alloc(0), 128)).toEqual(k);
    expect(kdfa('sha256', Buffer.alloc(32, 7), 'INTEGRITY', Buffer.alloc(0), Buffer.alloc(0), 520)).toHaveLength(65);
    expect(kdfa('sha256', Buffer.alloc(32, 7), 'X', Buffer.alloc(0), Buffer.alloc(0), 12)[0]! & 0xf0).toBe(0);
  });

  it.skipIf(findBinary('tpm2_makecredential') === undefined)('opens what tpm2_makecredential -T none seals, so the opener agrees with tpm2-tools', async () => {
    const secret = randomBytes(32);
    writeFileSync(path.join(work, 'ek.pub'), encodePublic(ek));
    writeFileSync(path.join(work, 'secret'), secret);
    await exec('tpm2_makecredential', ['-T', 'none', '-u', 'ek.pub', '-s', 'secret', '-n', akName.toString('hex'), '-o', 'cred'], { cwd: work });
    const theirs = decodeCredentialFile(readFileSync(path.join(work, 'cred')));
    expect(activate(theirs, akName)).toEqual(secret);
    const ours = makeCredential(ek, akName, secret);
    expect([ours.credentialBlob.length, ours.encryptedSecret.length]).toEqual([theirs.credentialBlob.length, theirs.encryptedSecret.length]);
  });
});

/** The TCG EK template L-1 (RSA 2048, AES-128-CFB, PolicySecret(endorsement)) around a software key. */
function softwareEk(key: KeyObject): PublicArea {
  const n = Buffer.from(key.export({ format: 'jwk' }).n!, 'base64url');
  const area = Buffer.concat([
    Buffer.from('0001000b000300b20020', 'hex'),
    Buffer.from('837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa', 'hex'),
    Buffer.from('00060080004300100800000000000100', 'hex'),
    n,
  ]);
  const ek = decodePublicArea(area);
  expect(objectName(ek)).toHaveLength(34);
  return ek;
}

/** TPM2_ActivateCredential in software, as the TPM does it (Part 1 §24.4, Part 3 §12.5). */
function activate(c: Credential, name: Buffer): Buffer {
  const seed = privateDecrypt({ key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256', oaepLabel: Buffer.from('IDENTITY\0') }, c.encryptedSecret.subarray(2));
  const blob = c.credentialBlob.subarray(2);
  const hmacSize = blob.readUInt16BE(0);
  const integrity = blob.subarray(2, 2 + hmacSize);
  const encIdentity = blob.subarray(2 + hmacSize);
  const hmacKey = kdfa('sha256', seed, 'INTEGRITY', Buffer.alloc(0), Buffer.alloc(0), 256);
  const expected = createHmac('sha256', hmacKey).update(encIdentity).update(name).digest();
  if (integrity.length !== expected.length || !timingSafeEqual(integrity, expected)) throw new Error('integrity check failed');
  const key = kdfa('sha256', seed, 'STORAGE', name, Buffer.alloc(0), 128);
  const d = createDecipheriv('aes-128-cfb', key, Buffer.alloc(16));
  const plain = Buffer.concat([d.update(encIdentity), d.final()]);
  return plain.subarray(2, 2 + plain.readUInt16BE(0));
}
