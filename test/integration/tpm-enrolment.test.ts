import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureEnrolled } from '../../deploy/agent/enrol.js';
import { Controller } from '../../deploy/controller/controller.js';
import { openControllerStore } from '../../deploy/controller/database.js';
import { Enrolment, type Challenged } from '../../deploy/controller/enrolment.js';
import type { ControllerStore } from '../../deploy/controller/store.js';
import { createCertificateAuthority } from '../../deploy/fleet/pki/certificate.js';
import { createCsr } from '../../deploy/fleet/pki/csr.js';
import { decodeCredentialFile } from '../../drivers/tpm/credential.js';
import { EK_DEFAULTS, Tpm } from '../../drivers/tpm/tpm.js';
import { generateSigningKey } from '../../models/keys.js';
import { startSwtpm, swtpmMissing, type Swtpm } from '../support/swtpm.js';
import { freePort } from '../support/wait.js';

// A device with a TPM registers its attestation key at enrolment and proves, by activating the
// controller's credential, that the AK lives in the TPM holding the EK (against real swtpms with
// EK certificates from their local CA). Substituted keys, wrong secrets, EK certificates from an
// untrusted maker and keys of the wrong kind are refused; a device without a TPM is `software`.

const missing = swtpmMissing();
if (missing !== undefined) console.warn(`TPM enrolment tests skipped: ${missing}`);
const skip = missing !== undefined;

const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-tpm-enrol-'));
const ca = createCertificateAuthority({ commonName: 'warehouse fleet CA', validDays: 3650 });
let tpmA: Swtpm;
let tpmB: Swtpm;
let store: ControllerStore;
let makerCa: string;

beforeAll(async () => {
  if (skip) return;
  [tpmA, tpmB] = await Promise.all([startSwtpm({ ekCertificate: true }), startSwtpm({ ekCertificate: true })]);
  store = await openControllerStore(mkdtempSync(path.join(tmp, 'state-')));
  // swtpm_localca's issuing CA: "the TPM maker" whose EK certificates the fleet trusts.
  makerCa = readFileSync(path.join(tpmA.dir, 'localca', 'issuercert.pem'), 'utf8');
}, 60_000);

