import type { SysRoot } from '../hal/sysroot.js';
import type { DeviceInfo, DeviceProbe, DeviceStatus, DeviceTelemetry, ModelFormat } from '../hal/types.js';
import { inputPowerW, readGpuClocks, readPowerRails, readPowerStatus } from './jetson-power.js';
import { lastTegrastatsLine, type TegrastatsReading } from './tegrastats.js';

/**
 * The integrated GPU of an NVIDIA Jetson module: at most one `DeviceInfo`, id `jetson:gpu0`.
 * Anything that is not a Jetson (a PC, a Raspberry Pi, a Kria board) gives `[]`.
 *
 * What it reads, all through the `SysRoot` and none of it written:
 * - `/proc/device-tree/compatible` (NUL-separated): the Tegra SoC (`nvidia,tegra234` Orin,
 *   `nvidia,tegra194` Xavier, `nvidia,tegra186` TX2, `nvidia,tegra210` Nano/TX1) decides whether
 *   this is a Jetson at all, and the module part number (`p3767-0000`) names the module;
 * - `/proc/device-tree/model` (NUL-terminated) for the board name;
 * - `/etc/nv_tegra_release` for the L4T release, mapped to JetPack by {@link jetpackForL4t};
 * - `/proc/meminfo` MemTotal: the GPU has no memory of its own, it shares system RAM;
 * - `/sys/bus/platform/devices/*nvdla*` to count the DLA cores the kernel brought up;
 * - the GPU's device node (`/dev/nvgpu/igpu0/ctrl` on JetPack 6, `/dev/nvhost-ctrl-gpu` before)
 *   and `libcuda.so.1` via the loader's folders (`/etc/ld.so.conf.d/nvidia-tegra.conf` names
 *   `/usr/lib/aarch64-linux-gnu/nvidia` on JetPack 6, `.../tegra` before).
 *
 * The GPU is `ready` when both the device node and `libcuda.so.1` are there; otherwise
 * `unavailable` with the reason and the fix. A board without `/etc/nv_tegra_release` (a custom
 * or container root) is still reported; its `l4t` and `jetpack` are then absent.
 *
 * Telemetry reads sysfs, no root and no child process (see {@link readJetsonTelemetry}); it runs
 * tegrastats only where sysfs shows none of the GPU, the thermal zones or the power monitors.
 */
export const jetsonProbe: DeviceProbe = {
  kind: 'jetson',
  probe: probeJetson,
  telemetry: readJetsonTelemetry,
};

/** What the Jetson GPU runs: ONNX through onnxruntime's CUDA/TensorRT providers, TF.js through tfjs-node-gpu. */
export const JETSON_FORMATS: readonly ModelFormat[] = ['onnx', 'tfjs-graph', 'tfjs-layers'];

/**
 * How telemetry runs tegrastats when it must: tegrastats has no one-shot flag and prints a line
 * per interval until killed, so `timeout` stops it after two seconds (one or two lines, exit 124).
 */
export const TEGRASTATS_ONE_SHOT = { file: 'timeout', args: ['2', 'tegrastats', '--interval', '1000'] } as const;

/**
 * One reading of the Jetson GPU and the module around it:
 * - `utilisation`: the GPU's own busy figure, `<devfreq node>/device/load` (per mille;
 *   `/sys/devices/17000000.gv11b/load` on Xavier, `.../bus@0/17000000.gpu/load` on Orin JP6);
 * - `memoryUsedBytes`/`memoryTotalBytes`: system RAM from /proc/meminfo (MemTotal - MemAvailable),
 *   because the GPU allocates from it;
 * - `temperatureC`: the GPU thermal zone (`gpu-thermal`, `GPU-therm`), else the junction (`tj-thermal`);
 * - `powerW`: module input power, the `VDD_IN` (JetPack 5/6) or `POM_5V_IN` (JetPack 4) rail of
 *   the INA3221 monitor, else the sum of the rails there are ({@link inputPowerW});
 * - `clocksMHz.gpu` from devfreq `cur_freq` (`emc` and per-core clocks only via tegrastats);
 * - `extra`: `source` (`sysfs`, `tegrastats` or `none`), `rails`, `thermalZones` (°C; `null` for a
 *   zone whose domain is powered off, such as `cv0-thermal` with the DLAs idle), `powerMode`,
 *   `jetsonClocks`, `gpuFreqRangeMHz`; from tegrastats also `engines`, `cpus`, `emcLoadPercent`;
 * - `counters.inputEnergyUJ`: input energy integrated over the readings (trapezoids), so a watcher
 *   that keeps passing `previous` back gets energy per interval.
 *
 * Sysfs first because it is cheap and needs no privileges: tegrastats costs a process and a full
 * sampling interval per reading, and without root it leaves out some fields. Rails come from the
 * INA3221 monitor through either of its drivers ({@link readPowerRails}).
 */
