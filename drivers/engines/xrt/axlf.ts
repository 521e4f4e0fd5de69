import { promises as fs } from 'node:fs';
import { ModelError } from '../../errors.js';

/**
 * Reader for `.xclbin` files: XRT's "axlf" container (`xrt/xclbin.h`). The file is a fixed
 * 496-byte `struct axlf` (magic, signature, unique id, the 152-byte `axlf_header`), a table of
 * 40-byte `axlf_section_header`s, then the sections: the bitstream (often hundreds of MB), and
 * small metadata sections this module decodes: IP_LAYOUT (compute units and their names),
 * CONNECTIVITY (which memory bank each kernel argument is wired to), MEM_TOPOLOGY (the banks)
 * and EMBEDDED_METADATA (an XML description of every kernel and its arguments).
 *
 * Only headers and those metadata sections are read, at their offsets: never the bitstream.
 */

/** Section kinds (`enum axlf_section_kind`) this reader names; others keep their number. */
export const SECTION_KINDS: Readonly<Record<number, string>> = {
  0: 'BITSTREAM', 1: 'CLEARING_BITSTREAM', 2: 'EMBEDDED_METADATA', 3: 'FIRMWARE', 4: 'DEBUG_DATA', 5: 'SCHED_FIRMWARE',
  6: 'MEM_TOPOLOGY', 7: 'CONNECTIVITY', 8: 'IP_LAYOUT', 9: 'DEBUG_IP_LAYOUT', 10: 'DESIGN_CHECK_POINT', 11: 'CLOCK_FREQ_TOPOLOGY',
  12: 'MCS', 13: 'BMC', 14: 'BUILD_METADATA', 15: 'KEYVALUE_METADATA', 16: 'USER_METADATA', 17: 'DNA_CERTIFICATE', 18: 'PDI',
  19: 'BITSTREAM_PARTIAL_PDI', 20: 'PARTITION_METADATA', 21: 'EMULATION_DATA', 22: 'SYSTEM_METADATA', 23: 'SOFT_KERNEL',
  24: 'ASK_FLASH', 25: 'AIE_METADATA', 26: 'ASK_GROUP_TOPOLOGY', 27: 'ASK_GROUP_CONNECTIVITY', 28: 'SMARTNIC',
  29: 'AIE_RESOURCES', 30: 'OVERLAY', 31: 'VENDER_METADATA',
};
export const EMBEDDED_METADATA = 2;
export const MEM_TOPOLOGY = 6;
export const CONNECTIVITY = 7;
export const IP_LAYOUT = 8;

/** `enum IP_TYPE`: IP_KERNEL entries are compute units, IP_PS_KERNEL those run by the SoC's CPU. */
const IP_TYPES = ['IP_MB', 'IP_KERNEL', 'IP_DNASC', 'IP_DDR4_CONTROLLER', 'IP_MEM_DDR4', 'IP_MEM_HBM', 'IP_MEM_HBM_ECC', 'IP_PS_KERNEL'];
/** `enum MEM_TYPE`. */
const MEM_TYPES = ['MEM_DDR3', 'MEM_DDR4', 'MEM_DRAM', 'MEM_STREAMING', 'MEM_PREALLOCATED_GLOB', 'MEM_ARE', 'MEM_HBM', 'MEM_BRAM', 'MEM_URAM', 'MEM_STREAMING_CONNECTION', 'MEM_HOST', 'MEM_PS_KERNEL'];

export interface XclbinSection {
  readonly kind: number;
  /** `IP_LAYOUT`, or `KIND_<n>` for a kind this reader does not know. */
  readonly kindName: string;
  readonly name: string;
  readonly offset: number;
  readonly size: number;
}

/** One IP_LAYOUT entry. For compute units `name` is `kernel:instance` (`vadd:vadd_1`). */
export interface XclbinIp {
  readonly type: string;
  readonly name: string;
  readonly kernel: string;
  readonly instance?: string;
  readonly baseAddress: number;
}

/** A bank of MEM_TOPOLOGY: `tag` is what v++ `--connectivity.sp` names (`DDR[0]`, `HBM[3]`). */
export interface XclbinMemory {
  readonly type: string;
  readonly used: boolean;
  readonly tag: string;
  readonly sizeBytes: number;
  readonly baseAddress: number;
}

