import { X509Certificate } from 'node:crypto';
import { writeFileAtomic } from '../../models/atomic-write.js';
import { FleetError } from '../fleet/errors.js';
import type { CertificateAuthority } from '../fleet/pki/certificate.js';
import { createCrl } from '../fleet/pki/crl.js';
import type { ControllerStore, Sql } from './store.js';

/**
 * Revoking a device: a stolen robot, a board sent for scrap, a key that leaked. Every certificate
 * the fleet CA issued to the device and that has not expired yet is revoked (a renewal leaves the
 * older one valid until it expires), and from then on:
 *
 *  - the embedded broker refuses those certificates at connect and drops the device's live
 *    connection; an external broker refuses them at the TLS handshake once it reloads `crl.pem`
 *    (Mosquitto: `crlfile`, re-read on SIGHUP; deploy/systemd/aios-crl-reload.path does that);
 *  - the controller ignores what the device still publishes on a connection the broker keeps,
 *    sends it no commands, leaves it out of rollouts, and refuses to renew its certificate.
 *
 * Enrolling the device again with a token made for it (a repaired board) gives it a new
 * certificate and lifts the revocation; the old certificates stay revoked.
 *
 * `crl.pem` in the controller's state folder is a CRL signed by the fleet CA, rewritten on every
 * change and once a day, valid for CRL_VALID_DAYS: readers refuse every certificate once a CRL's
 * nextUpdate has passed, so it must never lapse while the controller is merely down for a while.
 * Replicas read revocations from the shared store on every refresh (each tick) and write their own
 * copy. Certificates issued before this existed are recorded from the devices table at start.
 */

export type DeviceRevocationReason = 'keyCompromise' | 'cessationOfOperation' | 'unspecified';
export const DEVICE_REVOCATION_REASONS: readonly DeviceRevocationReason[] = ['keyCompromise', 'cessationOfOperation', 'unspecified'];

export interface RevokedDevice {
  readonly deviceId: string;
  readonly revokedUnixMs: number;
  readonly reason: DeviceRevocationReason;
}

export const CRL_FILE = 'crl.pem';
const CRL_VALID_DAYS = 30;
const CRL_REWRITE_MS = 86_400_000;

export class Revocations {
  /** Where the CRL is written. */
  readonly crlFile: string;
  readonly #db: ControllerStore;
  readonly #ca: CertificateAuthority;
  readonly #now: () => number;
  #serials = new Set<string>();
  #devices = new Map<string, RevokedDevice>();
  #crlWrittenAt = 0;
  #crlText = '';
  readonly #listeners: ((device: RevokedDevice) => void)[] = [];

  private constructor(db: ControllerStore, ca: CertificateAuthority, crlFile: string, now: () => number) {
    this.#db = db;
    this.#ca = ca;
    this.crlFile = crlFile;
    this.#now = now;
  }

  /** Loads the revocations and writes the CRL (so a broker configured with it can start). */
  static async open(db: ControllerStore, options: { readonly ca: CertificateAuthority; readonly crlFile: string; readonly now?: () => number }): Promise<Revocations> {
    const revocations = new Revocations(db, options.ca, options.crlFile, options.now ?? Date.now);
    await revocations.#recordEarlierCertificates();
    await revocations.refresh();
    return revocations;
  }

  /** Records a certificate just issued to `deviceId` (in the transaction that issues it). */
  static async issued(tx: Sql, deviceId: string, certificatePem: string, now: number): Promise<void> {
    const x = new X509Certificate(certificatePem);
    await tx.run('INSERT INTO device_certificates (serial, device_id, issued_ms, not_after_ms) VALUES (?, ?, ?, ?) ON CONFLICT (serial) DO NOTHING', serialKey(x.serialNumber), deviceId, now, Date.parse(x.validTo));
  }

  /** A device enrolled again with a token made for it: no longer revoked (its old certificates stay so). */
  static async reinstate(tx: Sql, deviceId: string): Promise<void> {
    await tx.run('UPDATE devices SET revoked_ms = NULL, revoked_reason = NULL WHERE device_id = ?', deviceId);
  }

