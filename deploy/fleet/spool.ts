/**
 * The device agent's outbox: every message for the broker is appended here first, so telemetry and
 * events survive broker outages, a flaky cellular link and reboots, and are replayed in order on
 * reconnect. The spool has a byte budget; only when it is exhausted are the oldest records dropped,
 * and every drop is counted (`stats().dropped`), never silent.
 *
 * The bytes on disk (segment files, record frames with their CRC-32, head.json) are described in
 * spool-format.ts; how `open` recovers from a crash or a power cut, and what it counts as lost, in
 * spool-recovery.ts.
 *
 * Delivery is at least once: `ack` takes effect at once in memory but reaches head.json later (at
 * once with fsync 'always', at the next interval tick otherwise, and always at `close`), so a
 * record the broker acknowledged just before a crash may be replayed once after it. Sequence
 * numbers are never reused, not even for records a power cut took before they reached the disk:
 * they are leased in blocks of 65,536 through head.json, and an unclean stop makes the next
 * process start after the lease, so the numbers jump there (a clean `close` records the exact next
 * number, so there is no jump after it).
 *
 * Durability of appends: 'always' resolves an append once its frame is written and fsynced (and
 * the directory, for a new segment); 'interval' (the default, every `fsyncIntervalMs`, default
 * 1 s) and 'never' resolve once the frame is in the kernel's page cache, so a killed process loses
 * nothing that was resolved, a power cut loses at most the last interval ('never': whatever the
 * kernel had not yet written back). Segments are fsynced when they are left, except with 'never'.
 *
 * One process, one Spool per directory: two would interleave their segments.
 */