/** One CONNECTIVITY entry: argument `argIndex` of IP `ipIndex` is wired to bank `memIndex`. */
export interface XclbinConnection {
  readonly argIndex: number;
  readonly ipIndex: number;
  readonly memIndex: number;
}

/**
 * A kernel argument as EMBEDDED_METADATA declares it. `addressQualifier` 0 is a scalar in the
 * control registers, 1 a pointer to device memory (a buffer), 4 an AXI4-Stream port.
 */
export interface XclbinKernelArg {
  readonly index: number;
  readonly name: string;
  readonly kind: 'scalar' | 'buffer' | 'stream';
  /** The C type the kernel was compiled with: `float*`, `unsigned int`, `int`. */
  readonly type: string;
  /** Bytes in the control register map (8 for a buffer address, 4 for an int scalar). */
  readonly size: number;
  readonly offset: number;
}

export interface XclbinKernel {
  readonly name: string;
  readonly args: readonly XclbinKernelArg[];
  readonly instances: readonly string[];
}

/** What an `.xclbin` says about itself. Sizes in bytes; times in seconds since the epoch. */
export interface Xclbin {
  readonly path: string;
  readonly fileSize: number;
  /** `m_header.m_length`: equals the file size unless something was appended (a signature). */
  readonly length: number;
  readonly version: string;
  readonly uuid: string;
  /** `m_uniqueId` as 16 hex digits. */
  readonly uniqueId: string;
  readonly timeStamp: number;
  readonly featureRomTimeStamp: number;
  readonly platformVbnv: string;
  readonly mode: number;
  readonly signatureLength: number;
  readonly sections: readonly XclbinSection[];
  readonly ips: readonly XclbinIp[];
  readonly memories: readonly XclbinMemory[];
  readonly connections: readonly XclbinConnection[];
  /** Kernels from EMBEDDED_METADATA; empty when the section is absent (then arguments cannot be checked). */
  readonly kernels: readonly XclbinKernel[];
  readonly hasMetadata: boolean;
}

const AXLF_MAGIC = 'xclbin2\0';
/** Offset of `m_sections` in struct axlf (sizeof(struct axlf) is 496 with the first one), and the size of one section header. */
const SECTIONS_OFFSET = 456;
const SECTION_HEADER_SIZE = 40;
const HEADER_OFFSET = 304;
const MAX_SECTIONS = 0x10000;
/** EMBEDDED_METADATA is a few kB to a few MB of XML; refuse anything that would not fit in memory sensibly. */
const MAX_METADATA_BYTES = 64 * 1024 * 1024;

/**
 * Reads and checks an xclbin's headers and metadata sections. Throws ModelError
 * EAI_MODEL_NOT_FOUND when the file is missing and EAI_MODEL_CORRUPT, saying what is wrong (bad
 * magic, a header or section past the end of the file, a table that does not fit its section),
 * for anything that is not a well-formed axlf container.
 */
