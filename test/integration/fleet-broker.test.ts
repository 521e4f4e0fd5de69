import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FleetBroker, type Refusal } from '../../deploy/fleet/broker.js';
import { createCertificateAuthority, issueCertificate } from '../../deploy/fleet/pki/certificate.js';
import { deviceTopic, everyDevice } from '../../deploy/fleet/topics.js';
import { startFleetMosquitto } from '../support/fleet-mosquitto.js';
import { findBinary } from '../support/wait.js';

// The fleet's broker rules, against the embedded broker and a real Mosquitto configured by
// mosquittoConfig: mutual TLS with certificates from the fleet CA, and each device confined to
// its own subtree. What differs is only how a refused publish ends: aedes closes the client's
// connection, Mosquitto drops the message silently (MQTT 3.1.1 has no refusal for a publish).

const MOSQUITTO = findBinary('mosquitto');
const FLEET = 'warehouse';
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-fleet-broker-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const ca = createCertificateAuthority({ commonName: 'warehouse fleet CA', validDays: 30 });
const rogueCa = createCertificateAuthority({ commonName: 'someone else', validDays: 30 });

interface Identity {
  readonly cert: string;
  readonly key: string;
}

function identity(name: string, usage: 'client' | 'server' = 'client', authority = ca): Identity {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const cert = issueCertificate({ ca: authority, subjectPublicKey: publicKey, commonName: name, validDays: 7, usage, ...(usage === 'server' ? { ipAddresses: ['127.0.0.1'], dnsNames: ['localhost'] } : {}) });
  return { cert, key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
}

const server = identity('broker', 'server');
const controller = identity('aios-controller');
const robotA = identity('robot-a');
const robotB = identity('robot-b');
const impostor = identity('robot-b', 'client', rogueCa); // a robot-b certificate from another CA
const reserved = identity('aios-intruder'); // a name devices may not take

interface Broker {
  readonly url: string;
  readonly refusals: Refusal[];
  /** Whether a refused publish closes the publisher's connection. */
  readonly closesOnRefusedPublish: boolean;
  close(): Promise<void>;
}

async function connect(url: string, who: Identity | undefined, clientId: string): Promise<MqttClient> {
  return mqtt.connectAsync(url, {
    clientId,
    protocolVersion: 4,
    clean: false,
    reconnectPeriod: 0,
    connectTimeout: 5000,
    ca: ca.certificatePem,
    ...(who === undefined ? {} : { cert: who.cert, key: who.key }),
    rejectUnauthorized: true,
  });
}

/**
 * Whether the broker refuses the connection. A TLS 1.3 client learns that its certificate was
 * refused only when the server closes the socket, which mqtt.js reports as 'close' without an
 * error (connectAsync would wait forever), so this listens for both.
 */
async function refused(url: string, who: Identity | undefined, clientId: string): Promise<boolean> {
  const client = mqtt.connect(url, { clientId, protocolVersion: 4, clean: false, reconnectPeriod: 0, connectTimeout: 5000, ca: ca.certificatePem, ...(who === undefined ? {} : { cert: who.cert, key: who.key }), rejectUnauthorized: true });
  const outcome = await new Promise<boolean>((resolve) => {
    client.once('connect', () => resolve(false));
    client.once('error', () => resolve(true));
    client.once('close', () => resolve(true));
  });
  await client.endAsync(true);
  return outcome;
}

/**
 * Messages arriving at `client` on `filter`, collected. A subscription the broker refuses (aedes
 * answers 0x80; Mosquitto grants it and delivers nothing) collects nothing.
 */
async function collect(client: MqttClient, filter: string): Promise<{ topic: string; payload: string }[]> {
  const got: { topic: string; payload: string }[] = [];
  client.on('message', (topic, payload) => got.push({ topic, payload: payload.toString() }));
  await client.subscribeAsync(filter, { qos: 1 }).catch((error: unknown) => {
    if (!/Subscribe error/u.test(String(error))) throw error;
  });
  return got;
}

const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 300));

const brokers: readonly [string, () => Promise<Broker>][] = [
  [
    'the embedded broker (aedes)',
    async () => {
      const refusals: Refusal[] = [];
      const b = await FleetBroker.start({ fleet: FLEET, tls: { cert: server.cert, key: server.key, ca: ca.certificatePem }, port: 0, onRefusal: (r) => refusals.push(r) });
      return { url: b.url, refusals, closesOnRefusedPublish: true, close: () => b.close() };
    },
  ],
  [
    'Mosquitto with `aios controller broker-config --mosquitto`',
    async () => {
      const broker = await startFleetMosquitto(MOSQUITTO as string, tmp, { fleet: FLEET, caPem: ca.certificatePem, certPem: server.cert, keyPem: server.key });
      return { url: `mqtts://127.0.0.1:${broker.port}`, refusals: [], closesOnRefusedPublish: false, close: async () => broker.stop() };
    },
  ],
];

