import { AiosError } from '../../drivers/errors.js';
import {
  FOXGLOVE_SCHEMAS,
  NumericType,
  PointsAnnotationType,
  foxgloveTime,
  type FoxgloveColor,
  type FoxgloveImageAnnotations,
  type FoxgloveLocationFix,
  type FoxglovePointCloud,
  type FoxgloveRawAudio,
  type FoxgloveRawImage,
  type FoxgloveSchemaName,
  type FoxgloveTime,
} from '../../drivers/recording/foxglove-schemas.js';
import { PIXEL_CHANNELS, type AudioFrame, type CanFrame, type GnssFix, type ImageFrame, type PixelFormat, type PointCloud } from '../../drivers/sensors/types.js';
import { DTYPES, halfToFloat, type DType, type TensorData } from '../../drivers/tensor/tensor.js';
import type { Detection, Detections } from './payloads.js';

/**
 * Turning pipeline payloads into JSON: the one encoding every sink shares, so a message reads the
 * same in a JSON-lines file, on MQTT and in an MCAP recording.
 *
 * - `toJsonValue`: a faithful JSON form. Tensors become `{ dtype, shape, data }` (numbers;
 *   int64/uint64 as decimal strings so no digit is lost; float16 decoded; bool as true/false);
 *   byte arrays (Uint8Array) base64 strings; other typed arrays number arrays; bigints decimal
 *   strings; Maps objects; NaN and ±Infinity null (JSON has no spelling for them).
 * - `toMcapJson`: what an MCAP `json` channel records, with the Foxglove schema Foxglove's panels
 *   need: images → foxglove.RawImage, audio → foxglove.RawAudio (pcm-s16), point clouds →
 *   foxglove.PointCloud, GNSS fixes → foxglove.LocationFix, detections →
 *   foxglove.ImageAnnotations (a box outline and a label per detection, keypoints as points),
 *   tensors → aios.Tensor; anything else schemaless JSON.
 */

/** A tensor as JSON. */
export interface TensorJson {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly data: readonly (number | string | boolean | null)[];
}

/** The payload families sinks tell apart (by shape, so copies of classes from another package match too). */
export type PayloadKind = 'image' | 'audio' | 'pointcloud' | 'gnss' | 'can' | 'detections' | 'tensor' | 'tensors' | 'json';

/** An MCAP `json` message: its body and the schema its channel is registered with (null: schemaless). */
export interface McapJson {
  readonly schema: { readonly name: string; readonly encoding: 'jsonschema'; readonly data: string } | null;
  readonly message: unknown;
}

/** A payload a sink cannot turn into JSON (cycles, a malformed frame). Code `EAI_SINK_ENCODE`. */
export class EncodeError extends AiosError {}

/** Which payload family `value` belongs to. */
export function payloadKind(value: unknown): PayloadKind {
  if (typeof value !== 'object' || value === null) return 'json';
  const v = value as Record<string, unknown>;
  if (isTensor(v)) return 'tensor';
  if (typeof v['width'] === 'number' && typeof v['height'] === 'number' && typeof v['format'] === 'string' && Object.hasOwn(PIXEL_CHANNELS, v['format']) && v['data'] instanceof Uint8Array) return 'image';
  if (typeof v['sampleRate'] === 'number' && typeof v['channels'] === 'number' && v['samples'] instanceof Float32Array) return 'audio';
  if (typeof v['frameId'] === 'string' && typeof v['count'] === 'number' && v['xyz'] instanceof Float32Array) return 'pointcloud';
  if (typeof v['interface'] === 'string' && typeof v['id'] === 'number' && typeof v['extended'] === 'boolean' && v['data'] instanceof Uint8Array) return 'can';
  if (Array.isArray(v['boxes']) && typeof v['imageWidth'] === 'number' && typeof v['imageHeight'] === 'number') return 'detections';
  if (typeof v['latitude'] === 'number' && typeof v['longitude'] === 'number') return 'gnss';
  const entries = Object.values(v);
  if (!Array.isArray(value) && entries.length > 0 && entries.every((e) => typeof e === 'object' && e !== null && isTensor(e as Record<string, unknown>))) return 'tensors';
  return 'json';
}

