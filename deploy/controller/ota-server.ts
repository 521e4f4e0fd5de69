import { createHash } from 'node:crypto';
import { open, stat, type FileHandle } from 'node:fs/promises';
import type { MqttClient } from 'mqtt';
import { fileSource } from '../../models/bundle/tar.js';
import { FleetError } from '../fleet/errors.js';
import { deviceTopic, everyDevice, parseDeviceTopic, sharedFilter } from '../fleet/topics.js';
import { decodeMessage, wholeNumber } from '../fleet/wire.js';
import { aios } from '../proto/gen/aios.js';

/**
 * The controller side of a bundle transfer (docs/protocol.md, "Fleet"; the device side is
 * deploy/agent/ota-download.ts): answers each device's `ChunkRequest` on
 * `aios/<fleet>/devices/<device>/ota/request` with one `Chunk` per requested chunk on that
 * device's `ota/chunks` topic, QoS 1, read from the bundle file with positional reads.
 *
 * Memory and broker load stay bounded however big the bundle and the fleet: mqtt.js does not cap
 * QoS 1 publishes in flight, so the server awaits each publish's PUBACK and keeps at most
 * `perDevice` chunks in flight per device and `total` overall (reading a chunk counts as in
 * flight); the rest wait as small queue entries (no data), served round-robin so one device's
 * long download does not starve the others. A device asks for a bounded window itself; the
 * server still caps a request at `maxRequestChunks`, drops a request for a chunk already queued
 * for that device (a re-request after a reconnect), and queues at most `maxQueuedPerDevice`.
 *
 * Nothing a device sends can crash the controller: a request that does not decode, names an
 * unknown bundle (or one `bundles` will not give this device), or lies outside the file is
 * dropped and counted in `stats()`; the device's own timeout asks again or gives up.
 */

/** A bundle a device may fetch: the file, and the chunk size its Deploy command announced. */
export interface BundleFile {
  readonly path: string;
  readonly chunkSize: number;
}

/** Who asks for which bundle: what `bundles` decides on. */
export interface BundleQuery {
  readonly device: string;
  readonly deploymentId: string;
  readonly bundleSha256: string;
}

export interface BundleServerOptions {
  /** The controller's connected client (certificate name aios-controller…). */
  readonly client: MqttClient;
  readonly fleet: string;
  /**
   * The file for a request, or undefined when this device may not have that bundle (not deployed
   * to it, unknown): the request is then answered with nothing. The chunk size is needed because
   * requests count chunks, not bytes; it must be the one in the device's Deploy command.
   */
  readonly bundles: (query: BundleQuery) => Promise<BundleFile | undefined> | BundleFile | undefined;
  /** Subscribe as a member of this MQTT shared-subscription group (controller replicas: each request reaches one of them). */
  readonly share?: string;
  /** Chunks in flight (read or published and not yet acknowledged) per device. Default 8. */
  readonly perDevice?: number;
  /** Chunks in flight over all devices. Default 64. */
  readonly total?: number;
  /** Chunks one request may ask for; more are cut off. Default 64. */
  readonly maxRequestChunks?: number;
  /** Chunks queued (not yet in flight) per device; further ones are dropped. Default 1024. */
  readonly maxQueuedPerDevice?: number;
  /** Tests only: replaces a chunk's data just before it is published (to corrupt it in flight). */
  readonly tamper?: (device: string, index: number, data: Buffer) => Uint8Array;
}

export interface BundleServerStats {
  /** ChunkRequest messages received, and chunks they asked for (after the cap). */
  readonly requests: number;
  readonly chunksRequested: number;
  /** Chunks published and acknowledged by the broker. */
  readonly chunksSent: number;
  readonly bytesSent: number;
  /** Not a ChunkRequest, a bad digest string, count 0, or on a topic that is not a device's. */
  readonly malformed: number;
  /** The bundle is unknown or not for this device (or its lookup gave an impossible chunk size). */
  readonly unknownBundle: number;
  /** Requests reaching past the last chunk (answered up to it, or not at all when they start there). */
  readonly outOfRange: number;
  /** Requests over maxRequestChunks (cut to it). */
  readonly capped: number;
  /** Chunks asked for again while still queued or in flight for that device. */
  readonly duplicateRequests: number;
  /** Chunks dropped because the device's queue was full. */
  readonly queueFull: number;
  readonly readErrors: number;
  readonly publishErrors: number;
  /** The most chunks in flight at once, overall and for any one device. */
  readonly maxInFlight: number;
  readonly maxInFlightPerDevice: number;
}

