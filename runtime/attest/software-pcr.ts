import { readFileSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../../models/atomic-write.js';
import { extendPcr, resetPcr } from '../../drivers/tpm/pcr.js';
import { AttestError } from './errors.js';
import type { MeasurementRegister } from './measurement-log.js';
import { checkPcrIndex } from './measurement.js';

/**
 * A PCR kept in software, for machines without a TPM: the same extend arithmetic, held in a small
 * file beside the measurement log so it behaves like PCR 23 does — it survives agent restarts and
 * starts over at zero when the machine reboots. A reboot is told by the kernel's boot id
 * (/proc/sys/kernel/random/boot_id, new on every boot), which the file records.
 *
 * It protects nothing: whoever can write the state folder can set any value. It exists so that a
 * TPM-less device keeps the same log and evidence shape, and its evidence says `software` so a
 * verifier can refuse it by policy.
 */
export interface SoftwarePcrOptions {
  /** Where the value is kept: `{"bootId":"…","pcr":23,"value":"<hex>"}`. */
  readonly file: string;
  readonly pcr: number;
  /** The current boot's id; default read from /proc/sys/kernel/random/boot_id. */
  readonly bootId?: string;
}

export class SoftwarePcr implements MeasurementRegister {
  readonly pcr: number;
  readonly file: string;
  readonly bootId: string;

  constructor(options: SoftwarePcrOptions) {
    checkPcrIndex(options.pcr);
    this.pcr = options.pcr;
    this.file = options.file;
    this.bootId = options.bootId ?? currentBootId();
  }

  async read(): Promise<Buffer> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return resetPcr('sha256');
      throw error;
    }
    let stored: { bootId?: unknown; pcr?: unknown; value?: unknown };
    try {
      stored = JSON.parse(text) as typeof stored;
    } catch (cause) {
      throw new AttestError('EAI_ATTEST_LOG_CORRUPT', `the software PCR file ${this.file} is not JSON: remove it and the measurement log beside it, then restart the agent`, { cause });
    }
    if (stored.bootId !== this.bootId) return resetPcr('sha256');
    if (stored.pcr !== this.pcr || typeof stored.value !== 'string' || !/^[0-9a-f]{64}$/u.test(stored.value)) {
      throw new AttestError('EAI_ATTEST_LOG_CORRUPT', `the software PCR file ${this.file} does not hold PCR ${this.pcr} as 64 hex digits: remove it and the measurement log beside it, then restart the agent`);
    }
    return Buffer.from(stored.value, 'hex');
  }

  async extend(digest: Buffer): Promise<void> {
    const value = extendPcr('sha256', await this.read(), digest);
    await mkdir(path.dirname(this.file), { recursive: true, mode: 0o700 });
    await writeFileAtomic(this.file, `${JSON.stringify({ bootId: this.bootId, pcr: this.pcr, value: value.toString('hex') })}\n`);
  }
}

function currentBootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch (cause) {
    throw new AttestError('EAI_ATTEST_ARGUMENT', 'cannot read /proc/sys/kernel/random/boot_id (not Linux?): pass SoftwarePcr({ bootId }) with an id that changes on every boot', { cause });
  }
}
