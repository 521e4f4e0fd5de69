/**
 * Chunked, resumable bundle transfer over real brokers: the embedded broker (aedes behind mutual
 * TLS) and, where the binary exists, Mosquitto configured by mosquittoConfig. The controller runs
 * BundleServer on a client with the certificate name 'aios-controller'; each device downloads
 * with BundleDownload on a client named by its own certificate. A device's persistent session
 * keeps answers that arrive after it dropped, so each case uses a device of its own.
 *
 * The process-kill cases run the real download code (deploy/agent/ota-download.ts, transpiled as
 * the store's power-loss test does) in child processes that are SIGKILLed at random points and
 * resumed in fresh children until the bundle is complete. SIGKILL leaves the page cache, so this
 * proves the order of writes and the re-verification on resume, not durability across a power cut.
 */
import { spawn } from 'node:child_process';
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BundleDownload, type BundleDownloadOptions, type BundleTransfer } from '../../deploy/agent/ota-download.js';
import { BundleServer, chunkDigests, type BundleFile } from '../../deploy/controller/ota-server.js';
import { FleetBroker } from '../../deploy/fleet/broker.js';
import { FleetError } from '../../deploy/fleet/errors.js';
import { createCertificateAuthority, issueCertificate } from '../../deploy/fleet/pki/certificate.js';
import { deviceTopic, parseDeviceTopic } from '../../deploy/fleet/topics.js';
import { aios } from '../../deploy/proto/gen/aios.js';
import { transpileGraph } from '../support/transpile.js';
import { startFleetMosquitto } from '../support/fleet-mosquitto.js';
import { findBinary, until } from '../support/wait.js';
import { mulberry32 } from '../support/random.js';

const repo = path.resolve(import.meta.dirname, '../..');
const MOSQUITTO = findBinary('mosquitto');
const FLEET = 'depot';
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-ota-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const ca = createCertificateAuthority({ commonName: 'depot fleet CA', validDays: 30 });

interface Identity {
  readonly name: string;
  readonly cert: string;
  readonly key: string;
}

function identity(name: string, usage: 'client' | 'server' = 'client'): Identity {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const cert = issueCertificate({ ca, subjectPublicKey: publicKey, commonName: name, validDays: 7, usage, ...(usage === 'server' ? { ipAddresses: ['127.0.0.1'], dnsNames: ['localhost'] } : {}) });
  return { name, cert, key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
}

const serverIdentity = identity('broker', 'server');
const controllerIdentity = identity('aios-controller');

/** The MQTT client id is the certificate name, as both brokers require. */
async function connect(url: string, who: Identity, reconnectPeriod = 0): Promise<MqttClient> {
  return mqtt.connectAsync(url, { clientId: who.name, protocolVersion: 4, clean: false, reconnectPeriod, connectTimeout: 5000, ca: ca.certificatePem, cert: who.cert, key: who.key, rejectUnauthorized: true });
}

interface Bundle {
  readonly file: string;
  readonly bytes: Buffer;
  readonly transfer: BundleTransfer;
}

let bundleCount = 0;
/** A random bundle file and the transfer fields a Deploy command would carry for it. */
async function makeBundle(size: number, chunkSize: number): Promise<Bundle> {
  const bytes = randomBytes(size);
  const file = path.join(tmp, `bundle-${bundleCount++}.aios`);
  await writeFile(file, bytes);
  const d = await chunkDigests(file, chunkSize);
  return { file, bytes, transfer: { deploymentId: `dep-${bundleCount}`, bundleSize: d.size, bundleSha256: d.sha256, chunkSize, chunkSha256: d.chunkSha256 } };
}

interface Broker {
  readonly url: string;
  close(): Promise<void>;
}

const brokers: readonly [string, () => Promise<Broker>][] = [
  [
    'the embedded broker (aedes)',
    async () => {
      const b = await FleetBroker.start({ fleet: FLEET, tls: { cert: serverIdentity.cert, key: serverIdentity.key, ca: ca.certificatePem }, port: 0 });
      return { url: b.url, close: () => b.close() };
    },
  ],
  [
    'Mosquitto',
    async () => {
      const broker = await startFleetMosquitto(MOSQUITTO as string, tmp, { fleet: FLEET, caPem: ca.certificatePem, certPem: serverIdentity.cert, keyPem: serverIdentity.key });
      return { url: `mqtts://127.0.0.1:${broker.port}`, close: async () => broker.stop() };
    },
  ],
];

/**
 * The controller's side for one broker: its client, a BundleServer serving `bundles` (by digest),
 * a tamper hook a case may set, and per device the chunks requested and not yet answered, as the
 * controller sees them (requests in minus chunks published), with the highest value reached.
 */
interface Controller {
  readonly client: MqttClient;
  readonly server: BundleServer;
  readonly bundles: Map<string, BundleFile>;
  tamper: ((device: string, index: number, data: Buffer) => Uint8Array) | undefined;
  readonly outstanding: Map<string, { now: number; max: number }>;
}

async function startController(url: string): Promise<Controller> {
  const client = await connect(url, controllerIdentity);
  const bundles = new Map<string, BundleFile>();
  const controller: Controller = { client, server: undefined as unknown as BundleServer, bundles, tamper: undefined, outstanding: new Map() };
  const server = await BundleServer.start({ client, fleet: FLEET, bundles: (q) => bundles.get(q.bundleSha256), tamper: (device, index, data) => controller.tamper?.(device, index, data) ?? data });
  (controller as { server: BundleServer }).server = server;
  const count = (device: string, delta: number): void => {
    const o = controller.outstanding.get(device) ?? { now: 0, max: 0 };
    o.now += delta;
    o.max = Math.max(o.max, o.now);
    controller.outstanding.set(device, o);
  };
  client.on('message', (topic, payload) => {
    const where = parseDeviceTopic(topic);
    if (where?.channel !== 'ota/request') return;
    try {
      count(where.device, aios.fleet.v1.ChunkRequest.decode(payload).count);
    } catch {
      // forged requests: the server counts those
    }
  });
  client.on('packetsend', (packet) => {
    if (packet.cmd !== 'publish') return;
    const where = parseDeviceTopic(packet.topic);
    if (where?.channel !== 'ota/chunks') return;
    count(where.device, -1);
  });
  return controller;
}

function serve(controller: Controller, bundle: Bundle): void {
  controller.bundles.set(bundle.transfer.bundleSha256, { path: bundle.file, chunkSize: bundle.transfer.chunkSize });
}

let dirCount = 0;
const freshDir = (): string => path.join(tmp, `dl-${dirCount++}`);

function download(client: MqttClient, device: string, bundle: Bundle, dir: string, extra: Partial<BundleDownloadOptions> = {}): BundleDownload {
  return new BundleDownload({ client, fleet: FLEET, deviceId: device, transfer: bundle.transfer, dir, timeoutMs: 5000, ...extra });
}

async function expectExact(file: string, bundle: Bundle): Promise<void> {
  const got = await readFile(file);
  expect(got.length).toBe(bundle.bytes.length);
  expect(got.equals(bundle.bytes)).toBe(true);
}

async function rejection(promise: Promise<unknown>): Promise<FleetError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(FleetError);
  return error as FleetError;
}