/** SHA-256 of the whole file and of each chunk, streamed, for building a Deploy command. */
export interface ChunkDigests {
  readonly size: number;
  readonly sha256: string;
  readonly chunkSha256: Buffer[];
}

/** The largest chunk: a Chunk message must stay under the 2 MiB readers accept. */
export const MAX_CHUNK_BYTES = 1024 * 1024;

/**
 * The size, SHA-256 (hex) and per-chunk SHA-256 of `file` in chunks of `chunkSize`, read in 1 MiB
 * pieces. Throws FleetError EAI_OTA_DEPLOY_INVALID for a chunk size out of 1..MAX_CHUNK_BYTES.
 */
export async function chunkDigests(file: string, chunkSize: number): Promise<ChunkDigests> {
  if (!Number.isInteger(chunkSize) || chunkSize < 1 || chunkSize > MAX_CHUNK_BYTES) {
    throw new FleetError('EAI_OTA_DEPLOY_INVALID', `A chunk size of ${chunkSize} bytes cannot be sent: use 1 to ${MAX_CHUNK_BYTES} (a chunk travels in one MQTT message; 256 KiB suits most links).`, { details: { chunkSize } });
  }
  const whole = createHash('sha256');
  const chunkSha256: Buffer[] = [];
  let chunk = createHash('sha256');
  let inChunk = 0;
  let size = 0;
  for await (const piece of fileSource(file)) {
    whole.update(piece);
    size += piece.length;
    for (let at = 0; at < piece.length; ) {
      const take = Math.min(chunkSize - inChunk, piece.length - at);
      chunk.update(piece.subarray(at, at + take));
      at += take;
      inChunk += take;
      if (inChunk === chunkSize) {
        chunkSha256.push(chunk.digest());
        chunk = createHash('sha256');
        inChunk = 0;
      }
    }
  }
  if (inChunk > 0) chunkSha256.push(chunk.digest());
  return { size, sha256: whole.digest('hex'), chunkSha256 };
}

interface Job {
  readonly key: string;
  readonly device: string;
  readonly deploymentId: string;
  readonly bundleSha256: string;
  readonly index: number;
  readonly file: BundleFile;
  readonly size: number;
}

interface DeviceQueue {
  readonly jobs: Job[];
  /** Keys of jobs queued or in flight: a repeated request for one of them adds nothing. */
  readonly keys: Set<string>;
  inFlight: number;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

const SHA256_HEX = /^[0-9a-f]{64}$/u;

export class BundleServer {
  readonly #client: MqttClient;
  readonly #fleet: string;
  readonly #filter: string;
  readonly #bundles: BundleServerOptions['bundles'];
  readonly #perDevice: number;
  readonly #total: number;
  readonly #maxRequestChunks: number;
  readonly #maxQueued: number;
  readonly #tamper: ((device: string, index: number, data: Buffer) => Uint8Array) | undefined;
  /** Devices with work, in service order: a device served moves to the back (round-robin). */
  readonly #queues = new Map<string, DeviceQueue>();
  readonly #files = new OpenFiles();
  readonly #sending = new Set<Promise<void>>();
  readonly #stats: Mutable<BundleServerStats> = { requests: 0, chunksRequested: 0, chunksSent: 0, bytesSent: 0, malformed: 0, unknownBundle: 0, outOfRange: 0, capped: 0, duplicateRequests: 0, queueFull: 0, readErrors: 0, publishErrors: 0, maxInFlight: 0, maxInFlightPerDevice: 0 };
  #inFlight = 0;
  #closed = false;