import { Buffer } from 'node:buffer';
import { open, rm, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { syncDir } from '../../models/atomic-write.js';
import { SpoolError, spoolIoError } from './spool-errors.js';
import { FRAME_HEADER, HEAD_FILE, LEASE, SEGMENT_HEADER, decodeFrame, encodeFrame, segmentHeader, segmentName, writeHead, type Entry } from './spool-format.js';
import { recover, type Recovered, type Segment } from './spool-recovery.js';

export type FsyncMode = 'always' | 'interval' | 'never';

export interface SpoolOptions {
  /**
   * Budget: the bytes of unacknowledged records on disk (frames, with their 20-byte headers). An
   * append that would pass it drops the oldest unacknowledged records first. The directory may hold
   * up to one segment more than this (records acknowledged but sharing a segment with pending
   * ones, and the segment being written), plus 16 bytes per segment and head.json.
   */
  readonly maxBytes: number;
  /** A segment is left for a new one once it would grow past this. Default maxBytes / 8, within 64 KiB..4 MiB. */
  readonly segmentBytes?: number;
  /** When appends reach the disk; see the module comment. Default 'interval'. */
  readonly fsync?: FsyncMode;
  /** The period of 'interval' fsyncs and of head.json writes for acks ('interval', 'never'). Default 1000. */
  readonly fsyncIntervalMs?: number;
  /**
   * Problems the spool recovered from by itself (`EAI_SPOOL_CORRUPT`, `EAI_SPOOL_HEAD_CORRUPT`)
   * and background failures (`EAI_SPOOL_IO` of a periodic fsync or head write). Default: one line on stderr.
   */
  readonly warn?: (problem: SpoolError) => void;
}

/** Where a record goes: the MQTT topic and QoS its publisher uses. Default topic '' and QoS 1. */
export interface RecordMeta {
  readonly topic: string;
  readonly qos?: 0 | 1;
}

/** One spooled record. `payload` is a view into a read buffer shared with records read with it. */
export interface SpoolRecord {
  readonly seq: number;
  readonly topic: string;
  readonly qos: 0 | 1;
  readonly payload: Uint8Array;
}

export interface SpoolStats {
  /** Records appended and neither acknowledged nor dropped. */
  readonly pending: number;
  /** Their bytes on disk, frames included; never more than maxBytes. */
  readonly pendingBytes: number;
  /** Records dropped unacknowledged to stay within maxBytes, since open (open itself may drop, when maxBytes shrank). */
  readonly dropped: number;
  readonly droppedBytes: number;
  /** Unacknowledged records found torn or corrupt (at open, or when read) and dropped, since open. */
  readonly corruptDropped: number;
  /** Bytes found unreadable at open (torn tails, damaged frames, garbage), since open. */
  readonly corruptBytes: number;
  /** The sequence number the next append gets. */
  readonly nextSeq: number;
  /** Segment files. */
  readonly segments: number;
}

export interface ReplayOptions {
  /** The first sequence number wanted; records before it, or already acknowledged, are skipped. Default: the oldest pending. */
  readonly from?: number;
  /** Keep waiting for new appends when caught up, until `close` or `signal`. Default false: end when caught up. */
  readonly follow?: boolean;
  readonly signal?: AbortSignal;
  /** Records read from disk at a time. Default 256. */
  readonly batch?: number;
}

/**
 * A bounded, crash-safe, on-disk FIFO of records for the broker. Appends may overlap each other
 * and a replay: sequence numbers follow the order of the `append` calls, and a replay sees the
 * records appended while it runs, in order. Everything but `open` and `close` may be called at
 * any time; nothing is safe to share between processes.
 */
export class Spool implements AsyncIterable<SpoolRecord> {
  /** The spool directory. */
  readonly dir: string;
  private readonly maxBytes: number;
  private readonly segmentBytes: number;
  private readonly fsyncMode: FsyncMode;
  private readonly warn: (problem: SpoolError) => void;
  private timer: NodeJS.Timeout | undefined;

  /** Oldest first; the last one is `active` when there is one. */
  private readonly segments: Segment[];
  private active: Segment | undefined;
  /** The first sequence number not yet acknowledged or dropped. */
  private head: number;
  private nextSeq: number;
  private pending = 0;
  private pendingBytes = 0;
  private dropped = 0;
  private droppedBytes = 0;
  private corruptDropped: number;
  private readonly corruptBytes: number;

  /** Sequence numbers below this one may be handed out: head.json says so durably. */
  private leaseLimit = 0;
  /** The lease the next head.json write records. */
  private leaseTarget = 0;
  /** Appends waiting for a lease, in call order. */
  private readonly blocked: Blocked[] = [];
  private headWritten = -1;
  private headChain: Promise<void> = Promise.resolve();
  private headQueued: Promise<void> | undefined;

  /** Frames assigned and not yet handed to the file system, in sequence order. */
  private readonly queue: Frame[] = [];
  /** Segments passed by the head, for the writer to close and delete. */
  private readonly retired: Segment[] = [];
  private writing: Promise<void> | undefined;
  private current: { readonly seg: Segment; readonly handle: FileHandle } | undefined;
  private syncDue = false;
  /** Callers of `flush` waiting for the next fsync. */
  private readonly synced: { readonly resolve: () => void; readonly reject: (error: unknown) => void }[] = [];
  private dataDirty = false;
  private dirDirty = false;
  /** Every frame up to this sequence number was written (or failed). */
  private writtenSeq: number;
  private readonly waiters: { readonly seq: number; readonly wake: () => void }[] = [];
  private followers: (() => void)[] = [];

  private closing: Promise<void> | undefined;
  private closed = false;

  private constructor(dir: string, settings: Settings, recovered: Recovered) {
    this.dir = dir;
    this.maxBytes = settings.maxBytes;
    this.segmentBytes = settings.segmentBytes;
    this.fsyncMode = settings.fsync;
    this.warn = settings.warn;
    this.segments = recovered.segments;
    this.head = recovered.head;
    this.nextSeq = recovered.nextSeq;
    this.writtenSeq = recovered.nextSeq - 1;
    this.corruptDropped = recovered.corruptDropped;
    this.corruptBytes = recovered.corruptBytes;
    for (const seg of this.segments) {
      for (let i = Math.max(0, this.head - seg.base); i < seg.starts.length; i++) {
        if ((seg.starts[i] ?? -1) < 0) continue;
        this.pending += 1;
        this.pendingBytes += seg.sizes[i] ?? 0;
      }
    }
  }

  /**
   * Opens the spool in `dir`, creating it (mode 0700) if needed, and recovers from a crash or a
   * power cut: torn and corrupt records are cut out and counted, segments already acknowledged are
   * deleted, and the budget is enforced (maxBytes may have shrunk). Resolves once head.json holds
   * a fresh sequence-number lease. Rejects with `EAI_SPOOL_OPTIONS`, `EAI_SPOOL_IO`, or
   * `EAI_SPOOL_UNSUPPORTED_VERSION` (a spool written by a newer aios; nothing is changed then).
   */
  static async open(dir: string, options: SpoolOptions): Promise<Spool> {
    const settings = settle(options);
    const recovered = await recover(dir, { warn: settings.warn, syncRepairs: settings.fsync !== 'never' });
    const spool = new Spool(dir, settings, recovered);
    spool.pass(spool.head, false);
    spool.makeRoom(0);
    spool.leaseTarget = spool.nextSeq + LEASE;
    try {
      await spool.persistHead();
    } catch (error) {
      await spool.drain();
      throw error;
    }
    spool.timer = setInterval(() => spool.tick(), settings.fsyncIntervalMs);
    spool.timer.unref();
    return spool;
  }

  /**
   * Appends a record; resolves with its sequence number once it is written (see the module
   * comment for when that is durable). Rejects with `EAI_SPOOL_RECORD_TOO_LARGE` (the frame alone
   * would pass maxBytes), `EAI_SPOOL_BAD_RECORD`, `EAI_SPOOL_CLOSED`, or `EAI_SPOOL_IO` (the
   * record is not in the spool then; later appends start a new segment).
   */
  async append(record: Uint8Array, meta?: RecordMeta): Promise<number> {
    if (this.closing !== undefined) throw closedError('append');
    if (!(record instanceof Uint8Array)) throw new SpoolError('EAI_SPOOL_BAD_RECORD', `spool: a record must be a Uint8Array (a Buffer is one), got ${typeof record}. Fix: encode the message first`);
    const topic = meta?.topic ?? '';
    const qos = meta?.qos ?? 1;
    if (typeof topic !== 'string') throw new SpoolError('EAI_SPOOL_BAD_RECORD', `spool: meta.topic must be a string, got ${typeof topic}`);
    if (qos !== 0 && qos !== 1) throw new SpoolError('EAI_SPOOL_BAD_RECORD', `spool: meta.qos must be 0 or 1, got ${String(qos)}. Fix: spool QoS 2 messages as QoS 1 (the spool already gives at-least-once)`);
    const topicBytes = Buffer.byteLength(topic, 'utf8');
    if (topicBytes > 0xffff) throw new SpoolError('EAI_SPOOL_BAD_RECORD', `spool: a topic of ${topicBytes} bytes; at most 65535 fit (MQTT's own limit). Fix: shorten the topic`);
    const size = FRAME_HEADER + topicBytes + record.byteLength;
    if (size > this.maxBytes || size > 0xffffffff) {
      throw new SpoolError('EAI_SPOOL_RECORD_TOO_LARGE', `spool: a record of ${size} bytes (with its ${FRAME_HEADER + topicBytes}-byte header) does not fit in maxBytes ${this.maxBytes}. Fix: split the message, or raise maxBytes`, {
        details: { size, maxBytes: this.maxBytes },
      });
    }
    const entry = { payload: record, topic, topicBytes, qos, size } as const;
    if (this.blocked.length === 0 && this.nextSeq < this.leaseLimit) return this.enqueue(entry);
    // Out of leased numbers: wait for head.json, keeping call order (the callbacks run in order, synchronously).
    const result = new Promise<number>((resolve, reject) => {
      this.blocked.push({ run: () => this.enqueue(entry).then(resolve, reject), fail: reject });
    });
    this.renewLease().catch(() => undefined);
    return result;
  }

  /**
   * Up to `max` unacknowledged records, oldest first, from `from` (default: the oldest pending).
   * Waits for records appended but not yet written. Rejects with `EAI_SPOOL_CLOSED` or `EAI_SPOOL_IO`.
   */
  async peek(max: number, from = 0): Promise<SpoolRecord[]> {
    if (!Number.isSafeInteger(max) || max < 1) throw new SpoolError('EAI_SPOOL_OPTIONS', `spool: peek(max) needs a whole number >= 1, got ${String(max)}`);
    return this.read(from, max, Number.POSITIVE_INFINITY);
  }

  /**
   * The unacknowledged records in order, read in batches, including those appended while it runs.
   * Acknowledging while iterating is expected; records acknowledged before they are reached are skipped.
   */
  async *replay(options: ReplayOptions = {}): AsyncGenerator<SpoolRecord, void, undefined> {
    const batch = options.batch ?? 256;
    let cursor = options.from ?? 0;
    for (;;) {
      if (this.closed || options.signal?.aborted === true) return;
      const seen = this.nextSeq;
      let records: SpoolRecord[];
      try {
        records = await this.read(cursor, batch, REPLAY_BATCH_BYTES);
      } catch (error) {
        if (this.closed) return;
        throw error;
      }
      for (const r of records) {
        cursor = r.seq + 1;
        if (r.seq >= this.head) yield r;
      }
      // An append while the read ran may have come after its last look: read again rather than wait for the next one.
      if (records.length > 0 || this.nextSeq !== seen) continue;
      if (options.follow !== true) return;
      await this.nextAppend(options.signal);
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<SpoolRecord> {
    return this.replay();
  }

  /**
   * Everything up to and including `seq` is done (published and acknowledged by the broker): it is
   * no longer replayed and its space is reclaimed. Takes effect at once; reaches head.json as the
   * module comment says (`flush` forces it). Throws `EAI_SPOOL_BAD_SEQ` for a number never handed
   * out, `EAI_SPOOL_CLOSED` after close.
   */
  ack(seq: number): void {
    if (this.closed) throw closedError('ack');
    if (!Number.isSafeInteger(seq) || seq < 0 || seq >= this.nextSeq) {
      throw new SpoolError('EAI_SPOOL_BAD_SEQ', `spool: ack(${String(seq)}) names no record appended (the next sequence number is ${this.nextSeq}). Fix: acknowledge the seq of a record read from this spool`, {
        details: { seq, nextSeq: this.nextSeq },
      });
    }
    if (seq < this.head) return;
    this.pass(seq + 1, false);
    if (this.fsyncMode === 'always') this.persistHead().catch((e: unknown) => this.warn(asSpoolError(e)));
  }

  /**
   * Makes every append made so far and every ack durable now (write, fsync, head.json), whatever
   * the fsync mode. Appends made meanwhile go on and are not waited for.
   */
  async flush(): Promise<void> {
    if (this.closed) throw closedError('flush');
    const last = this.nextSeq - 1;
    if (this.writtenSeq < last) await new Promise<void>((wake) => this.waiters.push({ seq: last, wake }));
    await new Promise<void>((resolve, reject) => {
      this.synced.push({ resolve, reject });
      this.syncDue = true;
      this.kick();
    });
    if (this.head !== this.headWritten) await this.persistHead();
  }

  stats(): SpoolStats {
    return {
      pending: this.pending,
      pendingBytes: this.pendingBytes,
      dropped: this.dropped,
      droppedBytes: this.droppedBytes,
      corruptDropped: this.corruptDropped,
      corruptBytes: this.corruptBytes,
      nextSeq: this.nextSeq,
      segments: this.segments.length,
    };
  }

  /**
   * Writes what is queued, fsyncs (except with 'never'), records acks and the exact next sequence
   * number in head.json, and closes the files. Appends are refused from the call on; a replay ends.
   * Calling it again returns the same promise.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    clearInterval(this.timer);
    while (this.blocked.length > 0) await this.renewLease().catch(() => undefined);
    await this.drain();
    if (this.fsyncMode !== 'never') {
      this.syncDue = true;
      this.kick();
      await this.drain();
    }
    if (this.current !== undefined) {
      const { seg, handle } = this.current;
      this.current = undefined;
      await handle.close().catch(() => undefined);
      if (seg.removed) await rm(seg.file, { force: true }).catch(() => undefined);
    }
    // Nothing more is handed out: the lease can be exactly the next number, so a clean restart has no jump.
    this.leaseTarget = this.nextSeq;
    try {
      await this.persistHead();
    } finally {
      this.closed = true;
      this.wakeFollowers();
    }
  }

  // ---- appending -------------------------------------------------------------------------------

  /** Assigns the next sequence number and queues the frame; synchronous up to the returned promise. */
  private enqueue(entry: Entry): Promise<number> {
    this.makeRoom(entry.size);
    const seg = this.segmentFor(entry.size);
    const seq = this.nextSeq;
    this.nextSeq += 1;
    const bytes = encodeFrame(seq, entry);
    seg.starts.push(seg.size);
    seg.sizes.push(entry.size);
    seg.size += entry.size;
    this.pending += 1;
    this.pendingBytes += entry.size;
    if (this.leaseTarget - this.nextSeq < LEASE / 2) this.renewLease().catch(() => undefined);
    const done = new Promise<number>((resolve, reject) => {
      this.queue.push({ seg, seq, bytes, resolve, reject });
    });
    this.kick();
    this.wakeFollowers();
    return done;
  }

  /** Drops the oldest pending records until `size` more bytes fit in the budget. */
  private makeRoom(size: number): void {
    while (this.pending > 0 && this.pendingBytes + size > this.maxBytes) {
      const seq = this.firstLive();
      if (seq === undefined) break;
      this.pass(seq + 1, true);
    }
  }

  private segmentFor(size: number): Segment {
    const active = this.active;
    if (active !== undefined && (active.starts.length === 0 || active.size + size <= this.segmentBytes)) return active;
    const seg: Segment = { base: this.nextSeq, file: path.join(this.dir, segmentName(this.nextSeq)), starts: [], sizes: [], size: SEGMENT_HEADER, written: 0, created: false, removed: false };
    this.segments.push(seg);
    this.active = seg;
    // The segment just left may be all acknowledged already.
    this.pass(this.head, false);
    return seg;
  }

  // ---- the head: acks, drops, reclaiming -------------------------------------------------------

  /** Moves the head to `until`, accounting each record passed as acknowledged or dropped, and retires segments left behind. */
  private pass(until: number, dropping: boolean): void {
    while (this.head < until) {
      const seg = this.segments[0];
      if (seg === undefined) {
        this.head = until;
        break;
      }
      const end = seg.base + seg.starts.length;
      if (this.head < seg.base) {
        this.head = Math.min(seg.base, until);
        continue;
      }
      if (this.head >= end) {
        if (seg === this.active) {
          this.head = until;
          break;
        }
        this.retireFront();
        continue;
      }
      const stop = Math.min(until, end);
      for (let i = this.head - seg.base; i < stop - seg.base; i++) {
        if ((seg.starts[i] ?? -1) < 0) continue;
        const bytes = seg.sizes[i] ?? 0;
        this.pending -= 1;
        this.pendingBytes -= bytes;
        if (dropping) {
          this.dropped += 1;
          this.droppedBytes += bytes;
        }
      }
      this.head = stop;
    }
    for (let seg = this.segments[0]; seg !== undefined && seg !== this.active && this.head >= seg.base + seg.starts.length; seg = this.segments[0]) this.retireFront();
  }

  /** The sequence number of the oldest record that is pending and readable. */
  private firstLive(): number | undefined {
    for (const seg of this.segments) {
      for (let i = Math.max(0, this.head - seg.base); i < seg.starts.length; i++) if ((seg.starts[i] ?? -1) >= 0) return seg.base + i;
    }
    return undefined;
  }

  private retireFront(): void {
    const seg = this.segments.shift();
    if (seg === undefined) return;
    seg.removed = true;
    this.retired.push(seg);
    this.kick();
  }

  private renewLease(): Promise<void> {
    this.leaseTarget = Math.max(this.leaseTarget, this.nextSeq + LEASE);
    return this.persistHead();
  }

  /**
   * Writes head.json with the current head and lease. Writes never overlap: a call while one runs
   * queues one more, which every later call shares, and which records the state when it starts.
   */
  private persistHead(): Promise<void> {
    if (this.headQueued !== undefined) return this.headQueued;
    const next = this.headChain.then(async () => {
      this.headQueued = undefined;
      const head = this.head;
      const lease = this.leaseTarget;
      const file = path.join(this.dir, HEAD_FILE);
      try {
        await writeHead(file, head, lease);
      } catch (error) {
        const problem = spoolIoError('write', file, error);
        for (const b of this.blocked.splice(0)) b.fail(problem);
        throw problem;
      }
      this.headWritten = head;
      this.leaseLimit = Math.max(this.leaseLimit, lease);
      while (this.blocked.length > 0 && this.nextSeq < this.leaseLimit) this.blocked.shift()?.run();
      if (this.blocked.length > 0) this.renewLease().catch(() => undefined);
    });
    this.headQueued = next;
    this.headChain = next.catch(() => undefined);
    return next;
  }

  private tick(): void {
    if (this.closing !== undefined) return;
    if (this.fsyncMode === 'interval' && (this.dataDirty || this.dirDirty)) {
      this.syncDue = true;
      this.kick();
    }
    if (this.head !== this.headWritten) this.persistHead().catch((e: unknown) => this.warn(asSpoolError(e)));
  }

  // ---- the writer: the only code that touches segment files after open ------------------------

  private kick(): void {
    if (this.writing !== undefined) return;
    const done = (): void => {
      this.writing = undefined;
      if (this.queue.length > 0 || this.retired.length > 0 || this.syncDue) this.kick();
    };
    // The loop handles its own failures; a throw here is a bug, reported rather than left unhandled.
    this.writing = this.writeLoop().then(done, (e: unknown) => {
      this.warn(asSpoolError(e));
      done();
    });
  }

  /** Resolves when the writer has nothing left to do. */
  private async drain(): Promise<void> {
    while (this.writing !== undefined) await this.writing;
  }

  private async writeLoop(): Promise<void> {
    // Deletions and periodic fsyncs go before frames, or a steady stream of appends would starve them.
    for (;;) {
      const retired = this.retired.shift();
      const first = this.queue[0];
      if (retired !== undefined) await this.retire(retired);
      else if (this.syncDue) {
        this.syncDue = false;
        const waiting = this.synced.splice(0);
        try {
          await this.syncNow();
          for (const w of waiting) w.resolve();
        } catch (error) {
          if (waiting.length === 0) this.warn(asSpoolError(error));
          for (const w of waiting) w.reject(error);
        }
      } else if (first !== undefined) await this.writeBatch(first.seg);
      else return;
    }
  }

  private async writeBatch(seg: Segment): Promise<void> {
    let n = 0;
    let bytes = 0;
    for (let f = this.queue[0]; f !== undefined && f.seg === seg && n < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES; f = this.queue[n]) {
      n += 1;
      bytes += f.bytes.length;
    }
    const batch = this.queue.splice(0, n);
    const last = batch[batch.length - 1]?.seq ?? this.writtenSeq;
    if (seg.removed) {
      // The head passed the whole segment before it was written: nothing to keep.
      this.markWritten(last);
      for (const f of batch) f.resolve(f.seq);
      return;
    }
    let handle: FileHandle;
    try {
      handle = this.current?.seg === seg ? this.current.handle : await this.handleFor(seg);
      const buffers = batch.map((f) => f.bytes);
      if (seg.written === 0) buffers.unshift(segmentHeader(seg.base));
      const total = seg.written === 0 ? bytes + SEGMENT_HEADER : bytes;
      // write() for a lone frame: at one append in flight (the common case) it costs less than writev().
      const only = buffers.length === 1 ? buffers[0] : undefined;
      const { bytesWritten } = only === undefined ? await handle.writev(buffers, seg.written) : await handle.write(only, 0, only.length, seg.written);
      if (bytesWritten !== total) throw Object.assign(new Error(`short write: ${bytesWritten} of ${total} bytes`), { code: 'ENOSPC' });
      seg.written += total;
    } catch (error) {
      await this.failSegment(seg, batch, spoolIoError('write', seg.file, error));
      return;
    }
    this.markWritten(last);
    if (this.fsyncMode === 'always') {
      try {
        await handle.datasync();
        if (this.dirDirty) {
          this.dirDirty = false;
          await syncDir(this.dir);
        }
      } catch (error) {
        // The frames are in the file and may survive: they stay in the spool, but their appends are not durable.
        const problem = spoolIoError('fsync', seg.file, error);
        for (const f of batch) f.reject(problem);
        return;
      }
    } else this.dataDirty = true;
    for (const f of batch) f.resolve(f.seq);
  }

  /** The open file of `seg`, created on its first write; the segment written before is fsynced and closed. */
  private async handleFor(seg: Segment): Promise<FileHandle> {
    if (this.current?.seg === seg) return this.current.handle;
    await this.closeCurrent();
    const handle = await open(seg.file, 'wx', 0o600);
    seg.created = true;
    this.dirDirty = true;
    this.current = { seg, handle };
    return handle;
  }

  private async closeCurrent(): Promise<void> {
    const current = this.current;
    if (current === undefined) return;
    this.current = undefined;
    try {
      if (this.fsyncMode !== 'never' && this.dataDirty && !current.seg.removed) await current.handle.datasync();
      this.dataDirty = false;
    } catch (error) {
      this.warn(spoolIoError('fsync', current.seg.file, error));
    } finally {
      await current.handle.close().catch(() => undefined);
    }
  }

  /**
   * A write failed (disk full, I/O error): the batch and every frame queued after it for the same
   * segment fail, their index entries go, the file is cut back to what was written, and the next
   * append starts a new segment. Their sequence numbers are not reused.
   */
  private async failSegment(seg: Segment, batch: Frame[], problem: SpoolError): Promise<void> {
    let n = 0;
    while (this.queue[n]?.seg === seg) n += 1;
    const failed = [...batch, ...this.queue.splice(0, n)];
    const from = (failed[0]?.seq ?? seg.base) - seg.base;
    for (let i = from; i < seg.starts.length; i++) {
      if (seg.base + i < this.head || (seg.starts[i] ?? -1) < 0) continue;
      this.pending -= 1;
      this.pendingBytes -= seg.sizes[i] ?? 0;
    }
    seg.starts.length = from;
    seg.sizes.length = from;
    seg.size = Math.max(seg.written, SEGMENT_HEADER);
    if (this.active === seg) this.active = undefined;
    if (this.current?.seg === seg) {
      await this.current.handle.truncate(seg.written).catch(() => undefined);
      await this.closeCurrent();
    }
    if (seg.starts.length === 0 && this.segments.includes(seg)) {
      this.segments.splice(this.segments.indexOf(seg), 1);
      seg.removed = true;
      this.retired.push(seg);
    }
    this.markWritten(failed[failed.length - 1]?.seq ?? this.writtenSeq);
    for (const f of failed) f.reject(problem);
  }

  private async retire(seg: Segment): Promise<void> {
    if (this.current?.seg === seg) await this.closeCurrent();
    if (!seg.created) return;
    await rm(seg.file, { force: true }).catch((e: unknown) => this.warn(spoolIoError('delete', seg.file, e)));
  }

  private async syncNow(): Promise<void> {
    if (this.dataDirty && this.current !== undefined) {
      this.dataDirty = false;
      try {
        await this.current.handle.datasync();
      } catch (error) {
        throw spoolIoError('fsync', this.current?.seg.file ?? this.dir, error);
      }
    }
    if (this.dirDirty) {
      this.dirDirty = false;
      await syncDir(this.dir).catch((e: unknown) => {
        throw spoolIoError('fsync', this.dir, e);
      });
    }
  }

  private markWritten(seq: number): void {
    this.writtenSeq = Math.max(this.writtenSeq, seq);
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i];
      if (w !== undefined && w.seq <= this.writtenSeq) {
        this.waiters.splice(i, 1);
        w.wake();
      }
    }
  }

  // ---- reading ---------------------------------------------------------------------------------

  private async read(from: number, max: number, byteCap: number): Promise<SpoolRecord[]> {
    for (;;) {
      if (this.closed) throw closedError('read');
      const start = Math.max(from, this.head);
      if (start >= this.nextSeq) return [];
      const slices = this.plan(start, max, byteCap);
      if (slices.length === 0) {
        // Nothing written to read yet: wait for the writer to reach the next record.
        if (this.writtenSeq >= this.nextSeq - 1) return [];
        const seq = this.writtenSeq + 1;
        await new Promise<void>((wake) => this.waiters.push({ seq, wake }));
        continue;
      }
      let records: SpoolRecord[];
      try {
        records = await this.load(slices);
      } catch (error) {
        // A segment deleted under us: its records were acknowledged or dropped meanwhile; plan again.
        if ((error as { code?: unknown }).code === 'ENOENT' && slices.some((s) => s.seg.removed)) continue;
        throw spoolIoError('read', slices[0]?.seg.file ?? this.dir, error);
      }
      const live = records.filter((r) => r.seq >= this.head);
      if (live.length > 0) return live;
    }
  }

  /** Which bytes to read for up to `max` written, readable records from `start`: one contiguous range per segment. */
  private plan(start: number, max: number, byteCap: number): Slice[] {
    const slices: Slice[] = [];
    let count = 0;
    let bytes = 0;
    let k = this.segments.length - 1;
    while (k > 0 && (this.segments[k]?.base ?? 0) > start) k -= 1;
    for (let seg = this.segments[k]; seg !== undefined && count < max && bytes < byteCap; seg = this.segments[++k]) {
      const items: number[] = [];
      for (let i = Math.max(0, start - seg.base); i < seg.starts.length && count < max && bytes < byteCap; i++) {
        if (seg.base + i > this.writtenSeq) break;
        if ((seg.starts[i] ?? -1) < 0) continue;
        items.push(i);
        count += 1;
        bytes += seg.sizes[i] ?? 0;
      }
      const first = items[0];
      const last = items[items.length - 1];
      if (first === undefined || last === undefined) continue;
      slices.push({ seg, items, from: seg.starts[first] ?? 0, to: (seg.starts[last] ?? 0) + (seg.sizes[last] ?? 0) });
    }
    return slices;
  }

  private async load(slices: Slice[]): Promise<SpoolRecord[]> {
    const records: SpoolRecord[] = [];
    for (const { seg, items, from, to } of slices) {
      let buf = Buffer.allocUnsafe(to - from);
      const handle = await open(seg.file, 'r');
      try {
        // A short read (the file cut behind our back) leaves the frames past it failing their check.
        buf = buf.subarray(0, (await handle.read(buf, 0, buf.length, from)).bytesRead);
      } finally {
        await handle.close();
      }
      for (const i of items) {
        const seq = seg.base + i;
        const at = (seg.starts[i] ?? 0) - from;
        const record = decodeFrame(buf, at, seg.sizes[i] ?? 0, seq);
        if (record !== undefined) records.push(record);
        else if (!seg.removed && (seg.starts[i] ?? -1) >= 0) this.lose(seg, i);
      }
    }
    return records;
  }

  /** A record found corrupt when read (the disk changed since open): it is dropped and counted. */
  private lose(seg: Segment, i: number): void {
    const seq = seg.base + i;
    if (seq >= this.head) {
      this.pending -= 1;
      this.pendingBytes -= seg.sizes[i] ?? 0;
      this.corruptDropped += 1;
    }
    seg.starts[i] = -1;
    this.warn(new SpoolError('EAI_SPOOL_CORRUPT', `spool: record ${seq} in ${seg.file} failed its CRC check when read; it was dropped. Fix: check the storage (dmesg, smartctl); the spool goes on`, { details: { file: seg.file, seq, lost: 1 } }));
  }

  private nextAppend(signal: AbortSignal | undefined): Promise<void> {
    return new Promise<void>((resolve) => {
      if (signal?.aborted === true) return resolve();
      const wake = (): void => {
        signal?.removeEventListener('abort', wake);
        resolve();
      };
      this.followers.push(wake);
      signal?.addEventListener('abort', wake, { once: true });
    });
  }

  private wakeFollowers(): void {
    if (this.followers.length === 0) return;
    const followers = this.followers;
    this.followers = [];
    for (const wake of followers) wake();
  }
}

// ---- internals -----------------------------------------------------------------------------------

const MAX_BATCH_FRAMES = 1000;
const MAX_BATCH_BYTES = 1 << 20;
const REPLAY_BATCH_BYTES = 1 << 20;

interface Settings {
  readonly maxBytes: number;
  readonly segmentBytes: number;
  readonly fsync: FsyncMode;
  readonly fsyncIntervalMs: number;
  readonly warn: (problem: SpoolError) => void;
}

interface Frame {
  readonly seg: Segment;
  readonly seq: number;
  readonly bytes: Buffer;
  readonly resolve: (seq: number) => void;
  readonly reject: (error: unknown) => void;
}

interface Blocked {
  readonly run: () => void;
  readonly fail: (error: unknown) => void;
}

interface Slice {
  readonly seg: Segment;
  readonly items: number[];
  readonly from: number;
  readonly to: number;
}

function settle(options: SpoolOptions): Settings {
  const bad = (what: string): SpoolError => new SpoolError('EAI_SPOOL_OPTIONS', `spool: ${what}`, { details: { ...options, warn: undefined } });
  const { maxBytes } = options;
  if (!Number.isSafeInteger(maxBytes) || maxBytes < FRAME_HEADER) throw bad(`maxBytes must be a whole number of bytes >= ${FRAME_HEADER}, got ${String(maxBytes)}. Fix: pass the disk budget, e.g. 64 * 1024 * 1024`);
  const segmentBytes = options.segmentBytes ?? Math.min(4 << 20, Math.max(64 << 10, Math.floor(maxBytes / 8)));
  if (!Number.isSafeInteger(segmentBytes) || segmentBytes < SEGMENT_HEADER + FRAME_HEADER || segmentBytes > 0xffffffff) throw bad(`segmentBytes must be a whole number from ${SEGMENT_HEADER + FRAME_HEADER} to 4 GiB, got ${String(segmentBytes)}. Fix: leave it out, or pass a few MiB`);
  const fsync = options.fsync ?? 'interval';
  if (fsync !== 'always' && fsync !== 'interval' && fsync !== 'never') throw bad(`fsync must be 'always', 'interval' or 'never', got ${JSON.stringify(fsync)}`);
  const fsyncIntervalMs = options.fsyncIntervalMs ?? 1000;
  if (!Number.isFinite(fsyncIntervalMs) || fsyncIntervalMs < 1 || fsyncIntervalMs > 2 ** 31 - 1) throw bad(`fsyncIntervalMs must be a number of milliseconds >= 1, got ${String(fsyncIntervalMs)}`);
  const warn = options.warn ?? ((p: SpoolError) => process.stderr.write(`aios spool: ${p.code}: ${p.message}\n`));
  return { maxBytes, segmentBytes, fsync, fsyncIntervalMs, warn };
}

function closedError(what: string): SpoolError {
  return new SpoolError('EAI_SPOOL_CLOSED', `spool: ${what} after close. Fix: open the spool again (Spool.open)`);
}

function asSpoolError(error: unknown): SpoolError {
  return error instanceof SpoolError ? error : new SpoolError('EAI_SPOOL_IO', `spool: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
}
