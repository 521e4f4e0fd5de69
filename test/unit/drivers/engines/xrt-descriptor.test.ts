import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseXclbin } from '../../../../drivers/engines/xrt/axlf.js';
import { checkDescriptor, findDescriptor, parseDescriptor, readDescriptor, tensorSpecs } from '../../../../drivers/engines/xrt/descriptor.js';
import { ModelError } from '../../../../drivers/errors.js';
import { vaddDescriptor, vaddXclbin } from '../../../fixtures/xclbin/axlf-builder.js';

const dir = mkdtempSync(path.join(tmpdir(), 'aios-xrtdesc-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function files(folder: string, entries: Record<string, string | Buffer>): string {
  const base = path.join(dir, folder);
  mkdirSync(base, { recursive: true });
  for (const [name, content] of Object.entries(entries)) writeFileSync(path.join(base, name), content);
  return base;
}

function problems(json: unknown): string[] {
  try {
    parseDescriptor(json, '/models/vadd/vadd.xrt.json');
  } catch (e) {
    expect(e).toBeInstanceOf(ModelError);
    expect((e as ModelError).code).toBe('EAI_XRT_DESCRIPTOR');
    return (e as ModelError).details['problems'] as string[];
  }
  return [];
}

describe('findDescriptor', () => {
  it('finds <name>.xrt.json beside the xclbin', async () => {
    const base = files('beside', { 'vadd.xclbin': vaddXclbin(), 'vadd.xrt.json': '{}' });
    expect(await findDescriptor(path.join(base, 'vadd.xclbin'))).toBe(path.join(base, 'vadd.xrt.json'));
  });

  it("finds a folder's model.xrt.json, and a model.xrt.json beside the xclbin only when it names that xclbin", async () => {
    const base = files('folder', { 'vadd.xclbin': vaddXclbin(), 'model.xrt.json': JSON.stringify(vaddDescriptor()) });
    expect(await findDescriptor(base)).toBe(path.join(base, 'model.xrt.json'));
    expect(await findDescriptor(path.join(base, 'vadd.xclbin'))).toBe(path.join(base, 'model.xrt.json'));
    const other = files('other', { 'mmult.xclbin': vaddXclbin(), 'model.xrt.json': JSON.stringify(vaddDescriptor()) });
    await expect(findDescriptor(path.join(other, 'mmult.xclbin'))).rejects.toMatchObject({ code: 'EAI_XRT_NO_DESCRIPTOR' });
  });

  it('takes a .xrt.json path as the descriptor itself', async () => {
    expect(await findDescriptor('/models/vadd.xrt.json')).toBe('/models/vadd.xrt.json');
  });

  it('without a descriptor, says where to write one and shows the fields', async () => {
    const base = files('bare', { 'vadd.xclbin': vaddXclbin() });
    const error = (await findDescriptor(path.join(base, 'vadd.xclbin')).catch((e: unknown) => e)) as ModelError;
    expect(error.code).toBe('EAI_XRT_NO_DESCRIPTOR');
    expect(error.details['expected']).toBe(path.join(base, 'vadd.xrt.json'));
    expect(error.message).toContain(`write ${path.join(base, 'vadd.xrt.json')}`);
    for (const field of ['"xclbin"', '"kernel"', '"args"', '"direction"', '"dtype"', '"shape"', '"scalar"']) expect(error.message).toContain(field);
  });
});

describe('parseDescriptor', () => {
  it('turns the vadd descriptor into typed arguments with buffer sizes, in kernel order', () => {
    const d = parseDescriptor(vaddDescriptor(1024), '/models/vadd/vadd.xrt.json');
    expect(d).toEqual({
      file: '/models/vadd/vadd.xrt.json',
      xclbin: '/models/vadd/vadd.xclbin',
      kernel: 'vadd',
      timeoutMs: 10_000,
      args: [
        { index: 0, name: 'a', kind: 'buffer', direction: 'in', dtype: 'float32', shape: [1024], bytes: 4096 },
        { index: 1, name: 'b', kind: 'buffer', direction: 'in', dtype: 'float32', shape: [1024], bytes: 4096 },
        { index: 2, name: 'out', kind: 'buffer', direction: 'out', dtype: 'float32', shape: [1024], bytes: 4096 },
        { index: 3, name: 'n', kind: 'scalar', dtype: 'int32', value: 1024 },
      ],
    });
    expect(tensorSpecs(d)).toEqual({
      inputs: [{ name: 'a', dtype: 'float32', shape: [1024] }, { name: 'b', dtype: 'float32', shape: [1024] }],
      outputs: [{ name: 'out', dtype: 'float32', shape: [1024] }],
    });
  });

  it('puts an inout buffer in both inputs and outputs; keeps streams; reads 64-bit scalars exactly', () => {
    const d = parseDescriptor({ xclbin: 'k.xclbin', kernel: 'k:{k_1}', timeoutMs: 500, args: [
      { name: 'buf', direction: 'inout', dtype: 'uint8', shape: [2, 3] },
      { name: 's', stream: true },
      { name: 'seed', scalar: '9007199254740993', dtype: 'uint64' },
    ] }, '/m/k.xrt.json');
    expect(d.timeoutMs).toBe(500);
    expect(d.args[1]).toEqual({ index: 1, name: 's', kind: 'stream' });
    expect(d.args[2]).toEqual({ index: 2, name: 'seed', kind: 'scalar', dtype: 'uint64', value: 9007199254740993n });
    expect(tensorSpecs(d)).toEqual({ inputs: [{ name: 'buf', dtype: 'uint8', shape: [2, 3] }], outputs: [{ name: 'buf', dtype: 'uint8', shape: [2, 3] }] });
  });

  it('reports every problem at once, unknown keys included', () => {
    expect(problems({ kernel: '', dtpye: 1, timeoutMs: -1, args: [
      { name: 'a', direction: 'sideways', dtype: 'float32', shape: [0] },
      { name: 'a', direction: 'in', dtype: 'complex64', shape: [4] },
      { name: 'n', scalar: 3.5, dtype: 'int32' },
      { name: 'm', scalar: 300, dtype: 'uint8' },
      { name: 'x', scalar: 1, dtype: 'int32', shape: [1] },
    ] })).toEqual([
      'unknown key "dtpye" (allowed: xclbin, kernel, args, timeoutMs)',
      '"xclbin" must be the xclbin file name, relative to the descriptor (e.g. "vadd.xclbin")',
      '"kernel" must be the kernel name as v++ built it (e.g. "vadd")',
      '"timeoutMs" must be a positive integer of milliseconds',
      'args[0] \'a\': "direction" must be "in", "out" or "inout" (or give "scalar": <value> for a scalar argument)',
      'args[0] \'a\': "shape" must be a list of positive integers (XRT buffers have a fixed size)',
      "args[1] 'a': \"dtype\" must be one of float32, float64, int8, uint8, int16, uint16, int32, uint32, int64, uint64",
      "args[2] 'n': \"scalar\" must be a number that fits int32",
      "args[3] 'm': \"scalar\" must be a number that fits uint8",
      "args[4] 'x': unknown key \"shape\" (allowed: name, scalar, dtype)",
      'no argument has direction "out" or "inout", so the kernel would return nothing',
    ]);
  });

  it('rejects a duplicate name and non-JSON text with the example in the message', async () => {
    expect(problems({ xclbin: 'v.xclbin', kernel: 'v', args: [{ name: 'a', direction: 'out', dtype: 'int32', shape: [1] }, { name: 'a', scalar: 1 }] })).toEqual(["args[1]: name 'a' is used twice"]);
    const base = files('badjson', { 'v.xrt.json': '{ "xclbin": ' });
    const error = (await readDescriptor(path.join(base, 'v.xrt.json')).catch((e: unknown) => e)) as ModelError;
    expect(error.code).toBe('EAI_XRT_DESCRIPTOR');
    expect(error.message).toMatch(/is invalid: not valid JSON \(.+\)\. Example: \{ "xclbin": "vadd.xclbin"/u);
  });
});

describe('checkDescriptor against the xclbin', () => {
  const xclbinPath = (name: string, bytes = vaddXclbin()): string => path.join(files(name, { 'vadd.xclbin': bytes }), 'vadd.xclbin');

  it('accepts the vadd descriptor, with and without a compute-unit selector', async () => {
    const x = await parseXclbin(xclbinPath('ok'));
    expect(() => checkDescriptor(parseDescriptor(vaddDescriptor(), '/m/vadd.xrt.json'), x)).not.toThrow();
    expect(() => checkDescriptor(parseDescriptor({ ...vaddDescriptor(), kernel: 'vadd:{vadd_2}' }, '/m/vadd.xrt.json'), x)).not.toThrow();
  });

  it('names the kernels the xclbin has when the kernel is not there', async () => {
    const x = await parseXclbin(xclbinPath('nokernel'));
    expect(() => checkDescriptor(parseDescriptor({ ...vaddDescriptor(), kernel: 'mmult' }, '/m/vadd.xrt.json'), x)).toThrow(expect.objectContaining({
      code: 'EAI_XRT_KERNEL_NOT_FOUND',
      message: expect.stringContaining("Kernel 'mmult' named in /m/vadd.xrt.json is not in") as unknown,
      details: { kernel: 'mmult', available: ['vadd'] },
    }));
    expect(() => checkDescriptor(parseDescriptor({ ...vaddDescriptor(), kernel: 'vadd:{vadd_1,vadd_9}' }, '/m/vadd.xrt.json'), x)).toThrow(expect.objectContaining({
      code: 'EAI_XRT_KERNEL_NOT_FOUND',
      details: { kernel: 'vadd', missing: ['vadd_9'], available: ['vadd_1', 'vadd_2'] },
    }));
  });

  it('checks argument names, order, kinds and scalar sizes against EMBEDDED_METADATA, and shows the signature', async () => {
    const x = await parseXclbin(xclbinPath('mismatch'));
    const d = vaddDescriptor();
    const args = d['args'] as Record<string, unknown>[];
    const swapped = { ...d, args: [args[1], args[0], { ...args[2], name: 'result' }, { name: 'n', scalar: 1, dtype: 'int64' }] };
    const error = (() => {
      try {
        checkDescriptor(parseDescriptor(swapped, '/m/vadd.xrt.json'), x);
      } catch (e) {
        return e as ModelError;
      }
      return undefined;
    })();
    expect(error?.code).toBe('EAI_XRT_ARG_MISMATCH');
    expect(error?.details['problems']).toEqual([
      "argument 0 is 'a' in the xclbin but 'b' in the descriptor",
      "argument 1 is 'b' in the xclbin but 'a' in the descriptor",
      "argument 2 is 'out' in the xclbin but 'result' in the descriptor",
      "scalar 'n' is 4 bytes (int) in the xclbin but int64 in the descriptor",
    ]);
    expect(error?.message).toContain('The kernel\'s signature is vadd(float* a, float* b, float* out, int n).');
    const short = { ...d, args: [args[0], { ...args[1], name: 'b', direction: 'out' }, { name: 'out', scalar: 1 }] };
    expect(() => checkDescriptor(parseDescriptor(short, '/m/vadd.xrt.json'), x)).toThrow(expect.objectContaining({
      details: expect.objectContaining({ problems: ['the xclbin declares 4 arguments, the descriptor lists 3', "argument 2 'out' is a buffer (float*) in the xclbin but a scalar in the descriptor"] }) as unknown,
    }));
  });

  it('checks only the kernel when the xclbin has no EMBEDDED_METADATA', async () => {
    const x = await parseXclbin(xclbinPath('bare', vaddXclbin({ metadata: false })));
    const d = parseDescriptor({ ...vaddDescriptor(), args: [{ name: 'anything', direction: 'out', dtype: 'int8', shape: [3] }] }, '/m/vadd.xrt.json');
    expect(() => checkDescriptor(d, x)).not.toThrow();
  });
});
