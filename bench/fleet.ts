/**
 * Can one controller hold a fleet? (issue 7; goal: ≥ 10,000 devices at 1 Hz telemetry on one
 * controller on a 2-core machine.) Everything runs on this machine over loopback with mutual TLS:
 *
 * - Mosquitto (the Debian binary) from `mosquittoConfig` (TLS, the fleet ACL, no persistence),
 *   its open-files limit raised for the fleet; quieter logging (no per-connection lines) is the
 *   bench's only addition to the configuration.
 * - The controller in this process (`Controller.start` with `broker:` that Mosquitto): its CPU
 *   over each window (process.cpuUsage, % of one core), RSS sampled every second, event-loop
 *   utilisation and delay. Mosquitto's and the device processes' CPU are measured alongside.
 * - N devices enrolled through the controller's own Enrolment (a token each, a CSR made with the
 *   device's own P-256 key, the certificate the controller issues), then simulated by P child
 *   processes (bench/fleet-device.ts: one mqtt.js client per device, birth, ONLINE, 1 Hz
 *   Telemetry at QoS 1 with a jittered start, and ACCEPTED/DONE acks for commands).
 *
 * Windows of `--seconds` each, telemetry on: (1) the controller subscribed; then, with the
 * controller stopped, the same devices at the same rate to (2) an mqtt.js subscriber with no
 * decoding and no database, and (3) `mosquitto_sub`: the raw baselines, measured in the same run
 * through the same broker. Reported per window: messages sent and received (at the end of the
 * window, and after a drain), per-device sequence lag (controller), CPU of each party. Then
 * "deploy to visible": one signed stopPipeline command to every device, timed until every one is
 * `done` in the controller's command table; all at once on an idle fleet, all at once while
 * telemetry runs, and one after another as Deployments.target sends (capped in time). Last, bytes
 * per telemetry record, protobuf against JSON.stringify of the same object.
 *
 * Run: npx tsc -p tsconfig.json && node dist/bench/fleet.js [--devices 10000] [--seconds 60]
 *      [--procs 4] [--concurrency 32] [--drain 10] [--sequential-cap 30] [--max-queued N]
 *      [--profile out.cpuprofile] [--attest] [--json]
 * `--max-queued` sets Mosquitto's max_queued_messages (mosquittoConfig's default: 1000).
 * `--profile` records a CPU profile of this process during the controller window and prints
 * where its time went. Quick: --devices 500 --seconds 10.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync, existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Session } from 'node:inspector/promises';
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import mqtt from 'mqtt';
import { Controller, prepareControllerState } from '../deploy/controller/controller.js';
import type { CommandRecord } from '../deploy/controller/commands.js';
import { mosquittoConfig } from '../deploy/fleet/mosquitto-config.js';
import { createCsr } from '../deploy/fleet/pki/csr.js';
import { issueCertificate } from '../deploy/fleet/pki/certificate.js';
import { everyDevice } from '../deploy/fleet/topics.js';
import { aios } from '../deploy/proto/gen/aios.js';
import { generateSigningKey } from '../models/keys.js';
import { PIPELINE, birthRecord, telemetryRecord, type DeviceIdentity, type DeviceReport, type FromDevices, type ToDevices } from './fleet-device.js';
import { median, round } from './stats.js';
import { accepts, findBinary, freePort } from './local-services.js';
import { runtimeDigest } from '../runtime/attest/file-digest.js';

const args = process.argv.slice(2);
const flag = (name: string, fallback: number): number => {
  const i = args.indexOf(name);
  const v = i >= 0 ? Number(args[i + 1]) : Number.NaN;
  return Number.isFinite(v) && v > 0 ? v : fallback;
};
const DEVICES = Math.round(flag('--devices', 10_000));
const SECONDS = flag('--seconds', 60);
const PROCS = Math.min(DEVICES, Math.round(flag('--procs', 4)));
const CONCURRENCY = Math.round(flag('--concurrency', 32));
const DRAIN_S = flag('--drain', 10);
const SEQUENTIAL_CAP_S = flag('--sequential-cap', 30);
/** Mosquitto's per-client queue (mosquittoConfig's maxQueuedMessages); its default when not given. */
const MAX_QUEUED = args.includes('--max-queued') ? flag('--max-queued', 1000) : undefined;
const PROFILE = args.includes('--profile') ? args[args.indexOf('--profile') + 1] : undefined;
const JSON_OUT = args.includes('--json');
/** Remote attestation on: the controller appraises every device at connect and every 60 s, the devices answer with software evidence. */
const ATTEST = args.includes('--attest');
const FLEET = 'bench';
const RAW = 'aios-bench-raw';
const say = (line: string): void => void (JSON_OUT ? process.stderr : process.stdout).write(`${line}\n`);

const mosquittoBin = findBinary('mosquitto');
if (mosquittoBin === undefined) {
  say('fleet bench skipped: the mosquitto binary is not installed (apt-get install mosquitto mosquitto-clients).');
  process.exit(0);
}
const subBin = findBinary('mosquitto_sub');
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
/** Taken once at the start: others may commit while a long run goes on (dist/ was built before). */
const REVISION = revision();
/** This process's open-files limit: the children inherit it, and the bench only ever raises it. */
const OPEN_FILES = Number(/Max open files\s+(\d+)/u.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1] ?? 1024);

