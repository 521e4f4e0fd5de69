import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { writeFileAtomic } from '../../models/atomic-write.js';
import type { SigningKey } from '../../models/keys.js';
import { noDelay } from '../fleet/no-delay.js';
import { DEFAULT_CONTROLLER } from '../fleet/broker-acl.js';
import { FleetError } from '../fleet/errors.js';
import { FleetBroker, listen } from '../fleet/broker.js';
import { createCertificateAuthority, issueCertificate, type CertificateAuthority } from '../fleet/pki/certificate.js';
import { everyDevice, parseDeviceTopic, sharedFilter, topicLevel } from '../fleet/topics.js';
import { Attestations, type AttestationOptions } from './attestations.js';
import { KeyRelease } from './key-release.js';
import { wholeNumber } from '../fleet/wire.js';
import { CommandQueue } from './commands.js';
import { Deployments } from './deployments.js';
import { Revocations, CRL_FILE } from './revocations.js';
import { Rollouts } from './rollouts.js';
import { BundleServer } from './ota-server.js';
import { openControllerStore } from './database.js';
import { ROLLOUT_LEAD, type ControllerStore } from './store.js';
import { DeviceRegistry } from './devices.js';
import { Enrolment } from './enrolment.js';
import { enrolmentHandler, operatorHandler } from './http-api.js';

/**
 * `aios controller`: one process that runs a fleet. It keeps the fleet CA and its own
 * certificates in its state folder (made on first start), runs the embedded broker unless told
 * to use another, connects to the broker as `aios-controller`, keeps the device registry from
 * what devices publish, sends signed commands, answers enrolment requests over HTTPS and serves
 * the operator API on loopback.
 *
 * State folder: `ca.pem` and `ca.key` (0600: whoever holds it can admit devices), `server.pem`
 * / `server.key` (broker and enrolment TLS), `controller.pem` / `controller.key` (its MQTT
 * identity; `<name>.pem` / `<name>.key` for a replica named otherwise), `controller.db` (unless
 * the store is PostgreSQL), `bundles/`, `crl.pem` (revoked device certificates, for an external
 * broker: revocations.ts).
 *
 * Replicas: several controllers of one fleet share a PostgreSQL store and an external broker.
 * Each has its own MQTT name (`aios-controller-2`, …, listed in the broker's ACL) and joins the
 * shared-subscription group `aios-controllers`, so every device message is handled by one of
 * them; one at a time (a database lock) drives rollouts, and another takes over within a tick
 * when it goes. See docs/fleet.md, "Controller replicas".
 */
export interface ControllerOptions {
  readonly fleet: string;
  readonly state: string;
  /** Deploy-role keys (a threshold of them) that sign commands. */
  readonly deployKeys: readonly SigningKey[];
  /** Names devices dial: the server certificate's subjectAltNames. Default: localhost, 127.0.0.1, the host name. */
  readonly hostnames?: readonly string[];
  /** An external broker (`mqtts://host:port`); default: the embedded one. */
  readonly broker?: string;
  /** Embedded broker: address and port. Default 0.0.0.0:8883. */
  readonly brokerHost?: string;
  readonly brokerPort?: number;
  /** Enrolment HTTPS: default 0.0.0.0:8443. */
  readonly enrolHost?: string;
  readonly enrolPort?: number;
  /** Operator API (plain HTTP): default 127.0.0.1:8080. */
  readonly apiHost?: string;
  readonly apiPort?: number;
  /** TPM makers' CA certificates (PEM): a device's TPM must show an EK certificate issued by one (docs/attestation.md). */
  readonly ekRoots?: readonly string[];
  /** Admit only devices that enrol with TPM keys. */
  readonly requireTpm?: boolean;
  /** Remote attestation: the reference values devices are appraised against, and how often (docs/attestation.md). Absent: no challenges. */
  readonly attestation?: AttestationOptions;
  /** Certificate names the embedded broker treats as controllers (replicas, operator tools). Default ['aios-controller']. */
  readonly controllers?: readonly string[];
  /** This controller's MQTT name (its certificate's): `aios-controller` or another `aios-controller…` for a replica. */
  readonly name?: string;
  /** Where the fleet is kept: a PostgreSQL URL (shared by replicas); default `controller.db` in `state`. */
  readonly store?: string;
  /**
   * Join the `aios-controllers` shared-subscription group. Default: when the store is shared
   * (PostgreSQL) and the broker external; the embedded broker (aedes) offers no `$share`.
   */
  readonly sharedSubscriptions?: boolean;
  /** Structured log lines (the daemon prints them as JSON). */
  readonly log?: (line: Record<string, unknown>) => void;
  readonly now?: () => number;
}