  /**
   * Revokes `deviceId` and every unexpired certificate issued to it; rewrites the CRL and tells
   * the listeners (the embedded broker drops its connection). Revoking again updates the reason.
   * FleetError `EAI_FLEET_DEVICE_UNKNOWN` for a device that was never enrolled,
   * `EAI_FLEET_REVOKE_REASON` for a reason that is not one of DEVICE_REVOCATION_REASONS.
   */
  async revoke(deviceId: string, reason: DeviceRevocationReason = 'unspecified'): Promise<RevokedDevice & { readonly certificates: number }> {
    if (!DEVICE_REVOCATION_REASONS.includes(reason)) {
      throw new FleetError('EAI_FLEET_REVOKE_REASON', `'${String(reason).slice(0, 40)}' is not a revocation reason: use ${DEVICE_REVOCATION_REASONS.join(', ')}.`, { details: { reason: String(reason).slice(0, 40) } });
    }
    const now = this.#now();
    const certificates = await this.#db.transaction(async (tx) => {
      const changed = await tx.run('UPDATE devices SET revoked_ms = ?, revoked_reason = ? WHERE device_id = ?', now, reason, deviceId);
      if (changed !== 1) throw new FleetError('EAI_FLEET_DEVICE_UNKNOWN', `device '${deviceId.slice(0, 64)}' is not enrolled in this fleet; list devices with \`aios fleet devices\`.`, { details: { deviceId: deviceId.slice(0, 64) } });
      await tx.run('UPDATE device_certificates SET revoked_ms = ?, reason = ? WHERE device_id = ? AND revoked_ms IS NULL AND not_after_ms > ?', now, reason, deviceId, now);
      const n = await tx.get<{ n: number }>('SELECT COUNT(*) AS n FROM device_certificates WHERE device_id = ? AND revoked_ms IS NOT NULL AND not_after_ms > ?', deviceId, now);
      return Number(n?.n ?? 0);
    });
    await this.refresh();
    return { deviceId, revokedUnixMs: now, reason, certificates };
  }

  /** Whether a certificate (serial as hex, any case) is revoked. */
  certificateRevoked(serial: string): boolean {
    return this.#serials.has(serialKey(serial));
  }

  /** The device's revocation, or undefined when it is not revoked. */
  deviceRevoked(deviceId: string): RevokedDevice | undefined {
    return this.#devices.get(deviceId);
  }

  revokedDevices(): readonly RevokedDevice[] {
    return [...this.#devices.values()].sort((a, b) => a.deviceId.localeCompare(b.deviceId));
  }

  /** Called once for each device found newly revoked (here or, through the store, by a replica). */
  onRevoked(listener: (device: RevokedDevice) => void): void {
    this.#listeners.push(listener);
  }

  /** Reads revocations from the store and rewrites the CRL when they changed or it is a day old. */
  async refresh(): Promise<void> {
    const now = this.#now();
    const certs = await this.#db.all<{ serial: string; revoked_ms: number; reason: string | null }>('SELECT serial, revoked_ms, reason FROM device_certificates WHERE revoked_ms IS NOT NULL AND not_after_ms > ? ORDER BY serial', now);
    const rows = await this.#db.all<{ device_id: string; revoked_ms: number; revoked_reason: string | null }>('SELECT device_id, revoked_ms, revoked_reason FROM devices WHERE revoked_ms IS NOT NULL');
    const before = this.#devices;
    this.#serials = new Set(certs.map((c) => serialKey(c.serial)));
    this.#devices = new Map(rows.map((r) => [r.device_id, { deviceId: r.device_id, revokedUnixMs: r.revoked_ms, reason: reasonOf(r.revoked_reason) }]));
    const revoked = certs.map((c) => ({ serial: c.serial, revokedAt: new Date(c.revoked_ms), reason: reasonOf(c.reason) }));
    const key = JSON.stringify(revoked);
    if (key !== this.#crlText || now - this.#crlWrittenAt >= CRL_REWRITE_MS) {
      // The CRL number only has to grow: the time in ms does, across restarts and replicas.
      const pem = createCrl({ ca: this.#ca, revoked, number: now, thisUpdate: new Date(now), nextUpdate: new Date(now + CRL_VALID_DAYS * 86_400_000) });
      await writeFileAtomic(this.crlFile, pem, { mode: 0o644 });
      this.#crlText = key;
      this.#crlWrittenAt = now;
    }
    for (const device of this.#devices.values()) {
      const earlier = before.get(device.deviceId);
      if (earlier !== undefined && earlier.revokedUnixMs === device.revokedUnixMs) continue;
      for (const listener of this.#listeners) {
        try {
          listener(device);
        } catch {
          // A listener failing (a broker already closing) must not stop the others.
        }
      }
    }
  }

  /** Devices enrolled before certificates were recorded: their current certificate, at least. */
  async #recordEarlierCertificates(): Promise<void> {
    const rows = await this.#db.all<{ device_id: string; certificate_pem: string; enrolled_ms: number }>('SELECT device_id, certificate_pem, enrolled_ms FROM devices d WHERE NOT EXISTS (SELECT 1 FROM device_certificates c WHERE c.device_id = d.device_id)');
    if (rows.length === 0) return;
    await this.#db.transaction(async (tx) => {
      for (const r of rows) await Revocations.issued(tx, r.device_id, r.certificate_pem, r.enrolled_ms);
    });
  }
}

/** Serials compare as uppercase hex without leading zeros (OpenSSL and Node write them so; others may not). */
function serialKey(serial: string): string {
  return serial.toUpperCase().replace(/^0+(?=.)/u, '');
}

function reasonOf(value: string | null): DeviceRevocationReason {
  return DEVICE_REVOCATION_REASONS.includes(value as DeviceRevocationReason) ? (value as DeviceRevocationReason) : 'unspecified';
}
