import { McapChunkBuilder, McapRecordBuilder, Opcode, type ChunkIndex, type IWritable, type Message, type Schema, type Channel, type Statistics, type SummaryOffset } from '@mcap/core';
import { crc32 } from '../crc32.js';

/**
 * One MCAP file being written, built from @mcap/core's record and chunk builders. It produces
 * the same layout as @mcap/core's `McapWriter` (chunked, message indexes, summary with schemas,
 * channels, statistics and chunk indexes, summary offsets, CRCs), and adds the one thing that
 * class lacks: `flushChunk()`, so the recorder can close a chunk after at most a second. Without
 * it a chunk only closes when it is full, and a 1 Hz GNSS topic would hold hours of fixes in
 * memory that a SIGKILL would lose.
 *
 * Layout on disk, in write order: magic, header, then per chunk one Chunk record followed by its
 * MessageIndex records (each written with one `write`, so a killed process leaves a prefix of
 * whole chunks, which `McapStreamReader` reads back), and on `end()` DataEnd, the summary,
 * summary offsets, footer and magic.
 *
 * Not safe for overlapping calls: await each method before the next (the recorder serialises).
 */
export class McapFileWriter {
  private readonly records = new McapRecordBuilder();
  private readonly chunk = new McapChunkBuilder({ useMessageIndex: true });
  private readonly schemas = new Map<number, Schema>();
  private readonly channels = new Map<number, Channel>();
  /** Schemas and channels already inside some chunk: each goes into the data section once. */
  private readonly written = { schemas: new Set<number>(), channels: new Set<number>() };
  private readonly chunkIndexes: ChunkIndex[] = [];
  private dataCrc = 0;
  private ended = false;
  /** Counts for the Statistics record and for callers (rotation by size, tests). */
  readonly statistics: Statistics = {
    messageCount: 0n,
    schemaCount: 0,
    channelCount: 0,
    attachmentCount: 0,
    metadataCount: 0,
    chunkCount: 0,
    messageStartTime: 0n,
    messageEndTime: 0n,
    channelMessageCounts: new Map(),
  };

  /**
   * @param chunkSize a chunk is closed once its uncompressed records exceed this many bytes.
   */
  constructor(
    private readonly out: IWritable,
    private readonly chunkSize: number,
  ) {}

  /** Writes the magic and the header record. */
  async start(header: { readonly profile: string; readonly library: string }): Promise<void> {
    this.records.writeMagic();
    this.records.writeHeader(header);
    await this.emit(true);
  }

  /** Registers a schema and returns its id (from 1; 0 means "no schema" in MCAP). */
  addSchema(schema: Omit<Schema, 'id'>): number {
    const id = this.schemas.size + 1;
    this.schemas.set(id, { ...schema, id });
    this.statistics.schemaCount++;
    return id;
  }

  /** Registers a channel and returns its id. `schemaId` 0 records schemaless (e.g. plain JSON). */
  addChannel(channel: Omit<Channel, 'id'>): number {
    const id = this.channels.size;
    this.channels.set(id, { ...channel, id });
    this.statistics.channelCount++;
    return id;
  }

  /**
   * Adds a message to the open chunk; writes the chunk out when it has grown past `chunkSize`.
   * The channel (and its schema) must have been registered.
   */
  async addMessage(message: Message): Promise<void> {
    const channel = this.channels.get(message.channelId);
    if (channel === undefined) throw new Error(`McapFileWriter: message for unregistered channel ${message.channelId}`);
    if (!this.written.channels.has(channel.id)) {
      const schema = this.schemas.get(channel.schemaId);
      if (schema !== undefined && !this.written.schemas.has(schema.id)) {
        this.chunk.addSchema(schema);
        this.written.schemas.add(schema.id);
      }
      this.chunk.addChannel(channel);
      this.written.channels.add(channel.id);
    }
    this.chunk.addMessage(message);
    this.count(message);
    if (this.chunk.byteLength > this.chunkSize) await this.flushChunk();
  }

  /** Messages in the open chunk, not yet on disk. */
  get pendingMessages(): number {
    return this.chunk.numMessages;
  }

  /** Bytes on disk plus the open chunk: roughly the file's size if it ended now. */
  get size(): bigint {
    return this.out.position() + BigInt(this.chunk.byteLength);
  }