/** The shared-subscription group controller replicas join. */
export const SHARE_GROUP = 'aios-controllers';

export class Controller {
  readonly fleet: string;
  readonly registry: DeviceRegistry;
  readonly commands: CommandQueue;
  readonly enrolment: Enrolment;
  readonly deployments: Deployments;
  readonly rollouts: Rollouts;
  readonly revocations: Revocations;
  /** The verifier: undefined when the controller was started without attestation reference values. */
  readonly attestations: Attestations | undefined;
  readonly ca: CertificateAuthority;
  readonly #db: ControllerStore;
  readonly #client: MqttClient;
  readonly #broker: FleetBroker | undefined;
  readonly #bundles: BundleServer;
  readonly #ticker: NodeJS.Timeout;
  readonly #servers: (http.Server | https.Server)[];
  readonly urls: { readonly broker: string; readonly enrol: string; readonly api: string };

  private constructor(parts: { fleet: string; db: ControllerStore; ca: CertificateAuthority; registry: DeviceRegistry; commands: CommandQueue; enrolment: Enrolment; deployments: Deployments; rollouts: Rollouts; revocations: Revocations; attestations: Attestations | undefined; bundles: BundleServer; ticker: NodeJS.Timeout; client: MqttClient; broker: FleetBroker | undefined; servers: (http.Server | https.Server)[]; urls: Controller['urls'] }) {
    this.fleet = parts.fleet;
    this.#db = parts.db;
    this.ca = parts.ca;
    this.registry = parts.registry;
    this.commands = parts.commands;
    this.enrolment = parts.enrolment;
    this.deployments = parts.deployments;
    this.rollouts = parts.rollouts;
    this.revocations = parts.revocations;
    this.attestations = parts.attestations;
    this.#bundles = parts.bundles;
    this.#ticker = parts.ticker;
    this.#client = parts.client;
    this.#broker = parts.broker;
    this.#servers = parts.servers;
    this.urls = parts.urls;
  }

