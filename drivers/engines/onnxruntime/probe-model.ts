/**
 * The smallest real ONNX model: y = Relu(x), x and y float32[4]. Used to find out whether an
 * execution provider can actually create a session here (WebGPU needs a Vulkan adapter that Dawn
 * accepts, which no file check can tell), without shipping a model file inside `drivers/`.
 *
 * Encoded by hand as protobuf (ModelProto, onnx.proto3): field numbers are from the ONNX spec.
 */
export function reluModel(): Uint8Array {
  const dim = message([varintField(1, 4)]); // Dimension.dim_value
  const shape = message([bytesField(1, dim)]); // TensorShapeProto.dim
  const tensorType = message([varintField(1, 1 /* FLOAT */), bytesField(2, shape)]);
  const type = message([bytesField(1, tensorType)]); // TypeProto.tensor_type
  const valueInfo = (name: string): Uint8Array => message([stringField(1, name), bytesField(2, type)]);
  const node = message([stringField(1, 'x'), stringField(2, 'y'), stringField(3, 'relu'), stringField(4, 'Relu')]);
  const graph = message([bytesField(1, node), stringField(2, 'probe'), bytesField(11, valueInfo('x')), bytesField(12, valueInfo('y'))]);
  const opset = message([stringField(1, ''), varintField(2, 13)]);
  return message([varintField(1, 8 /* IR version 8 */), stringField(2, 'aios'), bytesField(7, graph), bytesField(8, opset)]);
}

function message(fields: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(fields.reduce((n, f) => n + f.length, 0));
  let at = 0;
  for (const f of fields) {
    out.set(f, at);
    at += f.length;
  }
  return out;
}

function varint(value: number): number[] {
  const bytes: number[] = [];
  let v = value;
  while (v > 0x7f) {
    bytes.push((v & 0x7f) | 0x80);
    v = Math.floor(v / 128);
  }
  bytes.push(v);
  return bytes;
}

function varintField(field: number, value: number): Uint8Array {
  return Uint8Array.from([...varint(field << 3), ...varint(value)]);
}

function bytesField(field: number, payload: Uint8Array): Uint8Array {
  return message([Uint8Array.from([...varint((field << 3) | 2), ...varint(payload.length)]), payload]);
}

function stringField(field: number, value: string): Uint8Array {
  return bytesField(field, new TextEncoder().encode(value));
}
