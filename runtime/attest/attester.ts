import { VERSION } from '../version.js';
import type { Evidence } from './evidence.js';
import { runtimeDigest, type RuntimeDigestOptions } from './file-digest.js';
import type { LogRecovery } from './measurement-log.js';
import type { MeasurementEvent, MeasurementType } from './measurement.js';

/**
 * The device side of attestation (RATS "attester"): it measures what the runtime loads into the
 * application PCR and its log, and answers a verifier's nonce with evidence. Two kinds:
 * `TpmAttester` (a TPM 2.0 quote) and `SoftwareAttester` (a device-key signature, for machines
 * without a TPM; a verifier may refuse it).
 *
 * Calls may overlap: measurements and evidence run one at a time in call order, so evidence
 * always carries exactly the events its PCR value covers.
 */
export interface Attester {
  readonly kind: Evidence['kind'];
  /** The application PCR (23 unless configured). */
  readonly pcr: number;
  /** The log since the PCR was last reset, in extend order. */
  readonly events: readonly MeasurementEvent[];
  /** What opening the log found and repaired (a reboot, a torn line). */
  readonly recovery: LogRecovery;
  /** Logs and extends one measurement: `sha256` is the lowercase hex SHA-256 of the item's content. */
  measure(type: MeasurementType, name: string, sha256: string): Promise<MeasurementEvent>;
  /** Measures a file's content (streamed). */
  measureFile(type: MeasurementType, name: string, file: string): Promise<MeasurementEvent>;
  /** Evidence for a verifier's nonce (1–64 bytes; 32 is usual). */
  evidence(nonce: Uint8Array): Promise<Evidence>;
}

/** The name the runtime's own measurement carries: `aios@<version>`. */
export const RUNTIME_MEASUREMENT_NAME = `aios@${VERSION}`;

/**
 * Measures the installed runtime (`runtimeDigest`): what an agent does first after opening its
 * attester. Returns the event, or undefined when the log already holds this exact measurement
 * (an agent restart within a boot need not extend it again).
 */
export async function measureRuntime(attester: Attester, options: RuntimeDigestOptions = {}): Promise<MeasurementEvent | undefined> {
  const { sha256 } = await runtimeDigest(options);
  if (attester.events.some((e) => e.type === 'runtime' && e.sha256 === sha256 && e.name === RUNTIME_MEASUREMENT_NAME)) return undefined;
  return attester.measure('runtime', RUNTIME_MEASUREMENT_NAME, sha256);
}