  static async start(options: ControllerOptions): Promise<Controller> {
    const fleet = topicLevel('fleet', options.fleet);
    const log = options.log ?? (() => undefined);
    const name = controllerName(options.name ?? DEFAULT_CONTROLLER);
    const { ca, server, identity } = await prepareControllerState(options.state, fleet, options.hostnames, name);
    const db = await openControllerStore(options.state, options.store);
    const now = options.now ?? Date.now;
    const share = (options.sharedSubscriptions ?? (db.shared && options.broker !== undefined)) ? SHARE_GROUP : undefined;
    let revocations: Revocations;
    try {
      revocations = await Revocations.open(db, { ca, crlFile: path.join(options.state, CRL_FILE), now });
    } catch (error) {
      await db.close();
      throw error;
    }
    const broker =
      options.broker === undefined
        ? await FleetBroker.start({ fleet, controllers: options.controllers ?? [DEFAULT_CONTROLLER], tls: { cert: server.cert, key: server.key, ca: ca.certificatePem }, host: options.brokerHost ?? '0.0.0.0', port: options.brokerPort ?? 8883, onRefusal: (r) => log({ msg: 'broker refused', ...r }), revoked: (serial) => revocations.certificateRevoked(serial) })
        : undefined;
    revocations.onRevoked((d) => {
      log({ msg: 'device revoked', device: d.deviceId, reason: d.reason });
      broker?.disconnect(d.deviceId);
    });
    const brokerUrl = options.broker ?? (broker as FleetBroker).url.replace('mqtts://0.0.0.0:', 'mqtts://127.0.0.1:');
    let client: MqttClient;
    try {
      // One controller keeps a persistent session, so the broker queues device messages while it
      // restarts. Replicas must not: the broker goes on handing an absent member of a shared
      // subscription its share (queued for its return), which would stall half the fleet's
      // traffic until then. With clean sessions the others get everything the moment one goes.
      client = await mqtt.connectAsync(brokerUrl, { clientId: name, protocolVersion: 4, clean: share !== undefined, keepalive: share === undefined ? 60 : 15, reconnectPeriod: 1000, connectTimeout: 15_000, ca: ca.certificatePem, cert: identity.cert, key: identity.key });
    } catch (cause) {
      await broker?.close();
      await db.close();
      throw new FleetError('EAI_FLEET_BROKER', `the controller cannot connect to the broker at ${brokerUrl} (${cause instanceof Error ? cause.message : String(cause)}). With an external broker, check that it trusts ${path.join(options.state, 'ca.pem')} and serves a certificate from it for that host name, and that its ACL lists ${name}.`, { cause, details: { broker: brokerUrl } });
    }
    noDelay(client);
    client.on('connect', () => noDelay(client));
    const registry = new DeviceRegistry(db, { fleet, now, onDrop: (why) => log({ msg: 'dropped', why }), revoked: (device) => revocations.deviceRevoked(device) !== undefined });
    const commands = new CommandQueue(db, {
      fleet,
      keys: options.deployKeys,
      now,
      publish: async (topic, payload) => void (await client.publishAsync(topic, Buffer.from(payload), { qos: 1 })),
    });
    registry.onAck(async (tx, device, ack) => {
      const moved = await commands.record(tx, device, ack);
      return moved === undefined ? undefined : () => commands.announce(moved);
    });
    // A QoS 1 message is acknowledged to the broker once the registry has room for it: when the
    // database falls behind (or is away), the broker's queue holds the rest, not this heap.
    client.handleMessage = (_packet, done) => void registry.admitted().then(() => done());
    let attestations: Attestations | undefined;
    registry.onBirth((device, birth, reconnected) => {
      if (!reconnected) return;
      // A device (re)connecting is appraised at once: it may have rebooted into something else.
      attestations?.challenge(device).catch((error: unknown) => log({ msg: 'attestation challenge failed', device, error: String(error) }));
      commands.resend(device, wholeNumber(birth.lastCommandSequence)).catch((error: unknown) => log({ msg: 'resend failed', device, error: String(error) }));
    });
    const deployments = new Deployments(db, { state: options.state, commands, now });
    registry.onEvent(async (tx, device, event) => {
      if (event.deployment == null) return undefined;
      const moved = await deployments.record(tx, device, event.deployment);
      return moved === undefined ? undefined : () => deployments.announce(moved.deploymentId, moved.target);
    });
    if (options.attestation !== undefined) {
      attestations = new Attestations(db, { ...options.attestation, commands, registry, deployments, now });
      new KeyRelease(db, { commands, attestations, registry, deployments, log });
    }
    const verifier = attestations;
    const rollouts = new Rollouts(db, { deployments, registry, commands, now, leads: () => db.lead(ROLLOUT_LEAD), ...(verifier === undefined ? {} : { trusted: (device: string) => verifier.trusted(device) }) });
    // A restarted controller picks up running rollouts; a periodic tick also catches progress that
    // arrived while no event came (a device that commits while the controller restarts).
    let attesting = false;
    let ticks = 0;
    const ticker = setInterval(() => {
      void rollouts.tick();
      // Replicas learn each other's revocations from the store; one controller only renews its CRL.
      if (db.shared || ++ticks % 30 === 0) revocations.refresh().catch((error: unknown) => log({ msg: 'revocations not refreshed', error: String(error) }));
      // The lead also challenges devices whose appraisal is due: a small share each tick, so that
      // signing the commands and appraising the answers never stalls the controller for long.
      if (verifier !== undefined && !attesting) {
        attesting = true;
        void db
          .lead(ROLLOUT_LEAD)
          .then((leading) => (leading ? verifier.tick(2000) : 0))
          .catch((error: unknown) => log({ msg: 'attestation round failed', error: String(error) }))
          .finally(() => (attesting = false));
      }
    }, 2000);
    ticker.unref();
    const bundles = await BundleServer.start({ client, fleet, bundles: (query) => (revocations.deviceRevoked(query.device) === undefined ? deployments.bundleFor(query) : undefined), ...(share === undefined ? {} : { share }) });
    client.on('message', (topic, payload) => {
      // The bundle server handles ota/request itself.
      if (topic.endsWith('/ota/request')) return;
      if (topic.endsWith('/attestation')) {
        const where = parseDeviceTopic(topic);
        if (verifier !== undefined && where?.fleet === fleet && where.channel === 'attestation' && revocations.deviceRevoked(where.device) === undefined) verifier.receive(where.device, payload).catch((error: unknown) => log({ msg: 'attestation appraisal failed', device: where.device, error: String(error) }));
        return;
      }
      registry.ingest(topic, payload);
    });
    for (const channel of ['birth', 'status', 'telemetry', 'events', 'acks', 'attestation'] as const) await client.subscribeAsync(sharedFilter(share, everyDevice(fleet, channel)), { qos: 1 });
    const enrolment = new Enrolment(db, { fleet, ca, now, onEnrolled: () => revocations.refresh(), ...(options.ekRoots === undefined ? {} : { ekRoots: options.ekRoots }), ...(options.requireTpm === undefined ? {} : { requireTpm: options.requireTpm }) });
    // Client certificates are asked for, not required: enrolment has none yet, renewal shows its current one.
    const enrolServer = https.createServer({ cert: server.cert, key: server.key, minVersion: 'TLSv1.2', ca: ca.certificatePem, requestCert: true, rejectUnauthorized: false }, enrolmentHandler(enrolment, log));
    const apiServer = http.createServer(operatorHandler({ registry, commands, enrolment, deployments, rollouts, revocations }, log));
    try {
      await listen(enrolServer, options.enrolPort ?? 8443, options.enrolHost ?? '0.0.0.0', 'enrolment (HTTPS)', '--enrol-port');
      await listen(apiServer, options.apiPort ?? 8080, options.apiHost ?? '127.0.0.1', 'the operator API', '--api-port');
    } catch (error) {
      enrolServer.close();
      await client.endAsync();
      await broker?.close();
      await db.close();
      throw error;
    }
    const at = (s: http.Server | https.Server, scheme: string): string => {
      const a = s.address() as AddressInfo;
      return `${scheme}://${a.address === '0.0.0.0' ? '127.0.0.1' : a.address}:${a.port}`;
    };
    const urls = { broker: brokerUrl, enrol: at(enrolServer, 'https'), api: at(apiServer, 'http') };
    log({ msg: 'controller started', fleet, name, store: db.location, sharedSubscriptions: share !== undefined, ...urls });
    void rollouts.tick();
    return new Controller({ fleet, db, ca, registry, commands, enrolment, deployments, rollouts, revocations, attestations, bundles, ticker, client, broker, servers: [enrolServer, apiServer], urls });
  }

