import { createPublicKey, type KeyObject } from 'node:crypto';
import { OID, checkName, distinguishedName, keyKind, signatureAlgorithm, signWith, verifyWith, type KeyKind } from './certificate.js';
import { bitString, contextTag, decodeDer, elements, expectTag, fromPem, implicit, integer, oid, printableString, readBitString, readInteger, readOid, readString, sequence, set, Tag, toPem, utf8String, type DerNode } from './der.js';
import { PkiError } from './errors.js';

/**
 * PKCS#10 certification requests (RFC 2986): how a device asks the fleet CA for its certificate.
 * The device proves it holds the key by signing the request, and carries its one-time enrolment
 * token in the PKCS#9 challengePassword attribute. parseCsr reads requests from devices not yet
 * trusted, so it checks every field it reads and the self-signature before returning anything.
 */

export interface CsrOptions {
  /** EC P-256 (signs with ecdsa-with-SHA256) or Ed25519. */
  readonly privateKey: KeyObject;
  readonly commonName: string;
  /** The enrolment token; at most 255 characters (PKCS#9 ub-challengePassword). */
  readonly challengePassword?: string;
}

export interface CertificateRequest {
  readonly commonName: string;
  readonly publicKey: KeyObject;
  readonly challengePassword?: string;
}

/** A CSR is a few hundred bytes; anything near this is not one, and is refused before decoding. */
export const MAX_CSR_BYTES = 16 * 1024;

const CHALLENGE_PASSWORD = '1.2.840.113549.1.9.7';
const MAX_CHALLENGE_PASSWORD = 255;
const PEM_LABELS = ['CERTIFICATE REQUEST', 'NEW CERTIFICATE REQUEST'] as const;

