import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, verify, X509Certificate, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import { bitString, boolean, decodeDer, elements, explicit, expectTag, fromPem, ia5String, implicit, integer, namedBits, octetString, oid, readBitString, readOctetString, readOid, readTime, sequence, set, Tag, time, toPem, utf8String, type DerNode } from './der.js';
import { PkiError } from './errors.js';

/**
 * The fleet CA and the certificates it issues (RFC 5280 profile): a self-signed ECDSA P-256 CA
 * that may sign only end-entity certificates, and per-device client or broker server
 * certificates for mutual TLS. Subject keys may be EC P-256 or Ed25519 (both occur on devices);
 * the CA always signs with ecdsa-with-SHA256.
 */

export interface CertificateAuthority {
  readonly certificatePem: string;
  /** PKCS#8 PEM, unencrypted: whoever stores it protects it (file mode, TPM, KMS). */
  readonly privateKeyPem: string;
}

export interface CertificateAuthorityOptions {
  readonly commonName: string;
  readonly organization?: string;
  readonly validDays: number;
  readonly now?: Date;
}

export type CertificateUsage = 'client' | 'server';

export interface IssueCertificateOptions {
  readonly ca: CertificateAuthority;
  /** A KeyObject (public, or private to take its public half), or SPKI as DER or PEM. */
  readonly subjectPublicKey: KeyObject | Uint8Array | string;
  readonly commonName: string;
  readonly validDays: number;
  readonly usage: CertificateUsage;
  readonly dnsNames?: readonly string[];
  readonly ipAddresses?: readonly string[];
  readonly now?: Date;
}

export const OID = {
  commonName: '2.5.4.3',
  organization: '2.5.4.10',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  ed25519: '1.3.101.112',
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
} as const;

/** A device clock a few minutes behind the CA's must not reject a certificate just issued. */
export const CLOCK_SKEW_MS = 5 * 60_000;

const DAY_MS = 86_400_000;
// KeyUsage bit numbers (RFC 5280 4.2.1.3).
const DIGITAL_SIGNATURE = 0;
const KEY_CERT_SIGN = 5;
const CRL_SIGN = 6;