export async function readJetsonTelemetry(sys: SysRoot, device: DeviceInfo, previous?: DeviceTelemetry): Promise<DeviceTelemetry> {
  const time = Date.now();
  const [gpuClocks, thermalZones, rails, memory, power] = await Promise.all([
    readGpuClocks(sys), readThermalZones(sys), readPowerRails(sys), readMemory(sys), readPowerStatus(sys, { query: false }),
  ]);
  const load = await readGpuLoad(sys, gpuClocks?.node);
  const sysfsEmpty = load === undefined && Object.keys(rails).length === 0 && Object.keys(thermalZones).length === 0;
  const stats = sysfsEmpty ? await runTegrastats(sys) : undefined;

  const fromStats = stats === undefined ? undefined : tegrastatsTelemetry(stats);
  const powerW = fromStats?.powerW ?? inputPowerW(rails);
  const gpuRange = gpuClocks?.minHz !== undefined && gpuClocks.maxHz !== undefined ? { gpuFreqRangeMHz: { min: gpuClocks.minHz / 1e6, max: gpuClocks.maxHz / 1e6 } } : {};
  return {
    deviceId: device.id,
    time,
    ...defined({
      utilisation: load === undefined ? fromStats?.utilisation : Math.min(1, Math.max(0, load / 1000)),
      temperatureC: temperatureOf(thermalZones) ?? fromStats?.temperatureC,
      powerW,
      clocksMHz: gpuClocks?.curHz === undefined ? fromStats?.clocksMHz : { gpu: gpuClocks.curHz / 1e6 },
    }),
    ...(memory ?? fromStats?.memory ?? {}),
    extra: {
      source: stats !== undefined ? 'tegrastats' : sysfsEmpty ? 'none' : 'sysfs',
      rails: fromStats?.rails ?? rails,
      thermalZones: fromStats?.thermalZones ?? thermalZones,
      ...defined({ powerMode: power.current }),
      jetsonClocks: power.jetsonClocks,
      ...gpuRange,
      ...fromStats?.extra,
    },
    ...defined({ counters: energyCounter(previous, time, powerW) }),
  };
}

/**
 * L4T (Jetson Linux) release -> JetPack release, exact releases only, as NVIDIA's JetPack
 * archive (developer.nvidia.com/embedded/jetpack-archive) lists them.
 */
export const JETPACK_BY_L4T: Readonly<Record<string, string>> = {
  '36.4.4': '6.2.1',
  '36.4.3': '6.2',
  '36.4.0': '6.1',
  '36.3.0': '6.0',
  '36.2.0': '6.0 DP',
  '35.6.1': '5.1.5',
  '35.6.0': '5.1.4',
  '35.5.0': '5.1.3',
  '35.4.1': '5.1.2',
  '35.3.1': '5.1.1',
  '35.2.1': '5.1',
  '35.1.0': '5.0.2',
  '34.1.1': '5.0.1 DP',
  '34.1.0': '5.0 DP',
  '32.7.6': '4.6.6',
  '32.7.5': '4.6.5',
  '32.7.4': '4.6.4',
  '32.7.3': '4.6.3',
  '32.7.2': '4.6.2',
  '32.7.1': '4.6.1',
  '32.6.1': '4.6',
  '32.5.1': '4.5.1',
  '32.5.0': '4.5',
  '32.4.4': '4.4.1',
  '32.4.3': '4.4',
  '32.3.1': '4.3',
};

/**
 * The JetPack release for an L4T release (`36.3.0` -> `6.0`). A release the table does not
 * know yet gives only its major series (`36.4.7` -> `6.x`): naming a minor would be a guess
 * (L4T 35.1 was JetPack 5.0.2, 35.2.1 was 5.1). Undefined for an unknown major.
 */
export function jetpackForL4t(l4t: string): string | undefined {
  const exact = JETPACK_BY_L4T[l4t];
  if (exact !== undefined) return exact;
  const series: Readonly<Record<string, string>> = { '32': '4.x', '34': '5.x', '35': '5.x', '36': '6.x' };
  return series[l4t.split('.')[0] ?? ''];
}

/**
 * The L4T release from `/etc/nv_tegra_release`
 * (`# R36 (release), REVISION: 3.0, GCID: ..., BOARD: generic, ...` -> `36.3.0`).
 */
