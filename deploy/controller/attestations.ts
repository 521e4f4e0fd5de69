import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Challenge } from '../../runtime/attest/challenge.js';
import { decodeEvidence, EVIDENCE_FORMAT, type Evidence } from '../../runtime/attest/evidence.js';
import type { MeasurementEvent } from '../../runtime/attest/measurement.js';
import type { Policy } from '../../runtime/attest/policy.js';
import type { AttestationResult, AttestationStatus } from '../../runtime/attest/result.js';
import { verifyEvidence, type RegisteredKeys, type VerifyRequest } from '../../runtime/attest/verify.js';
import { aios } from '../proto/gen/aios.js';
import { decodeMessage } from '../fleet/wire.js';
import type { CommandQueue } from './commands.js';
import type { Deployments } from './deployments.js';
import type { DeviceRegistry } from './devices.js';
import type { ControllerStore } from './store.js';

/**
 * The controller as RATS verifier and relying party: it challenges each device with a fresh
 * nonce when the device connects and every `intervalMs` (a signed RequestAttestation command),
 * appraises the evidence that comes back on the device's `attestation` topic against the key the
 * device registered at enrolment and the policy for that device (runtime/attest/verify.ts), and
 * keeps the latest result per device, which `aios fleet devices` shows and rollouts and model
 * key release consult.
 *
 * The policy's reference values: the runtimes and trust roots the operator allows, pipeline
 * configurations (any, unless listed), and — per device — the manifests of every bundle deployed
 * to it, since its log since boot may show any of them.
 *
 * Challenges live in the store, so a replica other than the one that asked can appraise the
 * answer; one replica (the rollout lead) runs the periodic challenges.
 */
/** Evidence appraised, and written, in one transaction at most. */
const APPRAISAL_BATCH = 500;

export interface AttestationPolicy {
  /** Refuse `software` evidence. Default false: a device without a TPM is appraised, and shown as software. */
  readonly requireTpm?: boolean;
  /** Longest time from a challenge to its evidence; default 120 s. */
  readonly maxAgeMs?: number;
  /** runtimeDigest() of each aios build devices may run. */
  readonly allowedRuntimeDigests: readonly string[];
  /** rootDigest() of each trust root devices may hold. */
  readonly allowedTrustRootDigests: readonly string[];
  /** Pipeline configuration digests allowed; default any (their digests are reported in the claims). */
  readonly allowedPipelineConfigs?: readonly string[];
  /** Model bundle manifests allowed on every device beyond those deployed to it (models baked into the image). */
  readonly extraModelBundles?: readonly string[];
  /** Golden firmware PCR values (sha256 bank). */
  readonly firmwarePcrs?: Readonly<Record<number, string>>;
}

export interface AttestationOptions {
  readonly policy: AttestationPolicy;
  /** How often a device is appraised again; default 60 s. */
  readonly intervalMs?: number;
  readonly now?: () => number;
}

export interface StoredAttestation {
  readonly status: AttestationStatus;
  readonly verifiedUnixMs: number;
  readonly result: AttestationResult;
}

export class Attestations extends EventEmitter<{ result: [string, AttestationResult] }> {
  readonly intervalMs: number;
  readonly #db: ControllerStore;
  readonly #commands: CommandQueue;
  readonly #registry: DeviceRegistry;
  readonly #deployments: Deployments;
  readonly #policy: AttestationPolicy;
  readonly #now: () => number;
  /** Evidence waiting to be appraised, and the appraisal running. */
  readonly #received: { readonly deviceId: string; readonly payload: Uint8Array; readonly resolve: (result: AttestationResult) => void; readonly reject: (error: unknown) => void }[] = [];
  #appraising = false;
  /** Challenges waiting for the next transaction. */
  readonly #asked: { readonly deviceId: string; readonly resolve: (nonce: Uint8Array) => void; readonly reject: (error: unknown) => void }[] = [];
  /** The registered key per device, the same object each time (the verifier caches its decoding per object). */
  readonly #keys = new Map<string, { ak: Buffer; keys: RegisteredKeys }>();

