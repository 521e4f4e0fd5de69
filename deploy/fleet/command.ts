import { pae } from '../../models/bundle/dsse.js';
import { signBytes, type SigningKey } from '../../models/keys.js';
import { TrustError } from '../../models/trust/root.js';
import type { TrustStore } from '../../models/trust/trust-store.js';
import { aios } from '../proto/gen/aios.js';
import { FleetError } from './errors.js';
import { topicLevel } from './topics.js';
import { decodeMessage, wholeNumber, type MessageType } from './wire.js';

/**
 * Commands from the fleet controller to one device: a `Command` (protobuf) signed like a DSSE
 * envelope by keys of the trust root's `deploy` role, with a per-device sequence number and an
 * expiry. The device obeys a command only after {@link CommandGate.admit} has checked, in this
 * order and before it looks at anything the signers did not vouch for: size, envelope, payload
 * type, signatures and threshold, then (decoding the payload only now) fleet and device, expiry,
 * sequence. The highest accepted sequence is saved in the device's trust store before the command
 * runs, so neither a replay nor an older command is ever obeyed again, across restarts too.
 */

export const COMMAND_PAYLOAD_TYPE = 'application/vnd.aios.command+protobuf';

/** The trust-store kind under which a device keeps its highest accepted command sequence. */
export const SEQUENCE_KIND = 'fleet-command-sequence';

/** Larger commands are refused unread; a Deploy of a 4 GB bundle in 1 MiB chunks is ~140 KB. */
export const MAX_COMMAND_BYTES = 1024 * 1024;

export type CommandAction = 'deploy' | 'rollback' | 'startPipeline' | 'stopPipeline' | 'setConfig' | 'requestAttestation' | 'releaseKey';

/** What a controller fills in; `action` is one of Command's oneof members. */
export interface CommandSpec {
  readonly fleet: string;
  readonly deviceId: string;
  readonly sequence: number;
  readonly issuedUnixMs: number;
  readonly expiresUnixMs: number;
  readonly deploy?: aios.fleet.v1.IDeploy;
  readonly rollback?: aios.fleet.v1.IRollback;
  readonly startPipeline?: aios.fleet.v1.IStartPipeline;
  readonly stopPipeline?: aios.fleet.v1.IStopPipeline;
  readonly setConfig?: aios.fleet.v1.ISetConfig;
  readonly requestAttestation?: aios.fleet.v1.IRequestAttestation;
  readonly releaseKey?: aios.fleet.v1.IReleaseKey;
}

/** A command the device may obey. */
export interface AdmittedCommand {
  readonly command: aios.fleet.v1.Command;
  readonly sequence: number;
  readonly action: CommandAction;
  readonly expiresUnixMs: number;
  /** The deploy-role keys whose signatures counted. */
  readonly keyids: readonly string[];
}

/**
 * The SignedCommand bytes for `spec`, signed by every key in `keys` (a threshold of the deploy
 * role's keys is what devices require). Throws FleetError `EAI_FLEET_COMMAND_INVALID` for a spec
 * a device would refuse anyway (no action, no expiry, sequence 0).
 */
export function signCommand(spec: CommandSpec, keys: readonly SigningKey[]): Uint8Array {
  const actions = ACTIONS.filter((a) => spec[a] !== undefined && spec[a] !== null);
  const problems: string[] = [];
  if (actions.length !== 1) problems.push(`exactly one action is needed (${ACTIONS.join(', ')}), got ${actions.length === 0 ? 'none' : actions.join(' and ')}`);
  if (!Number.isSafeInteger(spec.sequence) || spec.sequence < 1) problems.push(`sequence must be a whole number ≥ 1, got ${spec.sequence}`);
  if (!Number.isSafeInteger(spec.expiresUnixMs) || spec.expiresUnixMs <= spec.issuedUnixMs) problems.push('expiresUnixMs must be after issuedUnixMs');
  if (keys.length === 0) problems.push('at least one deploy-role signing key is needed');
  if (problems.length > 0) throw new FleetError('EAI_FLEET_COMMAND_INVALID', `cannot sign this command: ${problems.join('; ')}.`, { details: { problems } });
  topicLevel('fleet', spec.fleet);
  topicLevel('device id', spec.deviceId);
  const payload = aios.fleet.v1.Command.encode(aios.fleet.v1.Command.fromObject({ ...spec })).finish();
  const message = pae(COMMAND_PAYLOAD_TYPE, payload);
  const signatures = keys.map((key) => ({ keyid: key.keyid, sig: signBytes(key, message) }));
  return aios.fleet.v1.SignedCommand.encode({ payload, payloadType: COMMAND_PAYLOAD_TYPE, signatures }).finish();
}

