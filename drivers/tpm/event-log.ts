import { readFile } from 'node:fs/promises';
import { digestSize, hashFromAlg, type TpmHash } from './algorithms.js';
import { TpmError } from './errors.js';
import { TpmReader } from './marshal.js';
import { extendPcr, resetPcr, type PcrValues } from './pcr.js';
import type { SysRoot } from '../hal/sysroot.js';

/**
 * The firmware's measurement log (TCG PC Client Platform Firmware Profile §10): every
 * measurement UEFI firmware and the boot loader extended into PCRs 0–7 (and the boot loader into
 * 8–9), with the data measured. Linux exposes it at
 * /sys/kernel/security/tpm0/binary_bios_measurements (root only). A verifier replays it
 * (`replayEventLog`) and compares the result with the quoted PCRs: if they match, the log tells
 * what booted.
 *
 * Two formats, both little-endian:
 * * crypto-agile (every UEFI TPM 2.0 machine): a first TCG_PCClientPCREvent in SHA-1 format
 *   holding the "Spec ID Event03" header, which lists the banks and their digest sizes; then
 *   TCG_PCR_EVENT2 records — pcrIndex u32, eventType u32, a digest count u32 and per digest the
 *   algorithm u16 and the digest, eventSize u32, event data.
 * * SHA-1 (TPM 1.2-era firmware): TCG_PCClientPCREvent records only — pcrIndex, eventType, a
 *   20-byte SHA-1 digest, eventSize, data.
 *
 * Parsing is strict: a record that runs past the end, lists an algorithm the header did not
 * declare, or a header that lies about its size, ends in `EAI_TPM_MALFORMED` with the byte offset.
 */
export interface EventLog {
  readonly format: 'crypto-agile' | 'sha1';
  /** The banks the log carries digests for, from the Spec ID header (sha1 only for the SHA-1 format). */
  readonly algorithms: readonly LogAlgorithm[];
  /** The Spec ID header's platform class, spec version and vendor data (crypto-agile only). */
  readonly specId: SpecIdEvent | undefined;
  /** Every event after the header, in log order. */
  readonly events: readonly TcgEvent[];
}

export interface LogAlgorithm {
  /** TPM_ALG_ID. */
  readonly alg: number;
  /** Undefined for an algorithm this driver cannot hash (its digests are still read and kept). */
  readonly hash: TpmHash | undefined;
  readonly digestSize: number;
}

export interface SpecIdEvent {
  readonly platformClass: number;
  readonly specVersion: string;
  readonly uintnSize: number;
  readonly vendorInfo: Buffer;
}

export interface TcgEvent {
  /** Byte offset of the record in the log, for messages. */
  readonly offset: number;
  readonly pcrIndex: number;
  readonly eventType: number;
  readonly digests: readonly { readonly alg: number; readonly hash: TpmHash | undefined; readonly digest: Buffer }[];
  readonly data: Buffer;
}

/** Where Linux exposes the log of the first TPM. */
export const EVENT_LOG_PATH = '/sys/kernel/security/tpm0/binary_bios_measurements';

export const EV_NO_ACTION = 0x00000003;

/** Event logs of real machines are tens of kilobytes; refusing larger bounds what a bad file costs. */
const MAX_LOG_BYTES = 16 * 1024 * 1024;
const SPEC_ID_SIGNATURE = 'Spec ID Event03\0';
const STARTUP_LOCALITY = 'StartupLocality\0';

/**
 * Reads and decodes the log under `sys` (a system root: `/` on the device, a fixture folder in
 * tests). Undefined when the file is missing (no TPM, or firmware that keeps no log: most ARM
 * boards). Throws `EAI_TPM_DEVICE_ACCESS` when it exists but cannot be read (securityfs is root
 * only), `EAI_TPM_MALFORMED` when it is not a valid log.
 */
export async function readEventLog(sys: SysRoot, file = EVENT_LOG_PATH): Promise<EventLog | undefined> {
  let bytes: Buffer;
  try {
    bytes = await readFile(sys.resolve(file));
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    if (code === 'EACCES' || code === 'EPERM') {
      throw new TpmError('EAI_TPM_DEVICE_ACCESS', `no permission to read the TPM event log ${file}: securityfs lets only root read it. Run the agent as root, or copy the log at boot to a file the service can read`, { cause, details: { file } });
    }
    throw new TpmError('EAI_TPM_MALFORMED', `cannot read the TPM event log ${file}: ${(cause as Error).message}`, { cause, details: { structure: 'event log', file } });
  }
  return decodeEventLog(bytes);
}