/** The runtime digest the simulated agents report, and the controller allows (--attest). */
const RUNTIME = ATTEST ? (await runtimeDigest()).sha256 : undefined;
const root = await mkdtemp(path.join(os.tmpdir(), 'aios-bench-fleet-'));
const state = path.join(root, 'controller');
const children: DeviceProcess[] = [];
let broker: { port: number; child: ChildProcess; openFiles: string; log: string[] } | undefined;
let controller: Controller | undefined;
/** What the bench is doing now: Mosquitto's log lines are tagged with it. */
let phase = 'start';
// However this process ends (an error, Ctrl-C, a closed stdout pipe), the broker goes with it; the
// device processes exit when their IPC channel closes.
process.on('exit', () => void broker?.child.kill('SIGTERM'));
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => process.exit(130));
// main() runs at the end of this file, once the classes below are defined.

async function main(): Promise<void> {
  const prepared = await prepareControllerState(state, FLEET, ['127.0.0.1']);
  const rawFiles = await rawIdentity(prepared.ca);
  broker = await startMosquitto(mosquittoBin as string, Math.max(OPEN_FILES, DEVICES + 1024));
  const url = `mqtts://127.0.0.1:${broker.port}`;
  say(`fleet bench at ${REVISION}: ${DEVICES} devices in ${PROCS} processes, ${SECONDS} s windows, Mosquitto ${mosquittoVersion(mosquittoBin as string)} (open files ${broker.openFiles}, max_queued_messages ${MAX_QUEUED ?? 'mosquittoConfig default'}), node ${process.version}, ${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, state on ${state}`);

  const logCounts = new Map<string, number>();
  controller = await Controller.start({ fleet: FLEET, state, deployKeys: [generateSigningKey()], broker: url, hostnames: ['127.0.0.1'], enrolHost: '127.0.0.1', enrolPort: 0, apiPort: 0, log: (line) => void logCounts.set(String(line['msg']), (logCounts.get(String(line['msg'])) ?? 0) + 1), ...(RUNTIME === undefined ? {} : { attestation: { intervalMs: 60_000, policy: { allowedRuntimeDigests: [RUNTIME], allowedTrustRootDigests: [] } } }) });
  const ctl = controller;
  const appraised = { trusted: 0, untrusted: 0, stale: 0 };
  ctl.attestations?.on('result', (_device, result) => void appraised[result.status]++);

  // Enrolment through the controller's real path, timed per part.
  const ids = Array.from({ length: DEVICES }, (_, i) => `robot-${String(i + 1).padStart(5, '0')}`);
  const identities: DeviceIdentity[] = [];
  const enrolTime = { keysMs: 0, csrMs: 0, tokensMs: 0, enrolMs: 0 };
  for (const [i, id] of ids.entries()) {
    let t = performance.now();
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    enrolTime.keysMs += performance.now() - t;
    t = performance.now();
    const token = (await ctl.enrolment.issueToken({ validForMs: 3_600_000, deviceId: id }));
    enrolTime.tokensMs += performance.now() - t;
    t = performance.now();
    const csr = createCsr({ privateKey, commonName: id, challengePassword: token.token });
    enrolTime.csrMs += performance.now() - t;
    t = performance.now();
    const enrolled = (await ctl.enrolment.enrol(csr));
    enrolTime.enrolMs += performance.now() - t;
    identities.push({ id, cert: enrolled.certificatePem, key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() });
    // Keep the controller's MQTT keep-alive and the broker's socket served.
    if (i % 200 === 199) await new Promise((r) => setImmediate(r));
  }
  say(`enrolled ${DEVICES} devices: keys ${ms(enrolTime.keysMs)}, tokens ${ms(enrolTime.tokensMs)}, CSRs ${ms(enrolTime.csrMs)}, Enrolment.enrol ${ms(enrolTime.enrolMs)} (${round((enrolTime.enrolMs * 1000) / DEVICES, 0)} µs each)`);

  // Devices: P processes, each with its slice of the identities in a file.
  const caFile = path.join(state, 'ca.pem');
  const per = Math.ceil(DEVICES / PROCS);
  for (let p = 0; p < PROCS; p++) {
    const file = path.join(root, `devices-${p}.json`);
    await writeFile(file, JSON.stringify(identities.slice(p * per, (p + 1) * per)), { mode: 0o600 });
    children.push(new DeviceProcess(file, Math.max(OPEN_FILES, per + 256)));
  }
  const brokerPid = broker.child.pid ?? 0;
  phase = 'connect';
  const connectStart = performance.now();
  const connected = await Promise.all(children.map((c) => c.connect(url, caFile)));
  const connectWallMs = performance.now() - connectStart;
  const connectedCount = connected.reduce((n, c) => n + c.devices, 0);
  const connack = connected.flatMap((c) => c.connackMs);
  const announced = connected.flatMap((c) => c.announcedMs);
  const onlineAt = await waitForProgress(() => Math.min(ctl.registry.counts.statuses, ctl.registry.counts.births), connectedCount);
  const online = (await ctl.registry.list()).filter((d) => d.state === 'online').length;
  const visibleMs = performance.now() - connectStart;
  say(`connected ${connectedCount}/${DEVICES} in ${ms(connectWallMs)} (connack p50 ${ms(pct(connack, 50))}, p99 ${ms(pct(connack, 99))}; birth+status acked p99 ${ms(pct(announced, 99))}; TLS ${connected[0]?.tlsProtocol}); ${online} online in the registry after ${ms(visibleMs)}${onlineAt ? '' : ' (gave up: no birth or status arrived for 15 s)'}`);
  for (const c of connected) for (const f of c.failures.slice(0, 3)) say(`  connect failure: ${f}`);

  // (1) The controller.
  let profile: ProfileSummary | undefined;
  const session = PROFILE === undefined ? undefined : new Session();
  if (session !== undefined) {
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.start');
  }
  const droppedBefore = ctl.registry.counts.dropped;
  const before = { ...appraised };
  const appraisedAtWindowStart = before.trusted + before.untrusted + before.stale;
  const controllerWindow = await runWindow('controller', brokerPid, () => ctl.registry.counts.telemetry, 'self');
  const appraisedInWindow = { trusted: appraised.trusted - before.trusted, untrusted: appraised.untrusted - before.untrusted, stale: appraised.stale - before.stale };
  if (session !== undefined) {
    const { profile: p } = await session.post('Profiler.stop');
    await writeFile(PROFILE as string, JSON.stringify(p));
    profile = summarise(p);
    session.disconnect();
  }
  const lag = sequenceLag(controllerWindow.lastSequence, new Map((await ctl.registry.list()).map((d) => [d.deviceId, d.telemetrySequence ?? 0])));
  const registryDropped = ctl.registry.counts.dropped - droppedBefore;
  say(line(controllerWindow));
  if (ATTEST) say(`  attestation: ${appraisedInWindow.trusted + appraisedInWindow.untrusted + appraisedInWindow.stale} appraisals in the window (${round((appraisedInWindow.trusted + appraisedInWindow.untrusted + appraisedInWindow.stale) / SECONDS, 1)}/s): ${appraisedInWindow.trusted} trusted, ${appraisedInWindow.untrusted} untrusted, ${appraisedInWindow.stale} stale; since the connect ${appraised.trusted + appraised.untrusted + appraised.stale} (${appraisedAtWindowStart} before the window); goal: every device every 60 s`);
  say(`  per-device lag after the drain: ${lag.behind} devices behind, ${lag.missing} records never seen, max ${lag.max}; registry drops ${registryDropped}`);

  // "Deploy to visible": a signed command to every device until all are done.
  const rounds: CommandRound[] = [];
  const live = [...controllerWindow.lastSequence.keys()]; // the devices that connected
  rounds.push(await commandRound(ctl, live, 'all at once, idle fleet', false, Infinity));
  rounds.push(await commandRound(ctl, live, 'all at once, telemetry on', true, Infinity));
  rounds.push(await commandRound(ctl, live, 'one after another (as Deployments.target), idle', false, SEQUENTIAL_CAP_S * 1000));
  for (const r of rounds) say(`deploy to visible, ${r.name}: ${r.done}/${r.sent} done in ${ms(r.allDoneMs)} (sent in ${ms(r.allSentMs)}, per-device p50 ${ms(r.p50Ms)}, p99 ${ms(r.p99Ms)})${r.projectedMs === undefined ? '' : `; capped: ${DEVICES} would take ≈ ${ms(r.projectedMs)}`}${r.statuses === '' ? '' : `; not done: ${r.statuses}`}${r.stalled ? ' (stalled: no progress for 15 s)' : ''}; acks ${r.acksReceived} received of ${r.acksSent} sent`);

  // Stop the controller and end its persistent session, so the broker queues nothing for it.
  await ctl.stop();
  controller = undefined;
  await (await mqtt.connectAsync(url, { clientId: 'aios-controller', protocolVersion: 4, clean: true, reconnectPeriod: 0, ca: readFileSync(caFile, 'utf8'), cert: readFileSync(path.join(state, 'controller.pem'), 'utf8'), key: readFileSync(path.join(state, 'controller.key'), 'utf8') })).endAsync();

  // (2) mqtt.js alone: receive and count, no decoding, no database.
  const raw = await mqtt.connectAsync(url, { clientId: RAW, protocolVersion: 4, clean: true, reconnectPeriod: 0, ca: readFileSync(caFile, 'utf8'), cert: readFileSync(rawFiles.cert, 'utf8'), key: readFileSync(rawFiles.key, 'utf8') });
  let rawCount = 0;
  raw.on('message', () => void rawCount++);
  await raw.subscribeAsync(everyDevice(FLEET, 'telemetry'), { qos: 1 });
  const mqttjsWindow = await runWindow('mqtt.js subscriber', brokerPid, () => rawCount, 'self');
  await raw.endAsync();
  say(line(mqttjsWindow));

  // (3) mosquitto_sub, one byte and a newline per message.
  let subWindow: WindowResult | undefined;
  if (subBin !== undefined) {
    const tls = ['-h', '127.0.0.1', '-p', String(broker.port), '-V', 'mqttv311', '--cafile', caFile, '--cert', rawFiles.cert, '--key', rawFiles.key, '-i', RAW, '-t', everyDevice(FLEET, 'telemetry'), '-q', '1'];
    // Subscribed in a persistent session beforehand (-c -E), so nothing is missed while the
    // counting subscriber starts (its stdout is block-buffered: no line says when it is ready).
    await run(subBin, [...tls, '-c', '-E']);
    const sub = spawn(subBin, [...tls, '-c', '-F', '.'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let subCount = 0;
    sub.stdout.on('data', (d: Buffer) => {
      for (const b of d) if (b === 0x0a) subCount++;
    });
    subWindow = await runWindow('mosquitto_sub', brokerPid, () => subCount, sub.pid ?? 0);
    sub.kill('SIGTERM');
    await run(subBin, [...tls, '-E']); // a clean session: the stored one is dropped
    say(line(subWindow));
  } else {
    say('mosquitto_sub is not installed (apt-get install mosquitto-clients): no mosquitto_sub baseline');
  }

  // Bytes per telemetry record.
  const sample = telemetryRecord(4321, 3600, Date.now());
  const protoBytes = aios.fleet.v1.Telemetry.encode(sample).finish().length;
  const jsonBytes = Buffer.byteLength(JSON.stringify(sample));
  const birth = birthRecord('robot-04321', FLEET, Date.now());
  const topicBytes = Buffer.byteLength(`aios/${FLEET}/devices/robot-04321/telemetry`);
  const bytes = { telemetryProtobuf: protoBytes, telemetryJson: jsonBytes, jsonOverProtobuf: round(jsonBytes / protoBytes, 2), mqttPublishProtobuf: publishPacketBytes(topicBytes, protoBytes), mqttPublishJson: publishPacketBytes(topicBytes, jsonBytes), birthProtobuf: aios.fleet.v1.DeviceBirth.encode(birth).finish().length, birthJson: Buffer.byteLength(JSON.stringify(birth)) };
  say(`bytes per telemetry record: protobuf ${protoBytes}, JSON ${jsonBytes} (${bytes.jsonOverProtobuf}×); as an MQTT PUBLISH on ${topicBytes}-byte topics ${bytes.mqttPublishProtobuf} vs ${bytes.mqttPublishJson}; birth ${bytes.birthProtobuf} vs ${bytes.birthJson}`);

  const ratio = (w: WindowResult | undefined): number | undefined => (w === undefined || w.receivedPerSecond === 0 ? undefined : round(controllerWindow.receivedPerSecond / w.receivedPerSecond, 3));
  // Held: every device connected and shown online, the devices really sent 1 Hz, the controller
  // had (nearly) all of it by the end of the window and all of it after the drain.
  const keptUp = connectedCount === DEVICES && online === DEVICES && controllerWindow.sentPerSecond >= 0.98 * DEVICES && controllerWindow.receivedAtEnd >= 0.98 * controllerWindow.sent && controllerWindow.lost === 0;
  const summary = { vsMqttjs: ratio(mqttjsWindow), vsMosquittoSub: ratio(subWindow), goal: `≥ 10000 devices at 1 Hz on one controller`, met: keptUp && DEVICES >= 10_000, keptUpAtThisSize: keptUp };
  say(`controller ingest vs raw: ${summary.vsMqttjs ?? 'n/a'}× mqtt.js, ${summary.vsMosquittoSub ?? 'n/a'}× mosquitto_sub; kept up at ${DEVICES} devices: ${keptUp ? 'yes' : 'no'}; goal (${summary.goal}): ${DEVICES < 10_000 ? 'not tested (fewer devices)' : summary.met ? 'met' : 'not met'}`);
  // Mosquitto logs a notice each time it starts dropping a client's queued QoS 1 messages
  // (more than max_queued_messages waiting behind its in-flight window).
  // Not news: running as root, and the readiness probe closing its TCP connection mid-handshake.
  const brokerLog = broker.log.filter((l) => !/should not be run as root/u.test(l) && !/^start: .*unexpected eof/u.test(l));
  const droppingFor = new Map<string, number>();
  for (const l of brokerLog) {
    const m = /^(.*?): .*messages are being dropped for client (\S+?)\.?$/u.exec(l);
    if (m !== null) droppingFor.set(`${m[2]} during ${m[1]}`, (droppingFor.get(`${m[2]} during ${m[1]}`) ?? 0) + 1);
  }
  if (droppingFor.size > 0) say(`Mosquitto dropped queued messages for: ${[...droppingFor].slice(0, 10).map(([c, n]) => `${c} (${n}×)`).join(', ')}${droppingFor.size > 10 ? ` and ${droppingFor.size - 10} more clients` : ''}`);
  for (const l of brokerLog.filter((x) => !/being dropped/u.test(x)).slice(0, 5)) say(`Mosquitto: ${l}`);
  if (logCounts.size > 0) say(`controller log lines: ${[...logCounts].map(([k, v]) => `${k} ×${v}`).join(', ')}`);
  if (profile !== undefined) {
    say(`CPU profile of the controller window (${PROFILE}), self time by part: ${profile.parts.map((p) => `${p.name} ${p.percent}%`).join(', ')}`);
    for (const f of profile.functions) say(`  ${String(f.percent).padStart(5)}%  ${f.name}`);
  }
  if (JSON_OUT) {
    console.log(JSON.stringify({ revision: REVISION, machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, memoryGb: round(os.totalmem() / 2 ** 30, 1), node: process.version, date: new Date().toISOString() }, devices: DEVICES, procs: PROCS, seconds: SECONDS, broker: { openFiles: broker.openFiles, maxQueuedMessages: MAX_QUEUED ?? 'default', droppingFor: Object.fromEntries(droppingFor) }, enrolment: { ...mapValues(enrolTime, (v) => round(v, 0)), perDeviceUs: round((enrolTime.enrolMs * 1000) / DEVICES, 0) }, connect: { connected: connectedCount, wallMs: round(connectWallMs, 0), connackP50Ms: round(pct(connack, 50), 1), connackP99Ms: round(pct(connack, 99), 1), announcedP99Ms: round(pct(announced, 99), 1), onlineInRegistry: online, visibleMs: round(visibleMs, 0), tls: connected[0]?.tlsProtocol }, windows: [controllerWindow, mqttjsWindow, subWindow].filter((w) => w !== undefined).map(({ lastSequence: _, ...w }) => w), lag: { ...lag, registryDropped }, commands: rounds, bytes, summary, profile }, null, 2));
  }
}

// ---------------------------------------------------------------------------------------------

interface WindowResult {
  readonly name: string;
  readonly seconds: number;
  /** Telemetry the devices published in the window, and per second. */
  readonly sent: number;
  readonly sentPerSecond: number;
  /** What the subscriber had when telemetry stopped, per second of the window. */
  readonly receivedAtEnd: number;
  readonly receivedPerSecond: number;
  /** Per-second receive rates: min and median over the window. */
  readonly perSecondMin: number;
  readonly perSecondMedian: number;
  /** After waiting for the backlog (at most --drain s). */
  readonly received: number;
  readonly drainMs: number;
  readonly lost: number;
  readonly publishLateMsMax: number;
  readonly publishErrors: number;
  readonly disconnects: number;
  /** % of one core: the subscriber (this process, or mosquitto_sub), Mosquitto, all device processes. */
  readonly subscriberCpu: number;
  readonly mosquittoCpu: number;
  readonly devicesCpu: number;
  /** CPU µs per telemetry message received (subscriber, Mosquitto) or sent (devices). */
  readonly usPerMessage: { readonly subscriber: number; readonly mosquitto: number; readonly devices: number };
  readonly subscriberRssMaxMb: number;
  /** This process only: the share of the window its event loop was not waiting for I/O (on a core, blocked in fsync, or waiting for a core). */
  readonly eventLoopUtilization?: number;
  readonly eventLoopP99Ms?: number;
  readonly eventLoopMaxMs?: number;
  /** Messages received in each second of the window. */
  readonly perSecond: readonly number[];
  readonly lastSequence: ReadonlyMap<string, number>;
}

/** Telemetry on for --seconds, off, then the drain; `count` is the subscriber's received total. */
async function runWindow(name: string, brokerPid: number, count: () => number, subscriber: number | 'self'): Promise<WindowResult> {
  phase = `${name} window`;
  const before = await report();
  const countBefore = count();
  const cpuBefore = subscriber === 'self' ? cpuSeconds() : procCpuSeconds(subscriber);
  const brokerBefore = procCpuSeconds(brokerPid);
  const loop = monitorEventLoopDelay({ resolution: 10 });
  if (subscriber === 'self') loop.enable();
  const perSecond: number[] = [];
  let rssMax = 0;
  let last = countBefore;
  const timer = setInterval(() => {
    const c = count();
    perSecond.push(c - last);
    last = c;
    rssMax = Math.max(rssMax, subscriber === 'self' ? process.memoryUsage.rss() : procRss(subscriber));
  }, 1000);
  const started = performance.now();
  const elu = performance.eventLoopUtilization();
  for (const c of children) c.send({ kind: 'telemetry', on: true });
  await sleep(SECONDS * 1000);
  const busy = performance.eventLoopUtilization(elu).utilization;
  for (const c of children) c.send({ kind: 'telemetry', on: false });
  const receivedAtEnd = count() - countBefore;
  const seconds = (performance.now() - started) / 1000;
  clearInterval(timer);
  loop.disable();
  const subscriberCpu = ((subscriber === 'self' ? cpuSeconds() : procCpuSeconds(subscriber)) - cpuBefore) / seconds;
  const mosquittoCpu = (procCpuSeconds(brokerPid) - brokerBefore) / seconds;
  const after = await report();
  const sent = after.sent - before.sent;
  const drainStart = performance.now();
  await waitFor(() => count() - countBefore >= sent, DRAIN_S * 1000);
  const received = count() - countBefore;
  const devicesCpu = (after.cpuSeconds - before.cpuSeconds) / seconds;
  const steady = perSecond.slice(1);
  return {
    name,
    seconds: round(seconds, 1),
    sent,
    sentPerSecond: round(sent / seconds, 0),
    receivedAtEnd,
    receivedPerSecond: round(receivedAtEnd / seconds, 0),
    perSecondMin: steady.length === 0 ? 0 : Math.min(...steady),
    perSecondMedian: median(steady),
    received,
    drainMs: round(performance.now() - drainStart, 0),
    lost: Math.max(0, sent - received),
    publishLateMsMax: after.lateMsMax,
    publishErrors: after.publishErrors - before.publishErrors,
    disconnects: after.disconnects,
    subscriberCpu: round(subscriberCpu * 100, 1),
    mosquittoCpu: round(mosquittoCpu * 100, 1),
    devicesCpu: round(devicesCpu * 100, 1),
    usPerMessage: { subscriber: round((subscriberCpu * seconds * 1e6) / Math.max(1, receivedAtEnd), 0), mosquitto: round((mosquittoCpu * seconds * 1e6) / Math.max(1, sent), 0), devices: round((devicesCpu * seconds * 1e6) / Math.max(1, sent), 0) },
    subscriberRssMaxMb: round(rssMax / 2 ** 20, 0),
    ...(subscriber === 'self' ? { eventLoopUtilization: round(busy, 3), eventLoopP99Ms: round(loop.percentile(99) / 1e6, 1), eventLoopMaxMs: round(loop.max / 1e6, 1) } : {}),
    perSecond,
    lastSequence: after.lastSequence,
  };
}

function line(w: WindowResult): string {
  return `${w.name.padEnd(20)} sent ${w.sentPerSecond}/s, received ${w.receivedPerSecond}/s (per second: min ${w.perSecondMin}, median ${w.perSecondMedian}); after ${ms(w.drainMs)} drain ${w.received}/${w.sent}, lost ${w.lost}; CPU % of a core (µs per message): subscriber ${w.subscriberCpu} (${w.usPerMessage.subscriber}), Mosquitto ${w.mosquittoCpu} (${w.usPerMessage.mosquitto}), devices ${w.devicesCpu} (${w.usPerMessage.devices}); subscriber RSS max ${w.subscriberRssMaxMb} MB${w.eventLoopP99Ms === undefined ? '' : `, event loop busy ${round((w.eventLoopUtilization ?? 0) * 100, 1)}%, delay p99 ${w.eventLoopP99Ms} ms, max ${w.eventLoopMaxMs} ms`}; publish late max ${ms(w.publishLateMsMax)}`;
}

/** The devices' counters, summed over the processes. */
async function report(): Promise<{ sent: number; acksSent: number; publishErrors: number; disconnects: number; lateMsMax: number; cpuSeconds: number; lastSequence: Map<string, number> }> {
  const reports = await Promise.all(children.map((c) => c.report()));
  const sum = (f: (r: DeviceReport) => number): number => reports.reduce((n, r) => n + f(r), 0);
  return { sent: sum((r) => r.sent), acksSent: sum((r) => r.acksSent), publishErrors: sum((r) => r.publishErrors), disconnects: sum((r) => r.disconnects), lateMsMax: Math.max(...reports.map((r) => r.lateMsMax)), cpuSeconds: sum((r) => (r.cpuUserUs + r.cpuSystemUs) / 1e6), lastSequence: new Map(reports.flatMap((r) => r.lastSequence)) };
}

function sequenceLag(sent: ReadonlyMap<string, number>, seen: ReadonlyMap<string, number>): { behind: number; missing: number; max: number } {
  let behind = 0;
  let missing = 0;
  let max = 0;
  for (const [id, s] of sent) {
    const gap = s - (seen.get(id) ?? 0);
    if (gap > 0) {
      behind++;
      missing += gap;
      max = Math.max(max, gap);
    }
  }
  return { behind, missing, max };
}

interface CommandRound {
  readonly name: string;
  readonly sent: number;
  readonly done: number;
  readonly allSentMs: number;
  readonly allDoneMs: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** Sequential rounds stop after the cap: the time N devices would take at the rate reached. */
  readonly projectedMs?: number;
  /** Final statuses other than done, from the command table. */
  readonly statuses: string;
  /** Not all done, and nothing moved for 15 s. */
  readonly stalled: boolean;
  /** Acks the devices published (each PUBACKed by the broker), and those that reached the controller. */
  readonly acksSent: number;
  readonly acksReceived: number;
}

/**
 * One stopPipeline to each device, timed from the first send until the controller's command
 * table says `done` for every one (what `aios fleet show` would display).
 */
async function commandRound(ctl: Controller, ids: readonly string[], name: string, telemetry: boolean, capMs: number): Promise<CommandRound> {
  phase = `commands ${name}`;
  if (telemetry) {
    for (const c of children) c.send({ kind: 'telemetry', on: true });
    await sleep(3000); // into the steady state first
  }
  const acksBefore = { sent: (await report()).acksSent, received: ctl.registry.counts.acks };
  const doneAt = new Map<string, number>();
  const listener = (r: CommandRecord): void => {
    if (r.status === 'done' && r.action === 'stopPipeline' && !doneAt.has(r.deviceId)) doneAt.set(r.deviceId, performance.now());
  };
  ctl.commands.on('update', listener);
  const started = performance.now();
  const records: CommandRecord[] = [];
  if (capMs === Infinity) {
    // Every send signs and records synchronously, then waits for its PUBACK: all are issued at once.
    records.push(...(await Promise.all(ids.map((id) => ctl.commands.send(id, { stopPipeline: { name: PIPELINE } })))));
  } else {
    for (const id of ids) {
      if (performance.now() - started > capMs) break;
      records.push(await ctl.commands.send(id, { stopPipeline: { name: PIPELINE } }));
    }
  }
  const allSentMs = performance.now() - started;
  // Until every command is done, or nothing moved for 15 s (an ack lost for good leaves its
  // command `sent` or `accepted` forever: nothing re-sends it).
  const stalled = !(await waitForProgress(() => doneAt.size, records.length));
  const allDoneMs = Math.max(0, ...[...doneAt.values()].map((t) => t - started));
  ctl.commands.off('update', listener);
  if (telemetry) for (const c of children) c.send({ kind: 'telemetry', on: false });
  const tally = new Map<string, number>();
  for (const r of records) {
    const status = (await ctl.commands.get(r.deviceId, r.sequence))?.status ?? 'missing';
    if (status !== 'done') tally.set(status, (tally.get(status) ?? 0) + 1);
  }
  const times = [...doneAt.values()].map((t) => t - started);
  await sleep(1000);
  const acks = { sent: (await report()).acksSent - acksBefore.sent, received: ctl.registry.counts.acks - acksBefore.received };
  return {
    name,
    sent: records.length,
    done: doneAt.size,
    allSentMs: round(allSentMs, 0),
    allDoneMs: round(allDoneMs, 0),
    p50Ms: round(pct(times, 50), 0),
    p99Ms: round(pct(times, 99), 0),
    ...(records.length < ids.length ? { projectedMs: round((allDoneMs * DEVICES) / Math.max(1, records.length), 0) } : {}),
    statuses: [...tally].map(([k, v]) => `${k} ${v}`).join(', '),
    stalled,
    acksSent: acks.sent,
    acksReceived: acks.received,
  };
}

// ---------------------------------------------------------------------------------------------

/** One device child process: sends it messages and waits for its answers by kind. */
class DeviceProcess {
  readonly #child: ChildProcess;
  readonly #waiting = new Map<string, (m: FromDevices) => void>();
  #exited = false;

  constructor(readonly devicesFile: string, openFiles: number) {
    const script = fileURLToPath(new URL('./fleet-device.js', import.meta.url));
    // Through sh so the open-files limit can be raised for this process's sockets; with this
    // process's node flags, as fork would (`node --cpu-prof` profiles the devices too).
    this.#child = spawn('sh', ['-c', `ulimit -n ${openFiles} 2>/dev/null; exec "$0" "$@"`, process.execPath, ...process.execArgv, script], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.#child.on('message', (m: FromDevices) => {
      if (m.kind === 'error') throw new Error(`a device process failed: ${m.message}`);
      const waiter = this.#waiting.get(m.kind);
      this.#waiting.delete(m.kind);
      waiter?.(m);
    });
    this.#child.on('exit', () => (this.#exited = true));
  }

  send(m: ToDevices): void {
    this.#child.send(m);
  }

  async connect(url: string, caFile: string): Promise<Extract<FromDevices, { kind: 'connected' }>> {
    return (await this.#ask({ kind: 'connect', url, fleet: FLEET, caFile, devicesFile: this.devicesFile, concurrency: CONCURRENCY, ...(RUNTIME === undefined ? {} : { attestRuntime: RUNTIME }) }, 'connected')) as Extract<FromDevices, { kind: 'connected' }>;
  }

  async report(): Promise<DeviceReport> {
    return (await this.#ask({ kind: 'report' }, 'report')) as DeviceReport;
  }

  /** Ends the devices' sessions and lets the process exit by itself (so `--cpu-prof` writes its profile); SIGKILL after 10 s. */
  async stop(): Promise<void> {
    if (this.#exited) return;
    const exited = new Promise<void>((resolve) => this.#child.once('exit', () => resolve()));
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), 10_000);
    this.send({ kind: 'stop' });
    await exited;
    clearTimeout(timer);
  }

  #ask(m: ToDevices, answer: FromDevices['kind']): Promise<FromDevices> {
    return new Promise((resolve) => {
      this.#waiting.set(answer, resolve);
      this.send(m);
    });
  }
}

