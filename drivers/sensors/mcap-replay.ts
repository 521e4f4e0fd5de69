import { open, type FileHandle } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { MCAP_MAGIC, McapIndexedReader, McapRecordBuilder, McapStreamReader, Opcode, type McapTypes } from '@mcap/core';
import { SensorError } from './errors.js';
import { ReplayClock } from './replay-clock.js';
import type { Sensor, SensorMessage } from './types.js';

/** One recorded message as the `mcap` source emits it. */
export interface McapMessage {
  readonly topic: string;
  /** The channel's schema name ('' for schemaless channels). */
  readonly schemaName: string;
  /** The channel's message encoding: 'json', 'protobuf', 'ros1', 'cdr', ... */
  readonly encoding: string;
  /** The message bytes as recorded; may be a view into a larger chunk buffer. */
  readonly data: Uint8Array;
  /** The parsed message, for JSON channels; absent for other encodings and unparsable JSON. */
  readonly decoded?: unknown;
}

export interface McapReplayOptions {
  /** Replay only these topics; default all. */
  readonly topics?: readonly string[];
  /** 1: original timing from log times (default); 2: twice as fast; 0: as fast as the reader takes them. */
  readonly speed?: number;
  /** Decompressors by chunk compression name ('zstd', 'lz4'), injected as @mcap/core takes them. */
  readonly decompressHandlers?: McapTypes.DecompressHandlers;
}

export interface McapReplayStats {
  /** Which path read the file: the index (complete files), or a scan from the start. */
  readonly reader: 'indexed' | 'stream' | undefined;
  readonly messages: number;
  /** JSON messages that did not parse (emitted without `decoded`). */
  readonly decodeErrors: number;
  /** Messages saved from a chunk cut short at the end of a truncated file. */
  readonly recovered: number;
}

/**
 * Replays an MCAP file: the messages of the selected topics, each at its log time (sensor time
 * = log time) with the original pacing or faster. A complete file is read through its index
 * (messages in log-time order); a file without a usable index — written unindexed, or cut short
 * by a crash before the recorder wrote its summary — is scanned from the start (file order), and
 * even the complete messages of a final chunk cut in the middle are replayed (uncompressed chunks;
 * a compressed chunk can only be used whole).
 *
 * After the last complete message of a truncated or damaged file the iterator throws SensorError
 * `EAI_SENSOR_TRUNCATED`; a missing file throws `EAI_SENSOR_NOT_FOUND`, a file that is not MCAP
 * `EAI_SENSOR_CONFIG`. None is retryable.
 */
export class McapReplay implements Sensor<McapMessage> {
  private counts = { messages: 0, decodeErrors: 0, recovered: 0 };
  private reader: 'indexed' | 'stream' | undefined;

  constructor(
    readonly file: string,
    private readonly options: McapReplayOptions = {},
  ) {}

  get stats(): McapReplayStats {
    return { reader: this.reader, ...this.counts };
  }

  async *messages(signal: AbortSignal): AsyncGenerator<SensorMessage<McapMessage>, void, void> {
    const handle = await openRecording(this.file);
    try {
      const size = (await handle.stat()).size;
      await this.checkMagic(handle);
      const clock = new ReplayClock(this.options.speed ?? 1);
      const indexed = await this.indexedReader(handle, size);
      this.reader = indexed === undefined ? 'stream' : 'indexed';
      const records = indexed === undefined ? this.scan(handle, size) : this.readIndexed(indexed);
      for await (const record of records) {
        if (!(await clock.waitFor(Number(record.logTime / 1000n) / 1000, signal))) return;
        this.counts.messages += 1;
        yield { sensorTimeNs: record.logTime, arrivalMs: performance.now(), value: this.toMessage(record) };
      }
    } finally {
      await handle.close();
    }
  }

  private async checkMagic(handle: FileHandle): Promise<void> {
    const head = new Uint8Array(MCAP_MAGIC.length);
    const { bytesRead } = await handle.read(head, 0, head.length, 0);
    if (bytesRead < head.length || MCAP_MAGIC.some((b, i) => head[i] !== b)) {
      throw new SensorError('EAI_SENSOR_CONFIG', `${this.file} is not an MCAP file (it does not start with the MCAP magic \\x89MCAP0\\r\\n); point params.file at an .mcap recording`, { retryable: false, details: { file: this.file } });
    }
  }

  /** The index reader, or undefined when the file has no usable index (then it is scanned). */
  private async indexedReader(handle: FileHandle, size: number): Promise<McapIndexedReader | undefined> {
    const readable = {
      size: async () => BigInt(size),
      read: async (offset: bigint, length: bigint) => {
        const bytes = new Uint8Array(Number(length));
        await handle.read(bytes, 0, bytes.length, Number(offset));
        return bytes;
      },
    };
    try {
      const reader = await McapIndexedReader.Initialize({ readable, ...(this.options.decompressHandlers === undefined ? {} : { decompressHandlers: this.options.decompressHandlers }) });
      // Messages written outside chunks are not in the chunk index: only a scan finds them.
      const unchunked = reader.chunkIndexes.length === 0 && (reader.statistics?.messageCount ?? 1n) > 0n;
      return unchunked ? undefined : reader;
    } catch {
      return undefined;
    }
  }

  private async *readIndexed(reader: McapIndexedReader): AsyncGenerator<Recorded, void, void> {
    const topics = this.options.topics;
    try {
      for await (const message of reader.readMessages(topics === undefined || topics.length === 0 ? {} : { topics })) {
        const channel = reader.channelsById.get(message.channelId);
        if (channel !== undefined) yield { ...message, channel, schema: reader.schemasById.get(channel.schemaId) };
      }
    } catch (error) {
      throw this.damaged(error);
    }
  }