export function createCertificateAuthority(options: CertificateAuthorityOptions): CertificateAuthority {
  const { validity } = validityOf(options.now, options.validDays);
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const subject = distinguishedName([...(options.organization === undefined ? [] : [[OID.organization, checkName(options.organization, 'organization')] as const]), [OID.commonName, checkName(options.commonName, 'commonName')]]);
  const certificate = signCertificate(privateKey, subject, subject, validity, spki, [
    // pathLen 0: this CA signs device and broker certificates, never another CA.
    extension(OID.basicConstraints, true, sequence(boolean(true), integer(0n))),
    extension(OID.keyUsage, true, namedBits([KEY_CERT_SIGN, CRL_SIGN])),
    extension(OID.subjectKeyIdentifier, false, octetString(keyIdentifier(spki))),
  ]);
  return { certificatePem: certificate, privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
}

/** A PEM certificate for `subjectPublicKey`, signed by `ca`. */
export function issueCertificate(options: IssueCertificateOptions): string {
  const ca = readAuthority(options.ca);
  const subjectKey = publicKeyOf(options.subjectPublicKey);
  keyKind(subjectKey, 'the subject public key');
  const spki = subjectKey.export({ type: 'spki', format: 'der' });
  const { validity, notBefore, notAfter } = validityOf(options.now, options.validDays);
  const issuedAt = notBefore.getTime() + CLOCK_SKEW_MS;
  if (issuedAt > ca.notAfter.getTime()) throw new PkiError('EAI_PKI_CA_INVALID', `the CA expired on ${ca.notAfter.toISOString()}; create a new fleet CA`);
  if (notAfter.getTime() > ca.notAfter.getTime()) throw new PkiError('EAI_PKI_ARGUMENT', `a certificate valid until ${notAfter.toISOString()} would outlive its CA (valid until ${ca.notAfter.toISOString()}); issue it for fewer days or renew the CA`);
  const names = [...(options.dnsNames ?? []).map((n) => implicit(2, ia5String(checkDnsName(n)))), ...(options.ipAddresses ?? []).map((ip) => implicit(7, octetString(ipBytes(ip))))];
  if (options.usage !== 'server' && options.usage !== 'client') throw new PkiError('EAI_PKI_ARGUMENT', `usage '${String(options.usage)}' is neither 'client' nor 'server'`);
  if (options.usage === 'server' && names.length === 0) throw new PkiError('EAI_PKI_ARGUMENT', 'a server certificate needs dnsNames or ipAddresses: TLS clients match the host they dial against the subjectAltName');
  return signCertificate(ca.privateKey, ca.subject, distinguishedName([[OID.commonName, checkName(options.commonName, 'commonName')]]), validity, spki, [
    extension(OID.basicConstraints, true, sequence()),
    // ECDHE key exchange signs with the key; it never encrypts with it, so no keyEncipherment.
    extension(OID.keyUsage, true, namedBits([DIGITAL_SIGNATURE])),
    extension(OID.extKeyUsage, false, sequence(oid(options.usage === 'server' ? OID.serverAuth : OID.clientAuth))),
    extension(OID.authorityKeyIdentifier, false, sequence(implicit(0, octetString(ca.keyIdentifier)))),
    extension(OID.subjectKeyIdentifier, false, octetString(keyIdentifier(spki))),
    ...(names.length === 0 ? [] : [extension(OID.subjectAltName, false, sequence(...names))]),
  ]);
}

// ---------------------------------------------------------------------------------------------
// Keys, signatures and names, shared with csr.ts.

export type KeyKind = 'p256' | 'ed25519';

export function keyKind(key: KeyObject, what: string): KeyKind {
  if (key.asymmetricKeyType === 'ed25519') return 'ed25519';
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'p256';
  const found = key.asymmetricKeyType === 'ec' ? `an EC key on ${key.asymmetricKeyDetails?.namedCurve ?? 'an unnamed curve'}` : `a ${key.asymmetricKeyType ?? key.type} key`;
  throw new PkiError('EAI_PKI_KEY_UNSUPPORTED', `${what} is ${found}; the fleet PKI takes EC P-256 (prime256v1) or Ed25519 keys: generate one with 'openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256' or '-algorithm ed25519'`);
}

/** The AlgorithmIdentifier a `kind` key signs with; both forms omit parameters (RFC 5758, RFC 8410). */
export function signatureAlgorithm(kind: KeyKind): Buffer {
  return sequence(oid(kind === 'p256' ? OID.ecdsaWithSha256 : OID.ed25519));
}

export function signWith(kind: KeyKind, privateKey: KeyObject, data: Uint8Array): Buffer {
  return sign(kind === 'p256' ? 'sha256' : null, data, privateKey);
}

/** Never throws: a signature Node cannot even parse is a signature that does not verify. */
export function verifyWith(kind: KeyKind, publicKey: KeyObject, data: Uint8Array, signature: Uint8Array): boolean {
  try {
    return verify(kind === 'p256' ? 'sha256' : null, data, publicKey, signature);
  } catch {
    return false;
  }
}

/** A Name with one attribute per RDN, strings as UTF8String (RFC 5280 4.1.2.6). */
export function distinguishedName(attributes: readonly (readonly [string, string])[]): Buffer {
  return sequence(...attributes.map(([type, value]) => set(sequence(oid(type), utf8String(value)))));
}

/** ub-common-name and ub-organization-name are both 64 (RFC 5280 appendix A). */
export function checkName(value: string, what: string): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 64 || /[\x00-\x1f\x7f]/u.test(value)) {
    throw new PkiError('EAI_PKI_ARGUMENT', `${what} must be 1 to 64 characters without control characters, found ${JSON.stringify(value)}`);
  }
  return value;
}

// ---------------------------------------------------------------------------------------------

export interface Authority {
  readonly privateKey: KeyObject;
  /** The CA certificate's subject exactly as encoded there, so issuer and subject match byte for byte. */
  readonly subject: Buffer;
  readonly keyIdentifier: Buffer;
  readonly notAfter: Date;
}

/** The CA's key, subject Name (DER), key identifier and expiry, checked to belong together. */
export function readAuthority(ca: CertificateAuthority): Authority {
  let der: Buffer;
  let certificate: X509Certificate;
  let privateKey: KeyObject;
  try {
    der = fromPem(ca.certificatePem, ['CERTIFICATE']);
    certificate = new X509Certificate(der);
    privateKey = createPrivateKey(ca.privateKeyPem);
  } catch (cause) {
    throw new PkiError('EAI_PKI_CA_INVALID', `the CA certificate or private key cannot be read (${(cause as Error).message}); pass the PEM files createCertificateAuthority wrote`, { cause });
  }
  if (!certificate.ca) throw new PkiError('EAI_PKI_CA_INVALID', `'${certificate.subject}' is not a CA certificate (basicConstraints CA:FALSE or absent); pass the fleet CA`);
  if (keyKind(privateKey, 'the CA private key') !== 'p256') throw new PkiError('EAI_PKI_KEY_UNSUPPORTED', 'the CA private key is Ed25519; the fleet CA signs with an EC P-256 key (ecdsa-with-SHA256)');
  const spki = certificate.publicKey.export({ type: 'spki', format: 'der' });
  if (!createPublicKey(privateKey).export({ type: 'spki', format: 'der' }).equals(spki)) throw new PkiError('EAI_PKI_CA_INVALID', `the CA private key does not belong to the CA certificate '${certificate.subject}'; pass the key generated with it`);
  const tbs = expectTag(elements(decodeDer(der, 'the CA certificate'), 3, 3, 'the CA certificate')[0], Tag.SEQUENCE, 'the CA tbsCertificate');
  const shift = tbs.children[0]?.tag === 0xa0 ? 1 : 0; // version is [0] EXPLICIT, absent in v1
  const subject = expectTag(tbs.children[4 + shift], Tag.SEQUENCE, 'the CA subject');
  const validity = expectTag(tbs.children[3 + shift], Tag.SEQUENCE, 'the CA validity');
  const keyId = extensionValue(tbs.children.find((c) => c.tag === 0xa3), OID.subjectKeyIdentifier);
  return {
    privateKey,
    subject: subject.raw,
    keyIdentifier: keyId === undefined ? keyIdentifier(spki) : readOctetString(decodeDer(keyId, 'the CA subjectKeyIdentifier'), 'the CA subjectKeyIdentifier'),
    notAfter: readTime(validity.children[1], 'the CA notAfter'),
  };
}

