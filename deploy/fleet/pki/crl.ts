import { bitString, explicit, implicit, integer, octetString, sequence, time, tlv, toPem } from './der.js';
import { extension, OID, readAuthority, signatureAlgorithm, signWith, type CertificateAuthority } from './certificate.js';
import { PkiError } from './errors.js';

/**
 * Certificate revocation lists (RFC 5280 section 5) signed by the fleet CA: what an external
 * broker (Mosquitto's `crlfile`, EMQX, HiveMQ) checks a device's certificate against at the TLS
 * handshake, so a revoked or superseded certificate no longer connects. v2 CRLs with the CRL
 * number and authority key identifier extensions, and a reason code per entry.
 */

/** RFC 5280 5.3.1 reason codes this fleet uses. */
export type RevocationReason = 'unspecified' | 'keyCompromise' | 'superseded' | 'cessationOfOperation';

const REASON_CODE: Record<RevocationReason, number> = { unspecified: 0, keyCompromise: 1, superseded: 4, cessationOfOperation: 5 };

export interface RevokedCertificate {
  /** The certificate's serial number, hex (as X509Certificate.serialNumber gives it). */
  readonly serial: string;
  readonly revokedAt: Date;
  readonly reason: RevocationReason;
}

export interface CrlOptions {
  readonly ca: CertificateAuthority;
  readonly revoked: readonly RevokedCertificate[];
  /** Increases with every CRL the CA issues (RFC 5280 5.2.3); readers keep the highest. */
  readonly number: number;
  readonly thisUpdate?: Date;
  /** When readers should expect a newer one; most refuse every certificate once it passes. */
  readonly nextUpdate: Date;
}

const CRL_NUMBER = '2.5.29.20';
const REASON = '2.5.29.21';
const ENUMERATED = 0x0a;
const SERIAL_HEX = /^[0-9a-f]{1,40}$/iu;

/** A PEM `X509 CRL` signed by `ca` (ecdsa-with-SHA256). */
export function createCrl(options: CrlOptions): string {
  const ca = readAuthority(options.ca);
  const thisUpdate = new Date(Math.floor((options.thisUpdate ?? new Date()).getTime() / 1000) * 1000);
  if (!(options.nextUpdate.getTime() > thisUpdate.getTime())) throw new PkiError('EAI_PKI_ARGUMENT', `a CRL's nextUpdate (${options.nextUpdate.toISOString()}) must come after its thisUpdate (${thisUpdate.toISOString()})`);
  if (!Number.isSafeInteger(options.number) || options.number < 0) throw new PkiError('EAI_PKI_ARGUMENT', `a CRL number must be a whole number from 0, found ${String(options.number)}`);
  const entries = options.revoked.map((r) => {
    if (!SERIAL_HEX.test(r.serial)) throw new PkiError('EAI_PKI_ARGUMENT', `'${String(r.serial).slice(0, 60)}' is not a certificate serial number in hex`);
    const code = REASON_CODE[r.reason];
    if (code === undefined) throw new PkiError('EAI_PKI_ARGUMENT', `'${String(r.reason)}' is not a revocation reason: use ${Object.keys(REASON_CODE).join(', ')}`);
    // `unspecified` is left out rather than written (RFC 5280 5.3.1).
    const extensions = code === 0 ? [] : [sequence(extension(REASON, false, tlv(ENUMERATED, Buffer.of(code))))];
    return sequence(integer(Buffer.from(r.serial.length % 2 === 0 ? r.serial : `0${r.serial}`, 'hex')), time(r.revokedAt), ...extensions);
  });
  const algorithm = signatureAlgorithm('p256');
  const tbs = sequence(
    integer(1n), // v2
    algorithm,
    ca.subject,
    time(thisUpdate),
    time(options.nextUpdate),
    ...(entries.length === 0 ? [] : [sequence(...entries)]),
    explicit(0, sequence(extension(OID.authorityKeyIdentifier, false, sequence(implicit(0, octetString(ca.keyIdentifier)))), extension(CRL_NUMBER, false, integer(BigInt(options.number))))),
  );
  return toPem('X509 CRL', sequence(tbs, algorithm, bitString(signWith('p256', ca.privateKey, tbs))));
}
