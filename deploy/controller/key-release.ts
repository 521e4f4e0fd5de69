import { X509Certificate } from 'node:crypto';
import { encodeCredentialFile, makeCredential } from '../../drivers/tpm/credential.js';
import { objectName } from '../../drivers/tpm/names.js';
import { decodePublic } from '../../drivers/tpm/public-area.js';
import type { AttestationResult } from '../../runtime/attest/result.js';
import { sealToDevice } from '../fleet/key-wrap.js';
import type { Attestations } from './attestations.js';
import type { CommandQueue } from './commands.js';
import type { Deployments, TargetStatus } from './deployments.js';
import type { DeviceRegistry } from './devices.js';
import type { ControllerStore } from './store.js';

/**
 * Key release (no attestation, no model): a deployment registered with a release key ships a
 * bundle encrypted to that key. A device that downloaded it reports AWAITING_KEY; the controller
 * then challenges it afresh, and only when that appraisal is `trusted` sends the key in a signed
 * ReleaseKey command, wrapped so that nothing but that device can open it — as a TPM credential
 * bound to the EK and AK it enrolled (only that TPM, holding that AK, can activate it), or, for a
 * device without a TPM whose software evidence the policy accepts, sealed to its certificate key.
 * An untrusted device is never sent the key; it gives up after its wait and reports why.
 */
export class KeyRelease {
  readonly #db: ControllerStore;
  readonly #commands: CommandQueue;
  readonly #attestations: Attestations;
  readonly #registry: DeviceRegistry;
  readonly #deployments: Deployments;
  readonly #log: (line: Record<string, unknown>) => void;

  constructor(db: ControllerStore, options: { readonly commands: CommandQueue; readonly attestations: Attestations; readonly registry: DeviceRegistry; readonly deployments: Deployments; readonly log?: (line: Record<string, unknown>) => void }) {
    this.#db = db;
    this.#commands = options.commands;
    this.#attestations = options.attestations;
    this.#registry = options.registry;
    this.#deployments = options.deployments;
    this.#log = options.log ?? (() => undefined);
    options.deployments.onTarget((deploymentId, target) => void this.#waiting(deploymentId, target).catch((error: unknown) => this.#log({ msg: 'key release failed', deploymentId, device: target.deviceId, error: String(error) })));
    options.attestations.on('result', (device, result) => void this.#appraised(device, result).catch((error: unknown) => this.#log({ msg: 'key release failed', device, error: String(error) })));
  }

  /** A device started waiting for a key: appraise it now, with a nonce of its own. */
  async #waiting(deploymentId: string, target: TargetStatus): Promise<void> {
    if (target.phase !== 'AWAITING_KEY') return;
    this.#log({ msg: 'key requested', deploymentId, device: target.deviceId });
    await this.#attestations.challenge(target.deviceId);
  }

  /** A fresh appraisal: trusted releases every key the device waits for; anything else releases nothing. */
  async #appraised(device: string, result: AttestationResult): Promise<void> {
    const waiting = await this.#db.all<{ deployment_id: string }>("SELECT t.deployment_id FROM deployment_targets t JOIN deployments d ON d.id = t.deployment_id WHERE t.device_id = ? AND t.phase = 'AWAITING_KEY' AND d.release_key IS NOT NULL", device);
    if (waiting.length === 0) return;
    if (result.status !== 'trusted') {
      this.#log({ msg: 'key withheld', device, status: result.status, reason: result.reasons[0]?.code });
      return;
    }
    for (const { deployment_id: deploymentId } of waiting) await this.release(deploymentId, device);
  }

  /** Wraps the deployment's key to `device` and sends it (callers check the attestation first). */
  async release(deploymentId: string, device: string): Promise<void> {
    const key = await this.#deployments.releaseKey(deploymentId);
    const identity = await this.#registry.attestationIdentity(device);
    if (key === undefined || identity === undefined) return;
    let releaseKey;
    if (identity.kind === 'tpm2' && identity.ekPublic !== undefined) {
      const credential = makeCredential(decodePublic(identity.ekPublic), objectName(decodePublic(identity.akPublic)), key);
      releaseKey = { deploymentId, tpmCredential: encodeCredentialFile(credential) };
    } else {
      const row = await this.#db.get<{ certificate_pem: string }>('SELECT certificate_pem FROM devices WHERE device_id = ?', device);
      if (row === undefined) return;
      releaseKey = { deploymentId, sealed: sealToDevice(new X509Certificate(row.certificate_pem).publicKey, deploymentId, key) };
    }
    await this.#commands.send(device, { releaseKey });
    this.#log({ msg: 'key released', deploymentId, device, wrapped: identity.kind });
  }
}
