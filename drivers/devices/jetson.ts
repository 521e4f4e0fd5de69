import type { SysRoot } from '../hal/sysroot.js';
import type { DeviceInfo, DeviceProbe, DeviceStatus, ModelFormat } from '../hal/types.js';

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
 */
export const jetsonProbe: DeviceProbe = {
  kind: 'jetson',
  probe: probeJetson,
};

/** What the Jetson GPU runs: ONNX through onnxruntime's CUDA/TensorRT providers, TF.js through tfjs-node-gpu. */
export const JETSON_FORMATS: readonly ModelFormat[] = ['onnx', 'tfjs-graph', 'tfjs-layers'];

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
