import { AiosError } from '../../drivers/errors.js';

/**
 * Fleet protocol failures: a name that cannot be a topic level, a message that does not decode,
 * a command the device must not obey (codes `EAI_FLEET_*`, docs/errors.md). A device answers a
 * refused command with a REJECTED ack carrying the code; it never crashes on one.
 */
export class FleetError extends AiosError {}