export interface CommandGateOptions {
  /** The device clock. Default Date.now. */
  readonly now?: () => number;
}

/** The device side: decides whether a command may be obeyed. */
export class CommandGate {
  readonly #trust: TrustStore;
  readonly #fleet: string;
  readonly #deviceId: string;
  readonly #now: () => number;

  constructor(trust: TrustStore, identity: { readonly fleet: string; readonly deviceId: string }, options: CommandGateOptions = {}) {
    this.#trust = trust;
    this.#fleet = topicLevel('fleet', identity.fleet);
    this.#deviceId = topicLevel('device id', identity.deviceId);
    this.#now = options.now ?? Date.now;
  }

  /** The highest sequence this device accepted (0 when none): the controller continues above it. */
  get lastSequence(): number {
    return this.#trust.highest(SEQUENCE_KIND) ?? 0;
  }

  /**
   * Checks `bytes` (a SignedCommand) and records its sequence as accepted. Throws FleetError:
   * `EAI_FLEET_COMMAND_MALFORMED`, `EAI_FLEET_COMMAND_UNSIGNED`, `EAI_FLEET_COMMAND_SIGNATURE`,
   * `EAI_FLEET_COMMAND_WRONG_DEVICE`, `EAI_FLEET_COMMAND_EXPIRED`, `EAI_FLEET_COMMAND_REPLAYED`;
   * or the trust store's `EAI_TRUST_ROOT_EXPIRED` when the trust root itself has expired.
   */
  async admit(bytes: Uint8Array): Promise<AdmittedCommand> {
    const verified = this.verify(bytes);
    const { sequence } = verified;
    try {
      await this.#trust.accept(SEQUENCE_KIND, sequence, { role: 'deploy' });
    } catch (error) {
      if (error instanceof TrustError && error.code === 'EAI_TRUST_ROLLBACK') {
        const highest = this.lastSequence;
        throw new FleetError('EAI_FLEET_COMMAND_REPLAYED', `command ${sequence} is ${sequence === highest ? 'the last accepted command again (a replay)' : `older than command ${highest}, which this device already accepted`}; it is not obeyed. The controller continues from sequence ${highest + 1}.`, {
          cause: error,
          details: { sequence, highest },
        });
      }
      throw error;
    }
    return verified;
  }

