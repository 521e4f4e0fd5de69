import { createHash, randomBytes, timingSafeEqual, X509Certificate } from 'node:crypto';
import { isReservedName } from '../fleet/broker-acl.js';
import { FleetError } from '../fleet/errors.js';
import { issueCertificate, type CertificateAuthority } from '../fleet/pki/certificate.js';
import { parseCsr } from '../fleet/pki/csr.js';
import { isTopicLevel, topicLevel } from '../fleet/topics.js';
import { Revocations } from './revocations.js';
import type { ControllerStore } from './store.js';
import { answerChallenge, checkTpmKeys, issueChallenge, type TpmChallenge, type TpmEnrolmentRequest } from './tpm-enrolment.js';

/**
 * Enrolment: how a device gets its fleet certificate. An operator makes a one-time token
 * (`aios fleet token`), which is baked into the device image with the fleet CA and the trust root
 * (docs/fleet.md, "Provisioning"). On first boot the device makes its own key pair, which never
 * leaves it, and sends a PKCS#10 request whose common name is its device id and whose
 * challengePassword is the token. The controller issues a client certificate only if the token
 * exists, its secret matches, it has not expired, it was never used, and the name is one a device
 * may take (and the one the token was made for, if any). A token is spent by the first request
 * that passes, in the same transaction that records the device.
 *
 * Tokens read `aios1.<id>.<secret>`: the id finds the row, the secret is kept only as its
 * SHA-256, so a copy of the database cannot enrol anything.
 */
export interface EnrolmentOptions {
  readonly fleet: string;
  readonly ca: CertificateAuthority;
  /** Device certificates' validity; default 365 days (bounded by the CA's). */
  readonly certificateDays?: number;
  /** After a device enrolled (the controller refreshes its revocations: the device may have been revoked before). */
  readonly onEnrolled?: (deviceId: string) => Promise<void>;
  /** The controller clock, ms. Default Date.now. */
  readonly now?: () => number;
  /** TPM makers' CA certificates (PEM): when given, a TPM must show an EK certificate issued by one. */
  readonly ekRoots?: readonly string[];
  /** Refuse devices that enrol without TPM keys (their attestation could only be `software`). */
  readonly requireTpm?: boolean;
}

/** The first answer to a TPM enrolment: activate this credential and ask again with its secret. */
export interface Challenged {
  readonly challenge: TpmChallenge;
}

export interface IssuedToken {
  /** The token to give the device: shown once, never stored. */
  readonly token: string;
  readonly id: string;
  readonly expiresUnixMs: number;
  readonly deviceId?: string;
}

export interface Enrolled {
  readonly deviceId: string;
  readonly fleet: string;
  readonly certificatePem: string;
  /** The fleet CA, which the device needs to check the broker. */
  readonly caCertificatePem: string;
  readonly labels: Readonly<Record<string, string>>;
}

export interface TokenInfo {
  readonly id: string;
  readonly createdUnixMs: number;
  readonly expiresUnixMs: number;
  readonly deviceId?: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly usedUnixMs?: number;
  readonly usedBy?: string;
}

const PREFIX = 'aios1';

export class Enrolment {
  readonly #db: ControllerStore;
  readonly #fleet: string;
  readonly #ca: CertificateAuthority;
  readonly #days: number;
  readonly #now: () => number;
  readonly #ekRoots: readonly X509Certificate[];
  readonly #requireTpm: boolean;
  readonly #onEnrolled: (deviceId: string) => Promise<void>;

  constructor(db: ControllerStore, options: EnrolmentOptions) {
    this.#db = db;
    this.#fleet = topicLevel('fleet', options.fleet);
    this.#ca = options.ca;
    this.#days = options.certificateDays ?? 365;
    this.#now = options.now ?? Date.now;
    this.#ekRoots = (options.ekRoots ?? []).map((pem) => new X509Certificate(pem));
    this.#requireTpm = options.requireTpm ?? false;
    this.#onEnrolled = options.onEnrolled ?? (async () => undefined);
  }