/** Chunks of `file` that match the bundle's digests. */
function goodChunks(file: string, bundle: Bundle): Set<number> {
  const data = existsSync(file) ? readFileSync(file) : Buffer.alloc(0);
  const { chunkSize, chunkSha256 } = bundle.transfer;
  const good = new Set<number>();
  chunkSha256.forEach((digest, i) => {
    const piece = data.subarray(i * chunkSize, Math.min((i + 1) * chunkSize, bundle.bytes.length));
    if (createHash('sha256').update(piece).digest().equals(digest)) good.add(i);
  });
  return good;
}

/** The chunks a progress record claims (bit i of the base64 bitmap). */
function claimed(record: string, chunks: number): Set<number> {
  const have = Buffer.from((JSON.parse(record) as { have: string }).have, 'base64');
  return new Set(Array.from({ length: chunks }, (_, i) => i).filter((i) => ((have[i >> 3] ?? 0) & (1 << (i & 7))) !== 0));
}

const settle = (ms = 200): Promise<void> => new Promise((r) => setTimeout(r, ms));

let big: Bundle;
beforeAll(async () => {
  big = await makeBundle(5 * 1024 * 1024 + 12_345, 64 * 1024);
});

describe.each(brokers)('bundle transfer through %s', (name, start) => {
  const skip = name === 'Mosquitto' && MOSQUITTO === undefined;
  if (skip) console.warn('Mosquitto OTA tests skipped: the mosquitto binary is not installed (make test installs it as root).');
  let broker: Broker;
  let ctl: Controller;
  const tag = name === 'Mosquitto' ? 'm' : 'e';
  const device = (what: string): Identity => identity(`robot-${tag}-${what}`);

  beforeAll(async () => {
    if (skip) return;
    broker = await start();
    ctl = await startController(broker.url);
    serve(ctl, big);
  });
  afterAll(async () => {
    if (skip) return;
    await ctl.server.close();
    await ctl.client.endAsync();
    await broker.close();
  });

  it.skipIf(skip)('two devices fetch a 5 MiB bundle at once, byte-identical, never more requested and unanswered than their windows', async () => {
    const a = device('exact-a');
    const b = device('exact-b');
    const [ca1, cb1] = await Promise.all([connect(broker.url, a), connect(broker.url, b)]);
    const progress: number[] = [];
    const da = download(ca1, a.name, big, freshDir(), { window: 8, onProgress: (done, total) => (expect(total).toBe(big.bytes.length), progress.push(done)) });
    const db = download(cb1, b.name, big, freshDir(), { window: 3 });
    const [fa, fb] = await Promise.all([da.done(), db.done()]);
    await expectExact(fa, big);
    await expectExact(fb, big);
    expect(path.basename(fa)).toBe(`${big.transfer.bundleSha256}.bundle`);
    // Nothing else is left in the folder: no .part, no record, no temporary file.
    expect(existsSync(fa.replace(/\.bundle$/u, '.part')) || existsSync(fa.replace(/\.bundle$/u, '.progress'))).toBe(false);
    expect(progress.at(-1)).toBe(big.bytes.length);
    expect(progress).toEqual([...progress].sort((x, y) => x - y));
    const chunks = big.transfer.chunkSha256.length;
    for (const [d, window] of [[da, 8], [db, 3]] as const) {
      const s = d.stats();
      expect(s).toMatchObject({ chunks, chunksHeld: chunks, received: chunks, chunksRequested: chunks, badDigest: 0, malformed: 0, foreign: 0, timeouts: 0 });
      expect(s.maxInFlight).toBe(window);
      // Contiguous runs in one request each: far fewer requests than chunks.
      expect(s.requests).toBeLessThan(chunks);
    }
    // The controller's view: never more chunks requested and not yet answered than the window.
    expect(ctl.outstanding.get(a.name)?.max).toBeLessThanOrEqual(8);
    expect(ctl.outstanding.get(b.name)?.max).toBeLessThanOrEqual(3);
    expect(ctl.outstanding.get(a.name)?.max).toBeGreaterThanOrEqual(4);
    expect(ctl.server.stats().maxInFlightPerDevice).toBeLessThanOrEqual(8);
    await Promise.all([ca1.endAsync(), cb1.endAsync()]);
  });

  it.skipIf(skip)('chunks corrupted in flight are refused and asked again; the result is still exact', async () => {
    const d = device('tamper');
    const client = await connect(broker.url, d);
    const bundle = await makeBundle(1024 * 1024, 16 * 1024);
    serve(ctl, bundle);
    const copies = new Map<number, number>();
    let tampered = 0;
    // The first copy of every 5th chunk, and the first two copies of chunk 7, are damaged.
    ctl.tamper = (who, index, data) => {
      if (who !== d.name) return data;
      const n = (copies.get(index) ?? 0) + 1;
      copies.set(index, n);
      if ((index % 5 === 0 && n === 1) || (index === 7 && n <= 2)) {
        tampered++;
        const bad = Buffer.from(data);
        bad[n % bad.length] = (bad[n % bad.length] ?? 0) ^ 0xff;
        return bad;
      }
      return data;
    };
    const dl = download(client, d.name, bundle, freshDir());
    await expectExact(await dl.done(), bundle);
    ctl.tamper = undefined;
    expect(tampered).toBe(Math.ceil(64 / 5) + 2);
    expect(dl.stats().badDigest).toBe(tampered);
    expect(dl.stats().received).toBe(64);
    await client.endAsync();
  });

  it.skipIf(skip)('a chunk that keeps arriving damaged stops the download with EAI_OTA_CHUNK_DIGEST, nothing renamed into place', async () => {
    const d = device('always-bad');
    const client = await connect(broker.url, d);
    const bundle = await makeBundle(256 * 1024, 16 * 1024);
    serve(ctl, bundle);
    ctl.tamper = (who, index, data) => (who === d.name && index === 3 ? Buffer.alloc(data.length, 7) : data);
    const dir = freshDir();
    const dl = download(client, d.name, bundle, dir, { maxBadCopies: 3 });
    const error = await rejection(dl.done());
    ctl.tamper = undefined;
    expect(error.code).toBe('EAI_OTA_CHUNK_DIGEST');
    expect(error.details).toMatchObject({ index: 3, copies: 3 });
    expect(dl.stats().badDigest).toBe(3);
    expect(existsSync(path.join(dir, `${bundle.transfer.bundleSha256}.bundle`))).toBe(false);
    await client.endAsync();
  });

  it.skipIf(skip)('forged messages on the chunk topic are dropped and counted, never thrown', async () => {
    const d = device('forged');
    const client = await connect(broker.url, d);
    const bundle = await makeBundle(512 * 1024, 32 * 1024);
    const t = bundle.transfer;
    const topic = deviceTopic(FLEET, d.name, 'ota/chunks');
    // The controller does not serve the bundle yet, so the forgeries reach a running download.
    const dl = download(client, d.name, bundle, freshDir(), { timeoutMs: 200 });
    await until(() => dl.stats().requests > 0);
    const forge = (m: aios.fleet.v1.IChunk): Buffer => Buffer.from(aios.fleet.v1.Chunk.encode(m).finish());
    await ctl.client.publishAsync(topic, Buffer.from([0xff, 0xff, 0xff, 0x0f]), { qos: 1 }); // not protobuf
    await ctl.client.publishAsync(topic, forge({ deploymentId: 'another', bundleSha256: t.bundleSha256, index: 1, data: bundle.bytes.subarray(t.chunkSize, 2 * t.chunkSize) }), { qos: 1 });
    await ctl.client.publishAsync(topic, forge({ deploymentId: t.deploymentId, bundleSha256: t.bundleSha256, index: 999, data: Buffer.alloc(t.chunkSize) }), { qos: 1 });
    await ctl.client.publishAsync(topic, forge({ deploymentId: t.deploymentId, bundleSha256: t.bundleSha256, index: 2, data: Buffer.alloc(100) }), { qos: 1 });
    await until(() => dl.stats().wrongSize === 1);
    serve(ctl, bundle);
    await expectExact(await dl.done(), bundle);
    expect(dl.stats()).toMatchObject({ malformed: 1, foreign: 1, outOfRange: 1, wrongSize: 1, badDigest: 0, received: 16 });
    await client.endAsync();
  });

  it.skipIf(skip)('a disconnect mid-transfer: a new client and a new download on the same folder fetch only what is missing', async () => {
    const d = device('resume');
    const dir = freshDir();
    const chunks = big.transfer.chunkSha256.length;
    const first = await connect(broker.url, d);
    let dl: BundleDownload | undefined;
    const cut = new Promise<void>((resolve) => {
      dl = download(first, d.name, big, dir, {
        onProgress: (done, total) => {
          if (done < total * 0.4) return;
          first.end(true); // the connection is gone at once, answers in flight with it
          resolve();
        },
      });
    });
    await cut;
    await dl?.cancel();
    const held = dl?.stats().chunksHeld ?? 0;
    expect(held).toBeGreaterThan(0);
    expect(held).toBeLessThan(chunks);
    const second = await connect(broker.url, d);
    const again = download(second, d.name, big, dir);
    await expectExact(await again.done(), big);
    const s = again.stats();
    expect(s.resumedChunks).toBe(held);
    expect(s.discardedOnResume).toBe(0);
    expect(s.chunksRequested).toBeLessThan(chunks);
    expect(s.chunksRequested).toBeGreaterThanOrEqual(chunks - held - 8); // answers queued in the session may fill some
    await second.endAsync();
  });

  it.skipIf(skip)('a connection that drops under a running download: mqtt.js reconnects and the download asks again for what was in flight', async () => {
    const d = device('reconnect');
    const client = await connect(broker.url, d, 50);
    let dropped = false;
    const dl = download(client, d.name, big, freshDir(), {
      onProgress: (done, total) => {
        if (dropped || done < total * 0.3) return;
        dropped = true;
        client.stream.destroy(); // no DISCONNECT: like a lost link
      },
    });
    await expectExact(await dl.done(), big);
    expect(dropped).toBe(true);
    expect(dl.stats().resent).toBeGreaterThan(0);
    await client.endAsync();
  });
});

