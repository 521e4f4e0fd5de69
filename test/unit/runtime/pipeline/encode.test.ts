import { describe, expect, it } from 'vitest';
import { FOXGLOVE_SCHEMAS } from '../../../../drivers/recording/foxglove-schemas.js';
import { Tensor, floatToHalf } from '../../../../drivers/tensor/tensor.js';
import { EncodeError, candump, payloadKind, stringifyJson, toJsonValue, toMcapJson } from '../../../../runtime/pipeline/encode.js';

const T = 1_700_000_001_234_567_890n;
const image = { width: 2, height: 2, format: 'rgb24' as const, data: Uint8Array.from({ length: 12 }, (_, i) => i * 10) };
const detections = {
  boxes: [
    { x: 10, y: 20, width: 30, height: 40, score: 0.97, label: 'face', keypoints: [{ x: 15, y: 25 }, { x: 16, y: 26 }] },
    { x: 100, y: 50, width: 20, height: 20, score: 0.814 },
    { x: 0, y: 0, width: 5, height: 5, score: 0.5, classId: 3 },
  ],
  imageWidth: 640,
  imageHeight: 480,
};

describe('payloadKind', () => {
  it('tells the payload families apart by shape', () => {
    expect(payloadKind(image)).toBe('image');
    expect(payloadKind({ sampleRate: 16000, channels: 1, samples: new Float32Array(4) })).toBe('audio');
    expect(payloadKind({ frameId: 'lidar', count: 1, xyz: new Float32Array(3) })).toBe('pointcloud');
    expect(payloadKind({ latitude: 52.5, longitude: 13.4 })).toBe('gnss');
    expect(payloadKind({ interface: 'can0', id: 0x123, extended: false, data: new Uint8Array(2) })).toBe('can');
    expect(payloadKind(detections)).toBe('detections');
    expect(payloadKind(Tensor.zeros('float32', [2]))).toBe('tensor');
    expect(payloadKind({ boxes: Tensor.zeros('float32', [1, 4]), scores: Tensor.zeros('float32', [1]) })).toBe('tensors');
    expect(payloadKind({ width: 2, height: 2, format: 'toString', data: new Uint8Array(4) })).toBe('json');
    expect(payloadKind({})).toBe('json');
    expect(payloadKind([1, 2])).toBe('json');
    expect(payloadKind('text')).toBe('json');
  });
});

describe('toJsonValue', () => {
  it('turns tensors into { dtype, shape, data } without losing int64 digits', () => {
    expect(toJsonValue(new Tensor('float32', [2, 2], Float32Array.of(1, 2.5, Number.NaN, Number.POSITIVE_INFINITY)))).toEqual({ dtype: 'float32', shape: [2, 2], data: [1, 2.5, null, null] });
    expect(toJsonValue(new Tensor('int64', [2], BigInt64Array.of(9007199254740993n, -1n)))).toEqual({ dtype: 'int64', shape: [2], data: ['9007199254740993', '-1'] });
    expect(toJsonValue(new Tensor('float16', [2], Uint16Array.of(floatToHalf(0.5), floatToHalf(-2))))).toEqual({ dtype: 'float16', shape: [2], data: [0.5, -2] });
    expect(toJsonValue(new Tensor('bool', [3], Uint8Array.of(1, 0, 1)))).toEqual({ dtype: 'bool', shape: [3], data: [true, false, true] });
  });

  it('encodes bytes as base64, other typed arrays as numbers, bigints and Maps', () => {
    expect(toJsonValue({ id: 7n, raw: Uint8Array.of(1, 2, 3), f: Float32Array.of(0.5), m: new Map([['a', 1]]), s: new Set([1]), u: undefined, fn: () => 1 })).toEqual({
      id: '7',
      raw: 'AQID',
      f: [0.5],
      m: { a: 1 },
      s: [1],
    });
    expect(stringifyJson(image)).toBe('{"width":2,"height":2,"format":"rgb24","data":"AAoUHigyPEZQWmRu"}');
  });

  it('refuses cycles with EAI_SINK_ENCODE, but not shared references', () => {
    const loop: Record<string, unknown> = { a: 1 };
    loop['self'] = loop;
    expect(() => toJsonValue(loop)).toThrow(EncodeError);
    expect(() => toJsonValue(loop)).toThrow(expect.objectContaining({ code: 'EAI_SINK_ENCODE' }) as Error);
    const shared = { x: 1 };
    expect(toJsonValue({ a: shared, b: shared })).toEqual({ a: { x: 1 }, b: { x: 1 } });
  });
});

