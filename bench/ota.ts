/**
 * What does a bundle transfer cost? A random bundle (100 MB; `--mb 500` for the large case) goes
 * from a BundleServer (controller) to a BundleDownload (device) through a real broker over mutual
 * TLS on loopback: the embedded broker (aedes, in this process) and Mosquitto where the binary is
 * installed. Each transfer is the whole path: chunk requests, positional reads, QoS 1 publishes,
 * per-chunk SHA-256, positional writes, the progress record, the final fsync and whole-file
 * SHA-256 and the rename. Reported: MB/s, and the peak RSS of this process during the transfer
 * (sampled every 20 ms; with the embedded broker that includes the broker) next to its RSS before.
 *
 * The honest baseline, measured in the same run on the same broker: the same bytes as 1 MiB QoS 1
 * messages from `mosquitto_pub -f <1 MiB file> --repeat N` (controller certificate) to
 * `mosquitto_sub -C N` (device certificate), timed from the publisher's start to the
 * subscriber's exit: raw MQTT throughput with no request round trips, no hashing and no disk.
 * `vs pub/sub` is our rate over it. Each is the median of `--rounds` (3), taken alternately.
 *
 * Small chunks are bound by round trips, and there TCP's Nagle algorithm meets delayed ACKs:
 * neither aedes' TLS server (FleetBroker) nor Mosquitto (set_tcp_nodelay false) nor mqtt.js sets
 * TCP_NODELAY, so a small packet (a request, a PUBACK) can wait ~40 ms for the ACK of the one
 * before; with 16 KiB chunks and a window of 4 that caps a transfer near 1.5 MB/s. Chunks of 256
 * KiB to 1 MiB keep the pipe full regardless.
 *
 * Run: node dist/bench/ota.js [--mb 100] [--chunk-kib 1024] [--window 8] [--rounds 3] [--json]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync, randomFillSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { BundleDownload } from '../deploy/agent/ota-download.js';
import { BundleServer, chunkDigests } from '../deploy/controller/ota-server.js';
import { FleetBroker } from '../deploy/fleet/broker.js';
import { mosquittoConfig } from '../deploy/fleet/mosquitto-config.js';
import { createCertificateAuthority, issueCertificate } from '../deploy/fleet/pki/certificate.js';
import { deviceTopic } from '../deploy/fleet/topics.js';
import { median, round } from './stats.js';
import { accepts, findBinary, freePort } from './local-services.js';

const args = process.argv.slice(2);
const flag = (name: string, fallback: number): number => {
  const i = args.indexOf(name);
  const v = i >= 0 ? Number(args[i + 1]) : Number.NaN;
  return Number.isFinite(v) && v > 0 ? v : fallback;
};
const MB = flag('--mb', 100);
const CHUNK = flag('--chunk-kib', 1024) * 1024;
const WINDOW = flag('--window', 8);
const ROUNDS = flag('--rounds', 3);
const FLEET = 'bench';
const DEVICE = 'robot-bench';
const BYTES = Math.round(MB * 1e6);

const root = await mkdtemp(path.join(os.tmpdir(), 'aios-bench-ota-'));
const ca = createCertificateAuthority({ commonName: 'bench fleet CA', validDays: 2 });
const pems: Record<string, string> = {
  ca: path.join(root, 'ca.pem'),
  ...(await identityFiles('broker', 'server')),
  ...(await identityFiles('aios-controller', 'client')),
  ...(await identityFiles(DEVICE, 'client')),
};
const pem = (name: string): string => pems[name] as string;
await writeFile(pem('ca'), ca.certificatePem);

// The bundle, written in 1 MiB pieces (never whole in memory), and its Deploy fields.
const bundle = path.join(root, 'bundle.aios');
{
  const handle = await open(bundle, 'w');
  const piece = Buffer.alloc(1024 * 1024);
  for (let done = 0; done < BYTES; done += piece.length) await handle.write(randomFillSync(piece), 0, Math.min(piece.length, BYTES - done));
  await handle.close();
}
const digestStart = performance.now();
const digests = await chunkDigests(bundle, CHUNK);
const digestMs = performance.now() - digestStart;
const transfer = { deploymentId: 'bench-1', bundleSize: digests.size, bundleSha256: digests.sha256, chunkSize: CHUNK, chunkSha256: digests.chunkSha256 };

interface Row {
  readonly broker: string;
  readonly ota: { mbPerSecond: number; seconds: number; rssBeforeMb: number; peakRssMb: number; requests: number; timeouts: number };
  readonly pubSub?: { mbPerSecond: number; seconds: number };
  readonly vsPubSub?: number;
}
const rows: Row[] = [];
const pubSubBinaries = findBinary('mosquitto_pub') !== undefined && findBinary('mosquitto_sub') !== undefined;

const embedded = await FleetBroker.start({ fleet: FLEET, tls: { cert: readFileSync(pem('brokerCert'), 'utf8'), key: readFileSync(pem('brokerKey'), 'utf8'), ca: ca.certificatePem }, port: 0 });
rows.push(await measure('embedded (aedes, in process)', embedded.port));
await embedded.close();

const mosquitto = findBinary('mosquitto');
if (mosquitto !== undefined) {
  const broker = await startMosquitto(mosquitto);
  try {
    rows.push(await measure('Mosquitto', broker.port));
  } finally {
    broker.child.kill('SIGTERM');
  }
}

const maxRssMb = round(process.resourceUsage().maxRSS / 1024, 1);
await rm(root, { recursive: true, force: true });

if (args.includes('--json')) {
  console.log(JSON.stringify({ mb: MB, chunkBytes: CHUNK, window: WINDOW, chunkDigestsMbPerSecond: round(BYTES / 1e6 / (digestMs / 1000), 1), rows, maxRssMb }, null, 2));
} else {
  console.log(`OTA transfer of ${MB} MB in ${CHUNK / 1024} KiB chunks, window ${WINDOW}, mutual TLS on loopback, medians of ${ROUNDS} rounds, node ${process.version}, ${os.cpus().length} cores, temp folder ${os.tmpdir()}`);
  console.log(`chunkDigests (building the Deploy command): ${round(BYTES / 1e6 / (digestMs / 1000), 1)} MB/s`);
  console.log(`${'broker'.padEnd(30)} ${'MB/s'.padStart(7)} ${'s'.padStart(6)} ${'RSS before'.padStart(11)} ${'peak RSS'.padStart(9)} ${'pub/sub MB/s'.padStart(13)} ${'vs pub/sub'.padStart(11)}`);
  for (const r of rows) {
    console.log(`${r.broker.padEnd(30)} ${r.ota.mbPerSecond.toFixed(1).padStart(7)} ${r.ota.seconds.toFixed(1).padStart(6)} ${`${r.ota.rssBeforeMb} MB`.padStart(11)} ${`${r.ota.peakRssMb} MB`.padStart(9)} ${(r.pubSub === undefined ? 'n/a' : r.pubSub.mbPerSecond.toFixed(1)).padStart(13)} ${(r.vsPubSub === undefined ? 'n/a' : `${r.vsPubSub}x`).padStart(11)}`);
  }
  console.log(`peak RSS of this process over the whole run: ${maxRssMb} MB${pubSubBinaries ? '' : ' (mosquitto_pub/mosquitto_sub not installed: no baseline)'}`);
}

/** One broker: our transfer, then the pub/sub baseline on the same broker. */
async function measure(name: string, port: number): Promise<Row> {
  const url = `mqtts://127.0.0.1:${port}`;
  const rssBefore = process.memoryUsage.rss();
  let peak = rssBefore;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 20);
  const ours: number[] = [];
  const theirs: number[] = [];
  let requests = 0;
  let timeouts = 0;
  // Rounds alternate ours and the baseline, so a slow spell of the machine hits both.
  for (let r = 0; r < ROUNDS; r++) {
    // Connected per round: mosquitto_pub and _sub use the same client ids (the certificate names)
    // and take the sessions over.
    const controller = await connect(url, 'aios-controller', pem('aios-controllerCert'), pem('aios-controllerKey'));
    const device = await connect(url, DEVICE, pem(`${DEVICE}Cert`), pem(`${DEVICE}Key`));
    const server = await BundleServer.start({ client: controller, fleet: FLEET, bundles: (q) => (q.bundleSha256 === transfer.bundleSha256 ? { path: bundle, chunkSize: CHUNK } : undefined) });
    const dir = path.join(root, `download-${rows.length}-${r}`);
    const started = performance.now();
    const download = new BundleDownload({ client: device, fleet: FLEET, deviceId: DEVICE, transfer: { ...transfer, deploymentId: `bench-${r}` }, dir, window: WINDOW, timeoutMs: 30_000 });
    await download.done();
    ours.push((performance.now() - started) / 1000);
    requests = download.stats().requests;
    timeouts += download.stats().timeouts;
    await rm(dir, { recursive: true, force: true });
    await server.close();
    await Promise.all([controller.endAsync(), device.endAsync()]);
    if (pubSubBinaries) theirs.push(await mosquittoPubSub(port));
  }
  clearInterval(sampler);
  const seconds = median(ours);
  const ota = { mbPerSecond: round(BYTES / 1e6 / seconds, 1), seconds: round(seconds, 2), rssBeforeMb: round(rssBefore / 2 ** 20, 1), peakRssMb: round(peak / 2 ** 20, 1), requests, timeouts };
  if (!pubSubBinaries) return { broker: name, ota };
  const pubSubSeconds = median(theirs);
  const pubSub = { mbPerSecond: round((Math.ceil(BYTES / 2 ** 20) * 2 ** 20) / 1e6 / pubSubSeconds, 1), seconds: round(pubSubSeconds, 2) };
  return { broker: name, ota, pubSub, vsPubSub: round(ota.mbPerSecond / pubSub.mbPerSecond, 2) };
}