describe('bundle transfer: resume, verification and failures (embedded broker)', () => {
  let broker: FleetBroker;
  let ctl: Controller;
  beforeAll(async () => {
    broker = await FleetBroker.start({ fleet: FLEET, tls: { cert: serverIdentity.cert, key: serverIdentity.key, ca: ca.certificatePem }, port: 0 });
    ctl = await startController(broker.url);
    serve(ctl, big);
  });
  afterAll(async () => {
    await ctl.server.close();
    await ctl.client.endAsync();
    await broker.close();
  });

  /** Half a download of `bundle`, cancelled; resolves once every answer has come and gone. */
  async function half(client: MqttClient, device: string, bundle: Bundle, dir: string): Promise<void> {
    let dl: BundleDownload | undefined;
    await new Promise<void>((resolve) => {
      dl = download(client, device, bundle, dir, { onProgress: (done, total) => (done >= total / 2 ? resolve() : undefined) });
    });
    await dl?.cancel();
    await until(() => ctl.server.pending(device) === 0);
    await settle(); // late answers reach the client with no download listening
  }

  /** A device that fetched half of a fresh 2 MiB bundle in 32 KiB chunks, then cancelled. */
  async function halfFetched(name: string): Promise<{ d: Identity; client: MqttClient; dir: string; bundle: Bundle; chunks: number; base: string }> {
    const d = identity(name);
    const client = await connect(broker.url, d);
    const dir = freshDir();
    const bundle = await makeBundle(2 * 1024 * 1024, 32 * 1024);
    serve(ctl, bundle);
    await half(client, d.name, bundle, dir);
    return { d, client, dir, bundle, chunks: bundle.transfer.chunkSha256.length, base: path.join(dir, bundle.transfer.bundleSha256) };
  }

  it('a .part altered on disk and a record claiming chunks it lacks: re-verification finds both, only those are fetched again', async () => {
    const { d, client, dir, bundle, chunks, base } = await halfFetched('robot-verify');
    const record = readFileSync(`${base}.progress`, 'utf8');
    const held = claimed(record, chunks);
    // The record claims exactly the chunks on disk, and they are good.
    expect([...goodChunks(`${base}.part`, bundle)].sort((x, y) => x - y)).toEqual([...held].sort((x, y) => x - y));
    // Damage three held chunks on disk ...
    const part = readFileSync(`${base}.part`);
    const damaged = [...held].slice(0, 3);
    for (const i of damaged) part[i * bundle.transfer.chunkSize + 17] = (part[i * bundle.transfer.chunkSize + 17] ?? 0) ^ 0x55;
    writeFileSync(`${base}.part`, part);
    // ... and make the record claim four chunks it does not hold.
    const lying = Array.from({ length: chunks }, (_, i) => i).filter((i) => !held.has(i)).slice(0, 4);
    const have = Buffer.from((JSON.parse(record) as { have: string }).have, 'base64');
    for (const i of lying) have[i >> 3] = (have[i >> 3] ?? 0) | (1 << (i & 7));
    writeFileSync(`${base}.progress`, JSON.stringify({ ...(JSON.parse(record) as object), have: have.toString('base64') }));
    const again = download(client, d.name, bundle, dir);
    await expectExact(await again.done(), bundle);
    const s = again.stats();
    expect(s.discardedOnResume).toBe(damaged.length + lying.length);
    expect(s.resumedChunks).toBe(held.size - damaged.length);
    expect(s.chunksRequested).toBe(chunks - (held.size - damaged.length));
    expect(s.received).toBe(s.chunksRequested);
    await client.endAsync();
  });

  it('an unreadable record: every chunk of the .part is hashed, and only the missing ones are fetched', async () => {
    const { d, client, dir, bundle, chunks, base } = await halfFetched('robot-garbled');
    const onDisk = goodChunks(`${base}.part`, bundle);
    writeFileSync(`${base}.progress`, '{"format":"aios-ota-progress/1","have":\u0000garbage');
    const again = download(client, d.name, bundle, dir);
    await expectExact(await again.done(), bundle);
    expect(again.stats()).toMatchObject({ resumedChunks: onDisk.size, discardedOnResume: 0, chunksRequested: chunks - onDisk.size });
    await client.endAsync();
  });

  it('a record saved before the last chunks were written (a run killed between saves): those chunks are kept, not fetched again', async () => {
    const { d, client, dir, bundle, chunks, base } = await halfFetched('robot-unsaved');
    const onDisk = goodChunks(`${base}.part`, bundle);
    // The record as the first save of a run left it: nothing claimed yet.
    const record = JSON.parse(readFileSync(`${base}.progress`, 'utf8')) as { have: string };
    writeFileSync(`${base}.progress`, JSON.stringify({ ...record, have: Buffer.alloc(Buffer.from(record.have, 'base64').length).toString('base64') }));
    const again = download(client, d.name, bundle, dir);
    await expectExact(await again.done(), bundle);
    expect(onDisk.size).toBeGreaterThan(0);
    expect(again.stats()).toMatchObject({ resumedChunks: onDisk.size, unrecordedOnResume: onDisk.size, discardedOnResume: 0, chunksRequested: chunks - onDisk.size });
    await client.endAsync();
  });

  it('a rate cap: never more bytes than a quarter second\'s burst plus the rate since the start, whatever the window', async () => {
    const d = identity('robot-paced');
    const client = await connect(broker.url, d);
    const bundle = await makeBundle(1024 * 1024, 32 * 1024);
    serve(ctl, bundle);
    const rate = 2 * 1024 * 1024;
    const burst = rate / 4;
    const over: string[] = [];
    const started = Date.now();
    const paced = download(client, d.name, bundle, freshDir(), {
      window: 32,
      bytesPerSecond: rate,
      onProgress: (done) => {
        const allowed = burst + (rate * (Date.now() - started)) / 1000;
        if (done > allowed) over.push(`${done} bytes after ${Date.now() - started} ms (allowed ${Math.floor(allowed)})`);
      },
    });
    await expectExact(await paced.done(), bundle);
    expect(over).toEqual([]);
    // The bucket starts empty: the bytes beyond one burst take (1 MiB - 512 KiB) / 2 MiB/s at least.
    expect(Date.now() - started).toBeGreaterThanOrEqual(((bundle.bytes.length - burst) * 1000) / rate - 5);
    expect(paced.stats()).toMatchObject({ chunksRequested: bundle.transfer.chunkSha256.length, timeouts: 0 });
    await expect(Promise.resolve().then(() => download(client, d.name, bundle, freshDir(), { bytesPerSecond: 0 }))).rejects.toMatchObject({ code: 'EAI_OTA_DEPLOY_INVALID' });
    await client.endAsync();
  });

  it('a Deploy whose bundle digest disagrees with its chunk digests: EAI_OTA_BUNDLE_DIGEST, nothing kept', async () => {
    const d = identity('robot-liar');
    const client = await connect(broker.url, d);
    const bundle = await makeBundle(128 * 1024, 16 * 1024);
    const other = createHash('sha256').update('another bundle').digest('hex');
    const lie: Bundle = { ...bundle, transfer: { ...bundle.transfer, bundleSha256: other } };
    serve(ctl, lie);
    const dir = freshDir();
    const error = await rejection(download(client, d.name, lie, dir).done());
    expect(error.code).toBe('EAI_OTA_BUNDLE_DIGEST');
    expect(error.details).toMatchObject({ expected: other, actual: bundle.transfer.bundleSha256 });
    for (const ext of ['bundle', 'part', 'progress']) expect(existsSync(path.join(dir, `${other}.${ext}`))).toBe(false);
    await client.endAsync();
  });

  it('no answer at all: EAI_OTA_TIMEOUT after the stall time; the controller counted the unknown bundle', async () => {
    const d = identity('robot-unanswered');
    const client = await connect(broker.url, d);
    const bundle = await makeBundle(64 * 1024, 16 * 1024); // not served
    const before = ctl.server.stats().unknownBundle;
    const dl = download(client, d.name, bundle, freshDir(), { timeoutMs: 100, stallTimeoutMs: 400 });
    const error = await rejection(dl.done());
    expect(error.code).toBe('EAI_OTA_TIMEOUT');
    expect(dl.stats().timeouts).toBeGreaterThan(0);
    expect(ctl.server.stats().unknownBundle).toBeGreaterThan(before);
    await client.endAsync();
  });

  it('a folder that cannot be written: EAI_OTA_DISK naming the path; a Deploy with inconsistent fields: EAI_OTA_DEPLOY_INVALID', async () => {
    const d = identity('robot-disk');
    const client = await connect(broker.url, d);
    const blocker = path.join(tmp, 'a-file');
    writeFileSync(blocker, 'not a folder');
    const error = await rejection(download(client, d.name, big, path.join(blocker, 'downloads')).done());
    expect(error.code).toBe('EAI_OTA_DISK');
    expect(error.details['path']).toBe(path.join(blocker, 'downloads'));
    const bad = { ...big, transfer: { ...big.transfer, chunkSha256: big.transfer.chunkSha256.slice(1) } };
    expect(() => download(client, d.name, bad, freshDir())).toThrow(expect.objectContaining({ code: 'EAI_OTA_DEPLOY_INVALID' }) as Error);
    const traversal = { ...big, transfer: { ...big.transfer, bundleSha256: '../../etc/passwd' } };
    expect(() => download(client, d.name, traversal, freshDir())).toThrow(expect.objectContaining({ code: 'EAI_OTA_DEPLOY_INVALID' }) as Error);
    await client.endAsync();
  });

  it('the controller drops bad requests and counts them, caps a request, and answers only known bundles', async () => {
    const d = identity('robot-asker');
    const client = await connect(broker.url, d);
    const bundle = await makeBundle(100 * 1024, 1024); // 100 chunks
    serve(ctl, bundle);
    const got: number[] = [];
    client.on('message', (_topic, payload) => got.push(Number(aios.fleet.v1.Chunk.decode(payload).index)));
    await client.subscribeAsync(deviceTopic(FLEET, d.name, 'ota/chunks'), { qos: 1 });
    const before = ctl.server.stats();
    const topic = deviceTopic(FLEET, d.name, 'ota/request');
    const ask = (m: aios.fleet.v1.IChunkRequest): Promise<unknown> => client.publishAsync(topic, Buffer.from(aios.fleet.v1.ChunkRequest.encode(m).finish()), { qos: 1 });
    const t = bundle.transfer;
    await client.publishAsync(topic, Buffer.from('not protobuf at all \xff\xff'), { qos: 1 });
    await ask({ deploymentId: t.deploymentId, bundleSha256: 'f'.repeat(64), first: 0, count: 4 }); // unknown bundle
    await ask({ deploymentId: t.deploymentId, bundleSha256: t.bundleSha256, first: 500, count: 4 }); // past the end
    await ask({ deploymentId: t.deploymentId, bundleSha256: t.bundleSha256, first: 0, count: 0 }); // nothing asked
    await ask({ deploymentId: t.deploymentId, bundleSha256: t.bundleSha256, first: 10, count: 1000 }); // capped at 64
    await until(() => got.length >= 64);
    await settle();
    const after = ctl.server.stats();
    expect(after.malformed - before.malformed).toBe(2);
    expect(after.unknownBundle - before.unknownBundle).toBe(1);
    expect(after.outOfRange - before.outOfRange).toBeGreaterThanOrEqual(1);
    expect(after.capped - before.capped).toBe(1);
    expect(got.sort((x, y) => x - y)).toEqual(Array.from({ length: 64 }, (_, i) => 10 + i));
    await client.endAsync();
  });

  it('the controller bounds chunks in flight per device and overall, serving devices in turn', async () => {
    // A broker and controller of their own, with tight limits: 2 per device, 3 in all.
    const own = await FleetBroker.start({ fleet: FLEET, tls: { cert: serverIdentity.cert, key: serverIdentity.key, ca: ca.certificatePem }, port: 0 });
    const controller = await connect(own.url, controllerIdentity);
    const bundle = await makeBundle(1024 * 1024, 16 * 1024);
    const server = await BundleServer.start({ client: controller, fleet: FLEET, perDevice: 2, total: 3, bundles: (q) => (q.bundleSha256 === bundle.transfer.bundleSha256 ? { path: bundle.file, chunkSize: bundle.transfer.chunkSize } : undefined) });
    const devices = ['robot-share-0', 'robot-share-1', 'robot-share-2'].map((n) => identity(n));
    const clients = await Promise.all(devices.map((d) => connect(own.url, d)));
    const progress = devices.map(() => 0);
    const behind: number[] = [];
    const files = await Promise.all(
      devices.map((d, i) =>
        download(clients[i] as MqttClient, d.name, bundle, freshDir(), {
          window: 8,
          onProgress: (done) => {
            progress[i] = done;
            // Round-robin: while all three are fetching, none falls far behind the others.
            if (progress.every((p) => p > 0 && p < bundle.bytes.length)) behind.push(Math.max(...progress) - Math.min(...progress));
          },
        }).done(),
      ),
    );
    for (const file of files) await expectExact(file, bundle);
    await until(() => server.stats().chunksSent === 3 * 64); // the last PUBACKs may come after the last delivery
    expect(server.stats()).toMatchObject({ maxInFlight: 3, maxInFlightPerDevice: 2, chunksRequested: 3 * 64 });
    expect(Math.max(...behind)).toBeLessThanOrEqual(bundle.bytes.length / 4);
    await server.close();
    await Promise.all([...clients, controller].map((c) => c.endAsync()));
    await own.close();
  });

  it('cancel right after the start: EAI_OTA_CANCELLED, and a later download still completes', async () => {
    const d = identity('robot-cancel');
    const client = await connect(broker.url, d);
    const bundle = await makeBundle(256 * 1024, 16 * 1024);
    serve(ctl, bundle);
    const dir = freshDir();
    const first = download(client, d.name, bundle, dir);
    await first.cancel();
    expect((await rejection(first.done())).code).toBe('EAI_OTA_CANCELLED');
    await settle();
    await expectExact(await download(client, d.name, bundle, dir).done(), bundle);
    await client.endAsync();
  });

  it('a bundle already in place is checked and returned without a request; an empty bundle needs none either', async () => {
    const d = identity('robot-again');
    const client = await connect(broker.url, d);
    const bundle = await makeBundle(200 * 1024, 16 * 1024);
    serve(ctl, bundle);
    const dir = freshDir();
    const file = await download(client, d.name, bundle, dir).done();
    const again = download(client, d.name, bundle, dir);
    expect(await again.done()).toBe(file);
    expect(again.stats()).toMatchObject({ requests: 0, resumedChunks: 13, chunksHeld: 13 });
    const empty = await makeBundle(0, 16 * 1024);
    const none = download(client, d.name, empty, dir);
    await expectExact(await none.done(), empty);
    expect(none.stats()).toMatchObject({ chunks: 0, requests: 0 });
    await client.endAsync();
  });

  it('chunkDigests matches hashing each chunk directly', async () => {
    const bundle = await makeBundle(3 * 1024 * 1024 + 5, 300_000); // chunks straddle the 1 MiB reads
    const d = await chunkDigests(bundle.file, 300_000);
    expect(d.size).toBe(bundle.bytes.length);
    expect(d.sha256).toBe(createHash('sha256').update(bundle.bytes).digest('hex'));
    expect(d.chunkSha256.map((h) => h.toString('hex'))).toEqual(Array.from({ length: Math.ceil(bundle.bytes.length / 300_000) }, (_, i) => createHash('sha256').update(bundle.bytes.subarray(i * 300_000, (i + 1) * 300_000)).digest('hex')));
  });
});

