import { promises as fs, type Stats } from 'node:fs';
import path from 'node:path';
import { ModelError } from '../../errors.js';
import type { TensorSpec } from '../../hal/types.js';
import { bytesPerElement, DTYPES, isDType, shapeSize, type DType } from '../../tensor/tensor.js';
import { computeUnits, type Xclbin, type XclbinKernelArg } from './axlf.js';

/**
 * The kernel descriptor: the small JSON file that turns an FPGA kernel into a "model". An xclbin
 * holds the hardware and names the kernel's arguments, but not which buffers are inputs or
 * outputs, their element types and shapes, or the values of scalar arguments; the descriptor says
 * so. Arguments are listed in kernel argument order (index 0 first), exactly as the kernel's C
 * signature declares them:
 *
 * ```json
 * { "xclbin": "vadd.xclbin", "kernel": "vadd",
 *   "args": [ { "name": "a",   "direction": "in",  "dtype": "float32", "shape": [1024] },
 *             { "name": "b",   "direction": "in",  "dtype": "float32", "shape": [1024] },
 *             { "name": "out", "direction": "out", "dtype": "float32", "shape": [1024] },
 *             { "name": "n",   "scalar": 1024, "dtype": "int32" } ],
 *   "timeoutMs": 10000 }
 * ```
 *
 * A buffer argument has `direction` (`in`, `out` or `inout`), `dtype` and a fixed `shape`; its
 * name is the tensor name callers feed and read. A scalar has a constant `scalar` value and a
 * `dtype` (default `int32`). An AXI4-Stream argument wired kernel-to-kernel is `{ "name", "stream": true }`
 * and is left alone by the host. `kernel` may select compute units the XRT way (`vadd:{vadd_1}`).
 * `xclbin` is relative to the descriptor's folder.
 */
export interface XrtDescriptor {
  /** The descriptor file itself. */
  readonly file: string;
  /** Absolute path of the xclbin. */
  readonly xclbin: string;
  readonly kernel: string;
  readonly args: readonly XrtArg[];
  readonly timeoutMs: number;
}

export type XrtArg =
  | { readonly index: number; readonly name: string; readonly kind: 'buffer'; readonly direction: 'in' | 'out' | 'inout'; readonly dtype: DType; readonly shape: readonly number[]; readonly bytes: number }
  | { readonly index: number; readonly name: string; readonly kind: 'scalar'; readonly dtype: DType; readonly value: number | bigint }
  | { readonly index: number; readonly name: string; readonly kind: 'stream' };

/** The descriptor's name beside `vadd.xclbin`, and the one a model folder holds. */
export const DESCRIPTOR_SUFFIX = '.xrt.json';
export const FOLDER_DESCRIPTOR = 'model.xrt.json';
export const DEFAULT_TIMEOUT_MS = 10_000;

export const DESCRIPTOR_EXAMPLE =
  '{ "xclbin": "vadd.xclbin", "kernel": "vadd", "args": [ {"name":"a","direction":"in","dtype":"float32","shape":[1024]}, ' +
  '{"name":"b","direction":"in","dtype":"float32","shape":[1024]}, {"name":"out","direction":"out","dtype":"float32","shape":[1024]}, ' +
  '{"name":"n","scalar":1024,"dtype":"int32"} ] }';

/**
 * Finds the descriptor for a model path: a `*.xrt.json` file itself; a folder's `model.xrt.json`;
 * for `vadd.xclbin`, `vadd.xrt.json` beside it, else a `model.xrt.json` beside it whose `xclbin`
 * names this file. Throws ModelError EAI_XRT_NO_DESCRIPTOR, showing the fields to write, when
 * there is none.
 */