interface ProfileSummary {
  readonly parts: readonly { name: string; percent: number }[];
  readonly functions: readonly { name: string; percent: number }[];
}

/** Self time of a V8 CPU profile, by part of the stack (our code, SQLite, mqtt.js, ...) and by function. */
function summarise(profile: { nodes: { id: number; hitCount?: number; callFrame: { functionName: string; url: string; lineNumber: number } }[] }): ProfileSummary {
  const total = profile.nodes.reduce((n, node) => n + (node.hitCount ?? 0), 0) || 1;
  const parts = new Map<string, number>();
  const functions = new Map<string, number>();
  for (const node of profile.nodes) {
    const hits = node.hitCount ?? 0;
    if (hits === 0) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    const file = url.replace(/^file:\/\//u, '').replace(`${process.cwd()}/`, '');
    const part = functionName === '(idle)' ? 'idle' : functionName === '(garbage collector)' ? 'GC' : functionName === '(program)' ? 'native (program)' : /better-sqlite3/u.test(file) ? 'better-sqlite3 (JS side)' : url === '' ? 'native calls (SQLite, crypto, ...)' : /node_modules\/(mqtt|mqtt-packet|bl|readable-stream)/u.test(file) ? 'mqtt.js' : /protobufjs|proto\/gen/u.test(file) ? 'protobuf' : /^node:/u.test(url) ? 'node core (streams, TLS, timers)' : /deploy\//u.test(file) ? 'aios controller' : 'other';
    parts.set(part, (parts.get(part) ?? 0) + hits);
    const key = `${functionName || '(anonymous)'}  ${file === '' ? '(native)' : `${file}:${lineNumber + 1}`}`;
    functions.set(key, (functions.get(key) ?? 0) + hits);
  }
  const top = (m: Map<string, number>, n: number): { name: string; percent: number }[] => [...m].sort((a, b) => b[1] - a[1]).slice(0, n).map(([name, hits]) => ({ name, percent: round((100 * hits) / total, 1) }));
  return { parts: top(parts, 12), functions: top(functions, 20) };
}

/** Mosquitto from mosquittoConfig on a free loopback port, with at least `openFiles` descriptors. */
async function startMosquitto(binary: string, openFiles: number): Promise<{ port: number; child: ChildProcess; openFiles: string; log: string[] }> {
  const port = await freePort();
  const aclFile = path.join(root, 'fleet.acl');
  const { conf, acl } = mosquittoConfig({ fleet: FLEET, port, bind: '127.0.0.1', persistenceLocation: null, ...(MAX_QUEUED === undefined ? {} : { maxQueuedMessages: MAX_QUEUED }), controllers: ['aios-controller', RAW], cafile: path.join(state, 'ca.pem'), certfile: path.join(state, 'server.pem'), keyfile: path.join(state, 'server.key'), aclFile });
  await writeFile(aclFile, acl);
  const confFile = path.join(root, 'mosquitto.conf');
  // As root Mosquitto would switch to the mosquitto user and lose access to the key files. A line
  // per connection ×10,000 is noise; notices stay (they say when it drops queued messages).
  const quiet = ['connection_messages false', 'log_type error', 'log_type warning', 'log_type notice', 'log_timestamp false'].join('\n');
  await writeFile(confFile, `${process.getuid?.() === 0 ? 'user root\n' : ''}${quiet}\n${conf}`);
  // max_connections stays at Mosquitto's default (-1, no limit); the open-files limit is what binds.
  const child = spawn('sh', ['-c', `ulimit -n ${openFiles} 2>/dev/null; exec "$0" "$@"`, binary, '-c', confFile], { stdio: ['ignore', 'ignore', 'pipe'] });
  const log: string[] = [];
  child.stderr?.on('data', (d: Buffer) => log.push(...d.toString().split('\n').filter((l) => l.trim() !== '').map((l) => `${phase}: ${l}`)));
  for (let i = 0; i < 200 && !(await accepts(port)); i++) await sleep(25);
  const limits = existsSync(`/proc/${child.pid}/limits`) ? readFileSync(`/proc/${child.pid}/limits`, 'utf8') : '';
  const openFilesLine = /Max open files\s+(\d+)/u.exec(limits);
  return { port, child, openFiles: openFilesLine?.[1] ?? 'unknown', log };
}

async function rawIdentity(ca: { certificatePem: string; privateKeyPem: string }): Promise<{ cert: string; key: string }> {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const files = { cert: path.join(root, `${RAW}.pem`), key: path.join(root, `${RAW}.key`) };
  await writeFile(files.cert, issueCertificate({ ca, subjectPublicKey: publicKey, commonName: RAW, validDays: 2, usage: 'client' }));
  await writeFile(files.key, privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), { mode: 0o600 });
  return files;
}

