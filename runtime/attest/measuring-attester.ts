import { SerialQueue } from '../../drivers/hal/serial-queue.js';
import { fileDigest } from './file-digest.js';
import type { LogRecovery, MeasurementLog } from './measurement-log.js';
import type { MeasurementEvent, MeasurementType } from './measurement.js';

/**
 * What both attesters share: measurements go through the log into its register (the TPM's PCR
 * or the software one), and measurements and evidence run on one queue, so that evidence always
 * carries exactly the events its PCR value covers.
 */
export abstract class MeasuringAttester {
  readonly pcr: number;
  protected readonly log: MeasurementLog;
  protected readonly queue = new SerialQueue();

  protected constructor(log: MeasurementLog) {
    this.log = log;
    this.pcr = log.register.pcr;
  }

  get events(): readonly MeasurementEvent[] {
    return this.log.events;
  }

  get recovery(): LogRecovery {
    return this.log.recovery;
  }

  measure(type: MeasurementType, name: string, sha256: string): Promise<MeasurementEvent> {
    return this.queue.push(() => this.log.append(type, name, sha256));
  }

  async measureFile(type: MeasurementType, name: string, file: string): Promise<MeasurementEvent> {
    return this.measure(type, name, await fileDigest(file));
  }
}