  /** Reads records from the start, as a recorder wrote them; recovers a final cut chunk. */
  private async *scan(handle: FileHandle, size: number): AsyncGenerator<Recorded, void, void> {
    const schemas = new Map<number, McapTypes.Schema>();
    const channels = new Map<number, McapTypes.Channel>();
    const reader = new McapStreamReader(this.options.decompressHandlers === undefined ? {} : { decompressHandlers: this.options.decompressHandlers });
    const buffer = new Uint8Array(1 << 20);
    let failure: unknown;
    for (let position = 0; position < size && failure === undefined; ) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, position);
      if (bytesRead === 0) break;
      position += bytesRead;
      reader.append(buffer.subarray(0, bytesRead));
      try {
        for (let record = reader.nextRecord(); record !== undefined; record = reader.nextRecord()) {
          const recorded = this.keep(record, schemas, channels);
          if (recorded !== undefined) yield recorded;
        }
      } catch (error) {
        failure = error;
      }
    }
    if (failure === undefined && reader.done()) return;
    if (failure === undefined) {
      // The file ends inside a record: if it is a chunk, its first records may be whole.
      const tail = new Uint8Array(reader.bytesRemaining());
      await handle.read(tail, 0, tail.length, size - tail.length);
      for (const record of partialChunkRecords(tail, schemas, channels)) {
        const recorded = this.keep(record, schemas, channels);
        if (recorded === undefined) continue;
        this.counts.recovered += 1;
        yield recorded;
      }
    }
    throw this.damaged(failure);
  }

  private keep(record: McapTypes.TypedMcapRecord, schemas: Map<number, McapTypes.Schema>, channels: Map<number, McapTypes.Channel>): Recorded | undefined {
    if (record.type === 'Schema') schemas.set(record.id, record);
    else if (record.type === 'Channel') channels.set(record.id, record);
    else if (record.type === 'Message') {
      const channel = channels.get(record.channelId);
      const topics = this.options.topics;
      if (channel === undefined || (topics !== undefined && topics.length > 0 && !topics.includes(channel.topic))) return undefined;
      return { ...record, channel, schema: schemas.get(channel.schemaId) };
    }
    return undefined;
  }

  private toMessage(record: Recorded): McapMessage {
    const base = { topic: record.channel.topic, schemaName: record.schema?.name ?? '', encoding: record.channel.messageEncoding, data: record.data };
    if (record.channel.messageEncoding !== 'json') return base;
    try {
      return { ...base, decoded: JSON.parse(UTF8.decode(record.data)) as unknown };
    } catch {
      this.counts.decodeErrors += 1;
      return base;
    }
  }

  private damaged(cause: unknown): SensorError {
    const compression = cause instanceof Error ? /Unsupported compression (\S+)/u.exec(cause.message)?.[1] : undefined;
    if (compression !== undefined) {
      return new SensorError('EAI_SENSOR_CONFIG', `MCAP recording ${this.file} has ${compression}-compressed chunks and no ${compression} decompressor is configured; write an uncompressed copy with the mcap CLI (\`mcap decompress\`) or pass decompressHandlers`, { cause, retryable: false, details: { file: this.file, compression } });
    }
    const why = cause === undefined ? 'ends in the middle of a record (the recorder stopped without closing the file)' : `is damaged: ${cause instanceof Error ? cause.message : String(cause)}`;
    return new SensorError('EAI_SENSOR_TRUNCATED', `MCAP recording ${this.file} ${why}; replayed the ${this.counts.messages} complete messages before that point. \`mcap recover\` (mcap CLI) can rewrite it with an index`, {
      ...(cause === undefined ? {} : { cause }),
      retryable: false,
      details: { file: this.file, messages: this.counts.messages },
    });
  }
}

interface Recorded extends McapTypes.Message {
  readonly channel: McapTypes.Channel;
  readonly schema: McapTypes.Schema | undefined;
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

async function openRecording(file: string): Promise<FileHandle> {
  try {
    return await open(file, 'r');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new SensorError('EAI_SENSOR_NOT_FOUND', `cannot read MCAP recording ${file}: ${code === 'ENOENT' ? 'no such file' : (error as Error).message}`, { cause: error, retryable: false, details: { file } });
  }
}

/**
 * The whole records at the start of an uncompressed chunk whose end is missing. The chunk's
 * records are parsed by a second stream reader primed with the schemas and channels seen so far
 * (a message may refer to a channel declared in an earlier chunk).
 */
function partialChunkRecords(tail: Uint8Array, schemas: ReadonlyMap<number, McapTypes.Schema>, channels: ReadonlyMap<number, McapTypes.Channel>): McapTypes.TypedMcapRecord[] {
  // opcode u8, record length u64, start/end time u64 ×2, uncompressed size u64, crc u32, compression string, records length u64
  const fixed = 1 + 8 + 8 + 8 + 8 + 4;
  if (tail[0] !== Opcode.CHUNK || tail.length < fixed + 4) return [];
  const view = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
  const compressionLength = view.getUint32(fixed, true);
  const recordsAt = fixed + 4 + compressionLength + 8;
  if (compressionLength !== 0 || tail.length <= recordsAt) return [];
  const primer = new McapRecordBuilder();
  for (const schema of schemas.values()) primer.writeSchema(schema);
  for (const channel of channels.values()) primer.writeChannel(channel);
  const reader = new McapStreamReader({ noMagicPrefix: true, validateCrcs: false });
  reader.append(primer.buffer);
  reader.append(tail.subarray(recordsAt));
  const records: McapTypes.TypedMcapRecord[] = [];
  try {
    for (let record = reader.nextRecord(); record !== undefined; record = reader.nextRecord()) records.push(record);
  } catch {
    // A damaged record inside the cut chunk: keep what came before it.
  }
  return records;
}