afterAll(async () => {
  await store?.close();
  await tpmA?.stop();
  await tpmB?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

/** What the agent sends: the TPM's EK and AK (TPM2B_PUBLIC) and its EK certificate. */
async function keysOf(swtpm: Swtpm): Promise<{ tpm: Tpm; ekPublic: Buffer; akPublic: Buffer; ekCertificate: Buffer }> {
  const tpm = new Tpm({ tcti: swtpm.tcti });
  const ek = await tpm.endorsementKey({ algorithm: 'rsa' });
  const ak = await tpm.attestationKey({ ekHandle: ek.handle });
  const cert = await tpm.endorsementCertificate('rsa');
  return { tpm, ekPublic: ek.publicBytes, akPublic: ak.publicBytes, ekCertificate: (cert as NonNullable<typeof cert>).raw };
}

function csr(device: string, token: string): string {
  return createCsr({ privateKey: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey, commonName: device, challengePassword: token });
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'enrolled';
  } catch (error) {
    return (error as { code?: string }).code ?? String(error);
  }
}

describe('TPM enrolment', () => {
  it.skipIf(skip)('a device proves its AK lives beside its EK (a credential only its TPM unwraps); the AK is recorded; the token is spent only then', async () => {
    const enrolment = new Enrolment(store, { fleet: 'warehouse', ca, ekRoots: [makerCa] });
    const { token } = await enrolment.issueToken({ validForMs: 60_000, deviceId: 'robot-tpm' });
    const keys = await keysOf(tpmA);
    const request = csr('robot-tpm', token);
    const first = (await enrolment.enrol(request, { ekPublic: keys.ekPublic, akPublic: keys.akPublic, ekCertificate: keys.ekCertificate })) as Challenged;
    expect(first.challenge.id).toMatch(/^[0-9a-f]{24}$/u);
    expect((await enrolment.tokens())[0]?.usedUnixMs).toBeUndefined();
    const secret = await keys.tpm.activateCredential(decodeCredentialFile(first.challenge.credential), { ekHandle: EK_DEFAULTS.rsa.handle });
    // A wrong secret first: refused, and the challenge stays answerable.
    expect(await code(enrolment.enrol(request, { ekPublic: keys.ekPublic, akPublic: keys.akPublic, ekCertificate: keys.ekCertificate, challenge: first.challenge.id, secret: Buffer.alloc(32) }))).toBe('EAI_FLEET_ENROL_TPM_PROOF');
    const enrolled = await enrolment.enrol(request, { ekPublic: keys.ekPublic, akPublic: keys.akPublic, ekCertificate: keys.ekCertificate, challenge: first.challenge.id, secret });
    expect(enrolled).toMatchObject({ deviceId: 'robot-tpm' });
    const row = await store.get<{ attestation_kind: string; ak_public: Buffer; ek_public: Buffer }>('SELECT attestation_kind, ak_public, ek_public FROM devices WHERE device_id = ?', 'robot-tpm');
    expect(row?.attestation_kind).toBe('tpm2');
    expect(Buffer.from(row?.ak_public ?? []).equals(keys.akPublic)).toBe(true);
    expect(Buffer.from(row?.ek_public ?? []).equals(keys.ekPublic)).toBe(true);
    // Once: the same answer again is refused.
    expect(await code(enrolment.enrol(request, { ekPublic: keys.ekPublic, akPublic: keys.akPublic, challenge: first.challenge.id, secret }))).toBe('EAI_FLEET_ENROL_TOKEN_USED');
  }, 60_000);

  it.skipIf(skip)("AK substitution: another TPM's AK presented with this EK cannot answer the challenge", async () => {
    const enrolment = new Enrolment(store, { fleet: 'warehouse', ca });
    const { token } = await enrolment.issueToken({ validForMs: 60_000 });
    const a = await keysOf(tpmA);
    const b = await keysOf(tpmB);
    const request = csr('robot-sub', token);
    // The attacker controls TPM B (and its AK), and claims TPM A's genuine EK.
    const first = (await enrolment.enrol(request, { ekPublic: a.ekPublic, akPublic: b.akPublic, ekCertificate: a.ekCertificate })) as Challenged;
    // TPM B cannot unwrap a credential made for A's EK; TPM A refuses it for an AK it does not hold.
    expect(await code(b.tpm.activateCredential(decodeCredentialFile(first.challenge.credential), { ekHandle: EK_DEFAULTS.rsa.handle }))).toMatch(/^EAI_TPM_/u);
    expect(await code(a.tpm.activateCredential(decodeCredentialFile(first.challenge.credential), { ekHandle: EK_DEFAULTS.rsa.handle }))).toMatch(/^EAI_TPM_/u);
    expect(await code(enrolment.enrol(request, { ekPublic: a.ekPublic, akPublic: b.akPublic, challenge: first.challenge.id, secret: Buffer.alloc(32, 1) }))).toBe('EAI_FLEET_ENROL_TPM_PROOF');
    // Answering another device's challenge, or with other keys, is refused too.
    expect(await code(enrolment.enrol(request, { ekPublic: b.ekPublic, akPublic: b.akPublic, challenge: first.challenge.id, secret: Buffer.alloc(32, 1) }))).toBe('EAI_FLEET_ENROL_TPM_PROOF');
  }, 60_000);

  it.skipIf(skip)('refuses an EK certificate from an untrusted maker, one for another key, a missing one when makers are configured, and keys of the wrong kind', async () => {
    const other = createCertificateAuthority({ commonName: 'some other TPM maker', validDays: 3650 });
    const strict = new Enrolment(store, { fleet: 'warehouse', ca, ekRoots: [other.certificatePem] });
    const { token } = await strict.issueToken({ validForMs: 60_000 });
    const a = await keysOf(tpmA);
    const b = await keysOf(tpmB);
    const request = csr('robot-strict', token);
    expect(await code(strict.enrol(request, { ekPublic: a.ekPublic, akPublic: a.akPublic, ekCertificate: a.ekCertificate }))).toBe('EAI_FLEET_ENROL_TPM');
    expect(await code(strict.enrol(request, { ekPublic: a.ekPublic, akPublic: a.akPublic }))).toBe('EAI_FLEET_ENROL_TPM');
    const trusting = new Enrolment(store, { fleet: 'warehouse', ca, ekRoots: [makerCa] });
    expect(await code(trusting.enrol(request, { ekPublic: a.ekPublic, akPublic: a.akPublic, ekCertificate: b.ekCertificate }))).toBe('EAI_FLEET_ENROL_TPM');
    // The EK offered as the AK: a decryption key, which a TPM never signs quotes with.
    expect(await code(trusting.enrol(request, { ekPublic: a.ekPublic, akPublic: a.ekPublic }))).toBe('EAI_FLEET_ENROL_TPM');
    expect(await code(trusting.enrol(request, { ekPublic: Buffer.from([0, 4, 1, 2, 3, 4]), akPublic: a.akPublic }))).toBe('EAI_FLEET_ENROL_TPM');
    // A fleet that requires TPMs refuses a device without one.
    const requiring = new Enrolment(store, { fleet: 'warehouse', ca, requireTpm: true });
    expect(await code(requiring.enrol(request))).toBe('EAI_FLEET_ENROL_TPM');
  }, 60_000);

  it.skipIf(skip)('end to end: the agent enrols over HTTPS with its TPM; a device without one is recorded as software', async () => {
    const controller = await Controller.start({ fleet: 'warehouse', state: path.join(tmp, 'controller'), deployKeys: [generateSigningKey()], hostnames: ['127.0.0.1'], brokerHost: '127.0.0.1', brokerPort: await freePort(), enrolHost: '127.0.0.1', enrolPort: 0, apiPort: 0, ekRoots: [makerCa, readFileSync(path.join(tpmB.dir, 'localca', 'issuercert.pem'), 'utf8')] });
    try {
      for (const [device, swtpm] of [['robot-b', tpmB], ['robot-plain', undefined]] as const) {
        const dir = path.join(tmp, device);
        mkdirSync(dir, { recursive: true });
        writeFileSync(path.join(dir, 'ca.pem'), controller.ca.certificatePem);
        writeFileSync(path.join(dir, 'token'), (await controller.enrolment.issueToken({ validForMs: 60_000, deviceId: device })).token);
        const identity = await ensureEnrolled({ device, state: path.join(dir, 'state'), ca: path.join(dir, 'ca.pem'), controller: controller.urls.enrol, token: path.join(dir, 'token'), ...(swtpm === undefined ? {} : { tpm: new Tpm({ tcti: swtpm.tcti }) }) });
        expect(identity.certificatePem).toContain('BEGIN CERTIFICATE');
      }
      expect((await controller.registry.get('robot-b'))?.attestation).toBe('tpm2');
      expect((await controller.registry.get('robot-plain'))?.attestation).toBe('software');
      const b = await controller.registry.attestationIdentity('robot-b');
      expect(b?.akPublic.equals((await new Tpm({ tcti: tpmB.tcti }).attestationKey()).publicBytes)).toBe(true);
    } finally {
      await controller.stop();
    }
  }, 60_000);
});
