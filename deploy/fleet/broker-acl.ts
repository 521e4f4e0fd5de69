import { DEVICE_READS, DEVICE_WRITES, deviceTopic, isTopicLevel } from './topics.js';

/**
 * Who may publish and subscribe where, for one fleet: the same rules the embedded broker applies
 * (deploy/fleet/broker.ts) and the Mosquitto configuration expresses as pattern ACLs
 * (deploy/fleet/mosquitto-config.ts). A client is known by its certificate's common name:
 *
 *  - a controller (a name in `controllers`): everything under `aios/<fleet>/`;
 *  - a device (any other valid name): publish only to the channels it writes in its own subtree
 *    (birth, status, telemetry, events, acks, ota/request, attestation), subscribe only to the
 *    ones it reads there (commands, ota/chunks), by exact topic: no wildcards, so a device cannot
 *    see another device's commands or chunks, nor publish into another device's subtree.
 *
 * Controller names are reserved: enrolment refuses a device id that is one (isReservedName).
 */
export interface FleetAclOptions {
  readonly fleet: string;
  /** Certificate common names of controllers. Default ['aios-controller']. */
  readonly controllers?: readonly string[];
}

export const DEFAULT_CONTROLLER = 'aios-controller';

/** Names a device may not take: anything starting `aios-` (controllers and future services). */
export function isReservedName(name: string): boolean {
  return name.startsWith('aios-');
}

export class FleetAcl {
  readonly fleet: string;
  readonly controllers: ReadonlySet<string>;
  readonly #prefix: string;

  constructor(options: FleetAclOptions) {
    this.fleet = options.fleet;
    this.controllers = new Set(options.controllers ?? [DEFAULT_CONTROLLER]);
    this.#prefix = `aios/${options.fleet}/`;
  }

  /** The role of a client with this certificate name, or undefined when it may not connect at all. */
  role(name: string | undefined): 'controller' | 'device' | undefined {
    if (name === undefined || !isTopicLevel(name)) return undefined;
    if (this.controllers.has(name)) return 'controller';
    return isReservedName(name) ? undefined : 'device';
  }

  canPublish(name: string | undefined, topic: string): boolean {
    const role = this.role(name);
    if (role === 'controller') return topic.startsWith(this.#prefix) && !/[+#]/u.test(topic);
    if (role !== 'device') return false;
    return DEVICE_WRITES.some((channel) => topic === deviceTopic(this.fleet, name as string, channel));
  }

  canSubscribe(name: string | undefined, filter: string): boolean {
    const role = this.role(name);
    if (role === 'controller') {
      // Replicas share work through `$share/<group>/aios/<fleet>/...` where the broker has it.
      const topic = filter.startsWith('$share/') ? filter.split('/').slice(2).join('/') : filter;
      return topic.startsWith(this.#prefix);
    }
    if (role !== 'device') return false;
    return DEVICE_READS.some((channel) => filter === deviceTopic(this.fleet, name as string, channel));
  }
}
