/**
 * Channel records: the signed metadata that says "channel C of model M is version V". A record is
 * a DSSE envelope (payloadType CHANNEL_PAYLOAD_TYPE) over the JSON
 * `{ _type: "aios-channel", model, channel, version, manifestDigest, metadataVersion, expires? }`,
 * signed by keys of the trust root's `models` role.
 *
 * `metadataVersion` counts the releases of one channel and only ever grows: re-pointing a channel
 * — a rollback included — is a new record with a higher number, never the old record again. A
 * device keeps the highest number it accepted per channel (TrustStore kind
 * `channel:<model>/<channel>`), so an attacker replaying an older, validly signed record (to hold
 * a device on a vulnerable version) is refused with EAI_REGISTRY_CHANNEL_REPLAYED.
 */
import { AiosError } from '../../drivers/errors.js';
import { decodeBase64, parseEnvelope, signEnvelope, verifyEnvelope, type DsseEnvelope, type SignaturePolicy } from '../bundle/dsse.js';
import type { SigningKey } from '../keys.js';
import type { TrustStore } from '../trust/trust-store.js';
import { RegistryError } from './errors.js';

export const CHANNEL_PAYLOAD_TYPE = 'application/vnd.aios.channel+json';
export const CHANNEL_TYPE = 'aios-channel';
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/u;

export interface ChannelRecord {
  readonly _type: typeof CHANNEL_TYPE;
  readonly model: string;
  readonly channel: string;
  readonly version: string;
  /** Hex SHA-256 of the version's signed manifest payload: pins the exact bundle content. */
  readonly manifestDigest: string;
  /** Strictly increasing per (model, channel). */
  readonly metadataVersion: number;
  /** RFC 3339; after it devices refuse the record (anti-freeze). */
  readonly expires?: string;
}

/** The TrustStore kind under which a device remembers a channel's highest metadataVersion. */
export function channelKind(model: string, channel: string): string {
  return `channel:${model}/${channel}`;
}

/** Checks a channel or model name (the bundle manifest's name rule). */
export function checkName(what: 'model' | 'channel', name: string): void {
  if (!NAME.test(name)) throw new RegistryError('EAI_REGISTRY_NAME_INVALID', `${what} name ${JSON.stringify(name.slice(0, 140))} is not valid: 1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit.`, { details: { what, name: name.slice(0, 140) } });
}

/** Signs `record` with `keys` (the models role). */
export function signChannelRecord(record: ChannelRecord, keys: readonly SigningKey[]): DsseEnvelope {
  return signEnvelope(Buffer.from(JSON.stringify(record), 'utf8'), keys, CHANNEL_PAYLOAD_TYPE);
}

export interface VerifyChannelOptions {
  /** Default now. */
  readonly now?: Date;
  /** Accept a record whose metadataVersion equals the highest accepted (the same record seen again). Default false. */
  readonly allowSame?: boolean;
  /** The model and channel the device asked for: a record for another is refused. */
  readonly expect?: { readonly model?: string; readonly channel?: string };
}

/**
 * What a device runs on a channel record before acting on it: signatures against `policy` (the
 * models role keys and threshold), the record's shape, its expiry, the expected model/channel,
 * and — with a `trustStore` — anti-rollback: `accept('channel:<model>/<channel>',
 * metadataVersion, { role: 'models' })`, which refuses (EAI_REGISTRY_CHANNEL_REPLAYED) a record
 * older than (or, without allowSame, equal to) one already accepted, and records the new
 * highest before this resolves. Signature failures keep their EAI_BUNDLE_SIGNATURE_* codes.
 */