/** A PEM `CERTIFICATE REQUEST` signed with `privateKey`. */
export function createCsr(options: CsrOptions): string {
  const { privateKey, challengePassword } = options;
  if (privateKey.type !== 'private') throw new PkiError('EAI_PKI_ARGUMENT', `a CSR is signed with a private key, found a ${privateKey.type} key`);
  const kind = keyKind(privateKey, 'the CSR key');
  const attributes: Buffer[] = [];
  if (challengePassword !== undefined) {
    if (challengePassword.length === 0 || challengePassword.length > MAX_CHALLENGE_PASSWORD) throw new PkiError('EAI_PKI_ARGUMENT', `challengePassword must be 1 to ${MAX_CHALLENGE_PASSWORD} characters, found ${challengePassword.length}`);
    // PKCS#9 prefers PrintableString where the characters allow; UTF8String holds the rest.
    const value = /^[A-Za-z0-9 '()+,\-./:=?]*$/u.test(challengePassword) ? printableString(challengePassword) : utf8String(challengePassword);
    attributes.push(sequence(oid(CHALLENGE_PASSWORD), set(value)));
  }
  const info = sequence(
    integer(0n),
    distinguishedName([[OID.commonName, checkName(options.commonName, 'commonName')]]),
    createPublicKey(privateKey).export({ type: 'spki', format: 'der' }),
    implicit(0, set(...attributes)),
  );
  return toPem('CERTIFICATE REQUEST', sequence(info, signatureAlgorithm(kind), bitString(signWith(kind, privateKey, info))));
}

/**
 * The subject, key and challengePassword of a CSR (PEM or DER) whose self-signature verifies.
 * Throws PkiError (EAI_PKI_PEM, EAI_PKI_DER, EAI_PKI_CSR_INVALID, EAI_PKI_KEY_UNSUPPORTED,
 * EAI_PKI_CSR_SIGNATURE) for anything else, and never another kind of error.
 */
export function parseCsr(pemOrDer: string | Uint8Array): CertificateRequest {
  const der = derOf(pemOrDer);
  if (der.length > MAX_CSR_BYTES) throw new PkiError('EAI_PKI_DER', `a CSR of ${der.length} bytes is larger than any real one (limit ${MAX_CSR_BYTES}); send the PKCS#10 request itself`);
  const root = expectTag(decodeDer(der, 'the CSR'), Tag.SEQUENCE, 'the CSR');
  const [info, algorithm, signature] = elements(root, 3, 3, 'the CSR') as [DerNode, DerNode, DerNode];
  const [version, subject, spki, attributes] = elements(expectTag(info, Tag.SEQUENCE, 'the certificationRequestInfo'), 4, 4, 'the certificationRequestInfo') as [DerNode, DerNode, DerNode, DerNode];
  const v = readInteger(version, 'the CSR version');
  if (v !== 0n) throw invalid(`its version is ${v}, and PKCS#10 defines only v1 (0)`);
  const commonName = commonNameOf(subject);
  const publicKey = publicKeyOf(spki);
  const kind = keyKind(publicKey, "the CSR's public key");
  const challengePassword = challengePasswordOf(expectTag(attributes, contextTag(0, true), 'the CSR attributes'));
  checkAlgorithm(algorithm, kind);
  if (!verifyWith(kind, publicKey, info.raw, readBitString(signature, 'the CSR signature'))) {
    throw new PkiError('EAI_PKI_CSR_SIGNATURE', `the CSR for '${commonName}' is not signed by the key it carries (altered in transit, or signed with another key); make a new CSR with the device's key`);
  }
  return challengePassword === undefined ? { commonName, publicKey } : { commonName, publicKey, challengePassword };
}

// ---------------------------------------------------------------------------------------------

/** PEM read from a file or a socket often arrives as bytes; DER always opens with a SEQUENCE (0x30). */
function derOf(input: string | Uint8Array): Uint8Array {
  if (typeof input !== 'string' && (input.length === 0 || input[0] === Tag.SEQUENCE)) return input;
  if (input.length > 2 * MAX_CSR_BYTES) throw new PkiError('EAI_PKI_PEM', `a PEM CSR of ${input.length} characters is larger than any real one; send the PKCS#10 request itself`);
  const text = typeof input === 'string' ? input : Buffer.from(input).toString('latin1');
  if (typeof input !== 'string' && !text.includes('-----BEGIN')) {
    throw new PkiError('EAI_PKI_DER', `the CSR is neither DER (which opens with a SEQUENCE, 0x30, not 0x${(input[0] ?? 0).toString(16).padStart(2, '0')}) nor PEM text; send the PKCS#10 request itself`);
  }
  return fromPem(text, PEM_LABELS);
}

function commonNameOf(name: DerNode): string {
  const found: string[] = [];
  for (const rdn of expectTag(name, Tag.SEQUENCE, 'the CSR subject').children) {
    for (const atv of elements(expectTag(rdn, Tag.SET, 'a subject RDN'), 1, Number.MAX_SAFE_INTEGER, 'a subject RDN')) {
      const [type, value] = elements(expectTag(atv, Tag.SEQUENCE, 'a subject attribute'), 2, 2, 'a subject attribute');
      if (readOid(type, 'a subject attribute type') === OID.commonName) found.push(readString(value, 'the subject commonName'));
    }
  }
  if (found.length !== 1) throw invalid(`its subject has ${found.length} commonNames, and the device's name must be exactly one (make it with -subj /CN=<device>)`);
  const [commonName = ''] = found;
  if (commonName.length === 0 || commonName.length > 64) throw invalid(`its commonName is ${commonName.length} characters, outside 1 to 64`);
  return commonName;
}

function publicKeyOf(spki: DerNode): KeyObject {
  const [algorithm] = elements(expectTag(spki, Tag.SEQUENCE, 'the CSR subjectPublicKeyInfo'), 2, 2, 'the CSR subjectPublicKeyInfo');
  readOid(elements(expectTag(algorithm, Tag.SEQUENCE, 'the public key algorithm'), 1, 2, 'the public key algorithm')[0], 'the public key algorithm');
  readBitString(spki.children[1], 'the CSR public key');
  try {
    return createPublicKey({ key: spki.raw, format: 'der', type: 'spki' });
  } catch (cause) {
    throw new PkiError('EAI_PKI_KEY_UNSUPPORTED', `the CSR's public key cannot be used (${(cause as Error).message}); the fleet PKI takes EC P-256 or Ed25519 keys`, { cause });
  }
}

/** The challengePassword attribute's value; other attributes (extensionRequest) are the CA's to decide, so they are ignored. */
function challengePasswordOf(attributes: DerNode): string | undefined {
  let password: string | undefined;
  for (const attribute of attributes.children) {
    const [type, values] = elements(expectTag(attribute, Tag.SEQUENCE, 'a CSR attribute'), 2, 2, 'a CSR attribute') as [DerNode, DerNode];
    const id = readOid(type, 'a CSR attribute type');
    expectTag(values, Tag.SET, `the values of CSR attribute ${id}`);
    if (id !== CHALLENGE_PASSWORD) continue;
    if (password !== undefined) throw invalid('it carries challengePassword twice');
    if (values.children.length !== 1) throw invalid(`its challengePassword has ${values.children.length} values instead of one`);
    password = readString(values.children[0], 'the challengePassword');
    if (password.length === 0 || password.length > MAX_CHALLENGE_PASSWORD) throw invalid(`its challengePassword is ${password.length} characters, outside 1 to ${MAX_CHALLENGE_PASSWORD}`);
  }
  return password;
}

function checkAlgorithm(algorithm: DerNode, kind: KeyKind): void {
  const parts = elements(expectTag(algorithm, Tag.SEQUENCE, 'the CSR signature algorithm'), 1, 2, 'the CSR signature algorithm');
  const id = readOid(parts[0], 'the CSR signature algorithm');
  const expected = kind === 'p256' ? OID.ecdsaWithSha256 : OID.ed25519;
  if (id !== expected) throw invalid(`it is signed with algorithm ${id}, but its ${kind === 'p256' ? 'EC P-256' : 'Ed25519'} key signs with ${expected} (${kind === 'p256' ? 'ecdsa-with-SHA256' : 'Ed25519'})`);
  // RFC 5758 3.2 and RFC 8410 3: both algorithms' identifiers MUST omit the parameters.
  if (parts.length !== 1) throw invalid(`its signature algorithm ${id} carries parameters, which must be absent`);
}

function invalid(problem: string): PkiError {
  return new PkiError('EAI_PKI_CSR_INVALID', `the CSR cannot be used: ${problem}`);
}
