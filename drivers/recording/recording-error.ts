import { AiosError } from '../errors.js';

/**
 * A recording that cannot be written: its file cannot be created, a write to it failed (disk full,
 * device gone), it was written to after `close()`, or its path pattern is malformed. Codes:
 * `EAI_RECORDING_PATH`, `EAI_RECORDING_EXISTS`, `EAI_RECORDING_OPEN`, `EAI_RECORDING_WRITE`,
 * `EAI_RECORDING_CLOSED` (docs/errors.md). `details.path` names the file where there is one.
 */
export class RecordingError extends AiosError {}
