import zlib from 'node:zlib';

/**
 * CRC-32 (IEEE, as zlib, MCAP and the telemetry spool use it), continuing from `previous` for data
 * split across calls. Node's native `zlib.crc32` arrived in 20.15; older 20.x get the table version.
 */
export function crc32(data: Uint8Array, previous = 0): number {
  const native = (zlib as { crc32?: (data: Uint8Array, value?: number) => number }).crc32;
  if (native !== undefined) return native(data, previous);
  let c = ~previous;
  for (const byte of data) c = (CRC_TABLE[(c ^ byte) & 0xff] ?? 0) ^ (c >>> 8);
  return ~c >>> 0;
}

const CRC_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
