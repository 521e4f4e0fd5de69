import type { AddressInfo } from 'node:net';
import tls, { type TLSSocket } from 'node:tls';
import { Aedes, type AuthenticateError, type Client } from 'aedes';
import { FleetAcl, type FleetAclOptions } from './broker-acl.js';
import { FleetError } from './errors.js';

/**
 * The MQTT broker `aios controller` embeds so that one command runs a fleet: aedes (MQTT 3.1.1;
 * it refuses MQTT 5 connections) behind a TLS listener that requires a client certificate from
 * the fleet CA. A client is who its certificate says (the subject's common name), the broker
 * holds it to the fleet's ACL (deploy/fleet/broker-acl.ts), and:
 *
 *  - a client's MQTT client id must be its certificate name, so no client can take over another's
 *    persistent session (and the commands queued in it) or disconnect it by reusing its id;
 *  - a last will must be one the client could publish itself (its own status topic);
 *  - a publish outside the ACL closes the client's connection (aedes does this; MQTT 3.1.1 has no
 *    way to refuse one publish), a subscription outside it is answered with the failure code 0x80;
 *  - a certificate `revoked` says is revoked is refused at connect, and `disconnect` ends the
 *    connection of a client revoked while connected.
 *
 * Sessions and retained messages live in memory: a controller restart loses them, and the
 * controller re-sends what devices have not acknowledged from its own store. For a broker that
 * outlives the controller, use Mosquitto (`aios controller broker-config --mosquitto`).
 */
export interface FleetBrokerOptions extends FleetAclOptions {
  /** PEM: the broker's server certificate (and chain), its key, and the fleet CA that signs clients. */
  readonly tls: { readonly cert: string; readonly key: string; readonly ca: string };
  /** Default 127.0.0.1: say 0.0.0.0 (or an interface address) to serve a real fleet. */
  readonly host?: string;
  /** Default 8883; 0 picks a free port. */
  readonly port?: number;
  /** Told about every refusal, for the controller's log (no secrets: names and topics only). */
  readonly onRefusal?: (refusal: Refusal) => void;
  /** Whether a client certificate (its serial number, hex) is revoked. */
  readonly revoked?: (serial: string) => boolean;
}

export interface Refusal {
  readonly what: 'connect' | 'publish' | 'subscribe';
  readonly client: string;
  readonly reason: string;
}

export interface BrokerCounts {
  connections: number;
  refusedConnections: number;
  refusedPublishes: number;
  refusedSubscriptions: number;
}

export class FleetBroker {
  readonly acl: FleetAcl;
  readonly counts: BrokerCounts = { connections: 0, refusedConnections: 0, refusedPublishes: 0, refusedSubscriptions: 0 };
  readonly #aedes: Aedes;
  readonly #server: tls.Server;
  readonly #names = new WeakMap<Client, string>();
  readonly #onRefusal: (refusal: Refusal) => void;
  readonly #revoked: (serial: string) => boolean;

  private constructor(acl: FleetAcl, aedes: Aedes, server: tls.Server, onRefusal: (refusal: Refusal) => void, revoked: (serial: string) => boolean) {
    this.acl = acl;
    this.#aedes = aedes;
    this.#server = server;
    this.#onRefusal = onRefusal;
    this.#revoked = revoked;
  }

