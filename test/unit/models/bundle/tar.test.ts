import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { AiosError } from '../../../../drivers/errors.js';
import { decodeHeader, encodeHeader, endOfArchive, padding, TarReader, type TarHeader } from '../../../../models/bundle/tar.js';
import { findBinary } from '../../../support/wait.js';

const TAR = findBinary('tar');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-tar-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function archive(entries: readonly { name: string; data: Buffer }[], mtime = 1_700_000_000): Buffer {
  return Buffer.concat([...entries.flatMap((e) => [encodeHeader({ name: e.name, size: e.data.length, mtime }), e.data, padding(e.data.length)]), endOfArchive()]);
}

/** Feeds `bytes` in the given chunk sizes (cycled) and reads every entry fully. */
async function readAll(bytes: Buffer, chunkSizes: readonly number[] = [bytes.length || 1]): Promise<{ header: TarHeader; data: Buffer }[]> {
  async function* source(): AsyncGenerator<Buffer> {
    let at = 0;
    for (let i = 0; at < bytes.length; i++) {
      const n = Math.max(1, chunkSizes[i % chunkSizes.length] ?? 1);
      yield bytes.subarray(at, at + n);
      at += n;
    }
  }
  const reader = new TarReader(source());
  const out: { header: TarHeader; data: Buffer }[] = [];
  try {
    for (let h = await reader.next(); h !== null; h = await reader.next()) {
      const chunks: Buffer[] = [];
      for await (const c of reader.body()) chunks.push(Buffer.from(c));
      out.push({ header: h, data: Buffer.concat(chunks) });
    }
  } finally {
    await reader.close();
  }
  return out;
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (error) {
    if (error instanceof AiosError) return error.code;
    throw error;
  }
  return 'resolved';
}

function fixChecksum(h: Buffer): void {
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
}

const files = [
  { name: 'envelope.dsse.json', data: Buffer.from('{"hello":"world"}') },
  { name: 'files/model.onnx', data: readFileSync('models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx') },
  { name: 'files/empty.bin', data: Buffer.alloc(0) },
  { name: 'files/exact.bin', data: Buffer.alloc(1024, 7) },
];