export function parseL4tRelease(text: string): string | undefined {
  const m = /^#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?/mu.exec(text);
  if (m === null) return undefined;
  return `${m[1] ?? ''}.${m[2] ?? ''}.${m[3] ?? '0'}`;
}

/** Facts about one Tegra SoC generation. */
interface TegraSoc {
  readonly family: string;
  readonly gpuArchitecture: string;
  /** CUDA compute capability of the integrated GPU. */
  readonly cudaArch: string;
  /** DLA cores on the full chip; module SKUs may fuse them off (Orin Nano). */
  readonly dlaCores: number;
  readonly dlaVersion?: string;
}

const SOCS: Readonly<Record<string, TegraSoc>> = {
  tegra234: { family: 'Orin', gpuArchitecture: 'Ampere', cudaArch: '8.7', dlaCores: 2, dlaVersion: 'NVDLA v2' },
  tegra194: { family: 'Xavier', gpuArchitecture: 'Volta', cudaArch: '7.2', dlaCores: 2, dlaVersion: 'NVDLA v1' },
  tegra186: { family: 'TX2', gpuArchitecture: 'Pascal', cudaArch: '6.2', dlaCores: 0 },
  tegra210: { family: 'Nano/TX1', gpuArchitecture: 'Maxwell', cudaArch: '5.3', dlaCores: 0 },
};

/** Module part numbers (the P-number after the `+` in the compatible string) -> module name and DLA count. */
const MODULES: Readonly<Record<string, { readonly name: string; readonly dlaCores?: number }>> = {
  'p3767-0000': { name: 'Jetson Orin NX 16GB' },
  'p3767-0001': { name: 'Jetson Orin NX 8GB' },
  'p3767-0003': { name: 'Jetson Orin Nano 8GB', dlaCores: 0 },
  'p3767-0004': { name: 'Jetson Orin Nano 4GB', dlaCores: 0 },
  'p3767-0005': { name: 'Jetson Orin Nano 8GB (developer kit module)', dlaCores: 0 },
  'p3701-0000': { name: 'Jetson AGX Orin (developer kit module)' },
  'p3701-0004': { name: 'Jetson AGX Orin 32GB' },
  'p3701-0005': { name: 'Jetson AGX Orin 64GB' },
  'p3668-0000': { name: 'Jetson Xavier NX 8GB (developer kit module)' },
  'p3668-0001': { name: 'Jetson Xavier NX 8GB' },
  'p3668-0003': { name: 'Jetson Xavier NX 16GB' },
  'p3448-0000': { name: 'Jetson Nano 4GB (developer kit module)' },
  'p3448-0002': { name: 'Jetson Nano 4GB' },
  'p3448-0003': { name: 'Jetson Nano 2GB' },
};

/** JetPack 6 moved the GPU's control node; either one means the nvgpu driver is up. */
const GPU_NODES = ['/dev/nvgpu/igpu0/ctrl', '/dev/nvhost-ctrl-gpu'] as const;

