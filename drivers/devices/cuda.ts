import { listPci } from '../hal/buses.js';
import type { PciFunction } from '../hal/buses.js';
import type { CommandOutput, SysRoot } from '../hal/sysroot.js';
import type { DeviceInfo, DeviceProbe, DeviceStatus, DeviceTelemetry, ModelFormat } from '../hal/types.js';

/**
 * Discrete NVIDIA GPUs on the PCI bus, one `DeviceInfo` per GPU, id `cuda:<pci address>`
 * (`cuda:0000:01:00.0`), in PCI address order.
 *
 * What it reads, all through the `SysRoot` and none of it written:
 * - `/sys/bus/pci/devices/*` for vendor 0x10de functions of class 0x0300xx (VGA, GeForce and
 *   workstation cards) or 0x0302xx (3D controller, the datacenter parts); the HDMI audio
 *   function beside each GPU (class 0x0403) and NVIDIA PCIe bridges are not GPUs;
 * - `/proc/driver/nvidia/version` for the loaded kernel module's version;
 * - `/proc/driver/nvidia/gpus/<address>/information` (model, UUID, VBIOS, device minor,
 *   whether the driver excludes the GPU), present only while the nvidia module serves the GPU;
 * - `nvidia-smi --query-gpu=...` with the exact arguments in {@link NVIDIA_SMI_QUERY}, for
 *   name, memory, driver version, compute capability, UUID and index;
 * - whether `libcuda.so.1` is where the dynamic loader would look (`SysRoot.findLibrary`).
 *
 * A GPU is `ready` when the nvidia kernel driver serves it and `libcuda.so.1` is found;
 * otherwise it is `unavailable` with the reason and the package that fixes it. Jetson boards
 * produce nothing here: their GPU is integrated, not on PCI, and `jetsonProbe` reports it.
 *
 * Telemetry comes from one `nvidia-smi` query ({@link NVIDIA_SMI_TELEMETRY_QUERY}), because the
 * NVIDIA driver registers no hwmon sensors: without nvidia-smi there is nothing to read, and the
 * reading says so in `extra.note`.
 */
export const cudaProbe: DeviceProbe = {
  kind: 'cuda',
  probe: probeCuda,
  telemetry: readCudaTelemetry,
};

/**
 * The nvidia-smi arguments the probe passes, exactly, so an output recorded on a real machine
 * (a fixture's `.commands.json` key is `nvidia-smi ` + these joined by spaces) replays.
 */
export const NVIDIA_SMI_QUERY: readonly string[] = [
  '--query-gpu=index,pci.bus_id,name,memory.total,driver_version,compute_cap,uuid',
  '--format=csv,noheader,nounits',
];

/**
 * The nvidia-smi arguments telemetry passes, exactly, so a recorded output replays (the
 * `.commands.json` key is `nvidia-smi ` + these joined by spaces). One call answers for every GPU.
 */
export const NVIDIA_SMI_TELEMETRY_QUERY: readonly string[] = [
  '--query-gpu=pci.bus_id,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw,clocks.sm,clocks.mem,fan.speed,pstate',
  '--format=csv,noheader,nounits',
];

/** What a CUDA device can run, through onnxruntime's CUDA/TensorRT providers or tfjs-node-gpu. */
export const CUDA_FORMATS: readonly ModelFormat[] = ['onnx', 'tfjs-graph', 'tfjs-layers'];

/** One row of the nvidia-smi query, its PCI bus id already in sysfs form (`0000:01:00.0`). */
export interface NvidiaSmiGpu {
  readonly index?: number;
  readonly pciAddress: string;
  readonly name?: string;
  readonly memoryMiB?: number;
  readonly driverVersion?: string;
  readonly computeCapability?: string;
  readonly uuid?: string;
}

/**
 * Parses `nvidia-smi --query-gpu=<NVIDIA_SMI_QUERY fields> --format=csv,noheader,nounits`.
 * Cells nvidia-smi cannot fill (`[N/A]`, `[Not Supported]`) become absent fields; lines that do
 * not carry a PCI bus id are skipped rather than guessed at.
 */
export function parseNvidiaSmi(stdout: string): NvidiaSmiGpu[] {
  const rows: NvidiaSmiGpu[] = [];
  for (const line of stdout.split('\n')) {
    const cells = line.split(',').map((c) => c.trim()).map((c) => (c === '' || c.startsWith('[') ? undefined : c));
    const pciAddress = normalisePciAddress(cells[1]);
    if (cells.length < 7 || pciAddress === undefined) continue;
    const index = toNumber(cells[0]);
    const memoryMiB = toNumber(cells[3]);
    rows.push({
      pciAddress,
      ...(index === undefined ? {} : { index }),
      ...(cells[2] === undefined ? {} : { name: cells[2] }),
      ...(memoryMiB === undefined ? {} : { memoryMiB }),
      ...(cells[4] === undefined ? {} : { driverVersion: cells[4] }),
      ...(cells[5] === undefined ? {} : { computeCapability: cells[5] }),
      ...(cells[6] === undefined ? {} : { uuid: cells[6] }),
    });
  }
  return rows;
}

