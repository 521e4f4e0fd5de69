import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../deploy/agent/agent.js';
import { parseAgentConfig } from '../../deploy/agent/config.js';
import { Controller, prepareControllerState } from '../../deploy/controller/controller.js';
import { mosquittoConfig } from '../../deploy/fleet/mosquitto-config.js';
import { issueCertificate } from '../../deploy/fleet/pki/certificate.js';
import { createCsr } from '../../deploy/fleet/pki/csr.js';
import { deviceTopic } from '../../deploy/fleet/topics.js';
import { aios } from '../../deploy/proto/gen/aios.js';
import { generateSigningKey } from '../../models/keys.js';
import { createRoot, signRoot } from '../../models/trust/root.js';
import { TrustStore } from '../../models/trust/trust-store.js';
import { SYSROOTS } from '../support/sysroots.js';
import { findBinary, freePort, startMosquitto, until, type Mosquitto } from '../support/wait.js';

// Faults and bad input on a real Mosquitto: the broker killed and restarted under a device's
// telemetry (the agent's spool holds it and replays it in order: nothing lost), and a device that
// publishes garbage into its own topics (dropped and counted by the controller, which carries on).

const MOSQUITTO = findBinary('mosquitto');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-fleet-faults-'));
const FLEET = 'warehouse';
const state = path.join(tmp, 'controller');
const rootKey = generateSigningKey();
const ops = generateSigningKey();
const pub = { keyid: ops.keyid, publicKey: ops.publicKey };
const root = signRoot(createRoot({ version: 1, expires: new Date(Date.now() + 86_400_000), roles: { root: { keys: [{ keyid: rootKey.keyid, publicKey: rootKey.publicKey }], threshold: 1 }, models: { keys: [pub], threshold: 1 }, deploy: { keys: [pub], threshold: 1 } } }), [rootKey]);

let broker: Mosquitto | undefined;
let brokerPort: number;
let controller: Controller;
let agent: Agent;
let observer: MqttClient;
const sequences: number[] = [];

async function startBroker(): Promise<void> {
  const files = { cafile: path.join(state, 'ca.pem'), certfile: path.join(state, 'server.pem'), keyfile: path.join(state, 'server.key'), aclFile: path.join(tmp, 'fleet.acl') };
  const persist = path.join(tmp, 'mosquitto-db');
  mkdirSync(persist, { recursive: true });
  broker = await startMosquitto(MOSQUITTO as string, {
    dir: tmp,
    port: brokerPort,
    config: (port) => {
      const { conf, acl } = mosquittoConfig({ fleet: FLEET, port, bind: '127.0.0.1', controllers: ['aios-controller', 'aios-observer'], persistenceLocation: `${persist}/`, ...files });
      writeFileSync(files.aclFile, acl);
      return conf;
    },
  });
}

