import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createCertificateAuthority } from '../../../../deploy/fleet/pki/certificate.js';
import { createCrl } from '../../../../deploy/fleet/pki/crl.js';
import { findBinary } from '../../../support/wait.js';

// CRLs the fleet CA signs, read back by openssl (the library Mosquitto checks them with).

const OPENSSL = findBinary('openssl');
if (OPENSSL === undefined) console.warn('CRL checks with openssl skipped: openssl is not installed');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-crl-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const ca = createCertificateAuthority({ commonName: 'aios fleet test CA', validDays: 30 });
const day = 86_400_000;

function openssl(crl: string): { ok: boolean; text: string } {
  const file = path.join(tmp, `${Math.random()}.pem`);
  const caFile = path.join(tmp, 'ca.pem');
  writeFileSync(file, crl);
  writeFileSync(caFile, ca.certificatePem);
  const r = spawnSync(OPENSSL as string, ['crl', '-in', file, '-CAfile', caFile, '-noout', '-text'], { encoding: 'utf8' });
  return { ok: r.status === 0 && /verify OK/u.test(r.stderr), text: r.stdout };
}

describe('createCrl', () => {
  it.skipIf(OPENSSL === undefined)('an empty CRL and one with entries verify against the CA; numbers, dates and reasons read back', () => {
    const at = new Date('2026-11-26T10:00:00Z');
    const empty = openssl(createCrl({ ca, revoked: [], number: 1, thisUpdate: at, nextUpdate: new Date(at.getTime() + 30 * day) }));
    expect(empty.ok).toBe(true);
    expect(empty.text).toMatch(/Version 2/u);
    expect(empty.text).toMatch(/No Revoked Certificates/u);
    expect(empty.text).toMatch(/Next Update: Dec 26 10:00:00 2026 GMT/u);
    const full = openssl(
      createCrl({
        ca,
        number: 1_795_690_000_000,
        thisUpdate: at,
        nextUpdate: new Date(at.getTime() + day),
        revoked: [
          { serial: '4DB7FA8F4FAC592A20AC18991D5BDEBE', revokedAt: at, reason: 'keyCompromise' },
          { serial: 'abc', revokedAt: at, reason: 'cessationOfOperation' },
          { serial: '00FF', revokedAt: at, reason: 'superseded' },
          { serial: '7F', revokedAt: at, reason: 'unspecified' },
        ],
      }),
    );
    expect(full.ok).toBe(true);
    expect(full.text).toMatch(/CRL Number: \s*1795690000000/u);
    for (const serial of ['4DB7FA8F4FAC592A20AC18991D5BDEBE', '0ABC', 'FF', '7F']) expect(full.text).toContain(`Serial Number: ${serial}`);
    for (const reason of ['Key Compromise', 'Cessation Of Operation', 'Superseded']) expect(full.text).toContain(reason);
    // `unspecified` is not written as a reason code (RFC 5280 5.3.1): three reason extensions for four entries.
    expect(full.text.match(/CRL Reason Code/gu)?.length).toBe(3);
  });

  it('refuses what cannot be written', () => {
    const nextUpdate = new Date(Date.now() + day);
    expect(() => createCrl({ ca, revoked: [{ serial: 'xyz', revokedAt: new Date(), reason: 'unspecified' }], number: 1, nextUpdate })).toThrow(/not a certificate serial/u);
    expect(() => createCrl({ ca, revoked: [{ serial: 'ab', revokedAt: new Date(), reason: 'lost' as 'unspecified' }], number: 1, nextUpdate })).toThrow(/not a revocation reason/u);
    expect(() => createCrl({ ca, revoked: [], number: -1, nextUpdate })).toThrow(/CRL number/u);
    expect(() => createCrl({ ca, revoked: [], number: 1, nextUpdate: new Date(Date.now() - day) })).toThrow(/nextUpdate/u);
    expect(() => createCrl({ ca: { certificatePem: ca.certificatePem, privateKeyPem: createCertificateAuthority({ commonName: 'other', validDays: 1 }).privateKeyPem }, revoked: [], number: 1, nextUpdate })).toThrow(/does not belong/u);
  });
});
