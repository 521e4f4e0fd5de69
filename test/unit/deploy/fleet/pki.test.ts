import { spawnSync } from 'node:child_process';
import { generateKeyPairSync, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { createCertificateAuthority, issueCertificate, type CertificateAuthority } from '../../../../deploy/fleet/pki/certificate.js';
import { createCsr, parseCsr } from '../../../../deploy/fleet/pki/csr.js';
import { decodeDer, fromPem, integer, namedBits, oid, readBoolean, readInteger, readOid, readString, readTime, sequence, tlv, time, toPem, type DerNode } from '../../../../deploy/fleet/pki/der.js';
import { PkiError } from '../../../../deploy/fleet/pki/errors.js';
import { findBinary } from '../../../support/wait.js';

/**
 * The fleet PKI checked against the tools that will consume it: the openssl CLI parses and
 * verifies our certificates and CSRs and makes CSRs for parseCsr, Node's X509Certificate
 * verifies signatures, and node:tls completes (or refuses) a real mutual-TLS handshake.
 */
const openssl = findBinary('openssl');
if (openssl === undefined) console.warn('openssl CLI checks skipped: openssl is not installed (apt-get install -y openssl)');

const dir = mkdtempSync(path.join(tmpdir(), 'aios-pki-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const ca = createCertificateAuthority({ commonName: 'Fleet CA', organization: 'aios test fleet', validDays: 3650 });
const otherCa = createCertificateAuthority({ commonName: 'Fleet CA', organization: 'aios test fleet', validDays: 3650 });
const ecKey = (): { publicKey: KeyObject; privateKey: KeyObject } => generateKeyPairSync('ec', { namedCurve: 'P-256' });
const edKey = (): { publicKey: KeyObject; privateKey: KeyObject } => generateKeyPairSync('ed25519');
const pem = (key: KeyObject): string => key.export({ type: 'pkcs8', format: 'pem' }).toString();

function file(name: string, text: string | Buffer): string {
  const p = path.join(dir, name);
  writeFileSync(p, text);
  return p;
}

function run(args: readonly string[]): { status: number | null; out: string } {
  const r = spawnSync(openssl ?? 'openssl', args, { cwd: dir, encoding: 'utf8' });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

function pkiCode(action: () => unknown): string {
  try {
    action();
  } catch (error) {
    if (error instanceof PkiError) return error.code;
    throw error;
  }
  throw new Error('expected a PkiError, and nothing was thrown');
}

/** tbsCertificate fields by name, from our decoder. */
function tbsOf(certificatePem: string): { issuer: DerNode; subject: DerNode; notBefore: DerNode; notAfter: DerNode; serial: DerNode } {
  const tbs = decodeDer(fromPem(certificatePem, ['CERTIFICATE'])).children[0];
  const [, serial, , issuer, validity, subject] = tbs?.children ?? [];
  const [notBefore, notAfter] = validity?.children ?? [];
  if (!serial || !issuer || !subject || !notBefore || !notAfter) throw new Error('certificate lacks tbs fields');
  return { issuer, subject, notBefore, notAfter, serial };
}

describe('der', () => {
  it('encodes INTEGERs with a minimal two\'s complement and the sign byte positive magnitudes need', () => {
    const hex = (v: bigint | Uint8Array): string => integer(v).toString('hex');
    expect([0n, 127n, 128n, 256n, -1n, -128n, -129n].map(hex)).toEqual(['020100', '02017f', '02020080', '02020100', '0201ff', '020180', '0202ff7f']);
    expect(hex(Buffer.from([0, 0, 0x80]))).toBe('02020080');
    expect(hex(Buffer.from([0xff]))).toBe('020200ff');
    fc.assert(fc.property(fc.bigInt({ min: -(1n << 200n), max: 1n << 200n }), (v) => readInteger(decodeDer(integer(v)), 'x') === v));
  });

  it('encodes OIDs, named bits and the RFC 5280 time types', () => {
    expect(oid('1.2.840.113549.1.9.7').toString('hex')).toBe('06092a864886f70d010907');
    expect(oid('2.999.3').toString('hex')).toBe('0603883703');
    fc.assert(fc.property(fc.constantFrom('0', '1', '2'), fc.nat(39), fc.array(fc.bigInt({ min: 0n, max: 1n << 70n }), { maxLength: 6 }), (a, b, rest) => {
      const dotted = [a, b, ...rest].join('.');
      return readOid(decodeDer(oid(dotted)), 'x') === dotted;
    }));
    expect(namedBits([5, 6]).toString('hex')).toBe('03020106');
    expect(namedBits([0]).toString('hex')).toBe('03020780');
    const late = new Date('2049-12-31T23:59:59.900Z');
    expect(time(late).toString('latin1').slice(2)).toBe('491231235959Z');
    expect(time(late)[0]).toBe(0x17);
    expect(time(new Date('2050-01-01T00:00:00Z')).toString('latin1').slice(2)).toBe('20500101000000Z');
    expect(time(new Date('2050-01-01T00:00:00Z'))[0]).toBe(0x18);
    expect(readTime(decodeDer(time(new Date('1999-06-01T12:00:00Z'))), 'x').toISOString()).toBe('1999-06-01T12:00:00.000Z');
  });

  it('refuses indefinite, non-minimal and oversized lengths, trailing bytes, and deep nesting', () => {
    const bad: readonly (readonly [string, RegExp])[] = [
      ['30800201000000', /indefinite length/u],
      ['3081030201 00', /long form/u],
      ['308200030201 00', /leading zero/u],
      ['308500000000030201 00', /length of 5 octets/u],
      ['3003020100 ff', /1 trailing byte/u],
      ['3005020100', /truncated: a value of 5 octets/u],
      ['0201', /truncated: a value of 1 octets/u],
      ['3081', /truncated inside a length/u],
      ['02020001', /redundant leading octet/u],
      ['0202ff80', /redundant leading octet/u],
      ['1003020100', /primitive form/u],
      ['2303000000', /constructed form/u],
      ['0603808101', /leading 0x80/u],
      ['06025581', /cut short/u],
      ['3f00', /high-tag-number/u],
    ];
    for (const [h, reason] of bad) {
      const bytes = Buffer.from(h.replace(/ /gu, ''), 'hex');
      const read = (): unknown => {
        const node = decodeDer(bytes);
        return node.tag === 0x30 ? readInteger(node.children[0], 'x') : node.tag === 0x06 ? readOid(node, 'x') : readInteger(node, 'x');
      };
      expect(pkiCode(read), h).toBe('EAI_PKI_DER');
      expect(read, h).toThrow(reason);
    }
    expect(() => readBoolean(decodeDer(Buffer.from('010101', 'hex')), 'x')).toThrow(/0x00 or 0xff/u);
    expect(() => readString(decodeDer(Buffer.from('0c02c0af', 'hex')), 'x')).toThrow(/not valid UTF-8/u);
    expect(() => readString(decodeDer(Buffer.from('130140', 'hex')), 'x')).toThrow(/characters its type does not allow/u);
    expect(() => readTime(decodeDer(Buffer.from(`170d${Buffer.from('491331235959Z').toString('hex')}`, 'hex')), 'x')).toThrow(/not a real date/u);
    let deep: Buffer = Buffer.from('0500', 'hex');
    for (let i = 0; i < 40; i++) deep = sequence(deep);
    expect(() => decodeDer(deep)).toThrow(/nested deeper than 32/u);
    expect(pkiCode(() => fromPem('not a pem', ['CERTIFICATE REQUEST']))).toBe('EAI_PKI_PEM');
  });
});

describe('certificates', () => {
  const client = ecKey();
  const clientPem = issueCertificate({ ca, subjectPublicKey: client.publicKey, commonName: 'robot-7', validDays: 365, usage: 'client' });
  const serverKey = ecKey();
  const serverPem = issueCertificate({ ca, subjectPublicKey: serverKey.privateKey, commonName: 'broker', validDays: 365, usage: 'server', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1', '::1'] });

  it('makes a self-signed CA and leaves Node can verify, with the issuer copied byte for byte', () => {
    const caCert = new X509Certificate(ca.certificatePem);
    expect(caCert.ca).toBe(true);
    expect(caCert.subject).toBe('O=aios test fleet\nCN=Fleet CA');
    expect(caCert.verify(caCert.publicKey)).toBe(true);
    const leaf = new X509Certificate(clientPem);
    expect(leaf.ca).toBe(false);
    expect(leaf.subject).toBe('CN=robot-7');
    expect(leaf.verify(caCert.publicKey)).toBe(true);
    expect(leaf.checkIssued(caCert)).toBe(true);
    expect(leaf.verify(new X509Certificate(otherCa.certificatePem).publicKey)).toBe(false);
    expect(tbsOf(clientPem).issuer.raw.equals(tbsOf(ca.certificatePem).subject.raw)).toBe(true);
    expect(leaf.publicKey.export({ type: 'spki', format: 'der' }).equals(client.publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
    expect(new X509Certificate(serverPem).subjectAltName).toBe('DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1');
  });

  it('draws a positive 16-byte serial at random and writes the validity it was asked for', () => {
    const now = new Date('2030-03-04T05:06:07.890Z');
    const a = issueCertificate({ ca: createCertificateAuthority({ commonName: 'Later CA', validDays: 9000, now }), subjectPublicKey: edKey().publicKey, commonName: 'robot-8', validDays: 10, usage: 'client', now });
    const { serial, notBefore, notAfter } = tbsOf(a);
    expect(serial.content.length).toBe(16);
    expect(readInteger(serial, 'serial') > 0n).toBe(true);
    expect(serial.content.equals(tbsOf(clientPem).serial.content)).toBe(false);
    expect(readTime(notBefore, 'nb').toISOString()).toBe('2030-03-04T05:01:07.000Z'); // five minutes of clock skew
    expect(readTime(notAfter, 'na').toISOString()).toBe('2030-03-14T05:06:07.000Z');
    const ca2050 = createCertificateAuthority({ commonName: 'Long CA', validDays: 365 * 40, now });
    expect(Date.parse(new X509Certificate(ca2050.certificatePem).validTo)).toBe(Date.parse('2030-03-04T05:06:07Z') + 365 * 40 * 86_400_000);
    expect(tbsOf(ca2050.certificatePem).notAfter.tag).toBe(0x18);
  });

  it('refuses bad arguments, foreign keys and a CA that is not one', () => {
    const key = ecKey().publicKey;
    const issue = (over: Partial<Parameters<typeof issueCertificate>[0]>): string => issueCertificate({ ca, subjectPublicKey: key, commonName: 'robot-7', validDays: 30, usage: 'client', ...over });
    expect(pkiCode(() => issue({ usage: 'server' }))).toBe('EAI_PKI_ARGUMENT');
    expect(pkiCode(() => issue({ validDays: 0 }))).toBe('EAI_PKI_ARGUMENT');
    expect(pkiCode(() => issue({ validDays: 4000 }))).toBe('EAI_PKI_ARGUMENT'); // would outlive the CA
    expect(pkiCode(() => issue({ commonName: '' }))).toBe('EAI_PKI_ARGUMENT');
    expect(pkiCode(() => issue({ usage: 'server', dnsNames: ['bad name'] }))).toBe('EAI_PKI_ARGUMENT');
    expect(pkiCode(() => issue({ usage: 'server', ipAddresses: ['300.1.1.1'] }))).toBe('EAI_PKI_ARGUMENT');
    expect(pkiCode(() => issue({ subjectPublicKey: generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey }))).toBe('EAI_PKI_KEY_UNSUPPORTED');
    expect(pkiCode(() => issue({ subjectPublicKey: 'junk' }))).toBe('EAI_PKI_KEY_UNSUPPORTED');
    expect(pkiCode(() => issue({ ca: { certificatePem: clientPem, privateKeyPem: pem(client.privateKey) } }))).toBe('EAI_PKI_CA_INVALID');
    expect(pkiCode(() => issue({ ca: { certificatePem: ca.certificatePem, privateKeyPem: otherCa.privateKeyPem } }))).toBe('EAI_PKI_CA_INVALID');
    const expired = createCertificateAuthority({ commonName: 'Old CA', validDays: 1, now: new Date('2020-01-01T00:00:00Z') });
    expect(() => issue({ ca: expired })).toThrow(/the CA expired on 2020-01-02T00:00:00.000Z/u);
    expect(issue({ subjectPublicKey: key.export({ type: 'spki', format: 'pem' }).toString() })).toMatch(/^-----BEGIN CERTIFICATE-----/u);
  });

  describe.skipIf(openssl === undefined)('against the openssl CLI', () => {
    const caFile = file('ca.pem', ca.certificatePem);
    const verify = (leaf: string, ...extra: string[]): { status: number | null; out: string } => run(['verify', ...extra, '-CAfile', caFile, file(`leaf-${Math.random()}.pem`, leaf)]);

    it('parses the CA and leaves with the extensions the profile asks for', () => {
      const caText = run(['x509', '-noout', '-text', '-in', caFile]);
      expect(caText.status).toBe(0);
      expect(caText.out).toMatch(/Signature Algorithm: ecdsa-with-SHA256/u);
      expect(caText.out).toMatch(/Basic Constraints: critical\s+CA:TRUE, pathlen:0/u);
      expect(caText.out).toMatch(/Key Usage: critical\s+Certificate Sign, CRL Sign/u);
      const skid = /Subject Key Identifier:\s+([0-9A-F:]+)/u.exec(caText.out)?.[1];
      expect(skid).toMatch(/^([0-9A-F]{2}:){19}[0-9A-F]{2}$/u);
      const leafText = run(['x509', '-noout', '-text', '-in', file('client.pem', clientPem)]).out;
      expect(leafText).toMatch(/Basic Constraints: critical\s+CA:FALSE/u);
      expect(leafText).toMatch(/Key Usage: critical\s+Digital Signature\n/u);
      expect(leafText).toMatch(/Extended Key Usage:\s+TLS Web Client Authentication\n/u);
      expect(leafText).toMatch(new RegExp(`Authority Key Identifier:\\s+(keyid:)?${skid}`, 'u'));
      expect(leafText).not.toMatch(/Subject Alternative Name/u);
      const serverText = run(['x509', '-noout', '-text', '-in', file('server.pem', serverPem)]).out;
      expect(serverText).toMatch(/TLS Web Server Authentication/u);
      expect(serverText).toMatch(/DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1/u);
    });

    it('verifies leaves for their purpose against the CA, and not against another CA', () => {
      expect(verify(clientPem, '-purpose', 'sslclient').out).toMatch(/: OK\n/u);
      expect(verify(serverPem, '-purpose', 'sslserver').out).toMatch(/: OK\n/u);
      expect(verify(clientPem, '-purpose', 'sslserver').status).not.toBe(0);
      const ed = issueCertificate({ ca, subjectPublicKey: edKey().publicKey, commonName: 'robot-ed', validDays: 30, usage: 'client' });
      expect(verify(ed, '-purpose', 'sslclient').out).toMatch(/: OK\n/u);
      const foreign = issueCertificate({ ca: otherCa, subjectPublicKey: ecKey().publicKey, commonName: 'robot-7', validDays: 30, usage: 'client' });
      const refused = verify(foreign);
      expect(refused.status).not.toBe(0);
      expect(refused.out).toMatch(/unable to get local issuer certificate|certificate signature failure/u);
      const now = new Date('2031-01-01T00:00:00Z');
      const future = createCertificateAuthority({ commonName: 'Future CA', validDays: 365 * 30, now });
      const leaf2050 = issueCertificate({ ca: future, subjectPublicKey: ecKey().publicKey, commonName: 'robot-9', validDays: 365 * 25, usage: 'client', now });
      const at = String(Math.floor(Date.parse('2055-01-01T00:00:00Z') / 1000));
      expect(run(['verify', '-attime', at, '-CAfile', file('future.pem', future.certificatePem), file('leaf2050.pem', leaf2050)]).out).toMatch(/: OK\n/u);
    });

    it('issues under a CA openssl made, copying its PrintableString subject byte for byte', () => {
      const legacyKey = ecKey().privateKey;
      const key = file('legacy.key', pem(legacyKey));
      const cnf = file('legacy.cnf', '[ req ]\ndistinguished_name = dn\nstring_mask = default\n[ dn ]\n');
      const made = run(['req', '-x509', '-new', '-key', key, '-subj', '/O=Legacy/CN=Legacy CA', '-days', '30', '-config', cnf, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-addext', 'subjectKeyIdentifier=hash', '-out', 'legacy.pem']);
      expect(made.status, made.out).toBe(0);
      const legacy: CertificateAuthority = { certificatePem: run(['x509', '-in', 'legacy.pem']).out, privateKeyPem: pem(legacyKey) };
      const leaf = issueCertificate({ ca: legacy, subjectPublicKey: ecKey().publicKey, commonName: 'robot-7', validDays: 7, usage: 'client' });
      const subject = tbsOf(legacy.certificatePem).subject;
      expect(subject.raw.includes(Buffer.from('13094c6567616379204341', 'hex'))).toBe(true); // PrintableString 'Legacy CA'
      expect(tbsOf(leaf).issuer.raw.equals(subject.raw)).toBe(true);
      expect(run(['verify', '-CAfile', path.join(dir, 'legacy.pem'), file('legacy-leaf.pem', leaf)]).out).toMatch(/: OK\n/u);
    });

    it('writes CSRs openssl verifies, and reads CSRs openssl makes, for P-256 and Ed25519 keys', () => {
      for (const [name, key] of [['ec', ecKey()], ['ed', edKey()]] as const) {
        const csr = createCsr({ privateKey: key.privateKey, commonName: 'robot-7', challengePassword: 'enrol-Token_42' });
        const checked = run(['req', '-verify', '-noout', '-text', '-in', file(`${name}-ours.csr`, csr)]);
        expect(checked.status, checked.out).toBe(0);
        expect(checked.out).toMatch(/verify OK/u);
        expect(checked.out).toMatch(/challengePassword\s*:\s*enrol-Token_42/u);

        const keyFile = file(`${name}.key`, pem(key.privateKey));
        const cnf = file(`${name}.cnf`, '[ req ]\ndistinguished_name = dn\nattributes = attrs\nprompt = no\n[ dn ]\nCN = robot-7\n[ attrs ]\nchallengePassword = tok-123_abc\n');
        const made = run(['req', '-new', '-key', keyFile, '-config', cnf, '-addext', 'subjectAltName=DNS:robot-7.local', '-out', `${name}-theirs.csr`]);
        expect(made.status, made.out).toBe(0);
        const parsed = parseCsr(run(['req', '-in', `${name}-theirs.csr`]).out);
        expect(parsed.commonName).toBe('robot-7');
        expect(parsed.challengePassword).toBe('tok-123_abc');
        expect(parsed.publicKey.equals(key.publicKey)).toBe(true);
        const plain = run(['req', '-new', '-key', keyFile, '-subj', '/CN=robot-7', '-addext', 'subjectAltName=DNS:robot-7.local', '-config', file('plain.cnf', '[ req ]\ndistinguished_name = dn\n[ dn ]\n'), '-outform', 'DER', '-out', `${name}-plain.der`]);
        expect(plain.status, plain.out).toBe(0);
        const fromDer = parseCsr(readFileSync(path.join(dir, `${name}-plain.der`)));
        expect(fromDer).toEqual({ commonName: 'robot-7', publicKey: expect.anything() });
        const issued = issueCertificate({ ca, subjectPublicKey: fromDer.publicKey, commonName: fromDer.commonName, validDays: 30, usage: 'client' });
        expect(verify(issued).out).toMatch(/: OK\n/u);
      }
    });

    it('refuses an RSA CSR with EAI_PKI_KEY_UNSUPPORTED', () => {
      const made = run(['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'rsa.key', '-subj', '/CN=robot-rsa', '-config', file('rsa.cnf', '[ req ]\ndistinguished_name = dn\n[ dn ]\n')]);
      expect(made.status, made.out).toBe(0);
      expect(pkiCode(() => parseCsr(made.out))).toBe('EAI_PKI_KEY_UNSUPPORTED');
    });
  });
});

describe('parseCsr', () => {
  const ec = ecKey();
  const ed = edKey();
  const ecCsr = fromPem(createCsr({ privateKey: ec.privateKey, commonName: 'robot-7', challengePassword: 'one-time token' }), ['CERTIFICATE REQUEST']);
  const edCsr = fromPem(createCsr({ privateKey: ed.privateKey, commonName: 'robot-8' }), ['CERTIFICATE REQUEST']);
  const parts = (der: Buffer): DerNode[] => [...decodeDer(der).children];

  it('round-trips our CSRs', () => {
    const a = parseCsr(ecCsr);
    expect([a.commonName, a.challengePassword, a.publicKey.equals(ec.publicKey)]).toEqual(['robot-7', 'one-time token', true]);
    const b = parseCsr(Buffer.from(`a note before the block\n${toPem('CERTIFICATE REQUEST', edCsr)}`));
    expect(b).toEqual({ commonName: 'robot-8', publicKey: expect.anything() });
    expect(b.publicKey.equals(ed.publicKey)).toBe(true);
  });

  it('names what is wrong with a broken CSR', () => {
    const flipped = Buffer.from(ecCsr);
    flipped[flipped.length - 5] = (flipped[flipped.length - 5] ?? 0) ^ 0x01;
    expect(pkiCode(() => parseCsr(flipped))).toBe('EAI_PKI_CSR_SIGNATURE');
    expect(pkiCode(() => parseCsr(ecCsr.subarray(0, ecCsr.length - 1)))).toBe('EAI_PKI_DER');
    expect(() => parseCsr(Buffer.concat([edCsr, Buffer.of(0)]))).toThrow(/1 trailing byte after/u);
    const [info, algorithm, signature] = parts(edCsr) as [DerNode, DerNode, DerNode];
    const [version, subject, spki, attributes] = info.children as [DerNode, DerNode, DerNode, DerNode];
    // version 02 01 00 rewritten as 02 81 01 00: the same value with a length in long form.
    const longForm = sequence(tlv(0x30, Buffer.concat([Buffer.from('02810100', 'hex'), subject.raw, spki.raw, attributes.raw])), algorithm.raw, signature.raw);
    expect(() => parseCsr(longForm)).toThrow(/long form/u);
    expect(pkiCode(() => parseCsr(longForm))).toBe('EAI_PKI_DER');
    const leadingZero = Buffer.concat([Buffer.from([0x30, 0x82, 0x00, edCsr[1] ?? 0]), edCsr.subarray(2)]);
    expect(() => parseCsr(leadingZero)).toThrow(/leading zero/u);
    // A correctly signed request that claims version 2 (1): signed, yet not PKCS#10 v1.
    const v2 = sequence(integer(1n), subject.raw, spki.raw, attributes.raw);
    const v2Csr = sequence(v2, algorithm.raw, tlv(0x03, Buffer.concat([Buffer.of(0), sign(null, v2, ed.privateKey)])));
    expect(() => parseCsr(v2Csr)).toThrow(/version is 1/u);
    expect(pkiCode(() => parseCsr(v2Csr))).toBe('EAI_PKI_CSR_INVALID');
    expect(version.raw.toString('hex')).toBe('020100');
    // An Ed25519 key claiming an ECDSA signature.
    const mislabelled = sequence(info.raw, sequence(oid('1.2.840.10045.4.3.2')), signature.raw);
    expect(pkiCode(() => parseCsr(mislabelled))).toBe('EAI_PKI_CSR_INVALID');
    expect(pkiCode(() => parseCsr(Buffer.alloc(20_000, 0x30)))).toBe('EAI_PKI_DER');
    expect(pkiCode(() => parseCsr('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n'))).toBe('EAI_PKI_PEM');
  });

  it('throws only PkiError for any flipped or truncated CSR', () => {
    const change = fc.oneof(
      fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), mask: fc.integer({ min: 1, max: 255 }) }),
      fc.record({ kind: fc.constant('cut' as const), at: fc.nat(), mask: fc.constant(0) }),
    );
    for (const csr of [ecCsr, edCsr]) {
      fc.assert(fc.property(fc.array(change, { minLength: 1, maxLength: 3 }), (changes) => {
        let bytes = Buffer.from(csr);
        for (const c of changes) {
          if (c.kind === 'cut') bytes = bytes.subarray(0, c.at % bytes.length);
          else if (bytes.length > 0) bytes[c.at % bytes.length] = (bytes[c.at % bytes.length] ?? 0) ^ c.mask;
        }
        if (bytes.equals(csr)) return;
        expect(pkiCode(() => parseCsr(bytes))).toMatch(/^EAI_PKI_/u);
      }), { numRuns: 400 });
    }
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
      expect(pkiCode(() => parseCsr(bytes))).toMatch(/^EAI_PKI_/u);
    }));
  });
});

describe('mutual TLS on loopback', () => {
  const serverKey = ecKey();
  const serverCert = issueCertificate({ ca, subjectPublicKey: serverKey.publicKey, commonName: 'broker', validDays: 30, usage: 'server', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
  const device = (authority: CertificateAuthority, key = ecKey(), usage: 'client' | 'server' = 'client'): { key: string; cert: string } => ({
    key: pem(key.privateKey),
    cert: issueCertificate({ ca: authority, subjectPublicKey: key.publicKey, commonName: 'robot-7', validDays: 30, usage, ipAddresses: ['127.0.0.1'] }),
  });

  it('admits a device certificate from the fleet CA, P-256 or Ed25519', async () => {
    for (const key of [ecKey(), edKey()]) {
      expect(await handshake(device(ca, key))).toEqual({ serverSaw: 'robot-7', clientGot: 'hello robot-7' });
    }
  });

  // otherCa has the same name as ca: only its key (and so the authority key id) tells them apart.
  it('refuses a client certificate from another CA, and a server certificate used as a client one', async () => {
    for (const client of [device(otherCa), device(ca, ecKey(), 'server')]) {
      const refused = await handshake(client);
      expect(refused.serverSaw).toBeUndefined();
      expect(refused.clientGot).toBe('');
      // Node's server drops the connection itself after OpenSSL's verdict, so the client sees only a hang-up.
      expect(refused.serverError).toBe('socket hang up');
    }
    // The same handshakes on a server that lets them through, to read why Node refused them.
    expect(await handshake(device(otherCa), false)).toMatchObject({ serverSaw: 'unauthorized: UNABLE_TO_VERIFY_LEAF_SIGNATURE' });
    expect(await handshake(device(ca, ecKey(), 'server'), false)).toMatchObject({ serverSaw: 'unauthorized: INVALID_PURPOSE' });
  });

  async function handshake(client: { key: string; cert: string }, rejectUnauthorized = true): Promise<{ serverSaw?: string; clientGot: string; serverError?: string; clientError?: string }> {
    const seen: { serverSaw?: string; serverError?: string } = {};
    const server = tls.createServer({ key: pem(serverKey.privateKey), cert: serverCert, ca: [ca.certificatePem], requestCert: true, rejectUnauthorized }, (socket) => {
      seen.serverSaw = socket.authorized ? String(socket.getPeerCertificate().subject.CN) : `unauthorized: ${String(socket.authorizationError)}`;
      socket.end(socket.authorized ? `hello ${seen.serverSaw}` : '');
    });
    server.on('tlsClientError', (error) => (seen.serverError = error.message));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    try {
      const client_ = await new Promise<{ clientGot: string; clientError?: string }>((resolve) => {
        let got = '';
        let failed: string | undefined;
        const socket = tls.connect({ host: '127.0.0.1', port, ca: [ca.certificatePem], ...client });
        socket.setEncoding('utf8');
        socket.on('data', (chunk: string) => (got += chunk));
        socket.on('error', (error) => (failed = error.message));
        socket.on('close', () => resolve(failed === undefined ? { clientGot: got } : { clientGot: got, clientError: failed }));
        socket.setTimeout(10_000, () => socket.destroy(new Error('handshake timed out')));
      });
      return { ...seen, ...client_ };
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  }
});