describe('bundle transfer: a device process killed at random points (embedded broker)', () => {
  const LANES = 2;
  const KILLS_PER_LANE = 11;
  let broker: FleetBroker;
  let ctl: Controller;
  let build: string;
  let childScript: string;
  beforeAll(async () => {
    broker = await FleetBroker.start({ fleet: FLEET, tls: { cert: serverIdentity.cert, key: serverIdentity.key, ca: ca.certificatePem }, port: 0 });
    ctl = await startController(broker.url);
    build = path.join(tmp, 'build');
    const entry = await transpileGraph(repo, 'deploy/agent/ota-download.ts', build);
    // Bare imports (mqtt, protobufjs) resolve from the repository's node_modules.
    symlinkSync(path.join(repo, 'node_modules'), path.join(build, 'node_modules'), 'dir');
    childScript = path.join(build, 'ota-child.mjs');
    writeFileSync(childScript, childSource(pathToFileURL(entry).href));
  });
  afterAll(async () => {
    await ctl.server.close();
    await ctl.client.endAsync();
    await broker.close();
  });

  it(`${LANES * KILLS_PER_LANE} SIGKILLs at random points, each resumed in a fresh process: the bundle arrives exact, is in place only when complete, and each run resumes exactly what the last one left`, async () => {
    const seed = Number(process.env['AIOS_CRASH_SEED'] ?? Date.now() % 100_000);
    const random = mulberry32(seed);
    const bundle = await makeBundle(2 * 1024 * 1024, 32 * 1024);
    serve(ctl, bundle);
    const chunks = bundle.transfer.chunkSha256.length;
    const lanes = await Promise.all(
      Array.from({ length: LANES }, async (_, lane) => {
        const who = identity(`robot-killed-${lane}`);
        const dir = path.join(tmp, `killed-${lane}`);
        const base = path.join(dir, bundle.transfer.bundleSha256);
        const config = path.join(tmp, `child-${lane}.json`);
        writeFileSync(config, JSON.stringify({ url: broker.url, ca: ca.certificatePem, cert: who.cert, key: who.key, device: who.name, fleet: FLEET, dir, transfer: { ...bundle.transfer, chunkSha256: bundle.transfer.chunkSha256.map((h) => Buffer.from(h).toString('hex')) } }));
        // How long a whole run takes here, from spawn to exit: the span the random instants fall in.
        const probe = await runChild(childScript, config, {});
        expect(probe.code, probe.stderr).toBe(0);
        await expectExact(`${base}.bundle`, bundle);
        rmSync(dir, { recursive: true, force: true });
        const runs: { plan: object; killed: boolean; startBytes: number }[] = [];
        // What the next run must resume from: every good chunk of the .part.
        let resumable = 0;
        while (runs.filter((r) => r.killed).length < KILLS_PER_LANE) {
          // Half the kills at a random instant of a run (connecting, re-verifying, fetching,
          // saving the record), half a random moment after a random number of chunks was written.
          const plan = runs.length % 2 === 0 ? { afterMs: Math.floor(random() * probe.ms) } : { afterChunks: 1 + Math.floor(random() * chunks * 0.1), jitterMs: Math.floor(random() * 4) };
          const run = await runChild(childScript, config, plan);
          const label = `lane ${lane} run ${runs.length} ${JSON.stringify(plan)} (AIOS_CRASH_SEED=${seed})`;
          runs.push({ plan, killed: run.signal === 'SIGKILL', startBytes: run.startBytes });
          // Resumed exactly what the last kill left (-1: killed before it got that far).
          if (run.startBytes >= 0) expect(run.startBytes, label).toBe(resumable);
          if (run.signal !== 'SIGKILL') {
            // Finished before the kill came: it must be exact; start the next cycle from nothing.
            expect(run.code, `${label}: ${run.stderr}`).toBe(0);
            await expectExact(`${base}.bundle`, bundle);
            rmSync(dir, { recursive: true, force: true });
            resumable = 0;
            continue;
          }
          if (existsSync(`${base}.bundle`)) {
            // Killed after the rename, on its way out: in place means complete.
            await expectExact(`${base}.bundle`, bundle);
            rmSync(dir, { recursive: true, force: true });
            resumable = 0;
            continue;
          }
          // The record claims only chunks that are good on disk; the next run keeps every good
          // chunk, those written after the record's last save too.
          const good = goodChunks(`${base}.part`, bundle);
          const claims = existsSync(`${base}.progress`) ? claimed(readFileSync(`${base}.progress`, 'utf8'), chunks) : new Set<number>();
          expect([...claims].filter((i) => !good.has(i)), label).toEqual([]);
          resumable = [...good].reduce((n, i) => n + Math.min(bundle.transfer.chunkSize, bundle.bytes.length - i * bundle.transfer.chunkSize), 0);
        }
        const final = await runChild(childScript, config, {});
        expect(final.code, final.stderr).toBe(0);
        const result = JSON.parse(final.stdout.trim().split('\n').at(-1) ?? '{}') as { file: string; stats: { resumedChunks: number; chunksRequested: number } };
        await expectExact(result.file, bundle);
        expect(result.stats.resumedChunks + result.stats.chunksRequested).toBeGreaterThanOrEqual(chunks);
        return { runs, final: { startBytes: final.startBytes, ...result.stats } };
      }),
    );
    const runs = lanes.flatMap((l) => l.runs);
    expect(runs.filter((r) => r.killed).length).toBeGreaterThanOrEqual(20);
    // Runs did begin from what an earlier, killed one left behind.
    expect(runs.filter((r) => r.startBytes > 0).length).toBeGreaterThan(0);
  });
});