/** Bytes of an MQTT 3.1.1 QoS 1 PUBLISH: fixed header, topic, packet id, payload. */
function publishPacketBytes(topicBytes: number, payloadBytes: number): number {
  const remaining = 2 + topicBytes + 2 + payloadBytes;
  return 1 + (remaining < 128 ? 1 : remaining < 16_384 ? 2 : 3) + remaining;
}

function cpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** utime + stime of another process, from /proc (0 once it is gone). */
function procCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

function procRss(pid: number): number {
  try {
    return Number(/VmRSS:\s+(\d+)/u.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;
  } catch {
    return 0;
  }
}

/** The commit measured, and whether deploy/ differed from it (others may be changing the controller). */
function revision(): string {
  const repo = fileURLToPath(new URL('../..', import.meta.url)); // dist/bench/ -> the checkout
  try {
    const head = execFileSync('git', ['-C', repo, 'rev-parse', '--short', 'HEAD'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
    const dirty = execFileSync('git', ['-C', repo, 'status', '--porcelain', '--', 'deploy'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim() !== '';
    return `${head}${dirty ? ' with uncommitted changes in deploy/' : ''}`;
  } catch {
    return 'an unknown commit (not a git checkout)';
  }
}

function mosquittoVersion(binary: string): string {
  try {
    return /version (\S+)/u.exec(execFileSync(binary, ['-h'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString())?.[1] ?? '?';
  } catch (error) {
    // `mosquitto -h` exits 3 after printing its usage.
    const out = (error as { stdout?: Buffer }).stdout?.toString() ?? '';
    return /version (\S+)/u.exec(out)?.[1] ?? '?';
  }
}

async function waitFor(condition: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > end) return false;
    await sleep(20);
  }
  return true;
}

/** Waits until `value()` reaches `target`; false when it stops moving for 15 s first. */
async function waitForProgress(value: () => number, target: number, stallMs = 15_000): Promise<boolean> {
  let last = { value: -1, at: performance.now() };
  await waitFor(() => {
    const v = value();
    if (v !== last.value) last = { value: v, at: performance.now() };
    return v >= target || performance.now() - last.at > stallMs;
  }, 24 * 3_600_000);
  return value() >= target;
}

function pct(xs: readonly number[], p: number): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? 0;
}

function ms(x: number): string {
  return x >= 10_000 ? `${round(x / 1000, 1)} s` : `${round(x, 0)} ms`;
}

function mapValues<T extends Record<string, number>>(o: T, f: (v: number) => number): Record<keyof T, number> {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, f(v)])) as Record<keyof T, number>;
}

function sleep(msToWait: number): Promise<void> {
  return new Promise((r) => setTimeout(r, msToWait));
}

function run(command: string, argv: readonly string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, argv, { stdio: 'inherit' });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${command} exited with ${code}`))));
  });
}




try {
  await main();
} finally {
  await Promise.all(children.map((c) => c.stop()));
  await controller?.stop().catch(() => undefined);
  broker?.child.kill('SIGTERM');
  await rm(root, { recursive: true, force: true });
}
