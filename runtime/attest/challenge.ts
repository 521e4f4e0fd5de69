import { randomBytes, timingSafeEqual } from 'node:crypto';
import { AttestError } from './errors.js';

/**
 * The verifier's nonces (RATS: nonce-based freshness). The verifier issues a fresh random nonce
 * per challenge and remembers, per device, the last few it issued and whether each was answered;
 * evidence is fresh only when it answers a nonce this verifier issued to that device, not
 * answered before, and not older than the policy's `maxAgeMs`.
 *
 * `redeem` looks a nonce up and marks it answered in one step, so the same nonce can never be
 * accepted twice: the second answer finds `answeredAt` set and `verifyEvidence` says `stale`.
 * A controller with replicas keeps these records in its database instead; `Challenge` is the
 * plain shape to store.
 */
export interface Challenge {
  readonly nonce: Uint8Array;
  /** Unix ms when the verifier issued it. */
  readonly issuedAt: number;
  /** Unix ms when evidence for it was first received; absent while it is open. */
  readonly answeredAt?: number;
}

export interface ChallengeBookOptions {
  /** Nonce length; default 32 bytes. */
  readonly nonceBytes?: number;
  /** Challenges remembered per device (open and answered); default 8. Older ones are forgotten, and answers to them are unknown. */
  readonly keep?: number;
  /** Unix ms; default Date.now. */
  readonly clock?: () => number;
}

export class ChallengeBook {
  private readonly nonceBytes: number;
  private readonly keep: number;
  private readonly clock: () => number;
  private readonly devices = new Map<string, Challenge[]>();

  constructor(options: ChallengeBookOptions = {}) {
    this.nonceBytes = options.nonceBytes ?? 32;
    this.keep = options.keep ?? 8;
    this.clock = options.clock ?? Date.now;
    if (!Number.isInteger(this.nonceBytes) || this.nonceBytes < 16 || this.nonceBytes > 64) throw new AttestError('EAI_ATTEST_ARGUMENT', `a nonce is 16 to 64 bytes (a TPM takes at most 64), got ${this.nonceBytes}`);
    if (!Number.isInteger(this.keep) || this.keep < 1) throw new AttestError('EAI_ATTEST_ARGUMENT', `keep must be a positive integer, got ${this.keep}`);
  }

  /** A fresh challenge for `device`. */
  issue(device: string): Challenge {
    const challenge: Challenge = { nonce: randomBytes(this.nonceBytes), issuedAt: this.clock() };
    const list = this.devices.get(device) ?? [];
    list.push(challenge);
    if (list.length > this.keep) list.splice(0, list.length - this.keep);
    this.devices.set(device, list);
    return challenge;
  }

  /**
   * The challenge `nonce` answers for `device`, as it was before this call (with `answeredAt` when
   * it had been answered already), or undefined when this verifier never issued it to that device
   * or has forgotten it. Marks it answered.
   */
  redeem(device: string, nonce: Uint8Array): Challenge | undefined {
    const list = this.devices.get(device);
    const i = list?.findIndex((c) => c.nonce.byteLength === nonce.byteLength && timingSafeEqual(c.nonce, nonce)) ?? -1;
    if (list === undefined || i < 0) return undefined;
    const before = list[i]!;
    if (before.answeredAt === undefined) list[i] = { ...before, answeredAt: this.clock() };
    return before;
  }

  /** Forgets a device (it left the fleet). */
  forget(device: string): void {
    this.devices.delete(device);
  }
}