describe.each(brokers)('fleet broker rules on %s', (name, start) => {
  let broker: Broker;
  const skip = name.startsWith('Mosquitto') && MOSQUITTO === undefined;
  if (skip) console.warn('Mosquitto fleet-broker tests skipped: the mosquitto binary is not installed (make test installs it as root).');

  beforeAll(async () => {
    if (!skip) broker = await start();
  });
  afterAll(async () => {
    if (!skip) await broker.close();
  });

  it.skipIf(skip)('a device publishes its own telemetry and the controller receives it; the controller commands the device', async () => {
    const ctl = await connect(broker.url, controller, 'aios-controller');
    const a = await connect(broker.url, robotA, 'robot-a');
    const telemetry = await collect(ctl, everyDevice(FLEET, 'telemetry'));
    const commands = await collect(a, deviceTopic(FLEET, 'robot-a', 'commands'));
    await a.publishAsync(deviceTopic(FLEET, 'robot-a', 'telemetry'), 'a-1', { qos: 1 });
    await ctl.publishAsync(deviceTopic(FLEET, 'robot-a', 'commands'), 'stop', { qos: 1 });
    await settle();
    expect(telemetry).toEqual([{ topic: 'aios/warehouse/devices/robot-a/telemetry', payload: 'a-1' }]);
    expect(commands).toEqual([{ topic: 'aios/warehouse/devices/robot-a/commands', payload: 'stop' }]);
    await Promise.all([ctl.endAsync(), a.endAsync()]);
  });

  it.skipIf(skip)("device A cannot publish into B's subtree, nor post commands, nor publish outside the fleet tree", async () => {
    const ctl = await connect(broker.url, controller, 'aios-controller');
    const seen = await collect(ctl, `aios/${FLEET}/#`);
    for (const topic of [deviceTopic(FLEET, 'robot-b', 'telemetry'), deviceTopic(FLEET, 'robot-a', 'commands'), deviceTopic(FLEET, 'robot-b', 'commands'), `aios/${FLEET}/devices/robot-a/other`]) {
      const a = await connect(broker.url, robotA, 'robot-a');
      let closed = false;
      a.on('close', () => (closed = true));
      // QoS 0: a refused QoS 1 publish is never acknowledged by aedes (it closes the connection).
      a.publish(topic, 'forged', { qos: 0 });
      await settle();
      if (broker.closesOnRefusedPublish) expect(closed).toBe(true);
      await a.endAsync(true);
    }
    expect(seen).toEqual([]);
    if (broker.closesOnRefusedPublish) expect(broker.refusals.filter((r) => r.what === 'publish' && r.client === 'robot-a')).toHaveLength(4);
    await ctl.endAsync();
  });

  it.skipIf(skip)("device A cannot read B's commands or chunks, by name or by wildcard", async () => {
    const a = await connect(broker.url, robotA, 'robot-a');
    const b = await connect(broker.url, robotB, 'robot-b');
    const ctl = await connect(broker.url, controller, 'aios-controller');
    const stolen = [
      ...(await collect(a, deviceTopic(FLEET, 'robot-b', 'commands'))),
      ...(await collect(a, `aios/${FLEET}/devices/+/commands`)),
      ...(await collect(a, `aios/${FLEET}/#`)),
    ];
    const mine = await collect(b, deviceTopic(FLEET, 'robot-b', 'commands'));
    await ctl.publishAsync(deviceTopic(FLEET, 'robot-b', 'commands'), 'for b only', { qos: 1 });
    await ctl.publishAsync(deviceTopic(FLEET, 'robot-b', 'ota/chunks'), 'chunk for b', { qos: 1 });
    await settle();
    expect(stolen).toEqual([]);
    expect(mine.map((m) => m.payload)).toEqual(['for b only']);
    await Promise.all([a.endAsync(), b.endAsync(), ctl.endAsync()]);
  });

  it.skipIf(skip)('only certificates from the fleet CA connect; reserved names and borrowed client ids are refused', async () => {
    expect(await refused(broker.url, undefined, 'robot-a')).toBe(true); // no certificate
    expect(await refused(broker.url, impostor, 'robot-b')).toBe(true); // another CA
    expect(await refused(broker.url, robotA, 'robot-a')).toBe(false);
    if (broker.closesOnRefusedPublish) {
      expect(await refused(broker.url, reserved, 'aios-intruder')).toBe(true);
      expect(await refused(broker.url, robotA, 'robot-b')).toBe(true); // A taking B's session
    } else {
      // Mosquitto replaces the client id with the certificate name: A asking for 'robot-b' gets
      // 'robot-a', so B is neither disconnected nor robbed of its session.
      const b = await connect(broker.url, robotB, 'robot-b');
      let bClosed = false;
      b.on('close', () => (bClosed = true));
      const a = await connect(broker.url, robotA, 'robot-b');
      await settle();
      expect(bClosed).toBe(false);
      await Promise.all([a.endAsync(), b.endAsync()]);
      // A name reserved for services has no rights: it can read nothing of the fleet's.
      const intruder = await connect(broker.url, reserved, 'aios-intruder');
      const ctl = await connect(broker.url, controller, 'aios-controller');
      const got = await collect(intruder, `aios/${FLEET}/#`);
      await ctl.publishAsync(deviceTopic(FLEET, 'robot-a', 'commands'), 'x', { qos: 1 });
      await settle();
      expect(got).toEqual([]);
      await Promise.all([intruder.endAsync(), ctl.endAsync()]);
    }
  });

  it.skipIf(skip)('a last will on its own status topic is published when a device drops', async () => {
    const ctl = await connect(broker.url, controller, 'aios-controller');
    const status = await collect(ctl, everyDevice(FLEET, 'status'));
    const a = await mqtt.connectAsync(broker.url, {
      clientId: 'robot-a',
      protocolVersion: 4,
      reconnectPeriod: 0,
      ca: ca.certificatePem,
      cert: robotA.cert,
      key: robotA.key,
      will: { topic: deviceTopic(FLEET, 'robot-a', 'status'), payload: Buffer.from('lost'), qos: 1, retain: true },
    });
    a.stream.destroy(); // no DISCONNECT: the broker publishes the will
    await settle();
    expect(status).toContainEqual({ topic: 'aios/warehouse/devices/robot-a/status', payload: 'lost' });
    await ctl.endAsync();
    a.end(true);
  });
});