/** One row of the telemetry query; fields nvidia-smi cannot fill are absent. */
export interface NvidiaSmiReading {
  readonly pciAddress: string;
  readonly utilizationPercent?: number;
  readonly memoryUsedMiB?: number;
  readonly memoryTotalMiB?: number;
  readonly temperatureC?: number;
  readonly powerW?: number;
  readonly smClockMHz?: number;
  readonly memClockMHz?: number;
  /** Fan duty in percent; `[N/A]` on passively cooled datacenter GPUs, so absent there. */
  readonly fanPercent?: number;
  /** Performance state, `P0` (maximum) to `P12` (idle). */
  readonly pstate?: string;
}

/**
 * Parses `nvidia-smi` with {@link NVIDIA_SMI_TELEMETRY_QUERY}: one line per GPU, ten cells in the
 * query's order. `[N/A]`, `[Not Supported]` and other bracketed or non-numeric cells become
 * absent fields; lines without a PCI bus id are skipped.
 */
export function parseNvidiaSmiTelemetry(stdout: string): NvidiaSmiReading[] {
  const rows: NvidiaSmiReading[] = [];
  for (const line of stdout.split('\n')) {
    const cells = line.split(',').map((c) => c.trim()).map((c) => (c === '' || c.startsWith('[') ? undefined : c));
    const pciAddress = normalisePciAddress(cells[0]);
    if (cells.length < 10 || pciAddress === undefined) continue;
    const n = (i: number): number | undefined => toNumber(cells[i]);
    rows.push({
      pciAddress,
      ...definedOnly({
        utilizationPercent: n(1), memoryUsedMiB: n(2), memoryTotalMiB: n(3), temperatureC: n(4), powerW: n(5),
        smClockMHz: n(6), memClockMHz: n(7), fanPercent: n(8), pstate: cells[9],
      }),
    });
  }
  return rows;
}

/**
 * `00000000:3B:00.0` (nvidia-smi: 8-digit domain, upper-case hex) -> `0000:3b:00.0` (sysfs).
 * Undefined for anything that is not a PCI address.
 */
export function normalisePciAddress(busId: string | undefined): string | undefined {
  const m = /^([0-9a-f]{1,8}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/iu.exec(busId?.trim() ?? '');
  if (m === null) return undefined;
  const [, domain = '', bus = '', slot = '', fn = ''] = m;
  return `${domain.slice(-4).padStart(4, '0')}:${bus}:${slot}.${fn}`.toLowerCase();
}

/** Key/value lines of a `/proc/driver/nvidia/gpus/<address>/information` file (`Model: \t\t NVIDIA ...`). */
export function parseGpuInformation(text: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    fields.set(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
  }
  return fields;
}

/**
 * The module version from `/proc/driver/nvidia/version`: both the proprietary
 * (`NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 ...`) and the open
 * (`NVIDIA UNIX Open Kernel Module for x86_64  555.58  Release Build ...`) spellings.
 */
export function parseDriverVersion(text: string): string | undefined {
  return /Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)/u.exec(text)?.[1];
}

