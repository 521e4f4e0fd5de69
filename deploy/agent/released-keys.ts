import { FleetError } from '../fleet/errors.js';

/** How long a key-release deployment waits for its key before it fails. */
export const KEY_WAIT_MS = 10 * 60_000;

/**
 * Model keys the controller released to this device (docs/attestation.md, "Key release"), by
 * deployment, in memory only: a restarted agent asks again (AWAITING_KEY) and the controller
 * releases again after a fresh trusted attestation. A deployment waits here for its key, which
 * may arrive before it starts waiting.
 */
export class ReleasedKeys {
  readonly #keys = new Map<string, Uint8Array>();
  readonly #waiters = new Map<string, (key: Uint8Array) => void>();
  readonly #signal: AbortSignal;
  readonly #device: string;
  readonly #waitMs: number;

  constructor(options: { readonly device: string; readonly signal: AbortSignal; readonly waitMs?: number }) {
    this.#device = options.device;
    this.#signal = options.signal;
    this.#waitMs = options.waitMs ?? KEY_WAIT_MS;
  }

  has(deploymentId: string): boolean {
    return this.#keys.has(deploymentId);
  }

  put(deploymentId: string, key: Uint8Array): void {
    this.#keys.set(deploymentId, key);
    this.#waiters.get(deploymentId)?.(key);
  }

  /** The key once released; rejects `EAI_OTA_KEY_NOT_RELEASED` after the wait, `EAI_OTA_CANCELLED` when the agent stops. */
  wait(deploymentId: string): Promise<Uint8Array> {
    const known = this.#keys.get(deploymentId);
    if (known !== undefined) return Promise.resolve(known);
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#waiters.delete(deploymentId);
        this.#signal.removeEventListener('abort', stopped);
      };
      const timer = setTimeout(() => {
        done();
        reject(new FleetError('EAI_OTA_KEY_NOT_RELEASED', `the controller did not release the key of deployment ${deploymentId} within ${this.#waitMs / 60_000} minutes: it releases keys only to devices whose attestation it trusts now (see \`aios fleet show ${this.#device}\`).`, { details: { deploymentId } }));
      }, this.#waitMs);
      const stopped = (): void => {
        done();
        reject(new FleetError('EAI_OTA_CANCELLED', `the agent stopped while deployment ${deploymentId} waited for its key; it asks again on the next start.`));
      };
      this.#signal.addEventListener('abort', stopped, { once: true });
      this.#waiters.set(deploymentId, (key) => {
        done();
        resolve(key);
      });
    });
  }
}
