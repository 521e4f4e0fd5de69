import { createHash } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { MqttClient } from 'mqtt';
import { isTempOf, syncDir, writeFileAtomic } from '../../models/atomic-write.js';
import { fileSource } from '../../models/bundle/tar.js';
import { FleetError } from '../fleet/errors.js';
import { deviceTopic } from '../fleet/topics.js';
import { decodeMessage, wholeNumber } from '../fleet/wire.js';
import { aios } from '../proto/gen/aios.js';

/**
 * The device side of a bundle transfer (docs/protocol.md, "Fleet"): after a verified `Deploy`
 * command, the device pulls the bundle from the controller in chunks. It publishes
 * `ChunkRequest`s on its `ota/request` topic and the controller answers each chunk with a `Chunk`
 * on its `ota/chunks` topic. Every chunk is checked against the SHA-256 the signed command lists
 * for it before a byte of it reaches the disk, so nothing the signers did not vouch for is ever
 * written, and the whole file is checked against `bundle_sha256` before it gets its final name.
 *
 * Files in `dir`, named by the bundle's SHA-256 (so a second deployment of the same bundle
 * resumes the first one's download):
 *
 *  - `<sha256>.part`: the bundle being written, at its final size from the start; chunk i lives
 *    at byte i × chunk_size. Chunks are written with positional writes as they arrive, in any
 *    order; holes read as zeros.
 *  - `<sha256>.progress`: the progress record, JSON, replaced atomically (writeFileAtomic):
 *    `{"format":"aios-ota-progress/1","bundleSha256","bundleSize","chunkSize","chunks","have"}`
 *    where `have` is base64 of a bitmap with bit i (byte i>>3, mask 1<<(i&7)) set for each chunk
 *    known to be written and good. It is saved every `saveIntervalMs` while chunks arrive, and
 *    at the end, on cancel and on failure. Before saving, the .part is fdatasynced, so the record
 *    never claims data that is only in the page cache.
 *  - `<sha256>.bundle`: the finished, verified bundle (renamed from .part; the directory is
 *    fsynced). It never exists unless it is complete and matches bundle_sha256.
 *
 * Resume (after a disconnect, a cancel, a crash or a power cut): every chunk of the .part is
 * hashed again and counts when it matches its signed digest, so neither a torn write, a lost page
 * cache nor a damaged record can smuggle a bad chunk in, and chunks written after the record's
 * last save (a process killed within a second of starting) are kept rather than fetched again.
 * Holes are recognised as zeros without hashing. The record is what the disk held for certain at
 * the last save: a claimed chunk that fails is counted (`discardedOnResume`, a sign of a disk or
 * power problem), one found good without a claim too (`unrecordedOnResume`). Only the chunks
 * that fail are fetched again.
 *
 * Flow control: at most `window` chunks are requested and not yet written at any time, so the
 * broker holds at most that many for this device and the agent at most that many in memory;
 * contiguous missing chunks are asked for in one request (`first`, `count`). A request not
 * answered within `timeoutMs` is asked again; after a reconnect everything in flight is asked
 * again at once (an answer may have been lost with the connection; duplicates are ignored).
 * With `bytesPerSecond`, requests are also paced by a token bucket holding at most a quarter of
 * a second's bytes (or one chunk, if larger), so the average rate stays under the cap and a burst
 * after an idle spell stays short.
 *
 * The MQTT client belongs to the agent. The download subscribes (QoS 1) to the device's
 * `ota/chunks` topic itself and waits for the SUBACK before its first request, so no answer can
 * arrive before the subscription; it never unsubscribes, because the agent keeps that
 * subscription in its persistent session for the next download (a second SUBSCRIBE for the same
 * filter only replaces the first). It adds a 'message' and a 'connect' listener and removes them
 * when it ends. One download per bundle and folder at a time: two would write the same files.
 *
 * Errors reject `done()` as FleetError with an `EAI_OTA_*` code; bad messages on the chunk topic
 * (not a Chunk, another deployment, an index out of range, the wrong size) are only counted in
 * `stats()`, because anything on the network may be wrong and must never stop the agent.
 */

/** What the signed `Deploy` command says about the transfer (see `bundleTransfer`). */
export interface BundleTransfer {
  readonly deploymentId: string;
  /** Bytes in the bundle file. */
  readonly bundleSize: number;
  /** SHA-256 of the whole file, lowercase hex. */
  readonly bundleSha256: string;
  /** Bytes per chunk; the last chunk may be shorter. At most MAX_CHUNK_BYTES. */
  readonly chunkSize: number;
  /** SHA-256 of each chunk in order: ceil(bundleSize / chunkSize) digests of 32 bytes. */
  readonly chunkSha256: readonly Uint8Array[];
}

