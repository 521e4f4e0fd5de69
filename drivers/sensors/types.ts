/**
 * What sensors produce, independent of pipelines: every message carries the time the sensor
 * says it was taken (`sensorTimeNs`, nanoseconds since the Unix epoch, as in MCAP and ROS) and the
 * monotonic time it reached this process (`arrivalMs`, `performance.now()` milliseconds), so that
 * fusion aligns by sensor time and latency is measured from arrival.
 */
export interface SensorMessage<T = unknown> {
  readonly sensorTimeNs: bigint;
  readonly arrivalMs: number;
  readonly value: T;
}

/**
 * A sensor: messages in time order until the recording ends or `signal` aborts. Live sensors
 * buffer a bounded number of messages internally (dropping the oldest) so a slow reader never
 * grows memory. A failure (device gone, stream dropped, file truncated) is thrown from the
 * iterator as a SensorError; the caller decides whether to retry with backoff.
 */
export interface Sensor<T = unknown> {
  messages(signal: AbortSignal): AsyncIterable<SensorMessage<T>>;
}

/** Pixel layouts aios moves around; 8 bits per channel, rows packed without padding. */
export type PixelFormat = 'rgb24' | 'bgr24' | 'rgba' | 'gray8';

export const PIXEL_CHANNELS: Readonly<Record<PixelFormat, number>> = { rgb24: 3, bgr24: 3, rgba: 4, gray8: 1 };

/**
 * One video frame. `data` may be a view into a SharedArrayBuffer from a frame pool, so a worker
 * thread can read it without a copy; whoever holds the frame must not keep `data` past its use.
 */
export interface ImageFrame {
  readonly width: number;
  readonly height: number;
  readonly format: PixelFormat;
  readonly data: Uint8Array;
}

/** Interleaved PCM samples in [-1, 1]. */
export interface AudioFrame {
  readonly sampleRate: number;
  readonly channels: number;
  readonly samples: Float32Array;
}

/**
 * Points in the sensor frame, metres: `xyz` holds x, y, z per point; `intensity` 0..255;
 * `ring` the laser index (Velodyne) where known.
 */
export interface PointCloud {
  readonly frameId: string;
  readonly count: number;
  readonly xyz: Float32Array;
  readonly intensity?: Uint8Array;
  readonly ring?: Uint8Array;
}

/** A position fix (WGS84), as gpsd and NMEA report it. */
export interface GnssFix {
  readonly latitude: number;
  readonly longitude: number;
  /** Metres above the ellipsoid or mean sea level, as the receiver reports. */
  readonly altitude?: number;
  /** 0 no fix, 1 GPS, 2 DGPS, 4 RTK fixed, 5 RTK float (NMEA GGA quality). */
  readonly quality?: number;
  readonly satellites?: number;
  readonly hdop?: number;
  readonly speedMps?: number;
  readonly courseDeg?: number;
}

/** One CAN or CAN FD frame. */
export interface CanFrame {
  readonly interface: string;
  readonly id: number;
  readonly extended: boolean;
  readonly data: Uint8Array;
  readonly fd?: boolean;
}