  /**
   * Writes the open chunk and its message indexes (nothing when it is empty). When the promise
   * resolves, every message added so far is readable from the file by a stream reader.
   */
  async flushChunk(): Promise<void> {
    if (this.chunk.numMessages === 0) return;
    const data = this.chunk.buffer;
    const chunkStartOffset = this.out.position();
    const chunkLength = this.records.writeChunk({
      messageStartTime: this.chunk.messageStartTime,
      messageEndTime: this.chunk.messageEndTime,
      uncompressedSize: BigInt(data.byteLength),
      uncompressedCrc: crc32(data),
      compression: '',
      records: data,
    });
    const indexStart = chunkStartOffset + BigInt(this.records.length);
    const messageIndexOffsets = new Map<number, bigint>();
    for (const index of this.chunk.indices) {
      messageIndexOffsets.set(index.channelId, chunkStartOffset + BigInt(this.records.length));
      this.records.writeMessageIndex(index);
    }
    this.chunkIndexes.push({
      messageStartTime: this.chunk.messageStartTime,
      messageEndTime: this.chunk.messageEndTime,
      chunkStartOffset,
      chunkLength,
      messageIndexOffsets,
      messageIndexLength: chunkStartOffset + BigInt(this.records.length) - indexStart,
      compression: '',
      compressedSize: BigInt(data.byteLength),
      uncompressedSize: BigInt(data.byteLength),
    });
    this.statistics.chunkCount++;
    // The chunk and its indexes go out in one write: a kill leaves either all of it or a tail the
    // stream reader ignores, never a chunk whose indexes are half there.
    await this.emit(true);
    this.chunk.reset();
  }

  /**
   * Flushes the open chunk and writes DataEnd, the summary (schemas, channels, statistics, chunk
   * indexes), summary offsets, footer and closing magic: afterwards `McapIndexedReader` reads the
   * file. Idempotent; the caller closes the writable.
   */
  async end(): Promise<void> {
    if (this.ended) return;
    await this.flushChunk();
    this.ended = true;
    this.records.writeDataEnd({ dataSectionCrc: this.dataCrc });
    await this.emit(false);

    const summaryStart = this.out.position();
    const offsets: SummaryOffset[] = [];
    const group = (opcode: Opcode, write: () => void): void => {
      const start = this.records.length;
      write();
      const length = this.records.length - start;
      if (length > 0) offsets.push({ groupOpcode: opcode, groupStart: summaryStart + BigInt(start), groupLength: BigInt(length) });
    };
    group(Opcode.SCHEMA, () => this.schemas.forEach((s) => this.records.writeSchema(s)));
    group(Opcode.CHANNEL, () => this.channels.forEach((c) => this.records.writeChannel(c)));
    group(Opcode.STATISTICS, () => this.records.writeStatistics(this.statistics));
    group(Opcode.CHUNK_INDEX, () => this.chunkIndexes.forEach((c) => this.records.writeChunkIndex(c)));
    const summaryOffsetStart = summaryStart + BigInt(this.records.length);
    for (const offset of offsets) this.records.writeSummaryOffset(offset);

    // The summary CRC covers everything from the summary start through the footer's two offsets.
    const footerPrefix = new DataView(new ArrayBuffer(1 + 8 + 8 + 8));
    footerPrefix.setUint8(0, Opcode.FOOTER);
    footerPrefix.setBigUint64(1, 20n, true);
    footerPrefix.setBigUint64(9, summaryStart, true);
    footerPrefix.setBigUint64(17, summaryOffsetStart, true);
    const summaryCrc = crc32(new Uint8Array(footerPrefix.buffer), crc32(this.records.buffer));
    this.records.writeFooter({ summaryStart, summaryOffsetStart, summaryCrc });
    this.records.writeMagic();
    await this.emit(false);
  }

  /** Writes what the record builder holds, folding it into the data-section CRC when asked. */
  private async emit(dataSection: boolean): Promise<void> {
    const bytes = this.records.buffer;
    if (dataSection) this.dataCrc = crc32(bytes, this.dataCrc);
    await this.out.write(bytes);
    this.records.reset();
  }

  private count(message: Message): void {
    const s = this.statistics;
    if (s.messageCount === 0n || message.logTime < s.messageStartTime) s.messageStartTime = message.logTime;
    if (s.messageCount === 0n || message.logTime > s.messageEndTime) s.messageEndTime = message.logTime;
    s.messageCount++;
    s.channelMessageCounts.set(message.channelId, (s.channelMessageCounts.get(message.channelId) ?? 0n) + 1n);
  }
}