export async function parseXclbin(file: string): Promise<Xclbin> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(file, 'r');
  } catch (cause) {
    throw new ModelError('EAI_MODEL_NOT_FOUND', `xclbin '${file}' does not exist. Check the "xclbin" path in the kernel descriptor (it is relative to the descriptor's folder).`, { cause, details: { path: file } });
  }
  try {
    const fileSize = (await handle.stat()).size;
    const at = (offset: number, length: number, what: string): Promise<Buffer> => readAt(handle, file, fileSize, offset, length, what);
    const head = await at(0, SECTIONS_OFFSET, 'the axlf header');
    const magic = head.subarray(0, 8).toString('latin1');
    if (magic !== AXLF_MAGIC) throw corrupt(file, `bad magic: expected 'xclbin2\\0' at byte 0, found ${JSON.stringify(magic)}`);
    const h = HEADER_OFFSET;
    const count = head.readUInt32LE(h + 144);
    if (count === 0 || count > MAX_SECTIONS) throw corrupt(file, `the header declares ${count} sections (expected 1 to ${MAX_SECTIONS})`);
    const table = await at(SECTIONS_OFFSET, count * SECTION_HEADER_SIZE, `the table of ${count} section headers`);
    const sections: XclbinSection[] = [];
    for (let i = 0; i < count; i++) {
      const s = table.subarray(i * SECTION_HEADER_SIZE, (i + 1) * SECTION_HEADER_SIZE);
      const kind = s.readUInt32LE(0);
      const section = { kind, kindName: SECTION_KINDS[kind] ?? `KIND_${kind}`, name: cString(s.subarray(4, 20)), offset: u64(s, 24), size: u64(s, 32) };
      if (section.offset + section.size > fileSize) {
        throw corrupt(file, `section ${i} (${section.kindName} '${section.name}') spans bytes ${section.offset}..${section.offset + section.size}, past the end of the file (${fileSize} bytes): the file is truncated`);
      }
      sections.push(section);
    }
    const length = u64(head, h);
    if (length > fileSize) throw corrupt(file, `the header says the file is ${length} bytes but it has ${fileSize}: the file is truncated`);
    const body = async (kind: number): Promise<Buffer | undefined> => {
      const s = sections.find((x) => x.kind === kind);
      if (s === undefined) return undefined;
      if (kind === EMBEDDED_METADATA && s.size > MAX_METADATA_BYTES) throw corrupt(file, `EMBEDDED_METADATA is ${s.size} bytes, more than any real kernel description`);
      return at(s.offset, s.size, `section ${s.kindName}`);
    };
    const ipBody = await body(IP_LAYOUT);
    const memBody = await body(MEM_TOPOLOGY);
    const conBody = await body(CONNECTIVITY);
    const xml = await body(EMBEDDED_METADATA);
    return {
      path: file,
      fileSize,
      length,
      version: `${head[h + 26]}.${head[h + 27]}.${head.readUInt16LE(h + 24)}`,
      uuid: formatUuid(head.subarray(h + 112, h + 128)),
      uniqueId: head.readBigUInt64LE(296).toString(16).padStart(16, '0'),
      timeStamp: u64(head, h + 8),
      featureRomTimeStamp: u64(head, h + 16),
      platformVbnv: cString(head.subarray(h + 48, h + 112)),
      mode: head.readUInt16LE(h + 28),
      signatureLength: head.readInt32LE(8),
      sections,
      ips: ipBody === undefined ? [] : parseIpLayout(ipBody, file),
      memories: memBody === undefined ? [] : parseMemTopology(memBody, file),
      connections: conBody === undefined ? [] : parseConnectivity(conBody, file),
      kernels: xml === undefined ? [] : parseKernelsXml(xml.toString('utf8')),
      hasMetadata: xml !== undefined,
    };
  } finally {
    await handle.close();
  }
}

/** Compute units (IP_KERNEL, IP_PS_KERNEL) grouped by kernel name, in IP_LAYOUT order. */
export function computeUnits(xclbin: Xclbin): Map<string, string[]> {
  const kernels = new Map<string, string[]>();
  for (const ip of xclbin.ips) {
    if (ip.type !== 'IP_KERNEL' && ip.type !== 'IP_PS_KERNEL') continue;
    kernels.set(ip.kernel, [...(kernels.get(ip.kernel) ?? []), ...(ip.instance === undefined ? [] : [ip.instance])]);
  }
  return kernels;
}

/**
 * Kernels and their arguments from EMBEDDED_METADATA. The XML is what v++ writes
 * (`<kernel name=..><arg name= addressQualifier= id= size= offset= type=/>..<instance name=/>`),
 * machine-generated with one element per tag, so attribute matching is enough: no XML library.
 */
export function parseKernelsXml(xml: string): XclbinKernel[] {
  const kernels: XclbinKernel[] = [];
  for (const block of xml.matchAll(/<kernel\b([^>]*)>([\s\S]*?)<\/kernel>/gu)) {
    const name = attributes(block[1] ?? '')['name'];
    if (name === undefined) continue;
    const inner = block[2] ?? '';
    const args: XclbinKernelArg[] = [];
    for (const tag of inner.matchAll(/<arg\b([^>]*?)\/?>/gu)) {
      const a = attributes(tag[1] ?? '');
      const qualifier = Number(a['addressQualifier'] ?? '0');
      args.push({
        index: Number(a['id'] ?? args.length),
        name: a['name'] ?? `arg${args.length}`,
        kind: qualifier === 1 ? 'buffer' : qualifier === 4 ? 'stream' : 'scalar',
        type: a['type'] ?? '',
        size: Number(a['size'] ?? '0'),
        offset: Number(a['offset'] ?? '0'),
      });
    }
    args.sort((x, y) => x.index - y.index);
    const instances = [...inner.matchAll(/<instance\b([^>]*?)\/?>/gu)].map((m) => attributes(m[1] ?? '')['name']).filter((n): n is string => n !== undefined);
    kernels.push({ name, args, instances });
  }
  return kernels;
}

