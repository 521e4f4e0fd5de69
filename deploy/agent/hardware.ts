import type { SysRoot } from '../../drivers/hal/sysroot.js';
import type { DeviceInfo } from '../../drivers/hal/types.js';
import type { aios } from '../proto/gen/aios.js';

/**
 * What a device tells the controller about its hardware in its `DeviceBirth`: the machine
 * (architecture, board or product name, cores, RAM) and one `Accelerator` per device the HAL
 * found, the CPU (`cpu:0`) included, unavailable ones too (their `properties` say why).
 *
 * Sources, all read through `sys` so a fixture root stands in for a real machine:
 * - `arch`: Node's `process.arch` on the live root (what binaries this runtime can load); on a
 *   captured root the CPU probe's `details.arch` in Node's words (`aarch64` → `arm64`), else "";
 * - `model`: `/proc/device-tree/model` (ARM boards: "Raspberry Pi 5 Model B Rev 1.0"), else DMI
 *   (`/sys/class/dmi/id`: vendor + product, or vendor + board where the product is a firmware
 *   placeholder such as "To Be Filled By O.E.M."), else a probe's `details.board`, else "";
 * - `cpuCores`: logical CPUs, the CPU probe's `details.logicalCores`, else the `processor`
 *   entries of `/proc/cpuinfo`, else 0;
 * - `memoryBytes`: `/proc/meminfo` MemTotal, else 0.
 *
 * Never throws: a missing source leaves its field empty.
 */
export async function describeHardware(sys: SysRoot, devices: readonly DeviceInfo[]): Promise<aios.fleet.v1.IHardware> {
  const meminfo = parseMeminfo((await sys.readText('/proc/meminfo')) ?? '');
  return {
    arch: archOf(sys, devices),
    model: await machineModel(sys, devices),
    cpuCores: await cpuCores(sys, devices),
    memoryBytes: meminfo?.totalBytes ?? 0,
    accelerators: devices.map(describeAccelerator),
  };
}

/** One HAL device as the fleet protocol describes it. */
export function describeAccelerator(device: DeviceInfo): aios.fleet.v1.IAccelerator {
  const properties: Record<string, string> = {};
  for (const [key, value] of Object.entries(device.details ?? {})) {
    const text = propertyText(value);
    if (text !== undefined) properties[key] = text;
  }
  // The protocol's Accelerator has no status field; the controller still needs to see a device
  // that is there but unusable (library missing) and what to do about it.
  properties['status'] = device.status.state;
  if (device.status.state === 'unavailable') {
    properties['reason'] = device.status.reason;
    properties['fix'] = device.status.fix;
  }
  if (device.formats.length > 0) properties['formats'] = device.formats.join(',');
  return {
    id: device.id,
    kind: device.kind,
    name: device.name,
    ...(device.memoryBytes !== undefined && Number.isSafeInteger(device.memoryBytes) && device.memoryBytes >= 0 ? { memoryBytes: device.memoryBytes } : {}),
    properties,
  };
}

/** MemTotal and MemAvailable of `/proc/meminfo`, in bytes. */
export interface Meminfo {
  readonly totalBytes: number;
  readonly availableBytes: number;
}

/**
 * `/proc/meminfo` totals, undefined without a MemTotal line. Available is the kernel's own
 * MemAvailable estimate (Linux 3.14+); older kernels lack it, and there free + buffers + page
 * cache is the usual stand-in (it overstates a little: not all cache can be dropped).
 */
export function parseMeminfo(text: string): Meminfo | undefined {
  const kb = (field: string): number | undefined => {
    const m = new RegExp(`^${field}:\\s+(\\d+)\\s*kB`, 'mu').exec(text);
    return m?.[1] === undefined ? undefined : Number(m[1]) * 1024;
  };
  const total = kb('MemTotal');
  if (total === undefined) return undefined;
  const available = kb('MemAvailable') ?? (kb('MemFree') ?? 0) + (kb('Buffers') ?? 0) + (kb('Cached') ?? 0);
  return { totalBytes: total, availableBytes: Math.min(total, available) };
}