export async function findDescriptor(modelPath: string): Promise<string> {
  const resolved = path.resolve(modelPath);
  if (resolved.endsWith(DESCRIPTOR_SUFFIX)) return resolved;
  if ((await statOf(resolved))?.isDirectory()) {
    const inFolder = path.join(resolved, FOLDER_DESCRIPTOR);
    if (await statOf(inFolder)) return inFolder;
    throw noDescriptor(modelPath, inFolder);
  }
  const beside = path.join(path.dirname(resolved), `${path.basename(resolved, path.extname(resolved))}${DESCRIPTOR_SUFFIX}`);
  if (await statOf(beside)) return beside;
  const shared = path.join(path.dirname(resolved), FOLDER_DESCRIPTOR);
  if (await statOf(shared)) {
    const named = await fs.readFile(shared, 'utf8').then((t) => (JSON.parse(t) as { xclbin?: unknown }).xclbin, () => undefined);
    if (typeof named === 'string' && path.resolve(path.dirname(shared), named) === resolved) return shared;
  }
  throw noDescriptor(modelPath, beside);
}

/**
 * Reads and validates a descriptor file, reporting every problem at once (unknown keys included,
 * so a typo such as `"dtpye"` is caught). Throws ModelError EAI_MODEL_NOT_FOUND or
 * EAI_XRT_DESCRIPTOR.
 */
export async function readDescriptor(file: string): Promise<XrtDescriptor> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (cause) {
    throw new ModelError('EAI_MODEL_NOT_FOUND', `Kernel descriptor '${file}' does not exist.`, { cause, details: { path: file } });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (cause) {
    throw invalid(file, [`not valid JSON (${cause instanceof Error ? cause.message : String(cause)})`], cause);
  }
  return parseDescriptor(json, file);
}

/** Validates descriptor JSON already parsed; `file` locates the xclbin and names the file in errors. */
export function parseDescriptor(json: unknown, file: string): XrtDescriptor {
  const problems: string[] = [];
  if (!isObject(json)) throw invalid(file, ['the file must hold a JSON object']);
  unknownKeys(json, ['xclbin', 'kernel', 'args', 'timeoutMs'], '', problems);
  const xclbin = json['xclbin'];
  const kernel = json['kernel'];
  const timeout = json['timeoutMs'];
  if (typeof xclbin !== 'string' || xclbin === '') problems.push('"xclbin" must be the xclbin file name, relative to the descriptor (e.g. "vadd.xclbin")');
  if (typeof kernel !== 'string' || kernel === '') problems.push('"kernel" must be the kernel name as v++ built it (e.g. "vadd")');
  if (timeout !== undefined && !(typeof timeout === 'number' && Number.isInteger(timeout) && timeout > 0)) problems.push('"timeoutMs" must be a positive integer of milliseconds');
  const args: XrtArg[] = [];
  if (!Array.isArray(json['args']) || json['args'].length === 0) problems.push('"args" must list every kernel argument in order');
  else json['args'].forEach((raw: unknown, index: number) => {
    const arg = parseArg(raw, index, problems);
    if (arg !== undefined) args.push(arg);
  });
  const seen = new Set<string>();
  for (const a of args) {
    if (seen.has(a.name)) problems.push(`args[${a.index}]: name '${a.name}' is used twice`);
    seen.add(a.name);
  }
  if (args.length > 0 && !args.some((a) => a.kind === 'buffer' && a.direction !== 'in')) problems.push('no argument has direction "out" or "inout", so the kernel would return nothing');
  if (problems.length > 0) throw invalid(file, problems);
  return { file, xclbin: path.resolve(path.dirname(file), xclbin as string), kernel: kernel as string, args, timeoutMs: (timeout as number | undefined) ?? DEFAULT_TIMEOUT_MS };
}

/**
 * Checks a descriptor against the xclbin it names: the kernel (and any compute units it selects)
 * must be in IP_LAYOUT, and, where EMBEDDED_METADATA lists the kernel's arguments, the descriptor
 * must list the same arguments, in the same order, with matching kinds and scalar sizes. Throws
 * ModelError EAI_XRT_KERNEL_NOT_FOUND or EAI_XRT_ARG_MISMATCH; both messages show what the
 * xclbin holds.
 */