describe('tar writer and reader', () => {
  it('round-trips headers and data, in any chunking of the source', async () => {
    const bytes = archive(files);
    expect(bytes.length % 512).toBe(0);
    for (const sizes of [[bytes.length], [1], [511, 513], [7, 4096, 100_000]]) {
      const read = await readAll(bytes, sizes);
      expect(read.map((e) => e.header.name)).toEqual(files.map((f) => f.name));
      read.forEach((e, i) => {
        expect(e.header).toMatchObject({ type: 'file', size: files[i]?.data.length, mode: 0o644, uid: 0, gid: 0, mtime: 1_700_000_000 });
        expect(e.data.equals(files[i]?.data as Buffer)).toBe(true);
      });
    }
  });

  it('reads the same whatever the chunk boundaries (property)', async () => {
    const bytes = archive(files.slice(0, 1).concat([{ name: 'files/a', data: Buffer.alloc(3000, 1) }]));
    await fc.assert(
      fc.asyncProperty(fc.array(fc.integer({ min: 1, max: 2000 }), { minLength: 1, maxLength: 8 }), async (sizes) => {
        const read = await readAll(bytes, sizes);
        expect(read.map((e) => e.data.length)).toEqual([17, 3000]);
      }),
      { numRuns: 50 },
    );
  });

  it('splits names over 100 bytes into the ustar prefix, and refuses names that cannot be split', async () => {
    const long = `files/${'d'.repeat(120)}/${'f'.repeat(90)}.bin`;
    const h = encodeHeader({ name: long, size: 3 });
    expect(h.toString('latin1', 345, 345 + 126).replace(/\0+$/u, '')).toBe(`files/${'d'.repeat(120)}`);
    expect(decodeHeader(h, 0)?.name).toBe(long);
    expect(() => encodeHeader({ name: 'x'.repeat(101), size: 0 })).toThrow(expect.objectContaining({ code: 'EAI_BUNDLE_PATH_INVALID' }));
  });

  it('writes sizes past 8 GiB in GNU base-256 and reads them back', () => {
    const size = 2 ** 36 + 5;
    const h = encodeHeader({ name: 'files/huge.bin', size });
    expect(h[124]).toBe(0x80);
    expect(decodeHeader(h, 0)?.size).toBe(size);
  });

  it('checks every header byte through the checksum, and accepts only the canonical checksum field', () => {
    const h = encodeHeader({ name: 'files/a.bin', size: 10 });
    expect(h.toString('latin1', 148, 156)).toMatch(/^[0-7]{6}\0 $/u);
    for (let i = 0; i < 512; i++) {
      const bad = Buffer.from(h);
      bad[i] = (bad[i] as number) ^ 0x01;
      expect(() => decodeHeader(bad, 0), `byte ${i}`).toThrow(AiosError);
    }
    const sameValue = Buffer.from(h);
    sameValue[155] = 0; // "dddddd\0\0" still means the same number; refused anyway
    expect(() => decodeHeader(sameValue, 0)).toThrow(expect.objectContaining({ code: 'EAI_BUNDLE_TAR_CHECKSUM' }));
  });

  it('refuses non-ustar blocks, non-zero padding, truncation, and anything but zeros after the end', async () => {
    const good = archive(files.slice(0, 2));
    const garbage = Buffer.from(good);
    garbage.fill(0x41, 0, 512);
    expect(await code(readAll(garbage))).toBe('EAI_BUNDLE_TAR_HEADER');
    const badPad = Buffer.from(good);
    badPad[512 + 17 + 3] = 1;
    expect(await code(readAll(badPad))).toBe('EAI_BUNDLE_TAR_PADDING');
    for (const cut of [100, 512, 600, good.length - 1024, good.length - 600, good.length - 1]) expect(await code(readAll(good.subarray(0, cut))), `cut at ${cut}`).toBe('EAI_BUNDLE_TRUNCATED');
    expect(await code(readAll(Buffer.concat([good, Buffer.from('x')])))).toBe('EAI_BUNDLE_TRAILING_DATA');
    expect(await code(readAll(Buffer.concat([good, Buffer.alloc(9216)])))).toBe('resolved'); // GNU tar's 10 KiB record
    expect(await code(readAll(Buffer.concat([good, Buffer.alloc(65 * 1024)])))).toBe('EAI_BUNDLE_TRAILING_DATA');
    const badNumber = encodeHeader({ name: 'files/a', size: 1 });
    badNumber.write('12x4567\0', 100, 'latin1'); // mode
    fixChecksum(badNumber);
    expect(() => decodeHeader(badNumber, 0)).toThrow(expect.objectContaining({ code: 'EAI_BUNDLE_TAR_HEADER' }));
  });

  it('reports entry types without interpreting them', () => {
    const types: Record<string, string> = { '1': 'hardlink', '2': 'symlink', '3': 'char', '4': 'block', '5': 'directory', '6': 'fifo', x: 'pax', g: 'pax-global', L: 'gnu-longname', Z: 'other' };
    for (const [flag, type] of Object.entries(types)) {
      const h = encodeHeader({ name: 'files/a', size: 0 });
      h.write(flag, 156, 'latin1');
      fixChecksum(h);
      expect(decodeHeader(h, 0)?.type).toBe(type);
    }
  });
});

describe.skipIf(TAR === undefined)('tar interop with GNU tar', () => {
  it('GNU tar lists and extracts what we write', () => {
    const file = path.join(tmp, 'ours.tar');
    const long = `files/${'d'.repeat(120)}/x.bin`;
    writeFileSync(file, archive([...files, { name: long, data: Buffer.from('long name') }]));
    const listing = execFileSync(TAR as string, ['-tvf', file], { encoding: 'utf8' }).trim().split('\n');
    expect(listing.map((l) => l.split(/\s+/u).at(-1))).toEqual([...files.map((f) => f.name), long]);
    expect(listing[1]).toMatch(new RegExp(`^-rw-r--r-- 0/0\\s+${files[1]?.data.length} 2023-11-1`, 'u'));
    expect(execFileSync(TAR as string, ['-xOf', file, 'files/model.onnx']).equals(files[1]?.data as Buffer)).toBe(true);
    expect(execFileSync(TAR as string, ['-xOf', file, long], { encoding: 'utf8' })).toBe('long name');
  });

  it.each([['ustar'], ['gnu']])('we read what GNU tar writes (--format=%s)', async (format) => {
    const dir = path.join(tmp, `gnu-${format}`);
    mkdirSync(path.join(dir, 'files'), { recursive: true });
    for (const f of files) writeFileSync(path.join(dir, f.name), f.data);
    const file = path.join(tmp, `gnu-${format}.tar`);
    execFileSync(TAR as string, [`--format=${format}`, '-cf', file, '-C', dir, ...files.map((f) => f.name)]);
    const read = await readAll(readFileSync(file), [65536]);
    expect(read.map((e) => e.header.name)).toEqual(files.map((f) => f.name));
    read.forEach((e, i) => expect(e.data.equals(files[i]?.data as Buffer)).toBe(true));
  });
});