/** Kernel machine names (as the CPU probe reports them) to Node's `process.arch` names. */
const NODE_ARCH: Readonly<Record<string, string>> = { x86_64: 'x64', x86: 'ia32', aarch64: 'arm64', armv7l: 'arm' };

function archOf(sys: SysRoot, devices: readonly DeviceInfo[]): string {
  if (sys.isLive) return process.arch;
  for (const device of devices) {
    const arch = device.details?.['arch'];
    if (typeof arch === 'string' && NODE_ARCH[arch] !== undefined) return NODE_ARCH[arch];
  }
  return '';
}

async function machineModel(sys: SysRoot, devices: readonly DeviceInfo[]): Promise<string> {
  // Device-tree strings are NUL-terminated and sometimes padded with more NULs.
  const tree = (await sys.readAttr('/proc/device-tree/model'))?.replace(/\0/gu, '').trim();
  if (tree) return tree;
  const dmi = await dmiModel(sys);
  if (dmi !== undefined) return dmi;
  for (const device of devices) {
    const board = device.details?.['board'];
    if (typeof board === 'string' && board.trim() !== '') return board.trim();
  }
  return '';
}

/**
 * Vendor and product from SMBIOS. Firmware vendors leave placeholder strings in fields they do
 * not fill; those fall through to the baseboard's vendor and name. Lenovo puts the machine type
 * ("20XW0055US") in product_name and the name people know ("ThinkPad X1 Carbon Gen 9") in
 * product_version.
 */
async function dmiModel(sys: SysRoot): Promise<string | undefined> {
  const read = async (field: string): Promise<string | undefined> => {
    const value = (await sys.readAttr(`/sys/class/dmi/id/${field}`))?.trim();
    return value === undefined || isPlaceholder(value) ? undefined : value;
  };
  const vendor = await read('sys_vendor');
  let product = await read('product_name');
  if (vendor?.toUpperCase() === 'LENOVO') product = (await read('product_version')) ?? product;
  if (product !== undefined) return withVendor(vendor, product);
  const board = await read('board_name');
  if (board !== undefined) return withVendor(await read('board_vendor'), board);
  return undefined;
}

function withVendor(vendor: string | undefined, name: string): string {
  if (vendor === undefined || name.toLowerCase().startsWith(vendor.toLowerCase())) return name;
  return `${vendor} ${name}`;
}

/** The strings firmware leaves in SMBIOS fields nobody filled in, lower-cased. */
const DMI_PLACEHOLDERS = new Set([
  '', 'to be filled by o.e.m.', 'to be filled by oem', 'system product name', 'system manufacturer', 'system version',
  'default string', 'not applicable', 'not specified', 'none', 'unknown', 'o.e.m.', 'oem', 'type1productconfigid',
]);

function isPlaceholder(value: string): boolean {
  return DMI_PLACEHOLDERS.has(value.toLowerCase());
}

async function cpuCores(sys: SysRoot, devices: readonly DeviceInfo[]): Promise<number> {
  for (const device of devices) {
    const cores = device.details?.['logicalCores'];
    if (typeof cores === 'number' && Number.isInteger(cores) && cores > 0) return cores;
  }
  const cpuinfo = (await sys.readText('/proc/cpuinfo')) ?? '';
  return cpuinfo.match(/^processor\s*:/gmu)?.length ?? 0;
}

/** A probe detail as a property string: scalars as text, lists comma-joined, anything else as JSON. */
function propertyText(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (Array.isArray(value) && value.every((v) => typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean')) return value.join(',');
  try {
    return JSON.stringify(value);
  } catch {
    return undefined; // a cycle or a BigInt deep inside: not worth failing a birth message for
  }
}