/** Seconds for N messages of 1 MiB (the same bytes, rounded up) from mosquitto_pub to mosquitto_sub, QoS 1. */
async function mosquittoPubSub(port: number): Promise<number> {
  const size = 1024 * 1024;
  const count = Math.ceil(BYTES / size);
  const message = path.join(root, 'message.bin');
  await writeFile(message, randomFillSync(Buffer.alloc(size)));
  const topic = deviceTopic(FLEET, DEVICE, 'ota/chunks');
  const tls = (who: string): string[] => ['-h', '127.0.0.1', '-p', String(port), '-V', 'mqttv311', '--cafile', pem('ca'), '--cert', pem(`${who}Cert`), '--key', pem(`${who}Key`), '-i', who];
  // A persistent session subscribed beforehand (-c -E), so the subscriber can start together
  // with the publisher and lose nothing: mosquitto_sub's stdout is block-buffered in a pipe, so
  // waiting for its SUBACK line would not work. -F %l prints lengths only, never the payloads.
  await run('mosquitto_sub', [...tls(DEVICE), '-c', '-t', topic, '-q', '1', '-E']);
  const started = performance.now();
  const sub = spawn('mosquitto_sub', [...tls(DEVICE), '-c', '-t', topic, '-q', '1', '-C', String(count), '-F', '%l'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  sub.stdout.on('data', (d: Buffer) => (out += d.toString()));
  await Promise.all([new Promise<void>((resolve) => sub.on('close', () => resolve())), run('mosquitto_pub', [...tls('aios-controller'), '-t', topic, '-q', '1', '-f', message, '--repeat', String(count)])]);
  const seconds = (performance.now() - started) / 1000;
  const received = out.split('\n').filter((line) => /^\d+$/u.test(line.trim())).reduce((n, line) => n + Number(line), 0);
  if (received !== count * size) throw new Error(`mosquitto_sub received ${received} bytes, expected ${count * size}`);
  return seconds;
}

function run(command: string, argv: readonly string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, argv, { stdio: 'inherit' });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${command} exited with ${code}`))));
  });
}

async function connect(url: string, name: string, certFile: string, keyFile: string): Promise<MqttClient> {
  return mqtt.connectAsync(url, { clientId: name, protocolVersion: 4, clean: true, reconnectPeriod: 0, ca: ca.certificatePem, cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') });
}

/** A key and a certificate from the bench CA, as PEM files (mosquitto_pub and _sub read files). */
async function identityFiles(name: string, usage: 'client' | 'server'): Promise<Record<string, string>> {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const cert = issueCertificate({ ca, subjectPublicKey: publicKey, commonName: name, validDays: 2, usage, ...(usage === 'server' ? { ipAddresses: ['127.0.0.1'], dnsNames: ['localhost'] } : {}) });
  const key = name === 'broker' ? 'brokerKey' : `${name}Key`;
  const certKey = name === 'broker' ? 'brokerCert' : `${name}Cert`;
  const files = { [certKey]: path.join(root, `${name}.pem`), [key]: path.join(root, `${name}.key`) };
  await writeFile(files[certKey] as string, cert);
  await writeFile(files[key] as string, privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), { mode: 0o600 });
  return files;
}

/** Mosquitto from mosquittoConfig (TLS, the fleet ACL, no persistence) on a free loopback port. */
async function startMosquitto(binary: string): Promise<{ port: number; child: ChildProcess }> {
  const port = await freePort();
  const aclFile = path.join(root, 'fleet.acl');
  const { conf, acl } = mosquittoConfig({ fleet: FLEET, port, bind: '127.0.0.1', persistenceLocation: null, cafile: pem('ca'), certfile: pem('brokerCert'), keyfile: pem('brokerKey'), aclFile });
  await writeFile(aclFile, acl);
  const confFile = path.join(root, 'mosquitto.conf');
  // As root Mosquitto would switch to the mosquitto user and lose access to the key files.
  await writeFile(confFile, `${process.getuid?.() === 0 ? 'user root\n' : ''}${conf}`);
  const child = spawn(binary, ['-c', confFile], { stdio: 'ignore' });
  for (let i = 0; i < 200 && !(await accepts(port)); i++) await new Promise((r) => setTimeout(r, 25));
  return { port, child };
}