async function probeJetson(sys: SysRoot): Promise<DeviceInfo[]> {
  const compatible = ((await sys.readText('/proc/device-tree/compatible')) ?? '').split('\0').map((c) => c.trim()).filter((c) => c !== '');
  const socName = compatible.map((c) => /^nvidia,(tegra\d+)$/u.exec(c)?.[1]).find((s) => s !== undefined && s in SOCS);
  const soc = socName === undefined ? undefined : SOCS[socName];
  if (socName === undefined || soc === undefined) return [];

  const board = (await sys.readAttr('/proc/device-tree/model'))?.replace(/\0/gu, '') ?? '';
  const modulePart = findModulePart(compatible);
  const moduleInfo = modulePart === undefined ? undefined : MODULES[modulePart];
  const moduleName = moduleInfo?.name ?? (board.includes('Jetson') ? board.replace(/^NVIDIA\s+/u, '') : `Jetson ${soc.family}`);

  const release = await sys.readText('/etc/nv_tegra_release');
  const l4t = release === undefined ? undefined : parseL4tRelease(release);
  const jetpack = l4t === undefined ? undefined : jetpackForL4t(l4t);

  const memTotalKb = /^MemTotal:\s+(\d+)\s+kB/mu.exec((await sys.readText('/proc/meminfo')) ?? '')?.[1];
  const memoryBytes = memTotalKb === undefined ? undefined : Number(memTotalKb) * 1024;

  // The kernel creates an nvdla platform device per core it brings up; trust that count when it
  // is there, and the SoC/module table when sysfs is not visible (a container, a partial root).
  const dlaNodes = (await sys.list('/sys/bus/platform/devices')).filter((d) => /\.nvdla\d+$/u.test(d)).length;
  const dlaCores = dlaNodes > 0 ? dlaNodes : (moduleInfo?.dlaCores ?? soc.dlaCores);

  let gpuNode: string | undefined;
  for (const node of GPU_NODES) {
    if (await sys.exists(node)) {
      gpuNode = node;
      break;
    }
  }
  const libcuda = await sys.findLibrary('libcuda.so.1');

  return [{
    id: 'jetson:gpu0',
    kind: 'jetson',
    name: `NVIDIA ${moduleName}`,
    ...(memoryBytes === undefined ? {} : { memoryBytes }),
    formats: JETSON_FORMATS,
    status: statusOf(gpuNode, libcuda),
    details: {
      soc: socName,
      module: moduleName,
      ...(modulePart === undefined ? {} : { modulePart }),
      ...(board === '' ? {} : { board }),
      ...(l4t === undefined ? {} : { l4t }),
      ...(jetpack === undefined ? {} : { jetpack }),
      gpuArchitecture: soc.gpuArchitecture,
      cudaArch: soc.cudaArch,
      // The GPU allocates from system RAM; memoryBytes is shared with the CPU and the DLAs.
      sharedMemory: true,
      dlaCores,
      ...(dlaCores > 0 && soc.dlaVersion !== undefined ? { dlaVersion: soc.dlaVersion } : {}),
      // The CUDA ordinal onnxruntime should use: a Jetson has one GPU.
      index: 0,
      ...(gpuNode === undefined ? {} : { gpuDeviceNode: gpuNode }),
      ...(libcuda === undefined ? {} : { cudaLibrary: libcuda }),
    },
  }];
}

/**
 * The module part number: the part after `+` in a `carrier+module` entry
 * (`nvidia,p3768-0000+p3767-0000`; revision or variant suffixes such as `-b00` on the Nano or
 * `-super` on JetPack 6 are dropped), or a bare module entry
 * (`nvidia,p3767-0000`). Known modules win over unknown ones.
 */
function findModulePart(compatible: readonly string[]): string | undefined {
  const parts: string[] = [];
  for (const entry of compatible) {
    const m = /^nvidia,(?:p\d{4}-\d{4}(?:-[a-z0-9]+)?\+)?(p\d{4}-\d{4})(?:-[a-z0-9]+)?$/u.exec(entry);
    if (m?.[1] !== undefined) parts.push(m[1]);
  }
  return parts.find((p) => p in MODULES) ?? parts[0];
}

function statusOf(gpuNode: string | undefined, libcuda: string | undefined): DeviceStatus {
  if (gpuNode === undefined) {
    return {
      state: 'unavailable',
      reason: 'the integrated GPU has no device node (neither /dev/nvgpu/igpu0/ctrl nor /dev/nvhost-ctrl-gpu exists): the nvgpu kernel driver is not loaded, or this container was started without the GPU devices',
      fix: 'load the driver (sudo modprobe nvgpu) or reflash the board with JetPack; in a container, start it with --runtime nvidia (NVIDIA Container Toolkit) so the GPU device nodes are passed in',
    };
  }
  if (libcuda === undefined) {
    return {
      state: 'unavailable',
      reason: 'libcuda.so.1 not found (on Jetson it ships in nvidia-l4t-cuda under /usr/lib/aarch64-linux-gnu/nvidia or .../tegra, listed in /etc/ld.so.conf.d/nvidia-tegra.conf)',
      fix: 'install nvidia-l4t-cuda (sudo apt install nvidia-l4t-cuda) or the whole JetPack (sudo apt install nvidia-jetpack), then run sudo ldconfig',
    };
  }
  return { state: 'ready' };
}

/** Thermal zones by type, °C. `null`: the zone exists but its domain is off (read fails, or -256 °C). */
async function readThermalZones(sys: SysRoot): Promise<Record<string, number | null>> {
  const zones = (await sys.list('/sys/class/thermal')).filter((z) => /^thermal_zone\d+$/u.test(z));
  zones.sort((a, b) => Number(a.slice(12)) - Number(b.slice(12)));
  const out = new Map<string, number | null>();
  for (const zone of zones) {
    const type = await sys.readAttr(`/sys/class/thermal/${zone}/type`);
    if (type === undefined || type === '' || out.has(type)) continue;
    const milli = toInt(await sys.readAttr(`/sys/class/thermal/${zone}/temp`));
    out.set(type, milli === undefined || milli <= -256_000 ? null : milli / 1000);
  }
  // fromEntries defines own properties, so a zone typed `__proto__` cannot reach the prototype.
  return Object.fromEntries(out);
}