  /**
   * Every check of `admit` except the sequence, which it leaves unrecorded: for acting on a
   * command ahead of its turn where a replay cannot hurt (a released key, wrapped to this device,
   * handed to the deployment waiting for it while that deployment holds the command queue).
   */
  verify(bytes: Uint8Array): AdmittedCommand {
    if (bytes.length > MAX_COMMAND_BYTES) throw malformed(`it is ${bytes.length} bytes, more than the ${MAX_COMMAND_BYTES} a command may have`);
    const signed = decodeCommandPart(aios.fleet.v1.SignedCommand, bytes, 'the signed command envelope');
    if (signed.payloadType !== COMMAND_PAYLOAD_TYPE) throw malformed(`its payload type is '${signed.payloadType.slice(0, 80)}', not '${COMMAND_PAYLOAD_TYPE}'`);
    if (signed.signatures.length === 0) {
      throw new FleetError('EAI_FLEET_COMMAND_UNSIGNED', 'the command carries no signature; a device obeys only commands signed by the trust root\'s deploy role. Sign it with `aios fleet` on the controller, which holds a deploy key.');
    }
    const now = this.#now();
    const keyids = this.#checkSignatures(signed, now);
    const command = decodeCommandPart(aios.fleet.v1.Command, signed.payload, 'the signed payload');
    if (command.fleet !== this.#fleet || command.deviceId !== this.#deviceId) {
      throw new FleetError('EAI_FLEET_COMMAND_WRONG_DEVICE', `the command is for device '${command.deviceId.slice(0, 128)}' of fleet '${command.fleet.slice(0, 128)}', this is '${this.#deviceId}' of '${this.#fleet}': a command signed for one device is never obeyed by another.`, {
        details: { for: { fleet: command.fleet.slice(0, 128), device: command.deviceId.slice(0, 128) } },
      });
    }
    const action = command.action as CommandAction | undefined;
    if (action === undefined) throw malformed('it names no action (or one this agent does not know: update the agent)');
    const expires = wholeNumber(command.expiresUnixMs, 'expires_unix_ms');
    if (expires <= 0 || now > expires) {
      throw new FleetError('EAI_FLEET_COMMAND_EXPIRED', expires <= 0 ? 'the command has no expiry; every command must carry expires_unix_ms.' : `the command expired ${now - expires} ms ago by this device's clock (at ${new Date(expires).toISOString()}); ask the controller to send it again. If the clock is wrong, fix time sync (NTP, chrony).`, {
        details: { expiresUnixMs: expires, now },
      });
    }
    const sequence = wholeNumber(command.sequence, 'sequence');
    if (sequence < 1) throw malformed('its sequence number is 0; sequences start at 1');
    return { command, sequence, action, expiresUnixMs: expires, keyids };
  }

  #checkSignatures(signed: aios.fleet.v1.SignedCommand, now: number): readonly string[] {
    const message = pae(COMMAND_PAYLOAD_TYPE, signed.payload);
    const signatures = signed.signatures.map((s) => ({ keyid: s.keyid ?? '', sig: s.sig ?? new Uint8Array(0) }));
    try {
      return this.#trust.verifyRole('deploy', message, signatures, new Date(now)).keyids;
    } catch (error) {
      if (error instanceof TrustError && error.code !== 'EAI_TRUST_ROOT_EXPIRED') {
        throw new FleetError('EAI_FLEET_COMMAND_SIGNATURE', `the command's signatures do not satisfy the trust root's deploy role: ${error.message}`, { cause: error, details: { trustCode: error.code } });
      }
      throw error;
    }
  }
}

/** The ack a device sends for a refused command (sequence 0 when it could not be read). */
export function rejection(error: unknown, sequence = 0, now = Date.now()): aios.fleet.v1.CommandAck {
  const code = typeof (error as { code?: unknown }).code === 'string' ? (error as { code: string }).code : 'EAI_INTERNAL';
  return aios.fleet.v1.CommandAck.create({ sequence, result: aios.fleet.v1.CommandAck.Result.REJECTED, code, message: error instanceof Error ? error.message : String(error), timeUnixMs: now });
}

const ACTIONS = ['deploy', 'rollback', 'startPipeline', 'stopPipeline', 'setConfig', 'requestAttestation', 'releaseKey'] as const satisfies readonly CommandAction[];

function decodeCommandPart<T>(type: MessageType<T>, bytes: Uint8Array, what: string): T {
  try {
    return decodeMessage(type, bytes, what, MAX_COMMAND_BYTES);
  } catch (error) {
    throw malformed(`${what} is not protobuf of the expected type (${error instanceof Error ? error.message : String(error)})`);
  }
}

function malformed(why: string): FleetError {
  return new FleetError('EAI_FLEET_COMMAND_MALFORMED', `the command cannot be read: ${why}. It was not obeyed.`, { details: { why } });
}