export function checkDescriptor(descriptor: XrtDescriptor, xclbin: Xclbin): void {
  const units = computeUnits(xclbin);
  const [base = descriptor.kernel, selector] = descriptor.kernel.split(':');
  const instances = units.get(base);
  const available = [...units].map(([k, cus]) => `${k} (${cus.join(', ') || 'no instances'})`).join('; ') || 'none';
  if (instances === undefined) {
    throw new ModelError('EAI_XRT_KERNEL_NOT_FOUND', `Kernel '${base}' named in ${descriptor.file} is not in ${xclbin.path}. Its kernels (compute units) are: ${available}.`, { details: { kernel: base, available: [...units.keys()] } });
  }
  const wanted = selector?.replace(/^\{|\}$/gu, '').split(',').map((s) => s.trim()).filter((s) => s !== '') ?? [];
  const missing = wanted.filter((w) => !instances.includes(w));
  if (missing.length > 0) {
    throw new ModelError('EAI_XRT_KERNEL_NOT_FOUND', `Compute unit(s) ${missing.join(', ')} of kernel '${base}' are not in ${xclbin.path}. It has: ${instances.join(', ')}.`, { details: { kernel: base, missing, available: instances } });
  }
  const declared = xclbin.kernels.find((k) => k.name === base)?.args;
  if (declared === undefined || declared.length === 0) return;
  const problems: string[] = [];
  if (declared.length !== descriptor.args.length) problems.push(`the xclbin declares ${declared.length} arguments, the descriptor lists ${descriptor.args.length}`);
  declared.forEach((x, i) => {
    const d = descriptor.args[i];
    if (d === undefined) return;
    if (d.name !== x.name) problems.push(`argument ${i} is '${x.name}' in the xclbin but '${d.name}' in the descriptor`);
    if (d.kind !== x.kind) problems.push(`argument ${i} '${x.name}' is a ${x.kind} (${x.type}) in the xclbin but a ${d.kind} in the descriptor`);
    else if (d.kind === 'scalar' && x.size > 0 && bytesPerElement(d.dtype) !== x.size) problems.push(`scalar '${x.name}' is ${x.size} bytes (${x.type}) in the xclbin but ${d.dtype} in the descriptor`);
  });
  if (problems.length > 0) {
    throw new ModelError('EAI_XRT_ARG_MISMATCH', `${descriptor.file} does not match kernel '${base}' in ${xclbin.path}: ${problems.join('; ')}. The kernel's signature is ${base}(${declared.map(signature).join(', ')}).`, { details: { kernel: base, problems, declared: declared.map((a) => ({ name: a.name, kind: a.kind, type: a.type })) } });
  }
}

/** Tensor specs of the buffers the caller feeds (`in`, `inout`) and reads back (`out`, `inout`). */
export function tensorSpecs(descriptor: XrtDescriptor): { inputs: TensorSpec[]; outputs: TensorSpec[] } {
  const buffers = descriptor.args.filter((a): a is Extract<XrtArg, { kind: 'buffer' }> => a.kind === 'buffer');
  const spec = (a: Extract<XrtArg, { kind: 'buffer' }>): TensorSpec => ({ name: a.name, dtype: a.dtype, shape: a.shape });
  return { inputs: buffers.filter((a) => a.direction !== 'out').map(spec), outputs: buffers.filter((a) => a.direction !== 'in').map(spec) };
}

