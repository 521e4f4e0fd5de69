import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { computeUnits, parseKernelsXml, parseXclbin } from '../../../../drivers/engines/xrt/axlf.js';
import { ModelError } from '../../../../drivers/errors.js';
import { buildXclbin, ipLayout, metadata, U50_VBNV, vaddXclbin, VADD_ARGS } from '../../../fixtures/xclbin/axlf-builder.js';

const dir = mkdtempSync(path.join(tmpdir(), 'aios-axlf-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, bytes: Buffer): string {
  const file = path.join(dir, name);
  writeFileSync(file, bytes);
  return file;
}

async function corruptReason(bytes: Buffer): Promise<string> {
  const error = await parseXclbin(write(`c-${Math.random().toString(36).slice(2)}.xclbin`, bytes)).then(() => undefined, (e: unknown) => e);
  expect(error).toBeInstanceOf(ModelError);
  expect((error as ModelError).code).toBe('EAI_MODEL_CORRUPT');
  return String((error as ModelError).details['problem']);
}

describe('parseXclbin on a well-formed file', () => {
  it('reads the header: version, uuid, unique id, time stamp, platform VBNV, signature', async () => {
    const bytes = vaddXclbin();
    const x = await parseXclbin(write('vadd.xclbin', bytes));
    expect(x).toMatchObject({
      fileSize: bytes.length,
      length: bytes.length,
      version: '2.13.466',
      uuid: '01234567-89ab-cdef-0011-223344556677',
      uniqueId: '1122334455667788',
      timeStamp: 1_700_000_000,
      featureRomTimeStamp: 0,
      platformVbnv: U50_VBNV,
      mode: 0,
      signatureLength: -1,
      hasMetadata: true,
    });
  });

  it('lists every section with kind, name, offset and size, in table order', async () => {
    const x = await parseXclbin(write('vadd2.xclbin', vaddXclbin()));
    expect(x.sections.map((s) => [s.kind, s.kindName, s.name])).toEqual([
      [0, 'BITSTREAM', 'BITSTREAM'],
      [6, 'MEM_TOPOLOGY', 'MEM_TOPOLOGY'],
      [8, 'IP_LAYOUT', 'IP_LAYOUT'],
      [7, 'CONNECTIVITY', 'CONNECTIVITY'],
      [2, 'EMBEDDED_METADATA', 'EMBEDDED_METADA'],
    ]);
    // Bodies start after the 496-byte struct axlf plus four more 40-byte section headers.
    expect(x.sections[0]).toMatchObject({ offset: 656, size: 64 });
    expect(x.sections[1]).toMatchObject({ offset: 720, size: 88 });
  });

  it('decodes IP_LAYOUT, MEM_TOPOLOGY and CONNECTIVITY', async () => {
    const x = await parseXclbin(write('vadd3.xclbin', vaddXclbin()));
    expect(x.ips).toEqual([
      { type: 'IP_KERNEL', name: 'vadd:vadd_1', kernel: 'vadd', instance: 'vadd_1', baseAddress: 0x1800000 },
      { type: 'IP_KERNEL', name: 'vadd:vadd_2', kernel: 'vadd', instance: 'vadd_2', baseAddress: 0x1810000 },
    ]);
    expect(x.memories).toEqual([
      { type: 'MEM_HBM', used: true, tag: 'HBM[0]', sizeBytes: 256 * 1024 * 1024, baseAddress: 0 },
      { type: 'MEM_HBM', used: false, tag: 'HBM[1]', sizeBytes: 256 * 1024 * 1024, baseAddress: 0x10000000 },
    ]);
    expect(x.connections).toHaveLength(6);
    expect(x.connections[3]).toEqual({ argIndex: 0, ipIndex: 1, memIndex: 0 });
    expect(computeUnits(x)).toEqual(new Map([['vadd', ['vadd_1', 'vadd_2']]]));
  });

  it('reads kernel arguments from EMBEDDED_METADATA: names, kinds, C types, sizes, register offsets', async () => {
    const x = await parseXclbin(write('vadd4.xclbin', vaddXclbin()));
    expect(x.kernels).toEqual([{
      name: 'vadd',
      instances: ['vadd_1', 'vadd_2'],
      args: [
        { index: 0, name: 'a', kind: 'buffer', type: 'float*', size: 8, offset: 0x10 },
        { index: 1, name: 'b', kind: 'buffer', type: 'float*', size: 8, offset: 0x1c },
        { index: 2, name: 'out', kind: 'buffer', type: 'float*', size: 8, offset: 0x28 },
        { index: 3, name: 'n', kind: 'scalar', type: 'int', size: 4, offset: 0x34 },
      ],
    }]);
  });

  it('without EMBEDDED_METADATA it still reads IP_LAYOUT and says there are no kernel arguments to check', async () => {
    const x = await parseXclbin(write('nometa.xclbin', vaddXclbin({ metadata: false })));
    expect(x.hasMetadata).toBe(false);
    expect(x.kernels).toEqual([]);
    expect([...computeUnits(x).keys()]).toEqual(['vadd']);
  });

  it('reads streams and escaped attribute values in the XML', () => {
    const xml = metadata('k', [{ name: 'in', addressQualifier: 4, type: 'hls::stream&lt;ap_axiu&lt;32,0,0,0&gt; &gt;&amp;' }, ...VADD_ARGS.slice(3)], ['k_1']).body.toString();
    expect(parseKernelsXml(xml)[0]?.args.map((a) => [a.name, a.kind, a.type])).toEqual([['in', 'stream', 'hls::stream<ap_axiu<32,0,0,0> >&'], ['n', 'scalar', 'int']]);
  });

  it('ignores bytes appended after m_length (a detached signature)', async () => {
    const bytes = Buffer.concat([vaddXclbin(), Buffer.alloc(512, 7)]);
    const x = await parseXclbin(write('signed.xclbin', bytes));
    expect(x.length).toBe(bytes.length - 512);
    expect(x.fileSize).toBe(bytes.length);
  });
});

describe('parseXclbin on corrupt files', () => {
  it('reports a missing file as EAI_MODEL_NOT_FOUND', async () => {
    await expect(parseXclbin(path.join(dir, 'nope.xclbin'))).rejects.toMatchObject({ code: 'EAI_MODEL_NOT_FOUND' });
  });

  it('says the magic is wrong, and what it found', async () => {
    const bytes = vaddXclbin();
    bytes.write('xclbin1', 0, 'latin1');
    expect(await corruptReason(bytes)).toBe(`bad magic: expected 'xclbin2\\0' at byte 0, found "xclbin1\\u0000"`);
  });

  it('says the header is cut short', async () => {
    expect(await corruptReason(vaddXclbin().subarray(0, 300))).toBe('the axlf header needs bytes 0..456 but the file has 300: the file is truncated');
  });

  it('names the section that runs past the end of the file', async () => {
    const bytes = vaddXclbin();
    // Section 2 (IP_LAYOUT): claim a size far larger than the file.
    bytes.writeBigUInt64LE(1_000_000n, 456 + 2 * 40 + 32);
    expect(await corruptReason(bytes)).toMatch(/^section 2 \(IP_LAYOUT 'IP_LAYOUT'\) spans bytes \d+\.\.\d+, past the end of the file \(\d+ bytes\): the file is truncated$/u);
  });

  it('catches a file truncated inside its sections', async () => {
    const bytes = vaddXclbin();
    expect(await corruptReason(bytes.subarray(0, bytes.length - 100))).toMatch(/^section 4 \(EMBEDDED_METADATA/u);
  });

  it('catches a header length larger than the file', async () => {
    const bytes = vaddXclbin();
    bytes.writeBigUInt64LE(BigInt(bytes.length + 1), 304);
    expect(await corruptReason(bytes)).toBe(`the header says the file is ${bytes.length + 1} bytes but it has ${bytes.length}: the file is truncated`);
  });

  it('catches a zero or absurd section count, and a section table past the end', async () => {
    const zero = vaddXclbin();
    zero.writeUInt32LE(0, 304 + 144);
    expect(await corruptReason(zero)).toBe('the header declares 0 sections (expected 1 to 65536)');
    const many = vaddXclbin();
    many.writeUInt32LE(1000, 304 + 144);
    expect(await corruptReason(many)).toMatch(/^the table of 1000 section headers needs bytes 456\.\.40456 but the file has \d+/u);
  });

  it('catches an IP_LAYOUT whose count does not fit the section', async () => {
    const bytes = buildXclbin({ sections: [ipLayout([{ type: 1, name: 'k:k_1', base: 0n }])] });
    bytes.writeInt32LE(5, 496); // m_count of the only section body
    expect(await corruptReason(bytes)).toBe('section IP_LAYOUT declares 5 entries of 80 bytes but holds 88 bytes');
  });

  it('never fails with anything but EAI_MODEL_CORRUPT, whatever is cut off or overwritten', async () => {
    const good = vaddXclbin();
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: good.length - 1 }), fc.integer({ min: 0, max: good.length - 1 }), fc.integer({ min: 0, max: 255 }), async (cut, at, value) => {
        const bytes = Buffer.from(good.subarray(0, Math.max(cut, at + 1)));
        bytes[at] = value;
        const outcome = await parseXclbin(write('prop.xclbin', bytes)).then(() => 'ok', (e: unknown) => (e instanceof ModelError ? e.code : `threw ${String(e)}`));
        expect(['ok', 'EAI_MODEL_CORRUPT']).toContain(outcome);
      }),
      { numRuns: 150 },
    );
  });
});