/**
 * The faithful JSON form of any payload (see the module comment for the rules).
 * @throws EncodeError `EAI_SINK_ENCODE` for cyclic data.
 */
export function toJsonValue(value: unknown): unknown {
  return walk(value, new Set());
}

/** `JSON.stringify(toJsonValue(value))`. @throws EncodeError `EAI_SINK_ENCODE`. */
export function stringifyJson(value: unknown): string {
  return JSON.stringify(toJsonValue(value)) ?? 'null';
}

/**
 * The MCAP `json` message for a payload taken at `sensorTimeNs`, in frame `frameId` (the source
 * node's name is a good frame id: it names the sensor).
 * @throws EncodeError `EAI_SINK_ENCODE` when a known payload is malformed (too little pixel data,
 *   fewer coordinates than points) or the data is cyclic.
 */
export function toMcapJson(value: unknown, sensorTimeNs: bigint, frameId: string): McapJson {
  const timestamp = foxgloveTime(sensorTimeNs);
  switch (payloadKind(value)) {
    case 'image':
      return foxglove('foxglove.RawImage', rawImage(value as ImageFrame, timestamp, frameId));
    case 'audio':
      return foxglove('foxglove.RawAudio', rawAudio(value as AudioFrame, timestamp));
    case 'pointcloud':
      return foxglove('foxglove.PointCloud', pointCloud(value as PointCloud, timestamp));
    case 'gnss':
      return foxglove('foxglove.LocationFix', locationFix(value as GnssFix, timestamp, frameId));
    case 'detections':
      return foxglove('foxglove.ImageAnnotations', imageAnnotations(value as Detections, timestamp));
    case 'tensor':
      return { schema: TENSOR_SCHEMA, message: toJsonValue(value) };
    default:
      return { schema: null, message: toJsonValue(value) };
  }
}

/** What a detection is called: its label, else `class N`, else nothing. */
export function detectionName(d: Pick<Detection, 'label' | 'classId'>): string | undefined {
  return d.label ?? (d.classId === undefined ? undefined : `class ${d.classId}`);
}

/** CAN data as candump writes it: `123#DEADBEEF` (extended ids with 8 hex digits, FD with `##`). */
export function candump(frame: CanFrame): string {
  const id = frame.id.toString(16).toUpperCase().padStart(frame.extended ? 8 : 3, '0');
  return `${id}${frame.fd === true ? '##0' : '#'}${Buffer.from(frame.data).toString('hex').toUpperCase()}`;
}

const TENSOR_SCHEMA = {
  name: 'aios.Tensor',
  encoding: 'jsonschema',
  data: JSON.stringify({
    title: 'aios.Tensor',
    description: 'An n-dimensional array in row-major (C) order',
    type: 'object',
    properties: {
      dtype: { type: 'string', enum: DTYPES },
      shape: { type: 'array', items: { type: 'integer', minimum: 0 } },
      data: { type: 'array', description: 'elements in C order; int64/uint64 as decimal strings, NaN/Infinity as null', items: { type: ['number', 'string', 'boolean', 'null'] } },
    },
  }),
} as const;

const SCHEMA_TEXT = new Map<string, string>();

function foxglove(name: FoxgloveSchemaName, message: unknown): McapJson {
  let data = SCHEMA_TEXT.get(name);
  if (data === undefined) SCHEMA_TEXT.set(name, (data = JSON.stringify(FOXGLOVE_SCHEMAS[name])));
  return { schema: { name, encoding: 'jsonschema', data }, message };
}

const RAW_ENCODING: Readonly<Record<PixelFormat, string>> = { rgb24: 'rgb8', bgr24: 'bgr8', rgba: 'rgba8', gray8: 'mono8' };

function rawImage(frame: ImageFrame, timestamp: FoxgloveTime, frameId: string): FoxgloveRawImage {
  const step = frame.width * PIXEL_CHANNELS[frame.format];
  if (frame.data.byteLength < step * frame.height) {
    throw new EncodeError('EAI_SINK_ENCODE', `An image of ${frame.width}×${frame.height} ${frame.format} needs ${step * frame.height} bytes, but its data holds ${frame.data.byteLength}.`);
  }
  return { timestamp, frame_id: frameId, width: frame.width, height: frame.height, encoding: RAW_ENCODING[frame.format], step, data: base64(frame.data.subarray(0, step * frame.height)) };
}

