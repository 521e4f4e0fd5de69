/**
 * JSON Schemas of the Foxglove message types aios records, written from Foxglove's public schema
 * definitions (docs.foxglove.dev, "Message schemas"). Foxglove recognises a channel by the schema
 * *name* (`foxglove.RawImage`, ...) with `jsonschema` schema encoding and `json` message encoding;
 * field names and the JSON conventions below are what its panels read:
 *
 * - times are `{ sec, nsec }` objects;
 * - `bytes` fields are base64 strings (`contentEncoding: base64`);
 * - enums are their integer values.
 *
 * Only the fields aios fills are typed in the TypeScript interfaces; the schemas list every field
 * the Foxglove type has, so a reader sees the full definition.
 */

/** `{ sec, nsec }` as Foxglove's JSON encoding writes a time. */
export interface FoxgloveTime {
  readonly sec: number;
  readonly nsec: number;
}

export interface FoxgloveRawImage {
  readonly timestamp: FoxgloveTime;
  readonly frame_id: string;
  readonly width: number;
  readonly height: number;
  /** `rgb8`, `bgr8`, `rgba8`, `mono8`, ... */
  readonly encoding: string;
  /** Bytes per row. */
  readonly step: number;
  /** base64 */
  readonly data: string;
}

/** foxglove.NumericType */
export const NumericType = { UINT8: 1, INT8: 2, UINT16: 3, INT16: 4, UINT32: 5, INT32: 6, FLOAT32: 7, FLOAT64: 8 } as const;

export interface FoxglovePackedElementField {
  readonly name: string;
  readonly offset: number;
  readonly type: (typeof NumericType)[keyof typeof NumericType];
}

export interface FoxglovePointCloud {
  readonly timestamp: FoxgloveTime;
  readonly frame_id: string;
  readonly pose: { readonly position: { x: number; y: number; z: number }; readonly orientation: { x: number; y: number; z: number; w: number } };
  readonly point_stride: number;
  readonly fields: readonly FoxglovePackedElementField[];
  /** base64, little-endian */
  readonly data: string;
}

export interface FoxgloveLocationFix {
  readonly timestamp: FoxgloveTime;
  readonly frame_id: string;
  readonly latitude: number;
  readonly longitude: number;
  readonly altitude: number;
  /** 3×3 ENU, row-major, m². */
  readonly position_covariance: readonly number[];
  /** 0 unknown, 1 approximated, 2 diagonal known, 3 known */
  readonly position_covariance_type: 0 | 1 | 2 | 3;
}

export interface FoxgloveRawAudio {
  readonly timestamp: FoxgloveTime;
  /** base64 of interleaved little-endian samples */
  readonly data: string;
  /** Foxglove plays `pcm-s16`. */
  readonly format: 'pcm-s16';
  readonly sample_rate: number;
  readonly number_of_channels: number;
}

export interface FoxgloveColor {
  readonly r: number;
  readonly g: number;
  readonly b: number;
  readonly a: number;
}

export interface FoxglovePoint2 {
  readonly x: number;
  readonly y: number;
}

/** foxglove.PointsAnnotationType */
export const PointsAnnotationType = { POINTS: 1, LINE_LOOP: 2, LINE_STRIP: 3, LINE_LIST: 4 } as const;

export interface FoxglovePointsAnnotation {
  readonly timestamp: FoxgloveTime;
  readonly type: (typeof PointsAnnotationType)[keyof typeof PointsAnnotationType];
  readonly points: readonly FoxglovePoint2[];
  readonly outline_color: FoxgloveColor;
  readonly outline_colors: readonly FoxgloveColor[];
  readonly fill_color: FoxgloveColor;
  readonly thickness: number;
}

export interface FoxgloveTextAnnotation {
  readonly timestamp: FoxgloveTime;
  readonly position: FoxglovePoint2;
  readonly text: string;
  readonly font_size: number;
  readonly text_color: FoxgloveColor;
  readonly background_color: FoxgloveColor;
}

export interface FoxgloveImageAnnotations {
  readonly circles: readonly never[];
  readonly points: readonly FoxglovePointsAnnotation[];
  readonly labels: readonly FoxgloveTextAnnotation[];
}

const time = (description: string): object => ({
  type: 'object',
  title: 'time',
  description,
  properties: { sec: { type: 'integer', minimum: 0 }, nsec: { type: 'integer', minimum: 0, maximum: 999_999_999 } },
});
const number = (description: string): object => ({ type: 'number', description });
const uint = (description: string): object => ({ type: 'integer', minimum: 0, description });
const string = (description: string): object => ({ type: 'string', description });
const bytes = (description: string): object => ({ type: 'string', contentEncoding: 'base64', description });
const enumeration = (title: string, description: string, values: Readonly<Record<string, number>>): object => ({
  title,
  description,
  oneOf: Object.entries({ UNKNOWN: 0, ...values }).map(([name, value]) => ({ title: name, const: value })),
});
const object = (title: string, description: string, properties: Record<string, object>): object => ({ title, description, type: 'object', properties });
const color = (description: string): object => object('foxglove.Color', description, { r: number('red, 0 to 1'), g: number('green, 0 to 1'), b: number('blue, 0 to 1'), a: number('alpha, 0 to 1') });
const point2 = (description: string): object => object('foxglove.Point2', description, { x: number('x, pixels'), y: number('y, pixels') });
const xyz = { x: number('x'), y: number('y'), z: number('z') };

