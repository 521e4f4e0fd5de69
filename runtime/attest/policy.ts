import { AttestError } from './errors.js';
import { APPLICATION_PCR, checkPcrIndex, type MeasurementEvent } from './measurement.js';
import type { AttestationReason } from './result.js';

/**
 * What a verifier accepts from one device (RATS: the appraisal policy for evidence, with its
 * reference values). Digests are lowercase hex SHA-256, as measured (measurement.ts).
 *
 * Every event in the log must be allowed: an item measured once and later replaced (a model
 * swapped on disk and loaded again) leaves its second measurement in the log, and that one must
 * pass too. The policy is plain data apart from the optional pipeline predicate, so it can be
 * stored per device or per rollout stage.
 */
export interface Policy {
  /** Refuse `software` evidence (a device without a TPM). */
  readonly requireTpm: boolean;
  /** Longest time from issuing a nonce to verifying the evidence for it. */
  readonly maxAgeMs: number;
  /** The application PCR; default 23. */
  readonly applicationPcr?: number;
  /** `runtime` digests allowed (runtimeDigest of each released aios build). At least one runtime event must be in the log. */
  readonly allowedRuntimeDigests: readonly string[];
  /** `trust-root` digests allowed (the current root and those it may still be rotating from). */
  readonly allowedTrustRootDigests: readonly string[];
  /** `pipeline-config` digests allowed, or a predicate deciding per event. */
  readonly allowedPipelineConfigs: readonly string[] | ((event: MeasurementEvent) => boolean);
  /** `model-bundle` manifest digests (the registry's manifestDigest) deployed to this device. */
  readonly expectedModelBundles: readonly string[];
  /** `user-stage` module digests allowed; default none. */
  readonly allowedUserStageDigests?: readonly string[];
  /**
   * Golden values of firmware PCRs (sha256 bank, index → hex value). Each must be quoted and
   * equal; default none checked.
   */
  readonly firmwarePcrs?: Readonly<Record<number, string>>;
}

/** Throws `EAI_ATTEST_ARGUMENT` for a policy that is missing or not shaped as documented: a caller's mistake, not the device's. */
export function checkPolicy(policy: Policy | undefined): asserts policy is Policy {
  const fail = (why: string): never => {
    throw new AttestError('EAI_ATTEST_ARGUMENT', `the attestation policy ${why}`);
  };
  if (typeof policy !== 'object' || policy === null) fail('is missing: pass the device\'s Policy to verifyEvidence');
  const p = policy as Policy;
  if (typeof p.requireTpm !== 'boolean') fail('has no boolean requireTpm');
  if (typeof p.maxAgeMs !== 'number' || !(p.maxAgeMs > 0)) fail('has no positive maxAgeMs');
  if (p.applicationPcr !== undefined) checkPcrIndex(p.applicationPcr);
  const digests = (name: string, v: unknown, optional = false): void => {
    if (optional && v === undefined) return;
    if (!Array.isArray(v) || v.some((d) => typeof d !== 'string' || !/^[0-9a-f]{64}$/u.test(d))) fail(`${name} is not a list of lowercase hex SHA-256 digests`);
  };
  digests('allowedRuntimeDigests', p.allowedRuntimeDigests);
  digests('allowedTrustRootDigests', p.allowedTrustRootDigests);
  if (typeof p.allowedPipelineConfigs !== 'function') digests('allowedPipelineConfigs', p.allowedPipelineConfigs);
  digests('expectedModelBundles', p.expectedModelBundles);
  digests('allowedUserStageDigests', p.allowedUserStageDigests, true);
  for (const [k, v] of Object.entries(p.firmwarePcrs ?? {})) {
    checkPcrIndex(Number(k));
    if (typeof v !== 'string' || !/^[0-9a-f]{64}$/u.test(v)) fail(`firmwarePcrs[${k}] is not a lowercase hex SHA-256 PCR value`);
  }
}

/** The application PCR a policy names. */
export function applicationPcr(policy: Policy): number {
  return policy.applicationPcr ?? APPLICATION_PCR;
}

/** Appraisal of one logged item: whether policy allows it. */
export interface ItemAppraisal {
  readonly event: MeasurementEvent;
  readonly allowed: boolean;
}

/** Appraises every event against the policy; a reason for each one refused, and one when no runtime was measured. */
export function appraiseMeasurements(events: readonly MeasurementEvent[], policy: Policy): { items: ItemAppraisal[]; reasons: AttestationReason[] } {
  const reasons: AttestationReason[] = [];
  const items = events.map((event) => {
    const allowed = isAllowed(event, policy);
    if (!allowed) {
      reasons.push({
        code: 'EAI_ATTEST_NOT_ALLOWED',
        message: `${event.type} "${event.name}" was measured with sha256 ${event.sha256}, which the policy does not ${LIST_NAMES[event.type]}: the item on the device is not the one released to it (replaced on disk, or never deployed)`,
        details: { type: event.type, name: event.name, sha256: event.sha256, time: event.time },
      });
    }
    return { event, allowed };
  });
  if (!events.some((e) => e.type === 'runtime')) {
    reasons.push({ code: 'EAI_ATTEST_RUNTIME_UNMEASURED', message: `the log holds no runtime measurement: the aios runtime has not measured itself since PCR ${applicationPcr(policy)} was reset (the agent has not started since boot, or started without attestation)`, details: {} });
  }
  return { items, reasons };
}

const LIST_NAMES: Record<MeasurementEvent['type'], string> = {
  runtime: 'allow (allowedRuntimeDigests)',
  'trust-root': 'allow (allowedTrustRootDigests)',
  'pipeline-config': 'allow (allowedPipelineConfigs)',
  'model-bundle': 'expect for this device (expectedModelBundles)',
  'user-stage': 'allow (allowedUserStageDigests)',
};

function isAllowed(event: MeasurementEvent, policy: Policy): boolean {
  switch (event.type) {
    case 'runtime':
      return policy.allowedRuntimeDigests.includes(event.sha256);
    case 'trust-root':
      return policy.allowedTrustRootDigests.includes(event.sha256);
    case 'pipeline-config': {
      const allowed = policy.allowedPipelineConfigs;
      return typeof allowed === 'function' ? allowed(event) === true : allowed.includes(event.sha256);
    }
    case 'model-bundle':
      return policy.expectedModelBundles.includes(event.sha256);
    case 'user-stage':
      return (policy.allowedUserStageDigests ?? []).includes(event.sha256);
  }
}
