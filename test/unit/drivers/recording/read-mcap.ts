import { readFile } from 'node:fs/promises';
import zlib from 'node:zlib';
import { McapIndexedReader, McapStreamReader, type IReadable } from '@mcap/core';

/** A message read back, with its channel's topic and schema resolved. */
export interface ReadMessage {
  readonly topic: string;
  readonly schemaName: string | undefined;
  readonly messageEncoding: string;
  readonly logTime: bigint;
  readonly publishTime: bigint;
  readonly sequence: number;
  readonly data: Uint8Array;
}

/** A complete file read through its index (summary, chunk indexes, footer): what Foxglove does. */
export async function readIndexed(file: string): Promise<{ reader: McapIndexedReader; messages: ReadMessage[] }> {
  const bytes = await readFile(file);
  const reader = await McapIndexedReader.Initialize({ readable: memoryReadable(bytes) });
  const messages: ReadMessage[] = [];
  for await (const m of reader.readMessages()) {
    const channel = reader.channelsById.get(m.channelId);
    if (channel === undefined) throw new Error(`message on unknown channel ${m.channelId}`);
    messages.push({
      topic: channel.topic,
      schemaName: reader.schemasById.get(channel.schemaId)?.name,
      messageEncoding: channel.messageEncoding,
      logTime: m.logTime,
      publishTime: m.publishTime,
      sequence: m.sequence,
      data: m.data,
    });
  }
  return { reader, messages };
}

/**
 * Reads a file front to back with the stream reader, the way a file cut short by a crash is
 * recovered: every whole record is returned, a torn tail is left unread.
 */
export function readStream(bytes: Uint8Array): { messages: ReadMessage[]; complete: boolean; schemas: Map<number, string> } {
  const reader = new McapStreamReader({ validateCrcs: true });
  reader.append(bytes);
  const channels = new Map<number, { topic: string; schemaId: number; messageEncoding: string }>();
  const schemas = new Map<number, string>();
  const messages: ReadMessage[] = [];
  for (let r = reader.nextRecord(); r !== undefined; r = reader.nextRecord()) {
    if (r.type === 'Schema') schemas.set(r.id, r.name);
    if (r.type === 'Channel') channels.set(r.id, r);
    if (r.type === 'Message') {
      const c = channels.get(r.channelId);
      if (c === undefined) throw new Error(`message on unknown channel ${r.channelId}`);
      messages.push({ topic: c.topic, schemaName: schemas.get(c.schemaId), messageEncoding: c.messageEncoding, logTime: r.logTime, publishTime: r.publishTime, sequence: r.sequence, data: r.data });
    }
  }
  return { messages, complete: reader.done(), schemas };
}

export function json(m: ReadMessage): unknown {
  return JSON.parse(new TextDecoder().decode(m.data));
}

/**
 * Walks the file's records by hand, without @mcap/core, per the MCAP specification: magic at both
 * ends, opcode + u64 length framing, chunk CRCs, the data-section CRC in DataEnd and the summary
 * CRC in the footer. An independent check that what @mcap/core reads back is really MCAP.
 */
export function walkRecords(bytes: Uint8Array): { opcodes: number[]; dataCrcOk: boolean; summaryCrcOk: boolean; chunkCrcsOk: boolean } {
  const magic = [0x89, 0x4d, 0x43, 0x41, 0x50, 0x30, 0x0d, 0x0a];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (!magic.every((b, i) => bytes[i] === b && bytes[bytes.length - 8 + i] === b)) throw new Error('magic missing at start or end');
  const opcodes: number[] = [];
  let at = 8;
  let dataCrcOk = false;
  let chunkCrcsOk = true;
  while (at < bytes.length - 8) {
    const op = view.getUint8(at);
    const len = Number(view.getBigUint64(at + 1, true));
    const body = at + 9;
    opcodes.push(op);
    if (op === 0x06) {
      // Chunk: start, end, uncompressed size, uncompressed crc, compression string, records
      const crc = view.getUint32(body + 24, true);
      const compressionLength = view.getUint32(body + 28, true);
      const recordsLength = Number(view.getBigUint64(body + 32 + compressionLength, true));
      const records = bytes.subarray(body + 40 + compressionLength, body + 40 + compressionLength + recordsLength);
      chunkCrcsOk &&= crc === 0 || zlib.crc32(records) === crc;
    }
    if (op === 0x0f) dataCrcOk = view.getUint32(body, true) === zlib.crc32(bytes.subarray(0, at));
    at = body + len;
  }
  const footerAt = bytes.length - 8 - 29;
  const summaryStart = Number(view.getBigUint64(footerAt + 9, true));
  const summaryCrc = view.getUint32(footerAt + 25, true);
  const summaryCrcOk = zlib.crc32(bytes.subarray(summaryStart, footerAt + 25)) === summaryCrc;
  return { opcodes, dataCrcOk, summaryCrcOk, chunkCrcsOk };
}

function memoryReadable(bytes: Uint8Array): IReadable {
  return {
    size: async () => BigInt(bytes.byteLength),
    read: async (offset, length) => bytes.subarray(Number(offset), Number(offset + length)),
  };
}