  private constructor(options: BundleServerOptions) {
    this.#client = options.client;
    this.#fleet = options.fleet;
    this.#filter = sharedFilter(options.share, everyDevice(options.fleet, 'ota/request'));
    this.#bundles = options.bundles;
    this.#perDevice = options.perDevice ?? 8;
    this.#total = options.total ?? 64;
    this.#maxRequestChunks = options.maxRequestChunks ?? 64;
    this.#maxQueued = options.maxQueuedPerDevice ?? 1024;
    this.#tamper = options.tamper;
  }

  /** Subscribes (QoS 1) to every device's ota/request topic and serves until `close()`. */
  static async start(options: BundleServerOptions): Promise<BundleServer> {
    const server = new BundleServer(options);
    options.client.on('message', server.#onMessage);
    try {
      await options.client.subscribeAsync(server.#filter, { qos: 1 });
    } catch (cause) {
      options.client.off('message', server.#onMessage);
      throw new FleetError('EAI_OTA_SUBSCRIBE', `The broker refused the controller's subscription to ${server.#filter} (${cause instanceof Error ? cause.message : String(cause)}): no device could fetch a bundle. Connect with a controller certificate (aios-controller) the broker's ACL lets read the fleet's tree.`, { cause, details: { topic: server.#filter } });
    }
    return server;
  }

  stats(): BundleServerStats {
    return { ...this.#stats };
  }

  /** Chunks waiting or in flight for `device` (0 when it has nothing pending). */
  pending(device: string): number {
    const q = this.#queues.get(device);
    return q === undefined ? 0 : q.jobs.length + q.inFlight;
  }

  /** Stops serving: unsubscribes, drops queued chunks, waits for those in flight, closes files. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#client.off('message', this.#onMessage);
    for (const q of this.#queues.values()) {
      for (const job of q.jobs) q.keys.delete(job.key);
      q.jobs.length = 0;
    }
    if (this.#client.connected) await this.#client.unsubscribeAsync(this.#filter).catch(() => undefined);
    await Promise.allSettled(this.#sending);
    await this.#files.closeAll();
  }

  readonly #onMessage = (topic: string, payload: Buffer): void => {
    const where = parseDeviceTopic(topic);
    if (this.#closed || where === undefined || where.fleet !== this.#fleet || where.channel !== 'ota/request') return;
    void this.#onRequest(where.device, payload);
  };

  async #onRequest(device: string, payload: Buffer): Promise<void> {
    this.#stats.requests++;
    let first: number;
    let count: number;
    let request: aios.fleet.v1.ChunkRequest;
    try {
      request = decodeMessage(aios.fleet.v1.ChunkRequest, payload, `a chunk request from ${device}`);
      first = wholeNumber(request.first, 'ChunkRequest.first');
      count = request.count;
    } catch {
      this.#stats.malformed++;
      return;
    }
    if (!SHA256_HEX.test(request.bundleSha256) || count < 1) {
      this.#stats.malformed++;
      return;
    }
    if (count > this.#maxRequestChunks) {
      this.#stats.capped++;
      count = this.#maxRequestChunks;
    }
    const query = { device, deploymentId: request.deploymentId, bundleSha256: request.bundleSha256 };
    let file: BundleFile | undefined;
    try {
      file = await this.#bundles(query);
    } catch {
      file = undefined; // the controller's lookup failing is the same answer for the device: none
    }
    if (file === undefined || !Number.isInteger(file.chunkSize) || file.chunkSize < 1 || file.chunkSize > MAX_CHUNK_BYTES) {
      this.#stats.unknownBundle++;
      return;
    }
    let size: number;
    try {
      size = (await stat(file.path)).size;
    } catch {
      this.#stats.readErrors++;
      return;
    }
    const chunks = Math.ceil(size / file.chunkSize);
    if (first >= chunks) {
      this.#stats.outOfRange++;
      return;
    }
    const end = Math.min(first + count, chunks);
    if (end < first + count) this.#stats.outOfRange++;
    if (this.#closed) return;
    const q = this.#queues.get(device) ?? { jobs: [], keys: new Set<string>(), inFlight: 0 };
    if (!this.#queues.has(device)) this.#queues.set(device, q);
    for (let index = first; index < end; index++) {
      const key = `${request.deploymentId}\n${request.bundleSha256}\n${index}`;
      if (q.keys.has(key)) {
        this.#stats.duplicateRequests++;
        continue;
      }
      if (q.jobs.length >= this.#maxQueued) {
        this.#stats.queueFull += end - index;
        break;
      }
      q.keys.add(key);
      q.jobs.push({ key, device, deploymentId: request.deploymentId, bundleSha256: request.bundleSha256, index, file, size });
      this.#stats.chunksRequested++;
    }
    this.#schedule();
  }

  /** Starts chunks while there is room: one per device per pass, devices served in turn. */
  #schedule(): void {
    for (let started = true; started && !this.#closed && this.#inFlight < this.#total; ) {
      started = false;
      for (const [device, q] of [...this.#queues]) {
        if (this.#inFlight >= this.#total) break;
        if (q.jobs.length === 0) {
          if (q.inFlight === 0) this.#queues.delete(device);
          continue;
        }
        if (q.inFlight >= this.#perDevice) continue;
        const job = q.jobs.shift() as Job;
        q.inFlight++;
        this.#inFlight++;
        this.#stats.maxInFlight = Math.max(this.#stats.maxInFlight, this.#inFlight);
        this.#stats.maxInFlightPerDevice = Math.max(this.#stats.maxInFlightPerDevice, q.inFlight);
        // To the back of the line.
        this.#queues.delete(device);
        this.#queues.set(device, q);
        const sending = this.#send(job).finally(() => {
          this.#sending.delete(sending);
          q.inFlight--;
          q.keys.delete(job.key);
          this.#inFlight--;
          if (q.jobs.length === 0 && q.inFlight === 0 && this.#queues.get(device) === q) this.#queues.delete(device);
          this.#schedule();
        });
        this.#sending.add(sending);
        started = true;
      }
    }
  }

  async #send(job: Job): Promise<void> {
    const { file, index } = job;
    const length = Math.min(file.chunkSize, job.size - index * file.chunkSize);
    let data = Buffer.allocUnsafe(length);
    try {
      const handle = await this.#files.acquire(file.path);
      try {
        for (let done = 0; done < length; ) {
          const { bytesRead } = await handle.read(data, done, length - done, index * file.chunkSize + done);
          if (bytesRead === 0) throw new Error(`${file.path} is shorter than when the request came`);
          done += bytesRead;
        }
      } finally {
        await this.#files.release(file.path);
      }
    } catch {
      this.#stats.readErrors++;
      return;
    }
    if (this.#tamper !== undefined) data = Buffer.from(this.#tamper(job.device, index, data));
    const chunk = aios.fleet.v1.Chunk.encode({ deploymentId: job.deploymentId, bundleSha256: job.bundleSha256, index, data }).finish();
    try {
      await this.#client.publishAsync(deviceTopic(this.#fleet, job.device, 'ota/chunks'), Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength), { qos: 1 });
    } catch {
      // The client is closing; the device asks again after its timeout.
      this.#stats.publishErrors++;
      return;
    }
    this.#stats.chunksSent++;
    this.#stats.bytesSent += length;
  }
}

/** Bundle files open while chunks are read from them: one handle per file, closed when unused. */
class OpenFiles {
  readonly #open = new Map<string, { readonly handle: Promise<FileHandle>; users: number }>();

  async acquire(file: string): Promise<FileHandle> {
    let entry = this.#open.get(file);
    if (entry === undefined) {
      entry = { handle: open(file, 'r'), users: 0 };
      this.#open.set(file, entry);
    }
    entry.users++;
    try {
      return await entry.handle;
    } catch (error) {
      entry.users--;
      if (this.#open.get(file) === entry) this.#open.delete(file);
      throw error;
    }
  }

  async release(file: string): Promise<void> {
    const entry = this.#open.get(file);
    if (entry === undefined) return;
    entry.users--;
    if (entry.users > 0) return;
    this.#open.delete(file);
    await (await entry.handle).close().catch(() => undefined);
  }

  async closeAll(): Promise<void> {
    const entries = [...this.#open.values()];
    this.#open.clear();
    await Promise.all(entries.map(async (e) => (await e.handle.catch(() => undefined))?.close().catch(() => undefined)));
  }
}