  constructor(db: ControllerStore, options: AttestationOptions & { readonly commands: CommandQueue; readonly registry: DeviceRegistry; readonly deployments: Deployments }) {
    super();
    this.#db = db;
    this.#commands = options.commands;
    this.#registry = options.registry;
    this.#deployments = options.deployments;
    this.#policy = options.policy;
    this.intervalMs = options.intervalMs ?? 60_000;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Sends `deviceId` a fresh nonce to attest over; resolves with it once the broker has the
   * command. Challenges asked for together (a round, a connect storm's births) are recorded in
   * one transaction, and their commands group-committed by the queue.
   */
  challenge(deviceId: string): Promise<Uint8Array> {
    return new Promise((resolve, reject) => {
      this.#asked.push({ deviceId, resolve, reject });
      if (this.#asked.length === 1) setImmediate(() => void this.#issue());
    });
  }

  async #issue(): Promise<void> {
    const batch = this.#asked.splice(0).map((a) => ({ ...a, nonce: randomBytes(32) }));
    const now = this.#now();
    try {
      await this.#db.transaction(async (tx) => {
        for (const c of batch) await tx.run('INSERT INTO attestation_challenges (device_id, nonce, issued_ms) VALUES (?, ?, ?)', c.deviceId, c.nonce, now);
      });
    } catch (error) {
      for (const c of batch) c.reject(error);
      return;
    }
    await Promise.all(
      batch.map((c) =>
        this.#commands.send(c.deviceId, { requestAttestation: { nonce: c.nonce } }, { ttlMs: this.#maxAgeMs() }).then(
          () => c.resolve(c.nonce),
          (error: unknown) => c.reject(error),
        ),
      ),
    );
  }

  /**
   * Challenges the online devices whose last appraisal is older than the interval (and not asked
   * since), oldest first, at most a tick's share of the fleet (with room to catch up): devices that
   * connected together (a depot's morning) would otherwise come due together every interval, and
   * their evidence would arrive as one burst that stalls the controller for seconds.
   */
  async tick(periodMs = 10_000): Promise<number> {
    const now = this.#now();
    const online = (await this.#db.get<{ n: number }>("SELECT COUNT(*) AS n FROM devices WHERE state = 'online'"))?.n ?? 0;
    const share = Math.max(50, Math.ceil(((online * periodMs) / this.intervalMs) * 1.5));
    const due = await this.#db.all<{ device_id: string }>(
      "SELECT device_id FROM devices WHERE state = 'online' AND (attestation_ms IS NULL OR attestation_ms < ?) AND device_id NOT IN (SELECT device_id FROM attestation_challenges WHERE issued_ms > ?) ORDER BY COALESCE(attestation_ms, 0) LIMIT ?",
      now - this.intervalMs,
      now - Math.min(this.intervalMs, this.#maxAgeMs()),
      share,
    );
    await Promise.all(due.map((d) => this.challenge(d.device_id)));
    await this.#db.run('DELETE FROM attestation_challenges WHERE issued_ms < ?', now - 10 * Math.max(this.intervalMs, this.#maxAgeMs()));
    return due.length;
  }

  /**
   * Appraises one AttestationEvidence message from `deviceId`; never throws for what the device
   * sent. Messages that arrive together are appraised together and their nonces and results
   * written in one transaction: a round's burst of evidence costs a few fsyncs, not two each.
   */
  receive(deviceId: string, payload: Uint8Array): Promise<AttestationResult> {
    return new Promise((resolve, reject) => {
      this.#received.push({ deviceId, payload, resolve, reject });
      if (!this.#appraising) void this.#appraiseReceived();
    });
  }

  async #appraiseReceived(): Promise<void> {
    this.#appraising = true;
    try {
      while (this.#received.length > 0) {
        // Let the messages that arrived meanwhile join this batch.
        await new Promise((resolve) => setImmediate(resolve));
        const batch = this.#received.splice(0, APPRAISAL_BATCH);
        try {
          const appraised = await Promise.all(batch.map((m) => this.#appraise(m.deviceId, m.payload)));
          const now = this.#now();
          await this.#db.transaction(async (tx) => {
            for (const a of appraised) {
              // The nonce is spent by the first answer: a copy in this batch, or one another replica
              // appraised meanwhile, finds it spent and is stale, as a replay.
              if (a.redeem !== undefined && (await tx.run('UPDATE attestation_challenges SET answered_ms = ? WHERE device_id = ? AND nonce = ? AND answered_ms IS NULL', now, a.deviceId, Buffer.from(a.redeem.nonce))) !== 1) {
                a.result = verifyEvidence({ ...a.request, challenge: { ...a.redeem, answeredAt: now } });
              }
              await tx.run('UPDATE devices SET attestation_status = ?, attestation_ms = ?, attestation_result = ? WHERE device_id = ?', a.result.status, now, JSON.stringify(a.result), a.deviceId);
            }
          });
          for (const [i, a] of appraised.entries()) {
            this.emit('result', a.deviceId, a.result);
            batch[i]?.resolve(a.result);
          }
        } catch (error) {
          for (const m of batch) m.reject(error);
        }
      }
    } finally {
      // In the same turn as the loop's last check, so a message pushed after it starts a new run.
      this.#appraising = false;
    }
  }

  /** Decodes and verifies one message against the challenge as the store has it now. */
  async #appraise(deviceId: string, payload: Uint8Array): Promise<{ deviceId: string; request: VerifyRequest; result: AttestationResult; redeem?: Challenge }> {
    const now = this.#now();
    // Whatever arrives goes to the verifier, which appraises malformed evidence as untrusted with
    // the reason; only well-formed evidence can redeem a challenge.
    let evidence: unknown = { format: 'not protobuf AttestationEvidence' };
    let challenge: Challenge | undefined;
    try {
      const message = decodeMessage(aios.fleet.v1.AttestationEvidence, payload, `attestation evidence of ${deviceId}`);
      evidence = { format: message.format.slice(0, 64) };
      if (message.format === EVIDENCE_FORMAT) {
        evidence = JSON.parse(Buffer.from(message.evidence).toString('utf8')) as unknown;
        const decoded = decodeEvidence(evidence);
        evidence = decoded;
        challenge = await this.#challengeOf(deviceId, decoded.nonce);
      }
    } catch {
      // appraised below, as what it is
    }
    const request: VerifyRequest = { evidence: evidence as Evidence, device: await this.#registeredKeys(deviceId), challenge, policy: await this.#policyFor(deviceId), now };
    return { deviceId, request, result: verifyEvidence(request), ...(challenge !== undefined && challenge.answeredAt === undefined ? { redeem: challenge } : {}) };
  }

  /** The latest appraisal of `deviceId`. */
  async latest(deviceId: string): Promise<StoredAttestation | undefined> {
    const row = await this.#db.get<{ attestation_status: AttestationStatus | null; attestation_ms: number | null; attestation_result: string | null }>('SELECT attestation_status, attestation_ms, attestation_result FROM devices WHERE device_id = ?', deviceId);
    if (row?.attestation_status == null || row.attestation_ms === null || row.attestation_result === null) return undefined;
    return { status: row.attestation_status, verifiedUnixMs: row.attestation_ms, result: JSON.parse(row.attestation_result) as AttestationResult };
  }

  /** Whether `deviceId`'s latest appraisal is `trusted` and at most `maxAgeMs` old (default: the interval plus the evidence's allowed age). */
  async trusted(deviceId: string, maxAgeMs = this.intervalMs + this.#maxAgeMs()): Promise<boolean> {
    const latest = await this.latest(deviceId);
    return latest !== undefined && latest.status === 'trusted' && this.#now() - latest.verifiedUnixMs <= maxAgeMs;
  }

  #maxAgeMs(): number {
    return this.#policy.maxAgeMs ?? 120_000;
  }

  /** The challenge as it was before this answer, marked answered (replica-safe: one UPDATE wins). */
  /** The challenge `nonce` answers, as the store has it (answered or not), or undefined when never issued to this device. */
  async #challengeOf(deviceId: string, nonce: Uint8Array): Promise<Challenge | undefined> {
    const row = await this.#db.get<{ issued_ms: number; answered_ms: number | null }>('SELECT issued_ms, answered_ms FROM attestation_challenges WHERE device_id = ? AND nonce = ?', deviceId, Buffer.from(nonce));
    if (row === undefined) return undefined;
    return row.answered_ms === null ? { nonce, issuedAt: row.issued_ms } : { nonce, issuedAt: row.issued_ms, answeredAt: row.answered_ms };
  }

  async #registeredKeys(deviceId: string): Promise<RegisteredKeys> {
    const identity = await this.#registry.attestationIdentity(deviceId);
    if (identity === undefined) return {};
    const cached = this.#keys.get(deviceId);
    if (cached !== undefined && cached.ak.equals(identity.akPublic)) return cached.keys;
    const keys: RegisteredKeys = identity.kind === 'tpm2' ? { akPublic: identity.akPublic } : { softwareKey: identity.akPublic };
    this.#keys.set(deviceId, { ak: identity.akPublic, keys });
    return keys;
  }

  async #policyFor(deviceId: string): Promise<Policy> {
    const p = this.#policy;
    const allowedConfigs = p.allowedPipelineConfigs;
    return {
      requireTpm: p.requireTpm ?? false,
      maxAgeMs: this.#maxAgeMs(),
      allowedRuntimeDigests: p.allowedRuntimeDigests,
      allowedTrustRootDigests: p.allowedTrustRootDigests,
      allowedPipelineConfigs: allowedConfigs ?? ((_event: MeasurementEvent) => true),
      expectedModelBundles: [...(await this.#deployments.manifestsFor(deviceId)), ...(p.extraModelBundles ?? [])],
      ...(p.firmwarePcrs === undefined ? {} : { firmwarePcrs: p.firmwarePcrs }),
    };
  }

}