async function probeCuda(sys: SysRoot): Promise<DeviceInfo[]> {
  const gpus = (await listPci(sys, '10de')).filter(isGpuFunction);
  if (gpus.length === 0) return [];

  const moduleVersion = parseDriverVersion((await sys.readText('/proc/driver/nvidia/version')) ?? '');
  const libcuda = await sys.findLibrary('libcuda.so.1');
  const smi = await querySmi(sys, gpus);

  const devices: DeviceInfo[] = [];
  let ordinal = 0;
  for (const gpu of gpus) {
    const infoText = await sys.readText(`/proc/driver/nvidia/gpus/${gpu.address}/information`);
    const info = parseGpuInformation(infoText ?? '');
    const row = smi.get(gpu.address);
    // The procfs entry exists exactly while the nvidia module has claimed the GPU, which also
    // covers containers where /sys shows no driver link.
    const bound = infoText !== undefined || gpu.driver === 'nvidia';
    const driverVersion = row?.driverVersion ?? moduleVersion;
    const index = row?.index ?? (bound ? ordinal : undefined);
    if (bound) ordinal += 1;
    const memoryBytes = row?.memoryMiB === undefined ? undefined : row.memoryMiB * 1024 * 1024;
    const deviceMinor = toNumber(info.get('Device Minor'));
    const details: Record<string, unknown> = {
      pciAddress: gpu.address,
      pciId: `${gpu.vendor}:${gpu.device}`,
      kernelDriver: gpu.driver ?? (bound ? 'nvidia' : null),
      ...(index === undefined ? {} : { index }),
      ...(driverVersion === undefined ? {} : { driverVersion }),
      ...(row?.computeCapability === undefined ? {} : { computeCapability: row.computeCapability }),
      ...optional('uuid', row?.uuid ?? info.get('GPU UUID')),
      // An uninitialised GPU reports its VBIOS as ??.??.??.??.??; better absent than wrong.
      ...optional('vbios', info.get('Video BIOS')?.includes('?') === true ? undefined : info.get('Video BIOS')),
      ...(deviceMinor === undefined ? {} : { deviceMinor }),
      ...(libcuda === undefined ? {} : { cudaLibrary: libcuda }),
    };
    devices.push({
      id: `cuda:${gpu.address}`,
      kind: 'cuda',
      name: row?.name ?? info.get('Model') ?? `NVIDIA GPU [${gpu.vendor}:${gpu.device}]`,
      ...(memoryBytes === undefined ? {} : { memoryBytes }),
      formats: CUDA_FORMATS,
      status: statusOf(gpu, bound, info, libcuda, driverVersion),
      details,
    });
  }
  return devices;
}

/** VGA (0x0300xx) or 3D controller (0x0302xx); NVIDIA's audio, USB-C and bridge functions are not GPUs. */
function isGpuFunction(fn: PciFunction): boolean {
  return fn.classCode.startsWith('0300') || fn.classCode.startsWith('0302');
}

async function querySmi(sys: SysRoot, gpus: readonly PciFunction[]): Promise<Map<string, NvidiaSmiGpu>> {
  // Without the nvidia module nvidia-smi can only fail, slowly; do not run it for nothing.
  const anyBound = gpus.some((g) => g.driver === 'nvidia') || (await sys.exists('/proc/driver/nvidia/version'));
  if (!anyBound) return new Map();
  const out = await sys.command('nvidia-smi', NVIDIA_SMI_QUERY);
  // Exit code 0 only: on failure nvidia-smi prints a diagnostic (for example "couldn't
  // communicate with the NVIDIA driver"), not rows; the procfs information still stands.
  if (out === undefined || out.exitCode !== 0) return new Map();
  return new Map(parseNvidiaSmi(out.stdout).map((row) => [row.pciAddress, row]));
}

function statusOf(gpu: PciFunction, bound: boolean, info: ReadonlyMap<string, string>, libcuda: string | undefined, driverVersion: string | undefined): DeviceStatus {
  if (!bound) {
    if (gpu.driver === 'vfio-pci') {
      return {
        state: 'unavailable',
        reason: 'no NVIDIA driver bound (vfio-pci is bound: the GPU is reserved for passthrough to a virtual machine)',
        fix: 'remove the GPU from the vfio-pci ids (/etc/modprobe.d, kernel command line) and reboot so the nvidia driver can claim it, or use it from inside the VM',
      };
    }
    const holder = gpu.driver === undefined ? 'no driver is bound' : `${gpu.driver} is bound`;
    return {
      state: 'unavailable',
      reason: `no NVIDIA driver bound (${holder})`,
      fix: 'install the NVIDIA driver (Debian: apt install nvidia-driver; Ubuntu: ubuntu-drivers install), then reboot',
    };
  }
  if (info.get('GPU Excluded') === 'Yes') {
    return {
      state: 'unavailable',
      reason: 'the NVIDIA driver excludes this GPU (NVreg_ExcludedGpus)',
      fix: 'remove its UUID or PCI address from the NVreg_ExcludedGpus module option and reload the nvidia module',
    };
  }
  if (libcuda === undefined) {
    const major = driverVersion?.split('.')[0] ?? '<driver major version>';
    return {
      state: 'unavailable',
      reason: `libcuda.so.1 not found: the NVIDIA kernel driver${driverVersion === undefined ? '' : ` ${driverVersion}`} is loaded but its CUDA user-space library is not installed`,
      fix: `install the CUDA driver library matching the kernel module (Debian: apt install libcuda1; Ubuntu: apt install libnvidia-compute-${major})`,
    };
  }
  return { state: 'ready' };
}

/**
 * One GPU's reading from the shared nvidia-smi query: utilisation, memory used/total, temperature,
 * power draw, SM and memory clocks (`clocksMHz.sm`, `clocksMHz.mem`), and `extra.fanPercent`,
 * `extra.pstate`. When no nvidia driver serves the GPU, or nvidia-smi is missing, fails or does not
 * list it, a reading with only `extra.note` (why, and what to install) comes back, so a watcher
 * keeps running.
 */