  /** The bundle server's counters (chunks sent, refused requests, the most in flight). */
  bundleStats(): ReturnType<BundleServer['stats']> {
    return this.#bundles.stats();
  }

  async stop(): Promise<void> {
    clearInterval(this.#ticker);
    await this.rollouts.tick();
    await this.#bundles.close();
    await this.#client.endAsync();
    await this.registry.close();
    for (const s of this.#servers) {
      s.closeAllConnections();
      await new Promise<void>((resolve) => s.close(() => resolve()));
    }
    await this.#broker?.close();
    await this.#db.close();
  }
}

/**
 * Makes (or keeps) the controller's state folder: the fleet CA and the controller's certificates.
 * What `aios controller init` does, and `start` does first.
 */
export async function prepareControllerState(state: string, fleet: string, hostnames?: readonly string[], name: string = DEFAULT_CONTROLLER): Promise<{ readonly ca: CertificateAuthority; readonly server: { cert: string; key: string }; readonly identity: { cert: string; key: string }; readonly hostnames: readonly string[] }> {
  topicLevel('fleet', fleet);
  await mkdir(state, { recursive: true, mode: 0o700 });
  const ca = await loadOrCreateCa(state, fleet);
  // The controller dials its own broker on loopback, so loopback names are always in.
  const names = [...new Set(['localhost', '127.0.0.1', ...(hostnames ?? [os.hostname()]).filter((h) => /^[A-Za-z0-9.:-]+$/u.test(h))])];
  const server = await loadOrIssue(state, 'server', ca, { commonName: `aios ${fleet} controller`, usage: 'server', names });
  const identity = await loadOrIssue(state, name === DEFAULT_CONTROLLER ? 'controller' : controllerName(name), ca, { commonName: name, usage: 'client', names: [] });
  return { ca, server, identity, hostnames: names };
}

async function loadOrCreateCa(state: string, fleet: string): Promise<CertificateAuthority> {
  const certFile = path.join(state, 'ca.pem');
  const keyFile = path.join(state, 'ca.key');
  const [cert, key] = await Promise.all([readFile(certFile, 'utf8').catch(() => undefined), readFile(keyFile, 'utf8').catch(() => undefined)]);
  if (cert !== undefined && key !== undefined) return { certificatePem: cert, privateKeyPem: key };
  const ca = createCertificateAuthority({ commonName: `aios fleet ${fleet} CA`, organization: 'aios', validDays: 3650 });
  await writeFileAtomic(keyFile, ca.privateKeyPem, { mode: 0o600 });
  await writeFileAtomic(certFile, ca.certificatePem, { mode: 0o644 });
  return ca;
}

/** A certificate and key in the state folder, issued anew when missing, not from this CA, within 30 days of expiry, or not naming every host. */
async function loadOrIssue(state: string, name: string, ca: CertificateAuthority, spec: { commonName: string; usage: 'client' | 'server'; names: readonly string[] }): Promise<{ cert: string; key: string }> {
  const certFile = path.join(state, `${name}.pem`);
  const keyFile = path.join(state, `${name}.key`);
  const [cert, key] = await Promise.all([readFile(certFile, 'utf8').catch(() => undefined), readFile(keyFile, 'utf8').catch(() => undefined)]);
  if (cert !== undefined && key !== undefined) {
    const x = new X509Certificate(cert);
    const caCert = new X509Certificate(ca.certificatePem);
    const sans = (x.subjectAltName ?? '').split(', ');
    const coversNames = spec.names.every((n) => sans.includes(`DNS:${n}`) || sans.includes(`IP Address:${n}`));
    if (x.verify(caCert.publicKey) && Date.parse(x.validTo) - 30 * 86_400_000 > Date.now() && coversNames) return { cert, key };
  }
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const ips = spec.names.filter((n) => /^[0-9.]+$|:/u.test(n));
  const dns = spec.names.filter((n) => !ips.includes(n));
  const issued = issueCertificate({ ca, subjectPublicKey: publicKey, commonName: spec.commonName, validDays: 365, usage: spec.usage, ...(spec.usage === 'server' ? { dnsNames: dns, ipAddresses: ips } : {}) });
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  await writeFileAtomic(keyFile, keyPem, { mode: 0o600 });
  await writeFileAtomic(certFile, issued, { mode: 0o644 });
  return { cert: issued, key: keyPem };
}

/** A controller's MQTT name: `aios-controller` or `aios-controller-<something>` (the broker ACLs and the reserved names expect that prefix). */
export function controllerName(name: string): string {
  if (!/^aios-controller(-[A-Za-z0-9_.-]{1,48})?$/u.test(name)) {
    throw new FleetError('EAI_FLEET_CONTROLLER_NAME', `'${name.slice(0, 80)}' cannot name a controller: use aios-controller, or aios-controller-<letters, digits, '-', '_', '.'> for a replica (e.g. aios-controller-2), and list it in the broker's ACL.`, { details: { name: name.slice(0, 80) } });
  }
  return name;
}
