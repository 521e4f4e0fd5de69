import path from 'node:path';
import { DEFAULT_AK_HANDLE, type AttestationKey, type Tpm } from '../../drivers/tpm/tpm.js';
import type { Attester } from './attester.js';
import { MeasuringAttester } from './measuring-attester.js';
import { AttestError } from './errors.js';
import { EVIDENCE_FORMAT, type QuotedPcr, type TpmEvidence } from './evidence.js';
import { MeasurementLog, type MeasurementRegister } from './measurement-log.js';
import { APPLICATION_PCR, checkPcrIndex, MEASUREMENT_BANK } from './measurement.js';

/**
 * The attester for a device with a TPM 2.0: measurements extend the TPM's application PCR, and
 * evidence is TPM2_Quote over the sha256 bank's application PCR (plus the firmware PCRs asked
 * for) with the verifier's nonce, signed by the device's attestation key (AK).
 *
 * The AK is the one registered at enrolment (the fleet binds it to the EK by credential
 * activation); `open` finds it at its persistent handle and creates it there only when empty.
 */
export interface TpmAttesterOptions {
  readonly tpm: Tpm;
  /** The agent's state folder: the log is `measurements.log` in it. */
  readonly stateDir: string;
  /** Default APPLICATION_PCR (23). */
  readonly pcr?: number;
  /**
   * sha256 PCRs quoted beside the application PCR, e.g. [0, 1, 2, 3, 4, 5, 6, 7] so a verifier can
   * compare the boot chain with golden values. Default none.
   */
  readonly firmwarePcrs?: readonly number[];
  /** The AK, when the caller has it already; else read (or created) at `akHandle`. */
  readonly ak?: AttestationKey;
  /** Default DEFAULT_AK_HANDLE. */
  readonly akHandle?: number;
  /** Event times; default the system clock. */
  readonly clock?: () => Date;
}

export class TpmAttester extends MeasuringAttester implements Attester {
  readonly kind = 'tpm2' as const;
  readonly ak: AttestationKey;
  private readonly tpm: Tpm;
  private readonly firmwarePcrs: readonly number[];

  private constructor(tpm: Tpm, ak: AttestationKey, log: MeasurementLog, firmwarePcrs: readonly number[]) {
    super(log);
    this.tpm = tpm;
    this.ak = ak;
    this.firmwarePcrs = firmwarePcrs;
  }

  /**
   * Opens the log in `stateDir` against the TPM's PCR (see MeasurementLog for what it repairs).
   * Throws `EAI_ATTEST_PCR_MISMATCH` when PCR 23 holds extends the log does not explain, and the
   * driver's `TpmError`s when the TPM cannot be used.
   */
  static async open(options: TpmAttesterOptions): Promise<TpmAttester> {
    const pcr = options.pcr ?? APPLICATION_PCR;
    checkPcrIndex(pcr);
    const firmwarePcrs = [...new Set(options.firmwarePcrs ?? [])].filter((i) => i !== pcr);
    firmwarePcrs.forEach(checkPcrIndex);
    const { tpm } = options;
    const ak = options.ak ?? (await tpm.attestationKey({ handle: options.akHandle ?? DEFAULT_AK_HANDLE }));
    const register: MeasurementRegister = {
      pcr,
      read: async () => pcrValue(await tpm.readPcrs([{ hash: MEASUREMENT_BANK, pcrs: [pcr] }]), pcr),
      extend: (digest) => tpm.extendPcr(pcr, digest, MEASUREMENT_BANK),
    };
    const log = await MeasurementLog.open({ file: path.join(options.stateDir, 'measurements.log'), register, ...(options.clock === undefined ? {} : { clock: options.clock }) });
    return new TpmAttester(tpm, ak, log, firmwarePcrs);
  }

  /**
   * Quotes sha256:{firmware PCRs, application PCR} with `nonce`. Throws `EAI_ATTEST_PCR_MISMATCH`
   * when the quoted application PCR is not what the log replays to: something extended it behind
   * the runtime's back since the log was opened, and no verifier should accept this device's
   * evidence until the PCR is reset.
   */
  evidence(nonce: Uint8Array): Promise<TpmEvidence> {
    return this.queue.push(() =>
      this.log.exclusive(async (events, value) => {
        const q = await this.tpm.quote([{ hash: MEASUREMENT_BANK, pcrs: [...this.firmwarePcrs, this.pcr] }], nonce, { akHandle: this.ak.handle });
        const quoted = pcrValue(q.pcrs, this.pcr);
        if (!quoted.equals(value)) {
          throw new AttestError('EAI_ATTEST_PCR_MISMATCH', `the TPM quoted PCR ${this.pcr} as ${quoted.toString('hex')}, but the measurement log (${events.length} events) replays to ${value.toString('hex')}: something other than this runtime extended PCR ${this.pcr}. Reboot, or run \`tpm2_pcrreset ${this.pcr}\` and restart the agent`, { details: { pcr: this.pcr, quoted: quoted.toString('hex'), replayed: value.toString('hex') } });
        }
        const pcrs: QuotedPcr[] = q.pcrs.flatMap((bank) => [...bank.values].map(([index, v]) => ({ hash: bank.hash, index, value: v })));
        return { format: EVIDENCE_FORMAT, kind: 'tpm2', nonce: Buffer.from(nonce), pcrs, log: events, quote: { attest: q.attest, signature: q.signature }, akName: this.ak.name };
      }),
    );
  }
}

function pcrValue(values: readonly { readonly hash: string; readonly values: ReadonlyMap<number, Buffer> }[], pcr: number): Buffer {
  const v = values.find((b) => b.hash === MEASUREMENT_BANK)?.values.get(pcr);
  if (v === undefined) throw new AttestError('EAI_ATTEST_ARGUMENT', `the TPM returned no sha256 value for PCR ${pcr}: is the sha256 bank active (tpm2_getcap pcrs)?`);
  return v;
}