interface ChildRun {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  /** Bytes the download held when it began fetching (what it resumed from); -1 if it never got there. */
  readonly startBytes: number;
  readonly ms: number;
}

/** Runs the download child; kills it `afterMs` after spawning or `jitterMs` after its `afterChunks`-th written chunk. */
function runChild(script: string, config: string, plan: { afterMs?: number; afterChunks?: number; jitterMs?: number }): Promise<ChildRun> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [script], { env: { ...process.env, OTA_CONFIG: config }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let chunksSeen = 0;
    const kill = (): void => void p.kill('SIGKILL');
    const timer = plan.afterMs === undefined ? undefined : setTimeout(kill, plan.afterMs);
    p.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (plan.afterChunks === undefined) return;
      chunksSeen += (d.toString().match(/^chunk$/gmu) ?? []).length;
      if (chunksSeen >= plan.afterChunks) setTimeout(kill, plan.jitterMs ?? 0);
    });
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    const started = Date.now();
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      const start = /^start (\d+)$/mu.exec(stdout);
      resolve({ code, signal, stdout, stderr, startBytes: start === null ? -1 : Number(start[1]), ms: Date.now() - started });
    });
  });
}

/** The child: one BundleDownload in a process of its own, reporting each written chunk on stdout. */
function childSource(downloadModule: string): string {
  return `import { readFileSync } from 'node:fs';
import mqtt from 'mqtt';
const { BundleDownload } = await import(${JSON.stringify(downloadModule)});
const c = JSON.parse(readFileSync(process.env.OTA_CONFIG, 'utf8'));
const client = await mqtt.connectAsync(c.url, { clientId: c.device, protocolVersion: 4, clean: false, reconnectPeriod: 0, ca: c.ca, cert: c.cert, key: c.key });
let last = -1;
const download = new BundleDownload({
  client, fleet: c.fleet, deviceId: c.device, dir: c.dir, window: 4, timeoutMs: 5000, saveIntervalMs: 10,
  transfer: { ...c.transfer, chunkSha256: c.transfer.chunkSha256.map((h) => Buffer.from(h, 'hex')) },
  onProgress: (done) => { process.stdout.write(last < 0 ? \`start \${done}\\n\` : 'chunk\\n'); last = done; },
});
const file = await download.done();
process.stdout.write(JSON.stringify({ file, stats: download.stats() }) + '\\n');
await client.endAsync();
`;
}
