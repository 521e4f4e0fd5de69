import { DEFAULT_CONTROLLER } from './broker-acl.js';
import { DEVICE_READS, DEVICE_WRITES, topicLevel } from './topics.js';

/**
 * A Mosquitto (2.x) configuration for a fleet: one TLS listener that requires a client
 * certificate from the fleet CA and takes the certificate's common name as the user name
 * (`use_identity_as_username`), no anonymous access, persistence on (sessions and queued
 * commands survive a broker restart), and an ACL file with the same rules as the embedded broker
 * (deploy/fleet/broker-acl.ts): controllers read and write the fleet's tree; each device, through
 * `pattern` lines where `%u` is its certificate name, writes only its own channels and reads only
 * its own commands and chunks.
 *
 * Mosquitto drops an unauthorised publish from an MQTT 3.1.1 client silently (MQTT 5 clients get
 * reason code 135) where aedes disconnects the client; either way nothing reaches anyone.
 */
export interface MosquittoConfigOptions {
  readonly fleet: string;
  /** Certificate names of the controllers. Default ['aios-controller']. */
  readonly controllers?: readonly string[];
  /** Default 8883. */
  readonly port?: number;
  /** Listen address; default all interfaces. */
  readonly bind?: string;
  /** Paths as the broker host sees them. */
  readonly cafile: string;
  readonly certfile: string;
  readonly keyfile: string;
  readonly aclFile: string;
  /**
   * The controller's revocation list (`crl.pem` in its state folder, deploy/controller/
   * revocations.ts): revoked devices' certificates fail the handshake. Mosquitto re-reads it on
   * SIGHUP (tested with 2.0.11) and will not start while it is missing.
   */
  readonly crlfile?: string;
  /** Default /var/lib/mosquitto/; undefined keeps Mosquitto's own default. */
  readonly persistenceLocation?: string | null;
  /**
   * QoS 1 messages Mosquitto queues per client before it drops (commands and chunks for an
   * offline device; telemetry for a controller whose event loop stalls). Default 100,000: at
   * 10,000 devices × 1 Hz a controller needs seconds of slack, and 1,000 (Mosquitto's usual)
   * lost 1–2 % of telemetry in bench/fleet.ts; devices only ever queue a few messages.
   */
  readonly maxQueuedMessages?: number;
  /** Largest message in bytes; default 2 MiB (an OTA chunk of 1 MiB plus its envelope). */
  readonly messageSizeLimit?: number;
}

export interface MosquittoConfig {
  readonly conf: string;
  readonly acl: string;
}

export function mosquittoConfig(options: MosquittoConfigOptions): MosquittoConfig {
  const fleet = topicLevel('fleet', options.fleet);
  const controllers = (options.controllers ?? [DEFAULT_CONTROLLER]).map((c) => topicLevel('controller name', c));
  const persistence = options.persistenceLocation === null ? [] : ['persistence true', `persistence_location ${options.persistenceLocation ?? '/var/lib/mosquitto/'}`];
  const conf = [
    `# aios fleet '${fleet}': written by \`aios controller broker-config --mosquitto\`.`,
    '# Every client authenticates with a certificate from the fleet CA; its common name is its user name.',
    'per_listener_settings false',
    'allow_anonymous false',
    `acl_file ${options.aclFile}`,
    ...persistence,
    `max_queued_messages ${options.maxQueuedMessages ?? 100_000}`,
    `max_packet_size ${(options.messageSizeLimit ?? 2 * 1024 * 1024) + 1024}`,
    // Acks and chunk requests are small: without this each waits ~40 ms for Nagle's algorithm.
    'set_tcp_nodelay true',
    '',
    `listener ${options.port ?? 8883}${options.bind === undefined ? '' : ` ${options.bind}`}`,
    'protocol mqtt',
    `cafile ${options.cafile}`,
    `certfile ${options.certfile}`,
    `keyfile ${options.keyfile}`,
    ...(options.crlfile === undefined ? [] : [`crlfile ${options.crlfile}`]),
    'require_certificate true',
    'use_identity_as_username true',
    // The certificate name becomes the client id too: no client can take over another's session.
    'use_username_as_clientid true',
    'tls_version tlsv1.2',
    '',
  ].join('\n');
  const prefix = `aios/${fleet}`;
  const acl = [
    `# aios fleet '${fleet}' ACL: controllers own the tree; each device (%u = its certificate name) its own subtree.`,
    // Patterns apply to every client wherever they stand; first, so no `user` block seems to own them.
    ...DEVICE_WRITES.map((channel) => `pattern write ${prefix}/devices/%u/${channel}`),
    ...DEVICE_READS.map((channel) => `pattern read ${prefix}/devices/%u/${channel}`),
    '',
    ...controllers.flatMap((c) => [`user ${c}`, `topic readwrite ${prefix}/#`, '']),
  ].join('\n');
  return { conf, acl };
}