beforeAll(async () => {
  if (MOSQUITTO === undefined) return;
  brokerPort = await freePort();
  const prepared = await prepareControllerState(state, FLEET, ['127.0.0.1']);
  await startBroker();
  controller = await Controller.start({ fleet: FLEET, state, deployKeys: [ops], broker: `mqtts://127.0.0.1:${brokerPort}`, hostnames: ['127.0.0.1'], enrolHost: '127.0.0.1', enrolPort: 0, apiPort: 0 });
  // An observer with a controller's rights records every telemetry sequence that gets through.
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  observer = await mqtt.connectAsync(`mqtts://127.0.0.1:${brokerPort}`, { clientId: 'aios-observer', protocolVersion: 4, clean: false, reconnectPeriod: 250, ca: prepared.ca.certificatePem, cert: issueCertificate({ ca: prepared.ca, subjectPublicKey: publicKey, commonName: 'aios-observer', validDays: 1, usage: 'client' }), key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() });
  observer.on('message', (_topic, payload) => sequences.push(Number(aios.fleet.v1.Telemetry.decode(payload).sequence)));
  await observer.subscribeAsync(deviceTopic(FLEET, 'robot-1', 'telemetry'), { qos: 1 });

  const dir = path.join(tmp, 'robot-1');
  mkdirSync(dir, { recursive: true });
  await TrustStore.init(path.join(dir, 'trust'), root);
  writeFileSync(path.join(dir, 'fleet-ca.pem'), prepared.ca.certificatePem);
  writeFileSync(path.join(dir, 'token'), (await controller.enrolment.issueToken({ validForMs: 600_000, deviceId: 'robot-1' })).token);
  agent = await Agent.start(parseAgentConfig({ fleet: FLEET, device: 'robot-1', broker: `mqtts://127.0.0.1:${brokerPort}`, controller: controller.urls.enrol, ca: 'fleet-ca.pem', token: 'token', state: 'state', trust: 'trust', models: 'models', telemetry: { interval: '100ms', spool: '1MiB' } }, path.join(dir, 'agent.yaml')), { sysroot: path.join(SYSROOTS, 'x86-server') });
  await until(async () => (await controller.registry.get('robot-1'))?.state === 'online', 20_000);
}, 60_000);
afterAll(async () => {
  await agent?.stop();
  await observer?.endAsync(true);
  await controller?.stop();
  broker?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

describe.skipIf(MOSQUITTO === undefined)('fleet faults on a real Mosquitto', () => {
  if (MOSQUITTO === undefined) console.warn('fleet fault tests skipped: mosquitto is not installed (make test installs it as root)');

  it('the broker killed and restarted under telemetry: the spool holds it and replays it in order, nothing lost', async () => {
    await until(() => sequences.length >= 5, 10_000);
    broker?.stop(); // SIGTERM: the broker saves its sessions (a real restart)
    await new Promise((r) => setTimeout(r, 300));
    const whileDown = agent.spoolStats().nextSeq;
    await new Promise((r) => setTimeout(r, 2000)); // ~20 records spooled with no broker
    expect(agent.spoolStats().pending).toBeGreaterThan(10);
    await startBroker();
    const target = agent.spoolStats().nextSeq - 1;
    expect(target).toBeGreaterThan(whileDown);
    await until(() => sequences.includes(target), 30_000);
    const seen = [...new Set(sequences)].sort((a, b) => a - b);
    const first = seen[0] as number;
    // Every record from the first seen to the last spooled arrived; in order per connection.
    expect(seen.slice(0, target - first + 1)).toEqual(Array.from({ length: target - first + 1 }, (_, i) => first + i));
    expect(agent.spoolStats().dropped).toBe(0);
    await until(async () => (await controller.registry.get('robot-1'))?.state === 'online', 20_000);
    await until(async () => ((await controller.registry.get('robot-1'))?.telemetrySequence ?? 0) >= target, 20_000);
  });

  it('garbage in a device’s own topics is dropped and counted; the controller and that device carry on', async () => {
    // A second device, enrolled with a CSR made here, that misbehaves.
    const token = (await controller.enrolment.issueToken({ validForMs: 60_000, deviceId: 'robot-bad' })).token;
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const enrolled = (await controller.enrolment.enrol(createCsr({ privateKey, commonName: 'robot-bad', challengePassword: token })));
    const bad = await mqtt.connectAsync(`mqtts://127.0.0.1:${brokerPort}`, { clientId: 'robot-bad', protocolVersion: 4, reconnectPeriod: 0, ca: enrolled.caCertificatePem, cert: enrolled.certificatePem, key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() });
    const before = controller.registry.counts.dropped;
    await bad.publishAsync(deviceTopic(FLEET, 'robot-bad', 'telemetry'), Buffer.from('not protobuf \u0000\u00ff\u00ff\u00ff'), { qos: 1 });
    await bad.publishAsync(deviceTopic(FLEET, 'robot-bad', 'birth'), Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]), { qos: 1 });
    // A birth that claims to be another device.
    await bad.publishAsync(deviceTopic(FLEET, 'robot-bad', 'birth'), Buffer.from(aios.fleet.v1.DeviceBirth.encode({ deviceId: 'robot-1', fleet: FLEET }).finish()), { qos: 1 });
    // A well-formed record afterwards is taken.
    await bad.publishAsync(deviceTopic(FLEET, 'robot-bad', 'telemetry'), Buffer.from(aios.fleet.v1.Telemetry.encode({ timeUnixMs: Date.now(), sequence: 1, device: { cpuPercent: 12 } }).finish()), { qos: 1 });
    await until(async () => (await controller.registry.get('robot-bad'))?.telemetrySequence === 1, 10_000);
    expect(controller.registry.counts.dropped - before).toBeGreaterThanOrEqual(3);
    expect((await controller.registry.get('robot-1'))?.state).toBe('online');
    expect((await controller.registry.birth('robot-1'))?.deviceId).toBe('robot-1');
    await bad.endAsync();
    // Oversized: the broker's max_packet_size (2 MiB + headers) closes that connection; nothing reaches the controller.
    const big = await mqtt.connectAsync(`mqtts://127.0.0.1:${brokerPort}`, { clientId: 'robot-bad', protocolVersion: 4, reconnectPeriod: 0, ca: enrolled.caCertificatePem, cert: enrolled.certificatePem, key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() });
    const closed = new Promise<void>((r) => big.once('close', () => r()));
    big.publish(deviceTopic(FLEET, 'robot-bad', 'events'), Buffer.alloc(3 * 1024 * 1024, 1), { qos: 0 });
    await closed;
    big.end(true);
    const events = controller.registry.counts.events;
    await new Promise((r) => setTimeout(r, 300));
    expect(controller.registry.counts.events).toBe(events);
    expect((await controller.registry.get('robot-1'))?.state).toBe('online');
  });
});