async function readCudaTelemetry(sys: SysRoot, device: DeviceInfo): Promise<DeviceTelemetry> {
  const time = Date.now();
  const address = typeof device.details?.['pciAddress'] === 'string' ? device.details['pciAddress'] : device.id.replace(/^cuda:/u, '');
  const note = (text: string): DeviceTelemetry => ({ deviceId: device.id, time, extra: { note: text } });
  // Without the nvidia driver on the GPU, nvidia-smi can only fail, slowly; say why instead.
  const driver = device.details?.['kernelDriver'];
  if (driver === null || (typeof driver === 'string' && driver !== 'nvidia')) {
    const why = device.status.state === 'unavailable' ? device.status.reason : `the GPU is bound to ${String(driver)}, not nvidia`;
    return note(`no telemetry: ${why}`);
  }
  const out = await smiTelemetry(sys);
  if (out === undefined) {
    const major = typeof device.details?.['driverVersion'] === 'string' ? device.details['driverVersion'].split('.')[0] : '<driver major version>';
    return note(
      'telemetry needs nvidia-smi (NVML), which is not installed: the NVIDIA driver exposes no hwmon sensors, so there is ' +
        `nothing else to read. Install the driver utilities (Ubuntu: apt install nvidia-utils-${major}; Debian: apt install nvidia-smi)`,
    );
  }
  if (out.exitCode !== 0) {
    const reason = out.stdout.split('\n').find((l) => l.trim() !== '')?.trim() ?? 'no output';
    return note(`nvidia-smi failed (exit ${out.exitCode}): ${reason}`);
  }
  const row = parseNvidiaSmiTelemetry(out.stdout).find((r) => r.pciAddress === address);
  if (row === undefined) {
    const why = device.status.state === 'unavailable' ? ` (${device.status.reason})` : '';
    return note(`nvidia-smi does not list ${address}: NVML reports only GPUs the nvidia driver serves${why}`);
  }
  const MiB = 1024 * 1024;
  const clocks: Record<string, number> = {};
  if (row.smClockMHz !== undefined) clocks['sm'] = row.smClockMHz;
  if (row.memClockMHz !== undefined) clocks['mem'] = row.memClockMHz;
  const extra: Record<string, unknown> = {};
  if (row.fanPercent !== undefined) extra['fanPercent'] = row.fanPercent;
  if (row.pstate !== undefined) extra['pstate'] = row.pstate;
  return {
    deviceId: device.id,
    time,
    ...(row.utilizationPercent === undefined ? {} : { utilisation: row.utilizationPercent / 100 }),
    ...(row.memoryUsedMiB === undefined ? {} : { memoryUsedBytes: row.memoryUsedMiB * MiB }),
    ...(row.memoryTotalMiB === undefined ? {} : { memoryTotalBytes: row.memoryTotalMiB * MiB }),
    ...(row.temperatureC === undefined ? {} : { temperatureC: row.temperatureC }),
    ...(row.powerW === undefined ? {} : { powerW: row.powerW }),
    ...(Object.keys(clocks).length === 0 ? {} : { clocksMHz: clocks }),
    ...(Object.keys(extra).length === 0 ? {} : { extra }),
  };
}

/**
 * The telemetry query's output, shared by every GPU read in the same round: the HAL reads all
 * devices at once, and one nvidia-smi call answers for all GPUs (each call costs tens to hundreds
 * of milliseconds). A call started less than {@link SMI_REUSE_MS} ago is reused, per system root.
 */
function smiTelemetry(sys: SysRoot): Promise<CommandOutput | undefined> {
  const now = Date.now();
  const last = smiRuns.get(sys);
  if (last !== undefined && now - last.started < SMI_REUSE_MS) return last.output;
  const output = sys.command('nvidia-smi', NVIDIA_SMI_TELEMETRY_QUERY);
  smiRuns.set(sys, { started: now, output });
  return output;
}

const SMI_REUSE_MS = 500;
const smiRuns = new WeakMap<SysRoot, { started: number; output: Promise<CommandOutput | undefined> }>();

/** The object without its undefined fields, so optional properties are absent rather than undefined. */
function definedOnly<T extends object>(o: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as { [K in keyof T]?: Exclude<T[K], undefined> };
}

function optional(key: string, value: string | undefined): Record<string, string> {
  return value === undefined || value === '' ? {} : { [key]: value };
}

function toNumber(value: string | undefined): number | undefined {
  if (value === undefined || value.trim() === '') return undefined;
  const n = Number(value);
  return Number.isFinite(n) ? n : undefined;
}
