import { createPublicKey, type KeyObject } from 'node:crypto';
import path from 'node:path';
import type { Attester } from './attester.js';
import { MeasuringAttester } from './measuring-attester.js';
import { AttestError } from './errors.js';
import { EVIDENCE_FORMAT, type SoftwareEvidence } from './evidence.js';
import { MeasurementLog } from './measurement-log.js';
import { APPLICATION_PCR } from './measurement.js';
import { SoftwarePcr } from './software-pcr.js';
import { encodeStatement, logDigest, signStatement, softwareKeyId, STATEMENT_TYPE } from './software-statement.js';

/**
 * The attester for a device without a TPM: the same measurement log, a software PCR
 * (software-pcr.ts) in place of PCR 23, and a statement signed with the device key in place of a
 * quote. Its evidence always says `kind: 'software'`: it shows what the runtime *says* it loaded,
 * not what a tamper-resistant chip saw, and a verifier's policy decides whether that is enough.
 */
export interface SoftwareAttesterOptions {
  /** The agent's state folder: `measurements.log` and `software-pcr.json` live in it. */
  readonly stateDir: string;
  /** The device's private key: Ed25519 (as `aios keys generate` makes) or EC P-256/P-384. */
  readonly privateKey: KeyObject;
  /** Default APPLICATION_PCR (23), so the log reads the same as on a TPM device. */
  readonly pcr?: number;
  /** The current boot's id; default the kernel's (/proc/sys/kernel/random/boot_id). */
  readonly bootId?: string;
  /** Event and statement times; default the system clock. */
  readonly clock?: () => Date;
}

export class SoftwareAttester extends MeasuringAttester implements Attester {
  readonly kind = 'software' as const;
  /** Hex SHA-256 of the device public key (softwareKeyId): the evidence's `keyid`. */
  readonly keyid: string;
  readonly publicKey: KeyObject;
  private readonly privateKey: KeyObject;
  private readonly clock: () => Date;

  private constructor(options: SoftwareAttesterOptions, log: MeasurementLog) {
    super(log);
    this.privateKey = options.privateKey;
    this.publicKey = createPublicKey(options.privateKey);
    this.keyid = softwareKeyId(this.publicKey);
    this.clock = options.clock ?? (() => new Date());
  }

  static async open(options: SoftwareAttesterOptions): Promise<SoftwareAttester> {
    const type = options.privateKey.asymmetricKeyType;
    if (options.privateKey.type !== 'private' || (type !== 'ed25519' && type !== 'ec')) {
      throw new AttestError('EAI_ATTEST_ARGUMENT', `software attestation signs with the device's Ed25519 or EC private key, got a ${options.privateKey.type} ${type ?? ''} key`);
    }
    const register = new SoftwarePcr({ file: path.join(options.stateDir, 'software-pcr.json'), pcr: options.pcr ?? APPLICATION_PCR, ...(options.bootId === undefined ? {} : { bootId: options.bootId }) });
    const log = await MeasurementLog.open({ file: path.join(options.stateDir, 'measurements.log'), register, ...(options.clock === undefined ? {} : { clock: options.clock }) });
    return new SoftwareAttester(options, log);
  }

  evidence(nonce: Uint8Array): Promise<SoftwareEvidence> {
    if (nonce.byteLength < 1 || nonce.byteLength > 64) return Promise.reject(new AttestError('EAI_ATTEST_ARGUMENT', `a nonce is 1 to 64 bytes, got ${nonce.byteLength}`));
    return this.queue.push(() =>
      this.log.exclusive(async (events, value) => {
        // The stored software PCR must agree with the log, as a TPM's must.
        const stored = await this.log.register.read();
        if (!stored.equals(value)) {
          throw new AttestError('EAI_ATTEST_PCR_MISMATCH', `the software PCR in ${path.dirname(this.log.file)} holds ${stored.toString('hex')}, but the measurement log replays to ${value.toString('hex')}: the state folder was changed behind the runtime's back. Remove software-pcr.json and measurements.log, then restart the agent`);
        }
        const statement = encodeStatement({
          _type: STATEMENT_TYPE,
          keyid: this.keyid,
          logDigest: logDigest(events),
          nonce: Buffer.from(nonce).toString('hex'),
          pcrs: [{ hash: 'sha256', index: this.pcr, value: value.toString('hex') }],
          time: this.clock().toISOString(),
        });
        return {
          format: EVIDENCE_FORMAT,
          kind: 'software',
          nonce: Buffer.from(nonce),
          pcrs: [{ hash: 'sha256', index: this.pcr, value }],
          log: events,
          statement,
          signature: signStatement(statement, this.privateKey),
          keyid: this.keyid,
        };
      }),
    );
  }
}