async function readMemory(sys: SysRoot): Promise<{ memoryUsedBytes: number; memoryTotalBytes: number } | undefined> {
  const meminfo = (await sys.readText('/proc/meminfo')) ?? '';
  const kb = (field: string): number | undefined => toInt(new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, 'mu').exec(meminfo)?.[1]);
  const total = kb('MemTotal');
  const available = kb('MemAvailable');
  if (total === undefined || available === undefined) return undefined;
  return { memoryUsedBytes: (total - available) * 1024, memoryTotalBytes: total * 1024 };
}

/** GPU load, per mille: beside the devfreq node's device, else where older releases linked it. */
async function readGpuLoad(sys: SysRoot, devfreqNode: string | undefined): Promise<number | undefined> {
  const candidates = [...(devfreqNode === undefined ? [] : [`${devfreqNode}/device/load`]), '/sys/devices/platform/gpu.0/load', '/sys/devices/gpu.0/load'];
  for (const candidate of candidates) {
    const value = toInt(await sys.readAttr(candidate));
    if (value !== undefined) return value;
  }
  return undefined;
}

async function runTegrastats(sys: SysRoot): Promise<TegrastatsReading | undefined> {
  const out = await sys.command(TEGRASTATS_ONE_SHOT.file, TEGRASTATS_ONE_SHOT.args, 5000);
  return out === undefined ? undefined : lastTegrastatsLine(out.stdout);
}

/** The telemetry fields a tegrastats line gives, in the units DeviceTelemetry uses. */
function tegrastatsTelemetry(stats: TegrastatsReading) {
  const mb = 1024 * 1024;
  const temps = stats.temperaturesC;
  // `null` (a -256C sensor) falls through `??` like a missing one.
  const gpuTemp = temps['gpu'] ?? temps['GPU'] ?? temps['tj'] ?? undefined;
  const clocks: Record<string, number> = {};
  if (stats.gpu?.freqMHz !== undefined) clocks['gpu'] = stats.gpu.freqMHz;
  if (stats.emc?.freqMHz !== undefined) clocks['emc'] = stats.emc.freqMHz;
  stats.cpus.forEach((core, i) => {
    if (core.freqMHz !== null) clocks[`cpu${i}`] = core.freqMHz;
  });
  return {
    utilisation: stats.gpu?.loadPercent === undefined ? undefined : stats.gpu.loadPercent / 100,
    memory: stats.ram === undefined ? undefined : { memoryUsedBytes: stats.ram.usedMB * mb, memoryTotalBytes: stats.ram.totalMB * mb },
    temperatureC: gpuTemp,
    powerW: stats.totalPower?.currentW,
    clocksMHz: Object.keys(clocks).length === 0 ? undefined : clocks,
    rails: Object.fromEntries(Object.entries(stats.rails).map(([name, r]) => [name, { powerW: r.currentW, averageW: r.averageW }])),
    thermalZones: temps,
    extra: {
      engines: stats.engines,
      cpus: stats.cpus,
      ...defined({ emcLoadPercent: stats.emc?.loadPercent }),
    },
  };
}

function temperatureOf(zones: Readonly<Record<string, number | null>>): number | undefined {
  return zones['gpu-thermal'] ?? zones['GPU-therm'] ?? zones['tj-thermal'] ?? undefined;
}

/** Input energy so far, µJ: the previous total plus this interval's trapezoid. */
function energyCounter(previous: DeviceTelemetry | undefined, time: number, powerW: number | undefined): Record<string, number> | undefined {
  if (powerW === undefined) return undefined;
  const before = previous?.counters?.['inputEnergyUJ'] ?? 0;
  const seconds = previous === undefined ? 0 : (time - previous.time) / 1000;
  if (previous?.powerW === undefined || !(seconds > 0)) return { inputEnergyUJ: before };
  return { inputEnergyUJ: Math.round(before + ((previous.powerW + powerW) / 2) * seconds * 1e6) };
}

/** The object without its undefined members, so optional DeviceTelemetry fields stay absent. */
function defined<T extends Record<string, unknown>>(fields: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined)) as { [K in keyof T]?: Exclude<T[K], undefined> };
}

function toInt(text: string | undefined): number | undefined {
  return text !== undefined && /^-?\d+$/u.test(text) ? Number(text) : undefined;
}
