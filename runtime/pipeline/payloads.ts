/**
 * Values that flow between pipeline stages and that sinks know how to record, beyond what the
 * sensors produce (drivers/sensors/types.ts) and tensors. Plain JSON-shaped data, so any sink can
 * write them as they are.
 */

/** A point of a detection, in image pixels. */
export interface Keypoint {
  readonly x: number;
  readonly y: number;
  readonly score?: number;
  readonly name?: string;
}

/** One detected object: its box in image pixels (top-left corner and size) and how sure the model is. */
export interface Detection {
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
  /** 0..1. */
  readonly score: number;
  readonly classId?: number;
  readonly label?: string;
  readonly keypoints?: readonly Keypoint[];
}

/**
 * The value on a `detections` port: boxes best first, in pixels of an `imageWidth × imageHeight`
 * image (the model's input unless the decoder was told the size of the frame it came from).
 * Plain JSON, so sinks record it as it is.
 */
export interface Detections {
  readonly boxes: readonly Detection[];
  readonly imageWidth: number;
  readonly imageHeight: number;
}
