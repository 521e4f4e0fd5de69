import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openControllerStore } from '../../../../deploy/controller/database.js';
import type { ControllerStore } from '../../../../deploy/controller/store.js';
import { Enrolment } from '../../../../deploy/controller/enrolment.js';
import { createCertificateAuthority } from '../../../../deploy/fleet/pki/certificate.js';
import { createCsr } from '../../../../deploy/fleet/pki/csr.js';
import { postgresMissing, startPostgres, type Postgres } from '../../../support/postgres.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-enrol-'));
const ca = createCertificateAuthority({ commonName: 'warehouse fleet CA', validDays: 3650 });
const noPostgres = postgresMissing();
if (noPostgres !== undefined) console.warn(`enrolment on PostgreSQL skipped: ${noPostgres}`);
let postgres: Postgres | undefined;

afterAll(async () => {
  await postgres?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

/** What a device does on first boot: its own key, a CSR naming itself, the token as challengePassword. */
function request(deviceId: string, token?: string, kind: 'ec' | 'ed25519' = 'ec'): string {
  const { privateKey } = kind === 'ec' ? generateKeyPairSync('ec', { namedCurve: 'P-256' }) : generateKeyPairSync('ed25519');
  return createCsr({ privateKey, commonName: deviceId, ...(token === undefined ? {} : { challengePassword: token }) });
}

async function code(fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
  } catch (error) {
    return (error as { code?: string }).code ?? `not an aios error: ${String(error)}`;
  }
  return 'enrolled';
}

// The same behaviour from both stores the controller can keep its fleet in.
describe.each([
  { store: 'SQLite', skip: false, open: () => openControllerStore(mkdtempSync(path.join(tmp, 'state-'))) },
  {
    store: 'PostgreSQL',
    skip: noPostgres !== undefined,
    open: async () => {
      postgres ??= await startPostgres();
      return openControllerStore(tmp, await postgres.database());
    },
  },
])('enrolment ($store)', ({ skip, open }) => {
  let db: ControllerStore;
  let clock = Date.UTC(2026, 10, 26, 8, 0, 0);
  let enrolment: Enrolment;
  beforeAll(async () => {
    if (skip) return;
    db = await open();
    enrolment = new Enrolment(db, { fleet: 'warehouse', ca, now: () => clock });
  }, 60_000);
  afterAll(async () => {
    await db?.close();
  });

  it.skipIf(skip)('a device with a fresh token gets a client certificate for its own name from the fleet CA, once', async () => {
    const { token, id } = (await enrolment.issueToken({ validForMs: 86_400_000, labels: { site: 'madrid', kind: 'amr' } }));
    expect(token).toMatch(/^aios1\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}$/u);
    const csr = request('robot-7', token, 'ed25519');
    const enrolled = (await enrolment.enrol(csr));
    expect(enrolled).toMatchObject({ deviceId: 'robot-7', fleet: 'warehouse', caCertificatePem: ca.certificatePem, labels: { site: 'madrid', kind: 'amr' } });
    const cert = new X509Certificate(enrolled.certificatePem);
    expect(cert.subject).toBe('CN=robot-7');
    expect(cert.verify(new X509Certificate(ca.certificatePem).publicKey)).toBe(true);
    expect(cert.keyUsage).toContain('1.3.6.1.5.5.7.3.2'); // clientAuth
    expect((await enrolment.tokens()).find((t) => t.id === id)).toMatchObject({ usedBy: 'robot-7', usedUnixMs: clock });
    expect(await code(async () => (await enrolment.enrol(request('robot-8', token))))).toBe('EAI_FLEET_ENROL_TOKEN_USED');
  });

  it.skipIf(skip)('refuses missing, unknown, forged, expired and revoked tokens', async () => {
    const { token, id } = (await enrolment.issueToken({ validForMs: 60_000 }));
    const [, , secret] = token.split('.') as [string, string, string];
    expect(await code(async () => (await enrolment.enrol(request('robot-9'))))).toBe('EAI_FLEET_ENROL_TOKEN');
    expect(await code(async () => (await enrolment.enrol(request('robot-9', 'not-a-token'))))).toBe('EAI_FLEET_ENROL_TOKEN');
    expect(await code(async () => (await enrolment.enrol(request('robot-9', `aios1.${'0'.repeat(16)}.${secret}`))))).toBe('EAI_FLEET_ENROL_TOKEN');
    expect(await code(async () => (await enrolment.enrol(request('robot-9', `aios1.${id}.${'A'.repeat(43)}`))))).toBe('EAI_FLEET_ENROL_TOKEN');
    clock += 61_000;
    expect(await code(async () => (await enrolment.enrol(request('robot-9', token))))).toBe('EAI_FLEET_ENROL_TOKEN_EXPIRED');
    const revoked = (await enrolment.issueToken({ validForMs: 60_000 }));
    expect((await enrolment.revokeToken(revoked.id))).toBe(true);
    expect(await code(async () => (await enrolment.enrol(request('robot-9', revoked.token))))).toBe('EAI_FLEET_ENROL_TOKEN_USED');
  });

  it.skipIf(skip)('refuses names a device may not take, names other than the token was made for, and taking an enrolled name', async () => {
    const any = async (): Promise<string> => (await enrolment.issueToken({ validForMs: 60_000 })).token;
    expect(await code(async () => (await enrolment.enrol(request('aios-controller', await any()))))).toBe('EAI_FLEET_ENROL_NAME');
    expect(await code(async () => (await enrolment.enrol(request('robot+1', await any()))))).toBe('EAI_FLEET_ENROL_NAME');
    const bound = (await enrolment.issueToken({ validForMs: 60_000, deviceId: 'robot-11' }));
    expect(await code(async () => (await enrolment.enrol(request('robot-12', bound.token))))).toBe('EAI_FLEET_ENROL_NAME');
    expect(await code(async () => (await enrolment.enrol(request('robot-7', await any()))))).toBe('EAI_FLEET_ENROL_NAME'); // robot-7 is enrolled
    // A replaced board re-enrols with a token made for its name; the new key replaces the old.
    const again = (await enrolment.issueToken({ validForMs: 60_000, deviceId: 'robot-7' }));
    expect((await enrolment.enrol(request('robot-7', again.token))).deviceId).toBe('robot-7');
    expect(await code(async () => (await enrolment.issueToken({ validForMs: 0 })))).toBe('EAI_FLEET_ENROL_ARGUMENT');
  });

  it.skipIf(skip)('a forged or corrupted request is refused by the PKI before any token is looked at or spent', async () => {
    const { token, id } = (await enrolment.issueToken({ validForMs: 60_000 }));
    const csr = request('robot-20', token);
    const der = Buffer.from(csr.replace(/-----[^-]+-----|\s/gu, ''), 'base64');
    der[der.length - 5] = (der[der.length - 5] as number) ^ 1;
    expect(await code(async () => (await enrolment.enrol(der)))).toMatch(/^EAI_PKI_/u);
    expect((await enrolment.tokens()).find((t) => t.id === id)?.usedUnixMs).toBeUndefined();
    expect((await enrolment.enrol(csr)).deviceId).toBe('robot-20');
  });

  it.skipIf(skip)('keeps no token secret: the database holds only hashes', async () => {
    const { token } = (await enrolment.issueToken({ validForMs: 60_000 }));
    const secret = token.split('.')[2] as string;
    const rows = await db.all('SELECT * FROM enrolment_tokens');
    expect(JSON.stringify(rows)).not.toContain(secret);
  });
});