  /** A new single-use token, valid for `validForMs`; bound to `deviceId` when given. */
  async issueToken(options: { readonly validForMs: number; readonly deviceId?: string; readonly labels?: Readonly<Record<string, string>> }): Promise<IssuedToken> {
    if (!Number.isSafeInteger(options.validForMs) || options.validForMs <= 0) {
      throw new FleetError('EAI_FLEET_ENROL_ARGUMENT', `a token's validity must be a positive number of milliseconds, got ${options.validForMs}; a day is 86400000.`);
    }
    if (options.deviceId !== undefined) deviceName(options.deviceId);
    const id = randomBytes(8).toString('hex');
    const secret = randomBytes(32).toString('base64url');
    const created = this.#now();
    const expires = created + options.validForMs;
    await this.#db.run('INSERT INTO enrolment_tokens (id, secret_sha256, created_ms, expires_ms, device_id, labels) VALUES (?, ?, ?, ?, ?, ?)', id, sha256(Buffer.from(secret)), created, expires, options.deviceId ?? null, JSON.stringify(options.labels ?? {}));
    return { token: `${PREFIX}.${id}.${secret}`, id, expiresUnixMs: expires, ...(options.deviceId === undefined ? {} : { deviceId: options.deviceId }) };
  }

  /**
   * Checks the request and its token and returns the device's certificate. Throws PkiError for a
   * request that does not parse or verify, FleetError `EAI_FLEET_ENROL_TOKEN` (no token, unknown,
   * wrong secret: one answer for all, so a guesser learns nothing), `EAI_FLEET_ENROL_TOKEN_EXPIRED`,
   * `EAI_FLEET_ENROL_TOKEN_USED`, `EAI_FLEET_ENROL_NAME`.
   */
  async enrol(csr: string | Uint8Array): Promise<Enrolled>;
  /**
   * With `tpm`: the two-step TPM enrolment (tpm-enrolment.ts). Without `tpm.challenge` the answer
   * is a challenge (the token is not spent yet); with it and the right secret, the certificate,
   * and the AK is recorded as the device's attestation key.
   */
  async enrol(csr: string | Uint8Array, tpm: TpmEnrolmentRequest | undefined): Promise<Enrolled | Challenged>;
  async enrol(csr: string | Uint8Array, tpm?: TpmEnrolmentRequest): Promise<Enrolled | Challenged> {
    const request = parseCsr(csr);
    const deviceId = deviceName(request.commonName);
    const token = await this.#token(request.challengePassword);
    const now = this.#now();
    if (now > token.expiresUnixMs) {
      throw new FleetError('EAI_FLEET_ENROL_TOKEN_EXPIRED', `enrolment token ${token.id} expired at ${new Date(token.expiresUnixMs).toISOString()}; ask the fleet operator for a new one (\`aios fleet token\`).`, { details: { id: token.id } });
    }
    if (token.usedUnixMs !== undefined) {
      throw new FleetError('EAI_FLEET_ENROL_TOKEN_USED', `enrolment token ${token.id} was already used (by ${token.usedBy ?? 'a device'} at ${new Date(token.usedUnixMs).toISOString()}); a token enrols one device once. Ask the fleet operator for a new one.`, { details: { id: token.id } });
    }
    if (token.deviceId !== undefined && token.deviceId !== deviceId) {
      throw new FleetError('EAI_FLEET_ENROL_NAME', `enrolment token ${token.id} is for device '${token.deviceId}', the request names '${deviceId}'; use the device id the token was made for.`, { details: { id: token.id, expected: token.deviceId, got: deviceId } });
    }
    const existing = await this.#db.get('SELECT device_id FROM devices WHERE device_id = ?', deviceId);
    if (existing !== undefined && token.deviceId !== deviceId) {
      throw new FleetError('EAI_FLEET_ENROL_NAME', `device '${deviceId}' is already enrolled in fleet ${this.#fleet}; re-enrolling it (a new key, a replaced board) needs a token made for it: \`aios fleet token --device ${deviceId}\`.`, { details: { deviceId } });
    }
    if (tpm === undefined && this.#requireTpm) {
      throw new FleetError('EAI_FLEET_ENROL_TPM', `this fleet admits only devices with a TPM, and the request from '${deviceId}' carries no TPM keys; set attestation.tpm in agent.yaml (docs/attestation.md).`, { details: { deviceId } });
    }
    if (tpm !== undefined) {
      const { ek, ak } = checkTpmKeys(tpm, this.#ekRoots);
      if (tpm.challenge === undefined) return { challenge: await this.#db.transaction((tx) => issueChallenge(tx, token.id, deviceId, ek, ak, tpm, now)) };
    }
    const spki = request.publicKey.export({ type: 'spki', format: 'der' });
    const certificatePem = issueCertificate({ ca: this.#ca, subjectPublicKey: request.publicKey, commonName: deviceId, validDays: this.#days, usage: 'client', now: new Date(now) });
    const keySha256 = createHash('sha256').update(spki).digest('hex');
    await this.#db.transaction(async (tx) => {
      if (tpm !== undefined) await answerChallenge(tx, token.id, deviceId, tpm, now);
      // The token is spent only if no other request spent it since it was read.
      const spent = await tx.run('UPDATE enrolment_tokens SET used_ms = ?, used_by = ? WHERE id = ? AND used_ms IS NULL', now, deviceId, token.id);
      if (spent !== 1) throw new FleetError('EAI_FLEET_ENROL_TOKEN_USED', `enrolment token ${token.id} was used by another request at the same moment; ask the fleet operator for a new one.`, { details: { id: token.id } });
      // The attestation key: the TPM's AK, or (no TPM) the device key itself, whose evidence a
      // verifier reports as `software`.
      await tx.run(
        'INSERT INTO devices (device_id, certificate_pem, key_sha256, enrolled_ms, labels, attestation_kind, ak_public, ek_public) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET certificate_pem = excluded.certificate_pem, key_sha256 = excluded.key_sha256, enrolled_ms = excluded.enrolled_ms, labels = excluded.labels, attestation_kind = excluded.attestation_kind, ak_public = excluded.ak_public, ek_public = excluded.ek_public',
        deviceId,
        certificatePem,
        keySha256,
        now,
        JSON.stringify(token.labels),
        tpm === undefined ? 'software' : 'tpm2',
        tpm === undefined ? spki : Buffer.from(tpm.akPublic),
        tpm === undefined ? null : Buffer.from(tpm.ekPublic),
      );
      await Revocations.issued(tx, deviceId, certificatePem, now);
      // A token made for a revoked device is the operator bringing it back (a repaired board).
      await Revocations.reinstate(tx, deviceId);
    });
    await this.#onEnrolled(deviceId);
    return { deviceId, fleet: this.#fleet, certificatePem, caCertificatePem: this.#ca.certificatePem, labels: token.labels };
  }

  /**
   * Renews a device's certificate without a token: the request comes over TLS with the device's
   * current certificate (checked against the fleet CA by the TLS layer), which must be the one
   * the controller last issued to that device — a replaced board's old certificate renews
   * nothing — and the CSR must name the same device (a new key is fine: rotation). Throws
   * `EAI_FLEET_RENEW` naming what is wrong.
   */
  async renew(presented: X509Certificate, csr: string | Uint8Array): Promise<Enrolled> {
    const request = parseCsr(csr);
    const deviceId = request.commonName;
    const refuse = (why: string): FleetError => new FleetError('EAI_FLEET_RENEW', `certificate renewal for '${String(deviceId).slice(0, 64)}' refused: ${why}.`, { details: { deviceId: String(deviceId).slice(0, 64) } });
    if (presented.subject !== `CN=${deviceId}`) throw refuse(`the TLS client certificate names ${presented.subject}, the request ${deviceId}`);
    const now = this.#now();
    if (Date.parse(presented.validTo) < now) throw refuse('the presented certificate has expired: enrol again with a token');
    const row = await this.#db.get<{ certificate_pem: string; labels: string; revoked_ms: number | null }>('SELECT certificate_pem, labels, revoked_ms FROM devices WHERE device_id = ?', deviceId);
    if (row === undefined) throw refuse('no such device is enrolled');
    if (row.revoked_ms !== null) throw refuse(`the device was revoked at ${new Date(row.revoked_ms).toISOString()}; only a new enrolment with a token made for it brings it back`);
    if (!new X509Certificate(row.certificate_pem).raw.equals(presented.raw)) throw refuse('the presented certificate is not the one last issued to this device (it was replaced or re-enrolled)');
    const spki = request.publicKey.export({ type: 'spki', format: 'der' });
    const certificatePem = issueCertificate({ ca: this.#ca, subjectPublicKey: request.publicKey, commonName: deviceId, validDays: this.#days, usage: 'client', now: new Date(now) });
    await this.#db.transaction(async (tx) => {
      const changed = await tx.run('UPDATE devices SET certificate_pem = ?, key_sha256 = ? WHERE device_id = ? AND certificate_pem = ? AND revoked_ms IS NULL', certificatePem, createHash('sha256').update(spki).digest('hex'), deviceId, row.certificate_pem);
      if (changed !== 1) throw refuse('another renewal (or a revocation) of this device won at the same moment');
      await Revocations.issued(tx, deviceId, certificatePem, now);
    });
    const labels = JSON.parse(row.labels) as Record<string, string>;
    return { deviceId, fleet: this.#fleet, certificatePem, caCertificatePem: this.#ca.certificatePem, labels };
  }

  /** Every token, newest first, without secrets. */
  async tokens(): Promise<readonly TokenInfo[]> {
    const rows = await this.#db.all<TokenRow>('SELECT * FROM enrolment_tokens ORDER BY created_ms DESC');
    return rows.map(tokenInfo);
  }

  /** Makes an unused token worthless (marks it used by `revoked`). */
  async revokeToken(id: string): Promise<boolean> {
    return (await this.#db.run("UPDATE enrolment_tokens SET used_ms = ?, used_by = '(revoked)' WHERE id = ? AND used_ms IS NULL", this.#now(), id)) === 1;
  }

  async #token(text: string | undefined): Promise<TokenInfo> {
    const unknown = new FleetError('EAI_FLEET_ENROL_TOKEN', 'the enrolment request carries no valid token (its challengePassword must be the `aios1.…` token the fleet operator issued). Check the token baked into the device image.');
    const parts = text?.split('.') ?? [];
    if (parts.length !== 3 || parts[0] !== PREFIX) throw unknown;
    const [, id, secret] = parts as [string, string, string];
    const row = await this.#db.get<TokenRow>('SELECT * FROM enrolment_tokens WHERE id = ?', id);
    if (row === undefined) throw unknown;
    const stored = Buffer.from(row.secret_sha256);
    if (!timingSafeEqual(stored, sha256(Buffer.from(secret)))) throw unknown;
    return tokenInfo(row);
  }
}

interface TokenRow {
  id: string;
  secret_sha256: Uint8Array;
  created_ms: number;
  expires_ms: number;
  device_id: string | null;
  labels: string;
  used_ms: number | null;
  used_by: string | null;
}

function tokenInfo(row: TokenRow): TokenInfo {
  return {
    id: row.id,
    createdUnixMs: row.created_ms,
    expiresUnixMs: row.expires_ms,
    labels: JSON.parse(row.labels) as Record<string, string>,
    ...(row.device_id === null ? {} : { deviceId: row.device_id }),
    ...(row.used_ms === null ? {} : { usedUnixMs: row.used_ms }),
    ...(row.used_by === null ? {} : { usedBy: row.used_by }),
  };
}

/** A name a device may take: a topic level, a certificate common name, not reserved for services. */
function deviceName(name: string): string {
  if (!isTopicLevel(name) || name.length > 64 || isReservedName(name)) {
    throw new FleetError('EAI_FLEET_ENROL_NAME', `'${String(name).slice(0, 80)}' cannot be a device id: use 1 to 64 characters without '/', '+', '#', NUL or a leading '$', not starting with 'aios-' (reserved for controllers).`, { details: { name: String(name).slice(0, 80) } });
  }
  return name;
}

function sha256(bytes: Buffer): Buffer {
  return createHash('sha256').update(bytes).digest();
}