const RAW_IMAGE = object('foxglove.RawImage', 'A raw (uncompressed) image', {
  timestamp: time('Time the image was taken'),
  frame_id: string('Frame of reference of the camera'),
  width: uint('Width in pixels'),
  height: uint('Height in pixels'),
  encoding: string('Pixel encoding: rgb8, bgr8, rgba8, bgra8, mono8, mono16, 8UC1, 8UC3, 16UC1, 32FC1, bayer_*, uyvy/yuv422, yuyv/yuv422_yuy2'),
  step: uint('Bytes per row'),
  data: bytes('Pixel data, row by row'),
});

const POINT_CLOUD = object('foxglove.PointCloud', 'Points with per-point fields packed in a byte array', {
  timestamp: time('Time of the scan'),
  frame_id: string('Frame of reference'),
  pose: object('foxglove.Pose', 'Origin of the cloud in the frame', {
    position: object('foxglove.Vector3', 'Position', xyz),
    orientation: object('foxglove.Quaternion', 'Orientation', { ...xyz, w: number('w') }),
  }),
  point_stride: uint('Bytes from one point to the next in data'),
  fields: {
    type: 'array',
    description: 'Fields of each point in data; x and y (and usually z) are required',
    items: object('foxglove.PackedElementField', 'A field inside each packed element', {
      name: string('Field name'),
      offset: uint('Byte offset inside the element'),
      type: enumeration('foxglove.NumericType', 'Type of the field, little-endian', NumericType),
    }),
  },
  data: bytes('Packed points'),
});

const LOCATION_FIX = object('foxglove.LocationFix', 'A GNSS position fix', {
  frame_id: string('Frame of the receiver'),
  timestamp: time('Time of the fix'),
  latitude: number('Latitude, degrees'),
  longitude: number('Longitude, degrees'),
  altitude: number('Altitude, metres'),
  position_covariance: { type: 'array', items: { type: 'number' }, minItems: 9, maxItems: 9, description: 'Position covariance, m², ENU, row-major' },
  position_covariance_type: enumeration('foxglove.PositionCovarianceType', 'How the covariance is known', { APPROXIMATED: 1, DIAGONAL_KNOWN: 2, KNOWN: 3 }),
});

const RAW_AUDIO = object('foxglove.RawAudio', 'A block of uncompressed audio', {
  timestamp: time('Time of the first sample'),
  data: bytes('Interleaved little-endian samples'),
  format: string("Sample format; Foxglove plays 'pcm-s16'"),
  sample_rate: uint('Samples per second per channel'),
  number_of_channels: uint('Channels'),
});

const annotationTime = time('Time of the image annotated');
const IMAGE_ANNOTATIONS = object('foxglove.ImageAnnotations', 'Annotations drawn over a 2D image', {
  circles: {
    type: 'array',
    description: 'Circles',
    items: object('foxglove.CircleAnnotation', 'A circle', {
      timestamp: annotationTime,
      position: point2('Centre'),
      diameter: number('Diameter, pixels'),
      thickness: number('Line thickness, pixels'),
      fill_color: color('Fill colour'),
      outline_color: color('Outline colour'),
    }),
  },
  points: {
    type: 'array',
    description: 'Points, polygons and lines',
    items: object('foxglove.PointsAnnotation', 'Points or lines on the image', {
      timestamp: annotationTime,
      type: enumeration('foxglove.PointsAnnotationType', 'How the points are drawn', PointsAnnotationType),
      points: { type: 'array', items: point2('A point'), description: 'Points, pixels' },
      outline_color: color('Outline colour'),
      outline_colors: { type: 'array', items: color('A colour'), description: 'Per-point (POINTS) or per-segment (LINE_LIST) colours' },
      fill_color: color('Fill colour'),
      thickness: number('Stroke thickness, pixels'),
    }),
  },
  labels: {
    type: 'array',
    description: 'Text labels',
    items: object('foxglove.TextAnnotation', 'A text label', {
      timestamp: annotationTime,
      position: point2('Bottom-left of the text'),
      text: string('Text'),
      font_size: number('Font size, pixels'),
      text_color: color('Text colour'),
      background_color: color('Background colour'),
    }),
  },
});

/** The Foxglove schemas aios writes, by schema name, as JSON Schema objects. */
export const FOXGLOVE_SCHEMAS = {
  'foxglove.RawImage': RAW_IMAGE,
  'foxglove.PointCloud': POINT_CLOUD,
  'foxglove.LocationFix': LOCATION_FIX,
  'foxglove.ImageAnnotations': IMAGE_ANNOTATIONS,
  'foxglove.RawAudio': RAW_AUDIO,
} as const satisfies Record<string, object>;

export type FoxgloveSchemaName = keyof typeof FOXGLOVE_SCHEMAS;

/** `{ sec, nsec }` of a time in ns since the epoch (negative times clamp to 0: Foxglove's are unsigned). */
export function foxgloveTime(ns: bigint): FoxgloveTime {
  const t = ns < 0n ? 0n : ns;
  return { sec: Number(t / 1_000_000_000n), nsec: Number(t % 1_000_000_000n) };
}