/** Decodes a whole event log. */
export function decodeEventLog(bytes: Uint8Array): EventLog {
  if (bytes.byteLength > MAX_LOG_BYTES) {
    throw new TpmError('EAI_TPM_MALFORMED', `a ${bytes.byteLength}-byte event log is larger than the ${MAX_LOG_BYTES} bytes accepted`, { details: { structure: 'TCG event log', length: bytes.byteLength } });
  }
  const r = new TpmReader(bytes, 'TCG event log', true);
  const first = readSha1Event(r);
  const events: TcgEvent[] = [];
  const specId = first.eventType === EV_NO_ACTION && first.pcrIndex === 0 ? readSpecId(first) : undefined;
  if (specId === undefined) {
    const sha1: LogAlgorithm = { alg: 0x0004, hash: 'sha1', digestSize: 20 };
    events.push(first);
    while (r.remaining > 0) events.push(readSha1Event(r));
    return { format: 'sha1', algorithms: [sha1], specId: undefined, events };
  }
  while (r.remaining > 0) events.push(readEvent2(r, specId.algorithms));
  return { format: 'crypto-agile', algorithms: specId.algorithms, specId: specId.header, events };
}

/**
 * The PCR values the log's events produce, per bank this driver can hash: every PCR the log
 * extends starts from zeros (a StartupLocality event sets PCR 0's last byte to the locality the
 * firmware started the TPM from) and is extended with each event's digest for that bank, in order.
 * EV_NO_ACTION events are not extended (the TPM never saw them).
 */
export function replayEventLog(log: EventLog): PcrValues {
  const locality = startupLocality(log);
  return log.algorithms.flatMap((a) => {
    if (a.hash === undefined) return [];
    const hash = a.hash;
    const values = new Map<number, Buffer>();
    for (const e of log.events) {
      if (e.eventType === EV_NO_ACTION) continue;
      const d = e.digests.find((x) => x.alg === a.alg);
      if (d === undefined) continue;
      const old = values.get(e.pcrIndex) ?? initialValue(hash, e.pcrIndex, locality);
      values.set(e.pcrIndex, extendPcr(hash, old, d.digest));
    }
    return [{ hash, values }];
  });
}

/** The spec's name for an event type (EV_SEPARATOR, EV_EFI_BOOT_SERVICES_APPLICATION, ...). */
export function eventTypeName(eventType: number): string {
  return EVENT_TYPES[eventType] ?? `0x${eventType.toString(16).padStart(8, '0')}`;
}

function readSha1Event(r: TpmReader): TcgEvent {
  const offset = r.position;
  const pcrIndex = r.u32('pcrIndex');
  const eventType = r.u32('eventType');
  const digest = r.bytes(20, 'digest');
  const data = r.bytes(r.u32('eventSize'), 'event');
  return { offset, pcrIndex, eventType, digests: [{ alg: 0x0004, hash: 'sha1', digest }], data };
}

function readSpecId(first: TcgEvent): { header: SpecIdEvent; algorithms: LogAlgorithm[] } | undefined {
  if (first.data.byteLength < 16 || first.data.subarray(0, 16).toString('latin1') !== SPEC_ID_SIGNATURE) {
    // The SHA-1 format's first event is a real measurement, never EV_NO_ACTION with this signature.
    return undefined;
  }
  const r = new TpmReader(first.data, 'TCG_EfiSpecIDEvent', true);
  r.bytes(16, 'signature');
  const platformClass = r.u32('platformClass');
  const minor = r.u8('specVersionMinor');
  const major = r.u8('specVersionMajor');
  const errata = r.u8('specErrata');
  const uintnSize = r.u8('uintnSize');
  const count = r.u32('numberOfAlgorithms');
  if (count === 0 || count > 16) r.fail(`numberOfAlgorithms is ${count}, expected 1 to 16`, r.position - 4);
  const algorithms: LogAlgorithm[] = [];
  for (let i = 0; i < count; i++) {
    const alg = r.u16(`digestSizes[${i}].algorithmId`);
    const size = r.u16(`digestSizes[${i}].digestSize`);
    let hash: TpmHash | undefined;
    try {
      hash = hashFromAlg(alg, 'TCG_EfiSpecIDEvent');
    } catch {
      hash = undefined;
    }
    if (size === 0 || size > 64 || (hash !== undefined && digestSize(hash) !== size)) r.fail(`algorithm 0x${alg.toString(16)} declared with a ${size}-byte digest`, r.position - 2);
    if (algorithms.some((a) => a.alg === alg)) r.fail(`algorithm 0x${alg.toString(16)} declared twice`, r.position - 4);
    algorithms.push({ alg, hash, digestSize: size });
  }
  const vendorInfo = r.bytes(r.u8('vendorInfoSize'), 'vendorInfo');
  r.end();
  return { header: { platformClass, specVersion: `${major}.${minor}.${errata}`, uintnSize, vendorInfo }, algorithms };
}