  static async start(options: FleetBrokerOptions): Promise<FleetBroker> {
    const acl = new FleetAcl(options);
    const aedes = await Aedes.createBroker();
    const server = tls.createServer(
      // noDelay: MQTT's small packets (acks, chunk requests) must not wait ~40 ms for Nagle.
      { cert: options.tls.cert, key: options.tls.key, ca: options.tls.ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2', noDelay: true },
      (socket) => aedes.handle(socket),
    );
    const broker = new FleetBroker(acl, aedes, server, options.onRefusal ?? (() => undefined), options.revoked ?? (() => false));
    broker.#install();
    // A failed handshake (no certificate, another CA) never reaches MQTT; count it. With a
    // listener, Node leaves closing the socket to us, and a TLS 1.3 client that already sent its
    // certificate would otherwise wait forever.
    server.on('tlsClientError', (error, socket) => {
      socket.destroy();
      broker.#refuse('connect', '(no valid certificate)', error.message);
    });
    await listen(server, options.port ?? 8883, options.host ?? '127.0.0.1', 'the MQTT broker', '--broker-port');
    return broker;
  }

  get port(): number {
    return (this.#server.address() as AddressInfo).port;
  }

  /** `mqtts://host:port` as clients should dial it. */
  get url(): string {
    const { address, port } = this.#server.address() as AddressInfo;
    return `mqtts://${address.includes(':') ? `[${address}]` : address}:${port}`;
  }

  get connectedClients(): number {
    return this.#aedes.connectedClients;
  }

  /** Ends the connection of the client named `name` (its certificate's), if it is connected. */
  disconnect(name: string): boolean {
    const client = (this.#aedes as unknown as { clients: Record<string, Client | undefined> }).clients[name];
    if (client === undefined) return false;
    client.close();
    return true;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.#aedes.close(() => resolve()));
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #install(): void {
    const aedes = this.#aedes;
    aedes.authenticate = (client, _username, _password, done) => {
      const name = certificateName(client);
      const role = this.acl.role(name);
      const reason =
        role === undefined
          ? `certificate name '${name ?? '(none)'}' is not a device or controller name of fleet ${this.acl.fleet}`
          : client.id !== name
            ? `client id '${client.id}' is not its certificate name '${name}'`
            : this.#revoked(certificateSerial(client))
              ? `certificate ${certificateSerial(client)} of '${name}' is revoked`
              : undefined;
      if (reason !== undefined) {
        this.#refuse('connect', name ?? client.id, reason);
        const error = new Error(reason) as AuthenticateError;
        (error as { returnCode: number }).returnCode = 5; // not authorised
        done(error, false);
        return;
      }
      this.#names.set(client, name as string);
      this.counts.connections++;
      done(null, true);
    };
    aedes.authorizePublish = (client, packet, done) => {
      if (client === null) return done(null); // the broker's own (an old will)
      const name = this.#names.get(client);
      if (!this.acl.canPublish(name, packet.topic)) {
        this.counts.refusedPublishes++;
        this.#refuse('publish', name ?? client.id, `may not publish to ${packet.topic}`);
        return done(new Error(`${name ?? client.id} may not publish to ${packet.topic}`));
      }
      done(null);
    };
    aedes.authorizeSubscribe = (client, subscription, done) => {
      const name = this.#names.get(client);
      if (!this.acl.canSubscribe(name, subscription.topic)) {
        this.counts.refusedSubscriptions++;
        this.#refuse('subscribe', name ?? client.id, `may not subscribe to ${subscription.topic}`);
        return done(null, null);
      }
      done(null, subscription);
    };
    // Connection-level errors are the client's problem, never the controller's.
    aedes.on('clientError', () => undefined);
    aedes.on('connectionError', () => undefined);
  }

  #refuse(what: Refusal['what'], client: string, reason: string): void {
    if (what === 'connect') this.counts.refusedConnections++;
    this.#onRefusal({ what, client, reason });
  }
}

/** The subject common name of the client's verified certificate. */
function certificateName(client: Client): string | undefined {
  const socket = client.conn as TLSSocket;
  if (typeof socket.getPeerCertificate !== 'function' || socket.authorized !== true) return undefined;
  const cn = socket.getPeerCertificate().subject?.CN;
  // Several CNs (an array here) make the name ambiguous: refused.
  return typeof cn === 'string' ? cn : undefined;
}

function certificateSerial(client: Client): string {
  return (client.conn as TLSSocket).getPeerCertificate().serialNumber ?? '';
}

/** Listens, or FleetError EAI_FLEET_LISTEN naming the address and the option that moves it. */
export async function listen(server: import('node:net').Server, port: number, host: string, what: string, option: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const failed = (error: NodeJS.ErrnoException): void => {
      reject(
        new FleetError('EAI_FLEET_LISTEN', `${what} cannot listen on ${host}:${port} (${error.code ?? error.message}${error.code === 'EADDRINUSE' ? ': another program, or another controller, has that port' : ''}). Choose another with ${option}, or stop what holds it.`, {
          cause: error,
          details: { host, port },
        }),
      );
    };
    server.once('error', failed);
    server.listen(port, host, () => {
      server.off('error', failed);
      resolve();
    });
  });
}