function rawAudio(frame: AudioFrame, timestamp: FoxgloveTime): FoxgloveRawAudio {
  // Foxglove plays 16-bit PCM; samples are [-1, 1] floats, clamped so clipping does not wrap.
  const pcm = new DataView(new ArrayBuffer(frame.samples.length * 2));
  frame.samples.forEach((s, i) => pcm.setInt16(i * 2, Math.round(Math.max(-1, Math.min(1, Number.isNaN(s) ? 0 : s)) * 32767), true));
  return { timestamp, data: base64(new Uint8Array(pcm.buffer)), format: 'pcm-s16', sample_rate: frame.sampleRate, number_of_channels: frame.channels };
}

function pointCloud(cloud: PointCloud, timestamp: FoxgloveTime): FoxglovePointCloud {
  if (cloud.xyz.length < cloud.count * 3) throw new EncodeError('EAI_SINK_ENCODE', `A point cloud of ${cloud.count} points needs ${cloud.count * 3} coordinates, but xyz holds ${cloud.xyz.length}.`);
  const fields: FoxglovePointCloud['fields'][number][] = [
    { name: 'x', offset: 0, type: NumericType.FLOAT32 },
    { name: 'y', offset: 4, type: NumericType.FLOAT32 },
    { name: 'z', offset: 8, type: NumericType.FLOAT32 },
  ];
  const extras = (['intensity', 'ring'] as const).filter((k) => cloud[k] !== undefined && (cloud[k]?.length ?? 0) >= cloud.count);
  extras.forEach((name, i) => fields.push({ name, offset: 12 + i, type: NumericType.UINT8 }));
  const stride = 12 + extras.length;
  const out = new DataView(new ArrayBuffer(stride * cloud.count));
  for (let p = 0; p < cloud.count; p++) {
    for (let c = 0; c < 3; c++) out.setFloat32(p * stride + c * 4, cloud.xyz[p * 3 + c] ?? 0, true);
    extras.forEach((name, i) => out.setUint8(p * stride + 12 + i, cloud[name]?.[p] ?? 0));
  }
  return {
    timestamp,
    frame_id: cloud.frameId,
    pose: { position: { x: 0, y: 0, z: 0 }, orientation: { x: 0, y: 0, z: 0, w: 1 } },
    point_stride: stride,
    fields,
    data: base64(new Uint8Array(out.buffer)),
  };
}

function locationFix(fix: GnssFix, timestamp: FoxgloveTime, frameId: string): FoxgloveLocationFix {
  // A GNSS fix carries HDOP, not a covariance: claiming one would invent precision we do not have.
  return { timestamp, frame_id: frameId, latitude: fix.latitude, longitude: fix.longitude, altitude: fix.altitude ?? 0, position_covariance: [0, 0, 0, 0, 0, 0, 0, 0, 0], position_covariance_type: 0 };
}

const BOX_COLOR: FoxgloveColor = { r: 0.1, g: 0.9, b: 0.3, a: 1 };
const KEYPOINT_COLOR: FoxgloveColor = { r: 1, g: 0.6, b: 0, a: 1 };
const CLEAR: FoxgloveColor = { r: 0, g: 0, b: 0, a: 0 };
const LABEL_BACKGROUND: FoxgloveColor = { r: 0, g: 0, b: 0, a: 0.6 };
const WHITE: FoxgloveColor = { r: 1, g: 1, b: 1, a: 1 };