export interface BundleDownloadOptions {
  /** The agent's connected client; the download only adds listeners (and its subscription). */
  readonly client: MqttClient;
  readonly fleet: string;
  readonly deviceId: string;
  readonly transfer: BundleTransfer;
  /** Where the .part, .progress and .bundle files live; created if missing. */
  readonly dir: string;
  /** Chunks requested and not yet written, at most. Default 8. */
  readonly window?: number;
  /**
   * The most bytes per second to ask for (a metered or shared link: telemetry and remote
   * operation must still get through). Default: as fast as the window allows.
   */
  readonly bytesPerSecond?: number;
  /** A request not answered after this long is sent again. Default 15 s. */
  readonly timeoutMs?: number;
  /** No chunk written for this long, connected or not: EAI_OTA_TIMEOUT. Default 2 min. */
  readonly stallTimeoutMs?: number;
  /** Copies of one chunk failing their digest before EAI_OTA_CHUNK_DIGEST. Default 3. */
  readonly maxBadCopies?: number;
  /** How often the progress record is saved while chunks arrive. Default 1 s. */
  readonly saveIntervalMs?: number;
  /** After each chunk written (and once after resuming): bytes held of the total. */
  readonly onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

/** Counters of one download, for logs and the deployment's progress events. */
export interface DownloadStats {
  /** Chunks in the bundle, and how many are written and good. */
  readonly chunks: number;
  readonly chunksHeld: number;
  /** Chunks found good in the .part when starting, and claimed ones that failed re-verification. */
  readonly resumedChunks: number;
  readonly discardedOnResume: number;
  /** Of the resumed chunks, those the record did not claim: written after its last save. */
  readonly unrecordedOnResume: number;
  /** ChunkRequest messages published, and the chunks they asked for in all. */
  readonly requests: number;
  readonly chunksRequested: number;
  /** Good chunks received and written. */
  readonly received: number;
  /** A chunk already held or being written. */
  readonly duplicates: number;
  /** Chunks whose SHA-256 did not match the signed one (dropped, asked again). */
  readonly badDigest: number;
  /** Messages on the chunk topic that are not a Chunk (or hold an index beyond 2^53). */
  readonly malformed: number;
  /** Chunks of another deployment or bundle. */
  readonly foreign: number;
  readonly outOfRange: number;
  readonly wrongSize: number;
  /** Chunks asked again because their request timed out, or because the connection dropped. */
  readonly timeouts: number;
  readonly resent: number;
  /**
   * The most chunks ever requested or being written at once: within the window, except when late
   * answers to requests that were asked again arrive (each is written once, then ignored).
   */
  readonly maxInFlight: number;
}

/** The largest chunk a transfer uses: a Chunk message must stay under MAX_MESSAGE_BYTES (2 MiB). */
export const MAX_CHUNK_BYTES = 1024 * 1024;
/** The most chunks one ChunkRequest asks for (the controller caps requests at this too). */
export const MAX_REQUEST_CHUNKS = 64;
export const PROGRESS_FORMAT = 'aios-ota-progress/1';
/** How much of the .part one read covers while resuming. */
const RESUME_READ_BYTES = 1024 * 1024;

/** The transfer fields of a verified Deploy command, as numbers and plain byte arrays. */
export function bundleTransfer(deploy: aios.fleet.v1.IDeploy): BundleTransfer {
  return {
    deploymentId: deploy.deploymentId ?? '',
    bundleSize: wholeNumber(deploy.bundleSize, 'Deploy.bundle_size'),
    bundleSha256: deploy.bundleSha256 ?? '',
    chunkSize: deploy.chunkSize ?? 0,
    chunkSha256: deploy.chunkSha256 ?? [],
  };
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

export class BundleDownload {
  readonly #client: MqttClient;
  readonly #transfer: BundleTransfer;
  readonly #chunks: number;
  readonly #window: number;
  readonly #timeoutMs: number;
  readonly #stallTimeoutMs: number;
  readonly #maxBadCopies: number;
  readonly #saveIntervalMs: number;
  readonly #bytesPerSecond: number | undefined;
  readonly #onProgress: (bytesDone: number, bytesTotal: number) => void;
  readonly #requestTopic: string;
  readonly #chunkTopic: string;
  readonly #files: { readonly dir: string; readonly part: string; readonly progress: string; readonly bundle: string };

  /** Bit i: chunk i is written to the .part and matched its digest. */
  readonly #have: Uint8Array;
  /** Requested chunks not yet answered: index -> when to ask again (ms). */
  readonly #inFlight = new Map<number, number>();
  /** Good chunks whose write is under way. */
  readonly #writing = new Map<number, Promise<void>>();
  readonly #badCopies = new Map<number, number>();
  readonly #stats: Mutable<DownloadStats>;
  #bytesDone = 0;
  /** Every chunk below this one is held: where the search for missing chunks starts. */
  #firstGap = 0;
  #pumpScheduled = false;
  /** The rate limit's token bucket: bytes that may be asked for now, as of #allowanceAt. */
  #allowance = 0;
  #allowanceAt = Date.now();
  /** A pump waiting for the bucket to refill. */
  #paced: NodeJS.Timeout | undefined;
  #handle: FileHandle | undefined;
  #timer: NodeJS.Timeout | undefined;
  #lastProgressAt = Date.now();
  #lastSaveAt = Date.now();
  /** The bitmap changed since the record was last saved. */
  #dirty = false;
  /** Record saves run one after another. */
  #saving: Promise<void> = Promise.resolve();
  #state: 'starting' | 'running' | 'finishing' | 'ended' = 'starting';
  /** The work on the files before fetching (open, re-verify): teardown waits for it, never for the broker. */
  #preparing: Promise<unknown> = Promise.resolve();
  readonly #done: Promise<string>;
  #resolve: (file: string) => void = () => undefined;
  #reject: (error: FleetError) => void = () => undefined;

  /**
   * Checks the transfer fields (FleetError EAI_OTA_DEPLOY_INVALID when they disagree) and starts
   * at once: the outcome is `done()`.
   */
  constructor(options: BundleDownloadOptions) {
    const t = options.transfer;
    checkTransfer(t);
    this.#client = options.client;
    this.#transfer = t;
    this.#chunks = t.chunkSha256.length;
    this.#window = positive(options.window ?? 8, 'window');
    this.#timeoutMs = positive(options.timeoutMs ?? 15_000, 'timeoutMs');
    this.#stallTimeoutMs = positive(options.stallTimeoutMs ?? 120_000, 'stallTimeoutMs');
    this.#maxBadCopies = positive(options.maxBadCopies ?? 3, 'maxBadCopies');
    this.#saveIntervalMs = positive(options.saveIntervalMs ?? 1000, 'saveIntervalMs');
    this.#bytesPerSecond = options.bytesPerSecond === undefined ? undefined : positive(options.bytesPerSecond, 'bytesPerSecond');
    this.#onProgress = options.onProgress ?? (() => undefined);
    this.#requestTopic = deviceTopic(options.fleet, options.deviceId, 'ota/request');
    this.#chunkTopic = deviceTopic(options.fleet, options.deviceId, 'ota/chunks');
    const base = path.join(options.dir, t.bundleSha256);
    this.#files = { dir: options.dir, part: `${base}.part`, progress: `${base}.progress`, bundle: `${base}.bundle` };
    this.#have = new Uint8Array(Math.ceil(this.#chunks / 8));
    this.#stats = { chunks: this.#chunks, chunksHeld: 0, resumedChunks: 0, discardedOnResume: 0, unrecordedOnResume: 0, requests: 0, chunksRequested: 0, received: 0, duplicates: 0, badDigest: 0, malformed: 0, foreign: 0, outOfRange: 0, wrongSize: 0, timeouts: 0, resent: 0, maxInFlight: 0 };
    this.#done = new Promise<string>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    // The caller may learn the outcome late (or only cancel); an early failure must not count as unhandled.
    this.#done.catch(() => undefined);
    const prepared = this.#prepare();
    this.#preparing = prepared.catch(() => undefined);
    prepared.then((fetch) => (fetch ? this.#fetch() : undefined)).catch((error: unknown) => this.#fail(asOtaError(error)));
  }

  /** The path of the verified `<sha256>.bundle`; rejects with a FleetError `EAI_OTA_*`. */
  done(): Promise<string> {
    return this.#done;
  }

  stats(): DownloadStats {
    return { ...this.#stats, chunksHeld: this.#held() };
  }

  /**
   * Stops asking, saves the progress record and closes the .part (kept, for a later download of
   * the same bundle to resume); `done()` rejects with EAI_OTA_CANCELLED. Resolves once the files
   * are closed. Does nothing after the download ended.
   */
  async cancel(): Promise<void> {
    if (this.#state !== 'ended') this.#fail(new FleetError('EAI_OTA_CANCELLED', `The download of bundle ${this.#transfer.bundleSha256} (deployment ${this.#transfer.deploymentId}) was cancelled; what it fetched is kept in ${this.#files.part} and a new download of the same bundle resumes from there.`, { details: { deploymentId: this.#transfer.deploymentId, bundleSha256: this.#transfer.bundleSha256 } }));
    await this.#done.catch(() => undefined);
  }

  /** Opens the .part and re-verifies what it holds; false when there is nothing to fetch (or it was stopped). */
  async #prepare(): Promise<boolean> {
    const { dir, part } = this.#files;
    await disk('create the download folder', dir, () => mkdir(dir, { recursive: true }));
    if (await this.#finishedBefore()) return false;
    await this.#removeTemporaries();
    const handle = await disk('open', part, () => open(part, 'r+').catch((error: unknown) => (isCode(error, 'ENOENT') ? open(part, 'w+', 0o600) : Promise.reject(error))));
    this.#handle = handle;
    if (this.#stopped()) return false;
    await this.#resume(handle);
    return !this.#stopped();
  }

  /** Subscribes, then asks for the missing chunks; the stall timer runs from here. */
  async #fetch(): Promise<void> {
    this.#report();
    this.#timer = setInterval(() => this.#tick(), Math.min(1000, Math.max(20, Math.floor(Math.min(this.#timeoutMs, this.#saveIntervalMs) / 4))));
    this.#timer.unref();
    if (this.#held() === this.#chunks) {
      void this.#finish();
      return;
    }
    await this.#client.subscribeAsync(this.#chunkTopic, { qos: 1 }).catch((cause: unknown) => {
      throw new FleetError('EAI_OTA_SUBSCRIBE', `The broker refused the subscription to ${this.#chunkTopic} (${cause instanceof Error ? cause.message : String(cause)}): the device cannot receive bundle chunks. Check the broker's ACL gives each device read access to its own ota/chunks topic (docs/protocol.md, "Fleet").`, { cause, details: { topic: this.#chunkTopic } });
    });
    if (this.#stopped()) return;
    this.#state = 'running';
    this.#client.on('message', this.#onMessage);
    this.#client.on('connect', this.#onConnect);
    this.#lastProgressAt = Date.now();
    this.#pump();
  }

  /** A verified .bundle from an earlier run (killed before it cleaned up): done at once. */
  async #finishedBefore(): Promise<boolean> {
    const { bundle, part, progress, dir } = this.#files;
    const digest = await sha256OfFile(bundle).catch((error: unknown) => {
      if (isCode(error, 'ENOENT')) return undefined;
      throw diskError('read', bundle, error);
    });
    if (digest === undefined) return false;
    if (digest.size === this.#transfer.bundleSize && digest.sha256 === this.#transfer.bundleSha256) {
      await disk('remove', part, () => rm(part, { force: true }));
      await disk('remove', progress, () => rm(progress, { force: true }));
      this.#bytesDone = this.#transfer.bundleSize;
      this.#have.fill(0xff);
      this.#stats.resumedChunks = this.#chunks;
      this.#stats.chunksHeld = this.#chunks;
      this.#state = 'ended';
      this.#report();
      this.#resolve(bundle);
      return true;
    }
    // Only a verified file is ever renamed to this name: someone else wrote it. Start afresh.
    await disk('remove', bundle, () => rm(bundle, { force: true }));
    await disk('sync', dir, () => syncDir(dir));
    return false;
  }

  /** Temporary record files of a run that was killed while saving (writeFileAtomic's names). */
  async #removeTemporaries(): Promise<void> {
    const { dir, progress } = this.#files;
    const base = path.basename(progress);
    const names = await disk('list', dir, () => readdir(dir));
    for (const name of names.filter((n) => isTempOf(n, base))) await disk('remove', path.join(dir, name), () => rm(path.join(dir, name), { force: true }));
  }

  /**
   * Marks the chunks of the .part that hash right. Every chunk is tried, not only those the record
   * claims: a run killed between two saves leaves chunks on disk (in the page cache at least) that
   * no record mentions yet, and fetching them again would make a device that keeps crashing in its
   * first second start from nothing each time. Holes read as zeros and are rejected without
   * hashing, so trying the unwritten rest of a sparse .part costs little.
   */
  async #resume(handle: FileHandle): Promise<void> {
    const { part } = this.#files;
    const t = this.#transfer;
    const partSize = (await disk('stat', part, () => handle.stat())).size;
    const record = await this.#readRecord();
    const claimed = (i: number): boolean => record !== undefined && ((record[i >> 3] ?? 0) & (1 << (i & 7))) !== 0;
    await disk('size', part, () => handle.truncate(t.bundleSize));
    const covered = Math.min(this.#chunks, Math.ceil(partSize / t.chunkSize));
    // Read in spans of whole chunks (about 1 MiB): small chunks would otherwise cost a read each.
    const span = Math.max(1, Math.floor(RESUME_READ_BYTES / t.chunkSize));
    const buffer = Buffer.allocUnsafe(span * t.chunkSize);
    const zeros = Buffer.alloc(t.chunkSize);
    const zeroDigests = new Map<number, Buffer>();
    for (let first = 0; first < covered; first += span) {
      if (this.#stopped()) return;
      const last = Math.min(first + span, covered);
      const length = (last - first - 1) * t.chunkSize + this.#sizeOf(last - 1);
      await disk('read', part, () => readFully(handle, buffer, length, first * t.chunkSize));
      for (let i = first; i < last; i++) {
        const size = this.#sizeOf(i);
        const bytes = buffer.subarray((i - first) * t.chunkSize, (i - first) * t.chunkSize + size);
        const expected = t.chunkSha256[i] as Uint8Array;
        let good: boolean;
        if (bytes.equals(zeros.subarray(0, size))) {
          // Never written (or a chunk that really is all zeros: then its signed digest says so).
          let digest = zeroDigests.get(size);
          if (digest === undefined) zeroDigests.set(size, (digest = createHash('sha256').update(bytes).digest()));
          good = digest.equals(expected);
        } else {
          good = createHash('sha256').update(bytes).digest().equals(expected);
        }
        if (good) {
          this.#mark(i);
          this.#stats.resumedChunks++;
          if (!claimed(i)) this.#stats.unrecordedOnResume++;
        } else if (claimed(i)) {
          this.#stats.discardedOnResume++;
        }
      }
    }
    this.#dirty = true;
    await this.#save();
  }

  /** The record's bitmap, or undefined when it is missing, unreadable or for other chunks. */
  async #readRecord(): Promise<Uint8Array | undefined> {
    const { progress } = this.#files;
    const t = this.#transfer;
    let text: string;
    try {
      text = await readFile(progress, 'utf8');
    } catch (error) {
      if (isCode(error, 'ENOENT')) return undefined;
      throw diskError('read', progress, error);
    }
    try {
      const r = JSON.parse(text) as Record<string, unknown>;
      if (r['format'] !== PROGRESS_FORMAT || r['bundleSha256'] !== t.bundleSha256 || r['bundleSize'] !== t.bundleSize || r['chunkSize'] !== t.chunkSize || r['chunks'] !== this.#chunks || typeof r['have'] !== 'string') return undefined;
      const have = Buffer.from(r['have'], 'base64');
      return have.length === this.#have.length ? have : undefined;
    } catch {
      return undefined;
    }
  }

  readonly #onMessage = (topic: string, payload: Buffer): void => {
    if (topic !== this.#chunkTopic || this.#state !== 'running') return;
    const t = this.#transfer;
    let chunk: aios.fleet.v1.Chunk;
    let index: number;
    try {
      chunk = decodeMessage(aios.fleet.v1.Chunk, payload, 'an OTA chunk');
      index = wholeNumber(chunk.index, 'Chunk.index');
    } catch {
      this.#stats.malformed++;
      return;
    }
    if (chunk.deploymentId !== t.deploymentId || chunk.bundleSha256 !== t.bundleSha256) {
      this.#stats.foreign++;
      return;
    }
    if (index >= this.#chunks) {
      this.#stats.outOfRange++;
      return;
    }
    const data = chunk.data;
    if (data.length !== this.#sizeOf(index)) {
      this.#stats.wrongSize++;
      return;
    }
    if (this.#holds(index) || this.#writing.has(index)) {
      this.#stats.duplicates++;
      return;
    }
    if (!createHash('sha256').update(data).digest().equals(t.chunkSha256[index] as Uint8Array)) {
      this.#stats.badDigest++;
      const copies = (this.#badCopies.get(index) ?? 0) + 1;
      this.#badCopies.set(index, copies);
      if (copies >= this.#maxBadCopies) {
        this.#fail(new FleetError('EAI_OTA_CHUNK_DIGEST', `Chunk ${index} of bundle ${t.bundleSha256} (deployment ${t.deploymentId}) arrived ${copies} times with a SHA-256 other than the signed one; the download stopped. The controller's copy of the bundle differs from the one the Deploy command describes: rebuild the command from the bundle file (chunkDigests), or check the controller's disk.`, { details: { deploymentId: t.deploymentId, bundleSha256: t.bundleSha256, index, copies } }));
        return;
      }
      // Asked again at once rather than after the timeout: this answer is spent.
      this.#inFlight.delete(index);
      this.#pumpSoon();
      return;
    }
    this.#inFlight.delete(index);
    const write = this.#write(index, data);
    this.#writing.set(index, write);
  };

  /** A reconnect: answers in flight may have been lost with the old connection, so ask again. */
  readonly #onConnect = (): void => {
    if (this.#state !== 'running') return;
    this.#stats.resent += this.#inFlight.size;
    this.#inFlight.clear();
    this.#pump();
  };

  async #write(index: number, data: Uint8Array): Promise<void> {
    const { part } = this.#files;
    const handle = this.#handle as FileHandle;
    try {
      await writeFully(handle, data, index * this.#transfer.chunkSize);
    } catch (error) {
      this.#writing.delete(index);
      this.#fail(diskError('write', part, error));
      return;
    }
    this.#writing.delete(index);
    // Marked even when the download is stopping: the bytes are written, and the final save keeps them.
    this.#mark(index);
    this.#stats.received++;
    if (this.#state !== 'running') return;
    this.#lastProgressAt = Date.now();
    this.#report();
    if (this.#held() === this.#chunks) void this.#finish();
    else this.#pumpSoon();
  }

  /**
   * Requests after the writes that complete in this turn of the event loop have all landed, so
   * their freed slots go out as one request for a contiguous run rather than one per chunk.
   */
  #pumpSoon(): void {
    if (this.#pumpScheduled) return;
    this.#pumpScheduled = true;
    setImmediate(() => {
      this.#pumpScheduled = false;
      this.#pump();
    });
  }

  /** Requests missing chunks, in contiguous runs, until the window is full. */
  #pump(): void {
    if (this.#state !== 'running' || !this.#client.connected) return;
    const t = this.#transfer;
    let room = this.#window - this.#inFlight.size - this.#writing.size;
    const now = Date.now();
    const deadline = now + this.#timeoutMs;
    const rate = this.#bytesPerSecond;
    if (rate !== undefined) {
      this.#allowance = Math.min(Math.max(t.chunkSize, rate / 4), this.#allowance + ((now - this.#allowanceAt) * rate) / 1000);
      this.#allowanceAt = now;
    }
    for (let i = this.#firstGap; i < this.#chunks && room > 0; i++) {
      if (!this.#wanted(i)) continue;
      if (rate !== undefined && this.#allowance < this.#sizeOf(i)) {
        // Ask again once the bucket holds this chunk's bytes.
        if (this.#paced === undefined) {
          this.#paced = setTimeout(() => {
            this.#paced = undefined;
            this.#pump();
          }, Math.ceil(((this.#sizeOf(i) - this.#allowance) * 1000) / rate));
          this.#paced.unref();
        }
        break;
      }
      let count = 1;
      while (count < room && count < MAX_REQUEST_CHUNKS && i + count < this.#chunks && this.#wanted(i + count) && (rate === undefined || this.#allowance >= this.#bytesIn(i, count + 1))) count++;
      if (rate !== undefined) this.#allowance -= this.#bytesIn(i, count);
      for (let j = i; j < i + count; j++) this.#inFlight.set(j, deadline);
      const request = aios.fleet.v1.ChunkRequest.encode({ deploymentId: t.deploymentId, bundleSha256: t.bundleSha256, first: i, count }).finish();
      // Not awaited: a lost request is asked again after its timeout or the next reconnect.
      this.#client.publish(this.#requestTopic, Buffer.from(request.buffer, request.byteOffset, request.byteLength), { qos: 1 }, () => undefined);
      this.#stats.requests++;
      this.#stats.chunksRequested += count;
      room -= count;
      i += count - 1;
    }
    this.#stats.maxInFlight = Math.max(this.#stats.maxInFlight, this.#inFlight.size + this.#writing.size);
  }

  #tick(): void {
    if (this.#stopped()) return;
    const now = Date.now();
    if (this.#state === 'running') {
      let expired = 0;
      for (const [index, deadline] of this.#inFlight) {
        if (deadline > now) continue;
        this.#inFlight.delete(index);
        expired++;
      }
      if (expired > 0) {
        this.#stats.timeouts += expired;
        this.#pump();
      }
      if (this.#dirty && now - this.#lastSaveAt >= this.#saveIntervalMs) void this.#save().catch((error: unknown) => this.#fail(asOtaError(error)));
    }
    if (this.#state !== 'finishing' && now - this.#lastProgressAt > this.#stallTimeoutMs) {
      const t = this.#transfer;
      this.#fail(new FleetError('EAI_OTA_TIMEOUT', `No chunk of bundle ${t.bundleSha256} (deployment ${t.deploymentId}) arrived for ${Math.round(this.#stallTimeoutMs / 1000)} s (${this.#held()} of ${this.#chunks} held${this.#client.connected ? '' : '; the broker connection is down'}). The download stopped and keeps what it has: check the controller runs and still serves this deployment, then deploy again to resume.`, { details: { deploymentId: t.deploymentId, bundleSha256: t.bundleSha256, held: this.#held(), chunks: this.#chunks, connected: this.#client.connected } }));
    }
  }

  /**
   * Saves the bitmap (atomically), after the chunks it claims are on disk. Saves queue behind
   * each other; a save that finds nothing new does nothing.
   */
  #save(): Promise<void> {
    const run = async (): Promise<void> => {
      if (!this.#dirty || this.#handle === undefined) return;
      this.#dirty = false;
      this.#lastSaveAt = Date.now();
      const have = Buffer.from(this.#have); // only chunks already written: a bit is set after its write
      const { part, progress } = this.#files;
      const handle = this.#handle;
      await disk('sync', part, () => handle.datasync());
      const t = this.#transfer;
      const record = { format: PROGRESS_FORMAT, bundleSha256: t.bundleSha256, bundleSize: t.bundleSize, chunkSize: t.chunkSize, chunks: this.#chunks, have: have.toString('base64') };
      await disk('write', progress, () => writeFileAtomic(progress, `${JSON.stringify(record)}\n`));
    };
    const next = this.#saving.then(run);
    this.#saving = next.catch(() => undefined);
    return next;
  }

  /** All chunks held: sync, check the whole file, give it its final name. */
  async #finish(): Promise<void> {
    if (this.#state === 'finishing' || this.#state === 'ended') return;
    this.#state = 'finishing';
    this.#detach();
    const t = this.#transfer;
    const { dir, part, progress, bundle } = this.#files;
    try {
      this.#dirty = true;
      await this.#save();
      const handle = this.#handle as FileHandle;
      await disk('sync', part, () => handle.sync());
      this.#handle = undefined;
      await disk('close', part, () => handle.close());
      const digest = await sha256OfFile(part).catch((error: unknown) => Promise.reject(diskError('read', part, error)));
      if (digest.size !== t.bundleSize || digest.sha256 !== t.bundleSha256) {
        // Every chunk matched the signed digests, so the command itself disagrees with itself (or
        // the disk changed the file under us): nothing kept here can become right. Start clean.
        await rm(part, { force: true }).catch(() => undefined);
        await rm(progress, { force: true }).catch(() => undefined);
        throw new FleetError('EAI_OTA_BUNDLE_DIGEST', `The downloaded bundle has SHA-256 ${digest.sha256} (${digest.size} bytes) but deployment ${t.deploymentId} names ${t.bundleSha256} (${t.bundleSize} bytes), although every chunk matched its signed digest; it was deleted. The Deploy command's chunk digests and bundle digest describe different files: rebuild the command from the bundle file (chunkDigests).`, { details: { deploymentId: t.deploymentId, expected: t.bundleSha256, actual: digest.sha256, size: digest.size } });
      }
      await disk('rename', part, () => rename(part, bundle));
      await disk('sync', dir, () => syncDir(dir));
      // A stale record beside a finished .bundle is harmless (the next start finds the bundle first).
      await rm(progress, { force: true }).catch(() => undefined);
      this.#state = 'ended';
      this.#resolve(bundle);
    } catch (error) {
      this.#settle(asOtaError(error));
    }
  }

  #fail(error: FleetError): void {
    if (this.#state === 'ended' || this.#state === 'finishing') return;
    this.#settle(error);
  }

  /** Stops everything, saves the record, closes the .part, then rejects `done()`. */
  #settle(error: FleetError): void {
    this.#state = 'ended';
    this.#detach();
    void (async () => {
      await this.#preparing;
      await Promise.allSettled(this.#writing.values());
      await this.#saving;
      const handle = this.#handle;
      if (handle !== undefined) {
        this.#dirty = true;
        await this.#save().catch(() => undefined);
        this.#handle = undefined;
        await handle.close().catch(() => undefined);
      }
    })().finally(() => this.#reject(error));
  }

  #detach(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    if (this.#paced !== undefined) clearTimeout(this.#paced);
    this.#paced = undefined;
    this.#client.off('message', this.#onMessage);
    this.#client.off('connect', this.#onConnect);
    this.#inFlight.clear();
  }

  /** Read through a method: TypeScript would otherwise keep its narrowing across awaits. */
  #stopped(): boolean {
    return this.#state === 'ended';
  }

  #report(): void {
    try {
      this.#onProgress(this.#bytesDone, this.#transfer.bundleSize);
    } catch {
      // The caller's progress display failing is no reason to stop fetching (nor to crash).
    }
  }

  #mark(index: number): void {
    if (this.#holds(index)) return;
    this.#have[index >> 3] = (this.#have[index >> 3] ?? 0) | (1 << (index & 7));
    this.#bytesDone += this.#sizeOf(index);
    this.#stats.chunksHeld++;
    this.#dirty = true;
    while (this.#firstGap < this.#chunks && this.#holds(this.#firstGap)) this.#firstGap++;
  }

  #holds(index: number): boolean {
    return ((this.#have[index >> 3] ?? 0) & (1 << (index & 7))) !== 0;
  }

  #wanted(index: number): boolean {
    return !this.#holds(index) && !this.#inFlight.has(index) && !this.#writing.has(index);
  }

  #held(): number {
    return this.#stats.chunksHeld;
  }

  #sizeOf(index: number): number {
    const t = this.#transfer;
    return Math.min(t.chunkSize, t.bundleSize - index * t.chunkSize);
  }

  /** Bytes in chunks first … first + count - 1. */
  #bytesIn(first: number, count: number): number {
    const t = this.#transfer;
    return Math.min(count * t.chunkSize, t.bundleSize - first * t.chunkSize);
  }
}

/** SHA-256 and size of a file, read in 1 MiB pieces (never the whole file in memory). */
export async function sha256OfFile(file: string): Promise<{ size: number; sha256: string }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const piece of fileSource(file)) {
    hash.update(piece);
    size += piece.length;
  }
  return { size, sha256: hash.digest('hex') };
}

const SHA256_HEX = /^[0-9a-f]{64}$/u;

function checkTransfer(t: BundleTransfer): void {
  const problems: string[] = [];
  if (typeof t.deploymentId !== 'string' || t.deploymentId === '') problems.push('deployment_id is empty');
  // The digest names the files: only hex, so it can never leave the download folder.
  if (!SHA256_HEX.test(t.bundleSha256)) problems.push(`bundle_sha256 '${String(t.bundleSha256).slice(0, 80)}' is not 64 lowercase hex digits`);
  if (!Number.isSafeInteger(t.bundleSize) || t.bundleSize < 0) problems.push(`bundle_size ${t.bundleSize} is not a whole number of bytes`);
  if (!Number.isInteger(t.chunkSize) || t.chunkSize < 1 || t.chunkSize > MAX_CHUNK_BYTES) problems.push(`chunk_size ${t.chunkSize} is not between 1 and ${MAX_CHUNK_BYTES}`);
  else if (Number.isSafeInteger(t.bundleSize) && t.chunkSha256.length !== Math.ceil(t.bundleSize / t.chunkSize)) problems.push(`chunk_sha256 lists ${t.chunkSha256.length} digests where ${t.bundleSize} bytes in chunks of ${t.chunkSize} make ${Math.ceil(t.bundleSize / t.chunkSize)}`);
  const short = t.chunkSha256.findIndex((d) => d.length !== 32);
  if (short >= 0) problems.push(`chunk_sha256[${short}] is ${t.chunkSha256[short]?.length} bytes, not 32`);
  if (problems.length > 0) throw new FleetError('EAI_OTA_DEPLOY_INVALID', `The Deploy command's transfer fields disagree: ${problems.join('; ')}. Nothing was downloaded; rebuild the command from the bundle file (chunkDigests).`, { details: { problems } });
}

function positive(value: number, what: string): number {
  if (!Number.isFinite(value) || value <= 0) throw new FleetError('EAI_OTA_DEPLOY_INVALID', `${what} must be a positive number, got ${value}.`, { details: { what, value } });
  return value;
}

async function readFully(handle: FileHandle, buffer: Buffer, length: number, position: number): Promise<void> {
  for (let done = 0; done < length; ) {
    const { bytesRead } = await handle.read(buffer, done, length - done, position + done);
    if (bytesRead === 0) {
      buffer.fill(0, done, length); // past the end: a hole, which hashes wrong
      return;
    }
    done += bytesRead;
  }
}

async function writeFully(handle: FileHandle, data: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < data.length; ) {
    const { bytesWritten } = await handle.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

async function disk<T>(what: string, file: string, op: () => Promise<T>): Promise<T> {
  try {
    return await op();
  } catch (error) {
    throw diskError(what, file, error);
  }
}

function diskError(what: string, file: string, cause: unknown): FleetError {
  if (cause instanceof FleetError) return cause;
  const code = typeof cause === 'object' && cause !== null && 'code' in cause ? String((cause as { code: unknown }).code) : undefined;
  return new FleetError('EAI_OTA_DISK', `Cannot ${what} ${file}${code === undefined ? '' : ` (${code})`}: ${cause instanceof Error ? cause.message : String(cause)}. The download stopped and keeps what it wrote; free space or fix the folder's permissions, then deploy again to resume.`, { cause, details: { path: file, op: what, ...(code === undefined ? {} : { errno: code }) } });
}

function asOtaError(error: unknown): FleetError {
  return error instanceof FleetError ? error : diskError('use', '(download folder)', error);
}

function isCode(error: unknown, code: string): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === code;
}
