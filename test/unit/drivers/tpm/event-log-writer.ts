import { createHash } from 'node:crypto';

/**
 * Writes TCG PC Client event logs for the event-log tests, the way UEFI firmware lays them out
 * (PC Client Platform Firmware Profile §10.2): little-endian, a SHA-1-format Spec ID header event,
 * then TCG_PCR_EVENT2 records with one digest per declared bank. The tests check the bytes with
 * tpm2_eventlog and against a swtpm's PCRs, so this writer is itself checked, not trusted.
 */
export interface LogEvent {
  readonly pcr: number;
  readonly type: number;
  readonly data: Buffer;
  /** Digests to log; default: each bank's hash of `data`. */
  readonly digests?: Readonly<Record<string, Buffer>>;
}

export const BANKS = [
  { alg: 0x0004, hash: 'sha1', size: 20 },
  { alg: 0x000b, hash: 'sha256', size: 32 },
] as const;

export function cryptoAgileLog(events: readonly LogEvent[], banks: readonly { alg: number; hash: string; size: number }[] = BANKS): Buffer {
  const specId = Buffer.concat([
    Buffer.from('Spec ID Event03\0', 'latin1'),
    le32(0), // platformClass: client
    Buffer.from([0, 2, 0, 2]), // version 2.0, errata 0, uintnSize 2 (UINT64)
    le32(banks.length),
    ...banks.map((b) => Buffer.concat([le16(b.alg), le16(b.size)])),
    Buffer.from([0]), // no vendor info
  ]);
  const header = Buffer.concat([le32(0), le32(0x3), Buffer.alloc(20), le32(specId.length), specId]);
  const records = events.map((e) =>
    Buffer.concat([
      le32(e.pcr),
      le32(e.type),
      le32(banks.length),
      ...banks.map((b) => Buffer.concat([le16(b.alg), e.digests?.[b.hash] ?? createHash(b.hash).update(e.data).digest()])),
      le32(e.data.length),
      e.data,
    ]),
  );
  return Buffer.concat([header, ...records]);
}

/** The SHA-1-only format of TPM 1.2-era firmware. */
export function sha1Log(events: readonly LogEvent[]): Buffer {
  return Buffer.concat(events.map((e) => Buffer.concat([le32(e.pcr), le32(e.type), e.digests?.['sha1'] ?? createHash('sha1').update(e.data).digest(), le32(e.data.length), e.data])));
}

/** A plausible UEFI boot: S-CRTM version, firmware blob, config, separators, boot loader, GPT. */
export function uefiBoot(locality = 0): LogEvent[] {
  const sep = Buffer.alloc(4);
  const events: LogEvent[] = [];
  if (locality !== 0) events.push({ pcr: 0, type: 0x3, data: Buffer.concat([Buffer.from('StartupLocality\0', 'latin1'), Buffer.from([locality])]), digests: { sha1: Buffer.alloc(20), sha256: Buffer.alloc(32) } });
  events.push(
    { pcr: 0, type: 0x8, data: Buffer.from('1.0.0\0', 'utf16le') },
    { pcr: 0, type: 0x80000008, data: Buffer.from('0000e0ff000000000000200000000000', 'hex') },
    { pcr: 7, type: 0x80000001, data: efiVariable('8be4df61-93ca-11d2-aa0d-00e098032b8c', 'SecureBoot', Buffer.from([1])) },
    { pcr: 4, type: 0x80000007, data: Buffer.from('Calling EFI Application from Boot Option') },
    ...[0, 1, 2, 3, 4, 5, 6, 7].map((pcr) => ({ pcr, type: 0x4, data: sep })),
    { pcr: 4, type: 0x80000003, data: imageLoad(0x7e5f2000n, 0x1a2000n) },
    { pcr: 8, type: 0xd, data: Buffer.from('linux /vmlinuz root=/dev/sda2\0') },
    { pcr: 9, type: 0xd, data: Buffer.from('/boot/vmlinuz\0') },
  );
  return events;
}

/** UEFI_VARIABLE_DATA: vendor GUID, name length and data length (UINT64, in characters and bytes), UTF-16 name, data. */
function efiVariable(guid: string, name: string, data: Buffer): Buffer {
  const g = Buffer.from(guid.replace(/-/gu, ''), 'hex');
  // EFI_GUID stores its first three fields little-endian.
  const mixed = Buffer.concat([Buffer.from(g.subarray(0, 4)).reverse(), Buffer.from(g.subarray(4, 6)).reverse(), Buffer.from(g.subarray(6, 8)).reverse(), g.subarray(8)]);
  return Buffer.concat([mixed, le64(BigInt(name.length)), le64(BigInt(data.length)), Buffer.from(name, 'utf16le'), data]);
}

/** UEFI_IMAGE_LOAD_EVENT with an empty device path. */
function imageLoad(base: bigint, length: bigint): Buffer {
  return Buffer.concat([le64(base), le64(length), le64(0n), le64(0n)]);
}

function le64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
}

function le32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
}

function le16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v);
  return b;
}