function parseArg(raw: unknown, index: number, problems: string[]): XrtArg | undefined {
  const where = `args[${index}]`;
  if (!isObject(raw)) {
    problems.push(`${where} must be an object`);
    return undefined;
  }
  const name = raw['name'];
  if (typeof name !== 'string' || !/^[A-Za-z_][\w.-]*$/u.test(name)) {
    problems.push(`${where}.name must be the argument's name (letters, digits, _ . -)`);
    return undefined;
  }
  const at = `${where} '${name}'`;
  if (raw['stream'] !== undefined) {
    unknownKeys(raw, ['name', 'stream'], at, problems);
    if (raw['stream'] !== true) problems.push(`${at}: "stream" can only be true`);
    return { index, name, kind: 'stream' };
  }
  const dtype = raw['dtype'] ?? (raw['scalar'] !== undefined ? 'int32' : undefined);
  if (typeof dtype !== 'string' || !isDType(dtype) || dtype === 'float16' || dtype === 'bool') {
    problems.push(`${at}: "dtype" must be one of ${DTYPES.filter((d) => d !== 'float16' && d !== 'bool').join(', ')}`);
    return undefined;
  }
  if (raw['scalar'] !== undefined) {
    unknownKeys(raw, ['name', 'scalar', 'dtype'], at, problems);
    const value = scalarValue(raw['scalar'], dtype);
    if (value === undefined) {
      problems.push(`${at}: "scalar" must be a number that fits ${dtype}`);
      return undefined;
    }
    return { index, name, kind: 'scalar', dtype, value };
  }
  unknownKeys(raw, ['name', 'direction', 'dtype', 'shape'], at, problems);
  const direction = raw['direction'];
  const shape = raw['shape'];
  if (direction !== 'in' && direction !== 'out' && direction !== 'inout') problems.push(`${at}: "direction" must be "in", "out" or "inout" (or give "scalar": <value> for a scalar argument)`);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && (d as number) > 0)) problems.push(`${at}: "shape" must be a list of positive integers (XRT buffers have a fixed size)`);
  if ((direction !== 'in' && direction !== 'out' && direction !== 'inout') || !Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && (d as number) > 0)) return undefined;
  const dims = shape as number[];
  return { index, name, kind: 'buffer', direction, dtype, shape: dims, bytes: shapeSize(dims) * bytesPerElement(dtype) };
}

/** Scalars are passed by value; 64-bit ones may be given as a decimal string to keep precision. */
function scalarValue(raw: unknown, dtype: DType): number | bigint | undefined {
  if (dtype === 'int64' || dtype === 'uint64') {
    if (!(typeof raw === 'number' && Number.isInteger(raw)) && !(typeof raw === 'string' && /^-?\d+$/u.test(raw))) return undefined;
    const v = BigInt(raw);
    const ok = dtype === 'int64' ? v >= -(2n ** 63n) && v < 2n ** 63n : v >= 0n && v < 2n ** 64n;
    return ok ? v : undefined;
  }
  if (typeof raw !== 'number' || !Number.isFinite(raw)) return undefined;
  if (dtype === 'float32' || dtype === 'float64') return raw;
  const bits = bytesPerElement(dtype) * 8;
  const signed = dtype.startsWith('int');
  const [lo, hi] = signed ? [-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] : [0, 2 ** bits - 1];
  return Number.isInteger(raw) && raw >= lo && raw <= hi ? raw : undefined;
}

function signature(a: XclbinKernelArg): string {
  return `${a.type || a.kind} ${a.name}`;
}

function unknownKeys(obj: Record<string, unknown>, allowed: readonly string[], where: string, problems: string[]): void {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) problems.push(`${where ? `${where}: ` : ''}unknown key "${key}" (allowed: ${allowed.join(', ')})`);
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

async function statOf(p: string): Promise<Stats | undefined> {
  return fs.stat(p).catch(() => undefined);
}

function invalid(file: string, problems: readonly string[], cause?: unknown): ModelError {
  return new ModelError('EAI_XRT_DESCRIPTOR', `Kernel descriptor ${file} is invalid: ${problems.join('; ')}. Example: ${DESCRIPTOR_EXAMPLE}`, { ...(cause === undefined ? {} : { cause }), details: { path: file, problems } });
}

function noDescriptor(modelPath: string, expected: string): ModelError {
  return new ModelError(
    'EAI_XRT_NO_DESCRIPTOR',
    `${modelPath} has no kernel descriptor. An xclbin holds hardware, not the tensors a kernel takes: write ${expected} saying which kernel to run ` +
      'and every argument in kernel order — buffers with "direction" (in/out/inout), "dtype" and "shape", scalars with a constant "scalar" value — ' +
      `for example ${DESCRIPTOR_EXAMPLE}`,
    { details: { path: modelPath, expected } },
  );
}