describe('toMcapJson', () => {
  it('images become foxglove.RawImage with base64 rows and the sensor time', () => {
    const out = toMcapJson(image, T, 'camera');
    expect(out.schema?.name).toBe('foxglove.RawImage');
    expect(out.schema?.encoding).toBe('jsonschema');
    expect(out.message).toEqual({ timestamp: { sec: 1_700_000_001, nsec: 234_567_890 }, frame_id: 'camera', width: 2, height: 2, encoding: 'rgb8', step: 6, data: Buffer.from(image.data).toString('base64') });
    conforms(out.message, FOXGLOVE_SCHEMAS['foxglove.RawImage']);
    expect((toMcapJson({ ...image, format: 'gray8' }, T, 'c').message as { encoding: string }).encoding).toBe('mono8');
    expect(() => toMcapJson({ ...image, data: new Uint8Array(5) }, T, 'camera')).toThrow(expect.objectContaining({ code: 'EAI_SINK_ENCODE' }) as Error);
  });

  it('point clouds become foxglove.PointCloud: packed little-endian x, y, z float32 and uint8 intensity', () => {
    const cloud = { frameId: 'velodyne', count: 2, xyz: Float32Array.of(1, 2, 3, -4, 5.5, 6), intensity: Uint8Array.of(7, 200) };
    const out = toMcapJson(cloud, T, 'lidar');
    const msg = out.message as { point_stride: number; fields: unknown; data: string; frame_id: string };
    expect(out.schema?.name).toBe('foxglove.PointCloud');
    expect(msg.frame_id).toBe('velodyne');
    expect(msg.point_stride).toBe(13);
    expect(msg.fields).toEqual([{ name: 'x', offset: 0, type: 7 }, { name: 'y', offset: 4, type: 7 }, { name: 'z', offset: 8, type: 7 }, { name: 'intensity', offset: 12, type: 1 }]);
    const bytes = Buffer.from(msg.data, 'base64');
    expect(bytes.length).toBe(26);
    expect([bytes.readFloatLE(0), bytes.readFloatLE(4), bytes.readFloatLE(8), bytes.readUInt8(12)]).toEqual([1, 2, 3, 7]);
    expect([bytes.readFloatLE(13), bytes.readFloatLE(17), bytes.readFloatLE(21), bytes.readUInt8(25)]).toEqual([-4, 5.5, 6, 200]);
    conforms(out.message, FOXGLOVE_SCHEMAS['foxglove.PointCloud']);
  });

  it('GNSS fixes become foxglove.LocationFix without invented covariance', () => {
    const out = toMcapJson({ latitude: 52.520008, longitude: 13.404954, altitude: 34, hdop: 0.9, satellites: 9 }, T, 'gps');
    expect(out.schema?.name).toBe('foxglove.LocationFix');
    expect(out.message).toMatchObject({ frame_id: 'gps', latitude: 52.520008, longitude: 13.404954, altitude: 34, position_covariance_type: 0 });
    conforms(out.message, FOXGLOVE_SCHEMAS['foxglove.LocationFix']);
  });

  it('detections become foxglove.ImageAnnotations: a box outline, keypoints and a label each', () => {
    const out = toMcapJson(detections, T, 'camera');
    const msg = out.message as { points: { type: number; points: unknown }[]; labels: { text: string; position: unknown }[] };
    expect(out.schema?.name).toBe('foxglove.ImageAnnotations');
    expect(msg.points.map((p) => p.type)).toEqual([2, 1, 2, 2]);
    expect(msg.points[0]?.points).toEqual([{ x: 10, y: 20 }, { x: 40, y: 20 }, { x: 40, y: 60 }, { x: 10, y: 60 }]);
    expect(msg.points[1]?.points).toEqual([{ x: 15, y: 25 }, { x: 16, y: 26 }]);
    expect(msg.labels.map((l) => l.text)).toEqual(['face 0.97', '0.81', 'class 3 0.50']);
    conforms(out.message, FOXGLOVE_SCHEMAS['foxglove.ImageAnnotations']);
    expect(() => toMcapJson({ ...detections, boxes: [{ x: Number.NaN, y: 0, width: 1, height: 1, score: 1 }] }, T, 'c')).toThrow(EncodeError);
  });

  it('audio becomes foxglove.RawAudio as clamped 16-bit PCM', () => {
    const out = toMcapJson({ sampleRate: 16000, channels: 1, samples: Float32Array.of(0, 0.5, -1, 2) }, T, 'mic');
    const msg = out.message as { data: string; format: string; sample_rate: number; number_of_channels: number };
    expect(out.schema?.name).toBe('foxglove.RawAudio');
    expect([msg.format, msg.sample_rate, msg.number_of_channels]).toEqual(['pcm-s16', 16000, 1]);
    const pcm = Buffer.from(msg.data, 'base64');
    expect([0, 2, 4, 6].map((o) => pcm.readInt16LE(o))).toEqual([0, 16384, -32767, 32767]);
    conforms(out.message, FOXGLOVE_SCHEMAS['foxglove.RawAudio']);
  });

  it('tensors carry the aios.Tensor schema; other values are schemaless JSON', () => {
    const t = toMcapJson(new Tensor('int32', [3], Int32Array.of(1, 2, 3)), T, 'x');
    expect(t.schema?.name).toBe('aios.Tensor');
    expect(JSON.parse(t.schema?.data ?? '')).toMatchObject({ title: 'aios.Tensor' });
    expect(t.message).toEqual({ dtype: 'int32', shape: [3], data: [1, 2, 3] });
    expect(toMcapJson({ classes: [{ label: 'cat', score: 0.9 }] }, T, 'x')).toEqual({ schema: null, message: { classes: [{ label: 'cat', score: 0.9 }] } });
  });
});

