import { AiosError, type AiosErrorOptions } from '../errors.js';

/** The stable codes a sensor raises; each is listed in docs/errors.md. */
export type SensorErrorCode =
  | 'EAI_SENSOR_CONFIG'
  | 'EAI_SENSOR_NOT_FOUND'
  | 'EAI_SENSOR_FFMPEG_MISSING'
  | 'EAI_SENSOR_FFMPEG_EXIT'
  | 'EAI_SENSOR_STREAM_ENDED'
  | 'EAI_SENSOR_TRUNCATED'
  | 'EAI_SENSOR_STALLED';

export interface SensorErrorOptions extends AiosErrorOptions {
  /** Whether opening the sensor again later may succeed. Default true. */
  readonly retryable?: boolean;
}

/**
 * A sensor that cannot deliver: its file or device is missing, the stream dropped, the decoder
 * exited, the data stopped arriving. Thrown from a sensor's message iterator; the caller decides
 * whether to open it again with backoff (`retryable`) or give up (a missing ffmpeg binary or bad
 * options will not fix themselves).
 */
export class SensorError extends AiosError {
  override readonly code: SensorErrorCode;
  readonly retryable: boolean;

  constructor(code: SensorErrorCode, message: string, options: SensorErrorOptions = {}) {
    super(code, message, options);
    this.code = code;
    this.retryable = options.retryable ?? true;
  }
}
