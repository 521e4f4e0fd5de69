import { FleetError } from './errors.js';

/**
 * Decoding fleet messages from the wire: bounded in size, and every failure a FleetError with a
 * code, because the bytes come from the network and a daemon must drop them with a counted error,
 * never crash on them.
 */

/** The largest fleet message a reader decodes (an OTA chunk of 1 MiB plus its envelope). */
export const MAX_MESSAGE_BYTES = 2 * 1024 * 1024;

/** A protobufjs message type, as the generated static code has one per message. */
export interface MessageType<T> {
  decode(reader: Uint8Array): T;
  readonly name?: string;
}

/**
 * `bytes` decoded as `type`, or FleetError `EAI_FLEET_MESSAGE_MALFORMED` (not protobuf of that
 * type, truncated) / `EAI_FLEET_MESSAGE_TOO_LARGE` (over `maxBytes`).
 */
export function decodeMessage<T>(type: MessageType<T>, bytes: Uint8Array, what: string, maxBytes = MAX_MESSAGE_BYTES): T {
  if (bytes.length > maxBytes) {
    throw new FleetError('EAI_FLEET_MESSAGE_TOO_LARGE', `${what} is ${bytes.length} bytes, more than the ${maxBytes} a reader accepts; it was dropped. Send smaller messages (OTA chunks of at most 1 MiB).`, { details: { what, bytes: bytes.length, maxBytes } });
  }
  try {
    return type.decode(bytes);
  } catch (cause) {
    throw new FleetError('EAI_FLEET_MESSAGE_MALFORMED', `${what} is not a valid aios.fleet.v1 message (${cause instanceof Error ? cause.message : String(cause)}); it was dropped. Check the sender's protocol version (docs/protocol.md).`, { cause, details: { what, bytes: bytes.length } });
  }
}

/**
 * A protobuf 64-bit integer as a JS number: protobufjs gives a number or a Long. Values beyond
 * 2^53 cannot be represented exactly and are refused (no timestamp or counter here gets near).
 */
export function wholeNumber(value: number | { toString(): string } | null | undefined, what = 'a 64-bit field'): number {
  if (value === null || value === undefined) return 0;
  const n = typeof value === 'number' ? value : Number(value.toString());
  if (!Number.isSafeInteger(n)) throw new FleetError('EAI_FLEET_MESSAGE_MALFORMED', `${what} is ${String(value)}, beyond 2^53: not a value aios writes. The message was dropped.`, { details: { what, value: String(value) } });
  return n;
}