function parseIpLayout(body: Buffer, file: string): XclbinIp[] {
  const count = tableCount(body, 8, 80, 'IP_LAYOUT', file);
  const ips: XclbinIp[] = [];
  for (let i = 0; i < count; i++) {
    const e = body.subarray(8 + i * 80, 8 + (i + 1) * 80);
    const name = cString(e.subarray(16, 80));
    const [kernel = name, instance] = name.split(':');
    const type = e.readUInt32LE(0);
    ips.push({ type: IP_TYPES[type] ?? `IP_${type}`, name, kernel, ...(instance === undefined ? {} : { instance }), baseAddress: u64(e, 8) });
  }
  return ips;
}

function parseMemTopology(body: Buffer, file: string): XclbinMemory[] {
  const count = tableCount(body, 8, 40, 'MEM_TOPOLOGY', file);
  const banks: XclbinMemory[] = [];
  for (let i = 0; i < count; i++) {
    const e = body.subarray(8 + i * 40, 8 + (i + 1) * 40);
    const type = e[0] ?? 0;
    // m_size is in KiB for memory banks (a route id for streaming connections, where size means nothing).
    banks.push({ type: MEM_TYPES[type] ?? `MEM_${type}`, used: e[1] !== 0, tag: cString(e.subarray(24, 40)), sizeBytes: u64(e, 8) * 1024, baseAddress: u64(e, 16) });
  }
  return banks;
}

function parseConnectivity(body: Buffer, file: string): XclbinConnection[] {
  const count = tableCount(body, 4, 12, 'CONNECTIVITY', file);
  const connections: XclbinConnection[] = [];
  for (let i = 0; i < count; i++) {
    const o = 4 + i * 12;
    connections.push({ argIndex: body.readInt32LE(o), ipIndex: body.readInt32LE(o + 4), memIndex: body.readInt32LE(o + 8) });
  }
  return connections;
}

/** `m_count` of a counted table, checked against the section's size. */
function tableCount(body: Buffer, start: number, entry: number, kind: string, file: string): number {
  if (body.length < 4) throw corrupt(file, `section ${kind} is ${body.length} bytes, too short for its count`);
  const count = body.readInt32LE(0);
  if (count < 0 || start + count * entry > body.length) {
    throw corrupt(file, `section ${kind} declares ${count} entries of ${entry} bytes but holds ${body.length} bytes`);
  }
  return count;
}

async function readAt(handle: fs.FileHandle, file: string, fileSize: number, offset: number, length: number, what: string): Promise<Buffer> {
  if (offset + length > fileSize) throw corrupt(file, `${what} needs bytes ${offset}..${offset + length} but the file has ${fileSize}: the file is truncated`);
  const buf = Buffer.alloc(length);
  const { bytesRead } = await handle.read(buf, 0, length, offset);
  if (bytesRead !== length) throw corrupt(file, `${what}: read ${bytesRead} of ${length} bytes at offset ${offset}`);
  return buf;
}

function corrupt(file: string, problem: string): ModelError {
  return new ModelError('EAI_MODEL_CORRUPT', `'${file}' is not a valid xclbin: ${problem}. Copy the file again, or rebuild it with v++ --link.`, { details: { path: file, problem } });
}

/** A u64 as a JS number; offsets and sizes in real files are far below 2^53. */
function u64(buf: Buffer, offset: number): number {
  return Number(buf.readBigUInt64LE(offset));
}

function cString(bytes: Buffer): string {
  const end = bytes.indexOf(0);
  return bytes.subarray(0, end === -1 ? bytes.length : end).toString('latin1');
}

function formatUuid(b: Buffer): string {
  const hex = b.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function attributes(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of text.matchAll(/([A-Za-z_][\w.-]*)\s*=\s*"([^"]*)"/gu)) {
    if (m[1] !== undefined) out[m[1]] = unescapeXml(m[2] ?? '');
  }
  return out;
}

function unescapeXml(s: string): string {
  return s.replace(/&lt;/gu, '<').replace(/&gt;/gu, '>').replace(/&quot;/gu, '"').replace(/&apos;/gu, "'").replace(/&amp;/gu, '&');
}