function readEvent2(r: TpmReader, algorithms: readonly LogAlgorithm[]): TcgEvent {
  const offset = r.position;
  const pcrIndex = r.u32('pcrIndex');
  const eventType = r.u32('eventType');
  const count = r.u32('digests.count');
  if (count > algorithms.length) r.fail(`event at byte ${offset} has ${count} digests, the header declares ${algorithms.length} algorithms`, r.position - 4);
  const digests: TcgEvent['digests'][number][] = [];
  for (let i = 0; i < count; i++) {
    const alg = r.u16(`digests[${i}].hashAlg`);
    const known = algorithms.find((a) => a.alg === alg);
    if (known === undefined) r.fail(`event at byte ${offset} has a digest of algorithm 0x${alg.toString(16)}, which the Spec ID header does not declare`, r.position - 2);
    digests.push({ alg, hash: known.hash, digest: r.bytes(known.digestSize, `digests[${i}].digest`) });
  }
  const data = r.bytes(r.u32('eventSize'), 'event');
  return { offset, pcrIndex, eventType, digests, data };
}

function startupLocality(log: EventLog): number {
  const e = log.events.find((x) => x.eventType === EV_NO_ACTION && x.pcrIndex === 0 && x.data.byteLength >= 17 && x.data.subarray(0, 16).toString('latin1') === STARTUP_LOCALITY);
  return e?.data[16] ?? 0;
}

function initialValue(hash: TpmHash, pcr: number, locality: number): Buffer {
  const v = resetPcr(hash);
  if (pcr === 0) v[v.length - 1] = locality;
  return v;
}

const EVENT_TYPES: Record<number, string> = {
  0x0: 'EV_PREBOOT_CERT',
  0x1: 'EV_POST_CODE',
  0x3: 'EV_NO_ACTION',
  0x4: 'EV_SEPARATOR',
  0x5: 'EV_ACTION',
  0x6: 'EV_EVENT_TAG',
  0x7: 'EV_S_CRTM_CONTENTS',
  0x8: 'EV_S_CRTM_VERSION',
  0x9: 'EV_CPU_MICROCODE',
  0xa: 'EV_PLATFORM_CONFIG_FLAGS',
  0xb: 'EV_TABLE_OF_DEVICES',
  0xc: 'EV_COMPACT_HASH',
  0xd: 'EV_IPL',
  0xe: 'EV_IPL_PARTITION_DATA',
  0xf: 'EV_NONHOST_CODE',
  0x10: 'EV_NONHOST_CONFIG',
  0x11: 'EV_NONHOST_INFO',
  0x12: 'EV_OMIT_BOOT_DEVICE_EVENTS',
  0x80000001: 'EV_EFI_VARIABLE_DRIVER_CONFIG',
  0x80000002: 'EV_EFI_VARIABLE_BOOT',
  0x80000003: 'EV_EFI_BOOT_SERVICES_APPLICATION',
  0x80000004: 'EV_EFI_BOOT_SERVICES_DRIVER',
  0x80000005: 'EV_EFI_RUNTIME_SERVICES_DRIVER',
  0x80000006: 'EV_EFI_GPT_EVENT',
  0x80000007: 'EV_EFI_ACTION',
  0x80000008: 'EV_EFI_PLATFORM_FIRMWARE_BLOB',
  0x80000009: 'EV_EFI_HANDOFF_TABLES',
  0x8000000a: 'EV_EFI_PLATFORM_FIRMWARE_BLOB2',
  0x8000000b: 'EV_EFI_HANDOFF_TABLES2',
  0x8000000c: 'EV_EFI_VARIABLE_BOOT2',
  0x80000010: 'EV_EFI_HCRTM_EVENT',
  0x800000e0: 'EV_EFI_VARIABLE_AUTHORITY',
  0x800000e1: 'EV_EFI_SPDM_FIRMWARE_BLOB',
  0x800000e2: 'EV_EFI_SPDM_FIRMWARE_CONFIG',
};
