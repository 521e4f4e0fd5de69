import { createHash } from 'node:crypto';
import { extendPcr, resetPcr } from '../../drivers/tpm/pcr.js';
import { PCR_COUNT } from '../../drivers/tpm/pcr-selection.js';
import { AttestError } from './errors.js';

/**
 * What the runtime measures, and how one measurement changes the application PCR.
 *
 * Every item the runtime starts to trust — its own code, the trust root, a pipeline config, a
 * model bundle's manifest, a user stage's code — is hashed (SHA-256 of its bytes) and recorded as
 * an event `{ pcr, type, name, sha256, time }`. What is extended into the PCR is not the content
 * digest alone but the *event digest*, which binds the type and the name too, so nobody can take
 * a digest the policy allows for one kind of item and relabel it as another:
 *
 *   eventDigest = SHA-256( "aios-measurement-v1" 0x00 type 0x00 name(UTF-8) 0x00 sha256(32 raw bytes) )
 *
 * The encoding is unambiguous because neither the type nor the name may contain a NUL byte and the
 * content digest has a fixed length at the end; it can be reproduced in a shell (docs/attestation.md).
 * `time` is informative only: it is not extended (a verifier cannot check a device's clock).
 */

/**
 * Why PCR 23: the TCG PC Client Platform Firmware Profile gives PCR 23 to "application support":
 * firmware and boot loaders never extend it, the OS may reset it (TPM2_PCR_Reset at locality 0)
 * and it starts at zero after every TPM reset. So a zero PCR 23 means "nothing measured since this
 * boot", and the runtime's log always starts from zero. PCR 16 (debug) would work on swtpm but is
 * shared with anyone debugging; PCRs 8–15 belong to the boot loader and the OS (IMA uses 10).
 * The price of a resettable PCR: whoever holds root on the device can reset it and replay a
 * doctored log, which is why a verifier should also quote the firmware PCRs (0–7) and why the
 * runtime's trust ends where the OS's does (docs/attestation.md, "Limits").
 */
export const APPLICATION_PCR = 23;

/** The bank the runtime extends: every TPM 2.0 has an active SHA-256 bank. */
export const MEASUREMENT_BANK = 'sha256' as const;

/**
 * The kinds of item the runtime measures:
 * * `runtime` — the installed aios files (`runtimeDigest`), measured first, once per start;
 * * `trust-root` — the signed trust root document the device trusts bundles and commands by;
 * * `pipeline-config` — each pipeline file the runtime loads (its bytes as read);
 * * `model-bundle` — each bundle activated: the SHA-256 of its manifest (the DSSE payload, the
 *   registry's `manifestDigest`), which lists every model file's digest;
 * * `user-stage` — each user stage module a pipeline imports (its code runs inside the runtime).
 */
export const MEASUREMENT_TYPES = ['runtime', 'trust-root', 'pipeline-config', 'model-bundle', 'user-stage'] as const;
export type MeasurementType = (typeof MEASUREMENT_TYPES)[number];

/** One entry of the measurement log: plain data, as it is stored and sent in evidence. */
export interface MeasurementEvent {
  /** The PCR it was extended into (the application PCR). */
  readonly pcr: number;
  readonly type: MeasurementType;
  /** What was measured, in the device's words: a file path, a model name and version. */
  readonly name: string;
  /** Lowercase hex SHA-256 of the measured content. */
  readonly sha256: string;
  /** When it was measured, RFC 3339 UTC (informative; not extended). */
  readonly time: string;
}

/** The longest name accepted (UTF-16 units): a path, not a document. */
export const MAX_NAME_LENGTH = 4096;

const DOMAIN = Buffer.from('aios-measurement-v1\0', 'utf8');
const NUL = Buffer.from([0]);

/** The digest extended into the PCR for an event (see the file comment). Checks its inputs. */
export function eventDigest(type: MeasurementType, name: string, sha256: string): Buffer {
  checkMeasurement(type, name, sha256);
  return createHash('sha256').update(DOMAIN).update(type, 'utf8').update(NUL).update(name, 'utf8').update(NUL).update(Buffer.from(sha256, 'hex')).digest();
}

/** The PCR value a log reaches from reset (zeros), extending each event's digest in order. */
export function replayLog(events: readonly Pick<MeasurementEvent, 'type' | 'name' | 'sha256'>[]): Buffer {
  let value = resetPcr(MEASUREMENT_BANK);
  for (const e of events) value = extendPcr(MEASUREMENT_BANK, value, eventDigest(e.type, e.name, e.sha256));
  return value;
}

/** Throws `EAI_ATTEST_ARGUMENT` unless type, name and digest can be measured. */
export function checkMeasurement(type: string, name: string, sha256: string): asserts type is MeasurementType {
  const problem = measurementProblem(type, name, sha256);
  if (problem !== undefined) throw new AttestError('EAI_ATTEST_ARGUMENT', problem, { details: { type, name } });
}

/** Why a (type, name, sha256) cannot be measured, or undefined when it can. */
export function measurementProblem(type: unknown, name: unknown, sha256: unknown): string | undefined {
  if (typeof type !== 'string' || !(MEASUREMENT_TYPES as readonly string[]).includes(type)) return `measurement type ${JSON.stringify(type)} is not one of ${MEASUREMENT_TYPES.join(', ')}`;
  if (typeof name !== 'string' || name.length === 0 || name.length > MAX_NAME_LENGTH) return `a measurement name is a string of 1 to ${MAX_NAME_LENGTH} characters, got ${typeof name === 'string' ? `${name.length} characters` : typeof name}`;
  // A NUL would make the event encoding ambiguous; a lone surrogate has no UTF-8 form.
  if (name.includes('\0') || /\p{Cs}/u.test(name)) return `measurement name ${JSON.stringify(name)} contains a NUL or a lone surrogate`;
  if (typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/u.test(sha256)) return `a measurement digest is 64 lowercase hex digits (SHA-256), got ${JSON.stringify(sha256)}`;
  return undefined;
}

/** Throws `EAI_ATTEST_ARGUMENT` unless `pcr` is a PCR index. */
export function checkPcrIndex(pcr: number): void {
  if (!Number.isInteger(pcr) || pcr < 0 || pcr >= PCR_COUNT) throw new AttestError('EAI_ATTEST_ARGUMENT', `PCR ${pcr} is not an integer from 0 to ${PCR_COUNT - 1}; the runtime uses ${APPLICATION_PCR} unless configured otherwise`);
}
