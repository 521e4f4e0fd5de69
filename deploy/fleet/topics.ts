import { FleetError } from './errors.js';

/**
 * The fleet's MQTT topic tree (docs/protocol.md, "Fleet"). Each device owns one subtree,
 * `aios/<fleet>/devices/<device>/`, and the broker's ACLs let it publish only to the channels it
 * writes and subscribe only to the ones it reads there (deploy/fleet/broker-acl.ts).
 */

/** What a device publishes under its subtree. */
export const DEVICE_WRITES = ['birth', 'status', 'telemetry', 'events', 'acks', 'ota/request', 'attestation'] as const;
/** What a device subscribes to under its subtree (the controller writes these). */
export const DEVICE_READS = ['commands', 'ota/chunks'] as const;

export type DeviceChannel = (typeof DEVICE_WRITES)[number] | (typeof DEVICE_READS)[number];

const CHANNELS: ReadonlySet<string> = new Set<string>([...DEVICE_WRITES, ...DEVICE_READS]);

/** `aios/<fleet>/devices/<device>/<channel>`. Throws FleetError EAI_FLEET_NAME for a bad fleet or device name. */
export function deviceTopic(fleet: string, device: string, channel: DeviceChannel): string {
  return `${deviceRoot(fleet, device)}/${channel}`;
}

/** `aios/<fleet>/devices/<device>`: the device's subtree. */
export function deviceRoot(fleet: string, device: string): string {
  return `aios/${topicLevel('fleet', fleet)}/devices/${topicLevel('device id', device)}`;
}

/** A subscription filter for `channel` of every device of `fleet` (what the controller subscribes to). */
export function everyDevice(fleet: string, channel: DeviceChannel): string {
  return `aios/${topicLevel('fleet', fleet)}/devices/+/${channel}`;
}

export interface DeviceTopic {
  readonly fleet: string;
  readonly device: string;
  readonly channel: DeviceChannel;
}

/** The parts of a device topic, or undefined for any other topic (a reader drops and counts those). */
export function parseDeviceTopic(topic: string): DeviceTopic | undefined {
  const levels = topic.split('/');
  if (levels.length < 5 || levels[0] !== 'aios' || levels[2] !== 'devices') return undefined;
  const [, fleet, , device, ...rest] = levels as [string, string, string, string, ...string[]];
  const channel = rest.join('/');
  if (!isTopicLevel(fleet) || !isTopicLevel(device) || !CHANNELS.has(channel)) return undefined;
  return { fleet, device, channel: channel as DeviceChannel };
}

/** Whether `value` can be one topic level: not empty, no separator, wildcard or NUL, no leading `$`. */
export function isTopicLevel(value: unknown): value is string {
  return typeof value === 'string' && value !== '' && value.length <= 128 && !/[/+#\0]/u.test(value) && !value.startsWith('$');
}

/** `value` if it can be a topic level (and a certificate common name), else FleetError EAI_FLEET_NAME. */
export function topicLevel(what: string, value: string): string {
  if (!isTopicLevel(value)) {
    throw new FleetError('EAI_FLEET_NAME', `The ${what} '${String(value).slice(0, 140)}' cannot be an MQTT topic level: use 1 to 128 characters without '/', '+', '#', NUL or a leading '$' (for example 'robot-7').`, { details: { what, value: String(value).slice(0, 140) } });
  }
  return value;
}

/**
 * `filter` as a member of MQTT shared-subscription group `group` (`$share/<group>/<filter>`), so
 * that each message reaches one subscriber of the group: how controller replicas split the
 * fleet's traffic. Mosquitto offers it to MQTT 3.1.1 clients too; undefined: a plain filter.
 */
export function sharedFilter(group: string | undefined, filter: string): string {
  return group === undefined ? filter : `$share/${topicLevel('shared subscription group', group)}/${filter}`;
}