function imageAnnotations(detections: Detections, timestamp: FoxgloveTime): FoxgloveImageAnnotations {
  const points: FoxgloveImageAnnotations['points'][number][] = [];
  const labels: FoxgloveImageAnnotations['labels'][number][] = [];
  for (const [i, box] of detections.boxes.entries()) {
    if (![box.x, box.y, box.width, box.height].every(Number.isFinite)) throw new EncodeError('EAI_SINK_ENCODE', `Detection ${i} has a box that is not four finite numbers: ${JSON.stringify(box)}.`);
    const { x, y, width: w, height: h } = box;
    points.push({ timestamp, type: PointsAnnotationType.LINE_LOOP, points: [{ x, y }, { x: x + w, y }, { x: x + w, y: y + h }, { x, y: y + h }], outline_color: BOX_COLOR, outline_colors: [], fill_color: CLEAR, thickness: 2 });
    const keypoints = (box.keypoints ?? []).map((k) => ({ x: k.x, y: k.y }));
    if (keypoints.length > 0) points.push({ timestamp, type: PointsAnnotationType.POINTS, points: keypoints, outline_color: KEYPOINT_COLOR, outline_colors: [], fill_color: KEYPOINT_COLOR, thickness: 4 });
    const name = detectionName(box);
    const text = `${name ?? ''}${name === undefined ? '' : ' '}${Number.isFinite(box.score) ? box.score.toFixed(2) : '?'}`;
    labels.push({ timestamp, position: { x, y: Math.max(0, y - 2) }, text, font_size: 12, text_color: WHITE, background_color: LABEL_BACKGROUND });
  }
  return { circles: [], points, labels };
}

function isTensor(v: Record<string, unknown>): boolean {
  return typeof v['dtype'] === 'string' && (DTYPES as readonly string[]).includes(v['dtype']) && Array.isArray(v['shape']) && ArrayBuffer.isView(v['data']);
}

function tensorJson(dtype: DType, shape: readonly number[], data: TensorData): TensorJson {
  let values: (number | string | boolean | null)[];
  if (dtype === 'float16') values = Array.from(data as Uint16Array, (b) => finite(halfToFloat(b)));
  else if (dtype === 'int64' || dtype === 'uint64') values = Array.from(data as BigInt64Array, (b) => b.toString());
  else if (dtype === 'bool') values = Array.from(data as Uint8Array, (b) => b !== 0);
  else values = Array.from(data as Float32Array, finite);
  return { dtype, shape: [...shape], data: values };
}

function finite(n: number): number | null {
  return Number.isFinite(n) ? n : null;
}

function walk(value: unknown, ancestors: Set<object>): unknown {
  switch (typeof value) {
    case 'number':
      return finite(value);
    case 'bigint':
      return value.toString();
    case 'string':
    case 'boolean':
      return value;
    case 'undefined':
    case 'function':
    case 'symbol':
      return undefined;
  }
  if (value === null) return null;
  const object = value as object;
  if (ancestors.has(object)) throw new EncodeError('EAI_SINK_ENCODE', 'The payload refers to itself (a cycle); JSON cannot hold it. Emit plain data from the stage.');
  ancestors.add(object);
  try {
    const v = object as Record<string, unknown>;
    if (isTensor(v)) return tensorJson(v['dtype'] as DType, v['shape'] as number[], v['data'] as TensorData);
    if (object instanceof Uint8Array) return base64(object);
    if (object instanceof BigInt64Array || object instanceof BigUint64Array) return Array.from(object, (b) => b.toString());
    if (ArrayBuffer.isView(object) && !(object instanceof DataView)) return Array.from(object as Float64Array, finite);
    if (object instanceof ArrayBuffer) return base64(new Uint8Array(object));
    if (object instanceof Date) return Number.isNaN(object.getTime()) ? null : object.toISOString();
    if (object instanceof Error) return { name: object.name, message: object.message, ...(typeof v['code'] === 'string' ? { code: v['code'] } : {}) };
    if (Array.isArray(object)) return object.map((e) => walk(e, ancestors) ?? null);
    if (object instanceof Set) return [...object].map((e) => walk(e, ancestors) ?? null);
    const entries = object instanceof Map ? [...object.entries()].map(([k, e]) => [String(k), e] as const) : Object.entries(v);
    const out: Record<string, unknown> = {};
    for (const [k, e] of entries) {
      const j = walk(e, ancestors);
      if (j !== undefined) out[k] = j;
    }
    return out;
  } finally {
    ancestors.delete(object);
  }
}

function base64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}