function extensionValue(extensions: DerNode | undefined, id: string): Buffer | undefined {
  if (extensions?.tag !== 0xa3) return undefined;
  for (const ext of expectTag(extensions.children[0], Tag.SEQUENCE, 'the CA extensions').children) {
    if (readOid(ext.children[0], 'an extension id') === id) return readOctetString(ext.children[ext.children.length - 1], 'an extension value');
  }
  return undefined;
}

function signCertificate(caKey: KeyObject, issuer: Buffer, subject: Buffer, validity: Buffer, spki: Buffer, extensions: readonly Buffer[]): string {
  const serial = randomBytes(16);
  // Positive (top bit clear) and a full 16 octets (next bit set): RFC 5280 4.1.2.2.
  serial[0] = ((serial[0] ?? 0) & 0x7f) | 0x40;
  const algorithm = signatureAlgorithm('p256');
  const tbs = sequence(explicit(0, integer(2n)), integer(serial), algorithm, issuer, validity, subject, spki, explicit(3, sequence(...extensions)));
  return toPem('CERTIFICATE', sequence(tbs, algorithm, bitString(signWith('p256', caKey, tbs))));
}

export function extension(id: string, critical: boolean, value: Buffer): Buffer {
  // DER leaves out a BOOLEAN equal to its DEFAULT (FALSE).
  return sequence(oid(id), ...(critical ? [boolean(true)] : []), octetString(value));
}

/** RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING's bytes. */
function keyIdentifier(spki: Buffer): Buffer {
  const key = readBitString(decodeDer(spki, 'a SubjectPublicKeyInfo').children[1], 'the subjectPublicKey');
  return createHash('sha1').update(key).digest();
}

function validityOf(now: Date | undefined, validDays: number): { validity: Buffer; notBefore: Date; notAfter: Date } {
  if (typeof validDays !== 'number' || !Number.isFinite(validDays) || validDays <= 0) throw new PkiError('EAI_PKI_ARGUMENT', `validDays must be a positive number of days, found ${String(validDays)}`);
  const start = Math.floor((now ?? new Date()).getTime() / 1000) * 1000;
  if (!Number.isFinite(start)) throw new PkiError('EAI_PKI_ARGUMENT', '`now` is an invalid Date');
  const notBefore = new Date(start - CLOCK_SKEW_MS);
  const notAfter = new Date(start + Math.round(validDays * DAY_MS));
  return { validity: sequence(time(notBefore), time(notAfter)), notBefore, notAfter };
}

function publicKeyOf(key: KeyObject | Uint8Array | string): KeyObject {
  try {
    if (typeof key === 'string') return createPublicKey(key);
    if (key instanceof Uint8Array) return createPublicKey({ key: Buffer.from(key), format: 'der', type: 'spki' });
    return key.type === 'private' ? createPublicKey(key) : key;
  } catch (cause) {
    throw new PkiError('EAI_PKI_KEY_UNSUPPORTED', `the subject public key cannot be read (${(cause as Error).message}); pass a KeyObject, SPKI DER, or a PEM 'PUBLIC KEY' block`, { cause });
  }
}

function checkDnsName(name: string): string {
  // A leading '*.' is a wildcard; labels are letters, digits and hyphens (RFC 5280 4.2.1.6).
  if (name.length > 253 || !/^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/u.test(name)) {
    throw new PkiError('EAI_PKI_ARGUMENT', `'${name}' is not a DNS name (letters, digits, hyphens and dots; at most 253 characters)`);
  }
  return name;
}

function ipBytes(ip: string): Buffer {
  const version = ip.includes('%') ? 0 : isIP(ip);
  if (version === 4) return Buffer.from(ip.split('.').map(Number));
  if (version !== 6) throw new PkiError('EAI_PKI_ARGUMENT', `'${ip}' is not an IPv4 or IPv6 address (zone ids such as %eth0 do not belong in a certificate)`);
  let text = ip;
  const quad = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/u.exec(text);
  if (quad !== null) {
    const [a, b, c, d] = quad.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, quad.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const before = head === '' ? [] : head.split(':');
  const after = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? before : [...before, ...Array<string>(8 - before.length - after.length).fill('0'), ...after];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}