it('candump writes CAN frames as can-utils does', () => {
  expect(candump({ interface: 'can0', id: 0x123, extended: false, data: Uint8Array.of(0xde, 0xad, 0xbe, 0xef) })).toBe('123#DEADBEEF');
  expect(candump({ interface: 'can0', id: 0x1abcdef, extended: true, data: Uint8Array.of(1) })).toBe('01ABCDEF#01');
});

/**
 * A small JSON Schema check for the keywords our schemas use (type, properties, items, oneOf of
 * consts): every field a message has is declared with a matching type. Foxglove reads fields by
 * name, so a misspelt or mistyped field would silently not show.
 */
function conforms(value: unknown, schema: object, where = '$'): void {
  const s = schema as { type?: string; properties?: Record<string, object>; items?: object; oneOf?: { const: unknown }[] };
  if (s.oneOf !== undefined) {
    expect(s.oneOf.map((o) => o.const), where).toContain(value);
    return;
  }
  const type = Array.isArray(value) ? 'array' : value === null ? 'null' : typeof value;
  if (s.type === 'integer') expect(Number.isInteger(value), `${where} is an integer`).toBe(true);
  else expect(type, where).toBe(s.type);
  if (s.type === 'object' && s.properties !== undefined) {
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      const sub = s.properties[k];
      expect(sub, `${where}.${k} is declared`).toBeDefined();
      if (sub !== undefined) conforms(v, sub, `${where}.${k}`);
    }
  }
  if (s.type === 'array' && s.items !== undefined) (value as unknown[]).forEach((v, i) => conforms(v, s.items as object, `${where}[${i}]`));
}
