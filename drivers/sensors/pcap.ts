/** One UDP datagram from a capture. */
export interface UdpDatagram {
  readonly payload: Buffer;
  /** Destination port. */
  readonly port: number;
  /** When it was captured, ms since the epoch. */
  readonly captureMs: number;
}

/** The bytes of a classic pcap file header. */
export const PCAP_HEADER_BYTES = 24;

/** Whether `head` starts with a classic pcap magic number (either byte order, µs or ns times). */
export function isPcap(head: Uint8Array): boolean {
  return head.length >= 4 && PCAP_MAGIC.has(Buffer.from(head.buffer, head.byteOffset, 4).readUInt32LE(0));
}

/** Whether `head` starts like a pcapng file (Wireshark's default), which this reader does not take. */
export function isPcapng(head: Uint8Array): boolean {
  return head.length >= 4 && Buffer.from(head.buffer, head.byteOffset, 4).readUInt32LE(0) === 0x0a0d0d0a;
}

/**
 * Reads the UDP datagrams of a classic pcap capture (as tcpdump and VeloView write them) fed in
 * chunks of any size: Ethernet (with or without one VLAN tag), Linux cooked (v1, v2) and raw IP
 * link types, unfragmented IPv4. Other traffic — ARP, TCP, IPv6, fragments — is passed over.
 * One reader per file, fed in order.
 */
export class PcapUdpReader {
  private pending: Buffer = Buffer.alloc(0);
  private format: { readonly linkType: number; readonly fractionsPerMs: number; readonly u32: (b: Buffer, at: number) => number } | undefined;

  /** Adds the next bytes of the file; returns the datagrams now complete. */
  push(chunk: Buffer): UdpDatagram[] {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    if (this.format === undefined) {
      if (this.pending.length < PCAP_HEADER_BYTES) return [];
      const magic = PCAP_MAGIC.get(this.pending.readUInt32LE(0));
      if (magic === undefined) throw new Error('not a pcap capture');
      const u32 = magic.littleEndian ? (b: Buffer, at: number) => b.readUInt32LE(at) : (b: Buffer, at: number) => b.readUInt32BE(at);
      this.format = { linkType: u32(this.pending, 20) & 0xffff, fractionsPerMs: magic.fractionsPerMs, u32 };
      this.pending = this.pending.subarray(PCAP_HEADER_BYTES);
    }
    const { u32, linkType, fractionsPerMs } = this.format;
    const out: UdpDatagram[] = [];
    let offset = 0;
    while (offset + 16 <= this.pending.length) {
      const length = u32(this.pending, offset + 8);
      if (offset + 16 + length > this.pending.length) break;
      const captureMs = u32(this.pending, offset) * 1000 + u32(this.pending, offset + 4) / fractionsPerMs;
      const udp = udpOf(this.pending.subarray(offset + 16, offset + 16 + length), linkType);
      if (udp !== undefined) out.push({ ...udp, captureMs });
      offset += 16 + length;
    }
    this.pending = this.pending.subarray(offset);
    return out;
  }
}

/** pcap magic as read little-endian: byte order of the file, and µs or ns timestamps. */
const PCAP_MAGIC = new Map<number, { readonly littleEndian: boolean; readonly fractionsPerMs: number }>([
  [0xa1b2c3d4, { littleEndian: true, fractionsPerMs: 1e3 }],
  [0xd4c3b2a1, { littleEndian: false, fractionsPerMs: 1e3 }],
  [0xa1b23c4d, { littleEndian: true, fractionsPerMs: 1e6 }],
  [0x4d3cb2a1, { littleEndian: false, fractionsPerMs: 1e6 }],
]);

/** The UDP payload and destination port of an unfragmented IPv4 frame, or undefined for any other traffic. */
function udpOf(frame: Buffer, linkType: number): { readonly payload: Buffer; readonly port: number } | undefined {
  let ip: number;
  if (linkType === 1) {
    const tagged = frame.length >= 18 && frame.readUInt16BE(12) === 0x8100;
    if (frame.length < 34 || frame.readUInt16BE(tagged ? 16 : 12) !== 0x0800) return undefined;
    ip = tagged ? 18 : 14;
  } else if (linkType === 113) {
    if (frame.length < 36 || frame.readUInt16BE(14) !== 0x0800) return undefined;
    ip = 16;
  } else if (linkType === 276) {
    if (frame.length < 40 || frame.readUInt16BE(0) !== 0x0800) return undefined;
    ip = 20;
  } else if (linkType === 101 || linkType === 228) {
    ip = 0;
  } else {
    return undefined;
  }
  const first = frame[ip] ?? 0;
  // IPv4, protocol UDP, neither "more fragments" nor a fragment offset.
  if (first >> 4 !== 4 || frame.length < ip + 20 || frame[ip + 9] !== 17 || (frame.readUInt16BE(ip + 6) & 0x3fff) !== 0) return undefined;
  const udp = ip + (first & 15) * 4;
  if (frame.length < udp + 8) return undefined;
  const end = Math.min(frame.length, udp + frame.readUInt16BE(udp + 4));
  return { payload: frame.subarray(udp + 8, end), port: frame.readUInt16BE(udp + 2) };
}