export async function verifyChannelRecord(envelope: DsseEnvelope | Uint8Array, policy: SignaturePolicy, trustStore?: TrustStore, options: VerifyChannelOptions = {}): Promise<ChannelRecord> {
  const env = envelope instanceof Uint8Array ? parseEnvelope(envelope) : envelope;
  if (env.payloadType !== CHANNEL_PAYLOAD_TYPE) throw invalidRecord(`its payloadType is '${env.payloadType.slice(0, 100)}', expected '${CHANNEL_PAYLOAD_TYPE}'`);
  const { payload } = verifyEnvelope(env, policy, CHANNEL_PAYLOAD_TYPE);
  const record = parseChannelRecord(payload);
  const now = options.now ?? new Date();
  if (record.expires !== undefined && now.getTime() >= Date.parse(record.expires)) {
    throw new RegistryError('EAI_REGISTRY_CHANNEL_EXPIRED', `the ${record.model}/${record.channel} record (metadata version ${record.metadataVersion}) expired at ${record.expires} (now ${now.toISOString()}); a frozen channel is refused. Fix: the publisher re-signs the channel (\`aios model channel ${record.model} ${record.channel} ${record.version} --key K.pem\`).`, { details: { ...record } });
  }
  if ((options.expect?.model !== undefined && options.expect.model !== record.model) || (options.expect?.channel !== undefined && options.expect.channel !== record.channel)) {
    throw invalidRecord(`it is for ${record.model}/${record.channel}, but ${options.expect.model ?? record.model}/${options.expect.channel ?? record.channel} was asked for (a record moved from another channel)`);
  }
  if (trustStore !== undefined) {
    const kind = channelKind(record.model, record.channel);
    try {
      await trustStore.accept(kind, record.metadataVersion, { role: 'models', allowEqual: options.allowSame === true });
    } catch (error) {
      if (error instanceof AiosError && error.code === 'EAI_TRUST_ROLLBACK') {
        const highest = trustStore.highest(kind);
        throw new RegistryError('EAI_REGISTRY_CHANNEL_REPLAYED', `the ${record.model}/${record.channel} record has metadata version ${record.metadataVersion}, but this device already accepted version ${highest ?? '?'}: an old record is being replayed (a rollback attack, or a stale mirror). It is refused. Fix: fetch the current record; a real rollback is published as a new record with a higher version (\`aios model rollback\`).`, { cause: error, details: { model: record.model, channel: record.channel, metadataVersion: record.metadataVersion, highest } });
      }
      throw error;
    }
  }
  return record;
}

/** Parses and checks a record's payload (after its signatures verified). */
export function parseChannelRecord(payload: Uint8Array): ChannelRecord {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(payload));
  } catch (cause) {
    throw invalidRecord(`its payload is not UTF-8 JSON (${(cause as Error).message})`);
  }
  const r = value as Record<string, unknown>;
  const keys = ['_type', 'model', 'channel', 'version', 'manifestDigest', 'metadataVersion', 'expires'];
  if (typeof value !== 'object' || value === null || Array.isArray(value) || Object.keys(r).some((k) => !keys.includes(k))) throw invalidRecord(`it must be an object with only ${keys.join(', ')}`);
  if (r['_type'] !== CHANNEL_TYPE) throw invalidRecord(`_type is ${JSON.stringify(r['_type'])}, expected '${CHANNEL_TYPE}'`);
  for (const k of ['model', 'channel', 'version'] as const) if (typeof r[k] !== 'string' || (r[k] as string).length === 0) throw invalidRecord(`${k} must be a non-empty string`);
  if (typeof r['manifestDigest'] !== 'string' || !/^[0-9a-f]{64}$/u.test(r['manifestDigest'])) throw invalidRecord('manifestDigest must be 64 hex digits');
  if (!Number.isSafeInteger(r['metadataVersion']) || (r['metadataVersion'] as number) < 1) throw invalidRecord('metadataVersion must be an integer ≥ 1');
  if (r['expires'] !== undefined && (typeof r['expires'] !== 'string' || Number.isNaN(Date.parse(r['expires'])))) throw invalidRecord('expires must be an RFC 3339 time');
  return value as ChannelRecord;
}

/** The record inside an envelope, without verifying it (for display). */
export function peekChannelRecord(envelope: DsseEnvelope): ChannelRecord {
  return parseChannelRecord(decodeBase64(envelope.payload, 'payload'));
}

function invalidRecord(what: string): RegistryError {
  return new RegistryError('EAI_REGISTRY_CHANNEL_INVALID', `the channel record is not valid: ${what}. Do not act on it; fetch the channel again from the registry.`, { details: { what } });
}
