import type { DeviceInfo, DeviceProbe, ModelFormat } from '../hal/types.js';
import type { SysRoot } from '../hal/sysroot.js';
import { readCpuTelemetry } from './cpu-telemetry.js';

/** What the CPU runs: every engine has a CPU path (onnxruntime CPU EP, TFLite, TF.js wasm/cpu). */
export const CPU_FORMATS: readonly ModelFormat[] = ['onnx', 'tflite', 'tfjs-graph', 'tfjs-layers'];

/**
 * The host CPU as one device, `cpu:0`, always ready: there is no runtime to be missing.
 *
 * Reads `/proc/cpuinfo` (x86 `model name` / `flags`, or arm64 `CPU implementer` / `CPU part` /
 * `Features`), `/proc/meminfo` (`MemTotal`, reported as `memoryBytes` because the CPU shares all
 * system RAM) and `/proc/device-tree/model` (board name on ARM boards). Any of them may be missing
 * or hold fields this probe does not know; the device is still reported, with fewer details.
 *
 * `details`: `arch` (`x86_64`, `aarch64`, `armv7l` or `unknown`, inferred from cpuinfo, not from
 * the machine running the probe), `logicalCores`, `physicalCores`, `sockets` (x86 only), `features`
 * (sorted ISA extensions that matter to inference kernels), `board` where the machine names one.
 *
 * Telemetry (load from /proc/stat, clocks, memory, hwmon/thermal-zone temperature, RAPL power)
 * is read by {@link readCpuTelemetry}.
 */
export const cpuProbe: DeviceProbe = {
  kind: 'cpu',
  async probe(sys: SysRoot): Promise<DeviceInfo[]> {
    const cpuinfo = parseCpuinfo((await sys.readText('/proc/cpuinfo')) ?? '');
    const memTotal = meminfoBytes((await sys.readText('/proc/meminfo')) ?? '', 'MemTotal');
    // Device-tree strings name the board exactly ("Raspberry Pi 5 Model B Rev 1.0"); the cpuinfo
    // `Model`/`Hardware` lines are older, and `Hardware` says BCM2835 on every Raspberry Pi.
    const board = (await sys.readAttr('/proc/device-tree/model')) || cpuinfo.global['Model'] || cpuinfo.global['Hardware'];
    const arch = archOf(cpuinfo);
    const details: Record<string, unknown> = {
      arch,
      logicalCores: cpuinfo.processors.length,
      physicalCores: physicalCores(cpuinfo.processors),
      ...(arch === 'x86_64' || arch === 'x86' ? socketsOf(cpuinfo.processors) : {}),
      features: featuresOf(cpuinfo.processors[0] ?? {}, arch),
      ...(board ? { board } : {}),
    };
    return [
      {
        id: 'cpu:0',
        kind: 'cpu',
        name: nameOf(cpuinfo.processors, arch),
        ...(memTotal === undefined ? {} : { memoryBytes: memTotal }),
        formats: CPU_FORMATS,
        status: { state: 'ready' },
        details,
      },
    ];
  },
  telemetry: (sys, device, previous) => readCpuTelemetry(sys, device, previous),
};

/** Bytes of one `kB` field of /proc/meminfo, or undefined when the field is absent. */
function meminfoBytes(meminfo: string, field: string): number | undefined {
  const match = new RegExp(`^${field}:\\s+(\\d+)\\s*kB`, 'mu').exec(meminfo);
  return match?.[1] === undefined ? undefined : Number(match[1]) * 1024;
}

type Block = Readonly<Record<string, string>>;

interface Cpuinfo {
  /** One block per `processor` entry, in file order. */
  readonly processors: readonly Block[];
  /** Lines outside processor blocks (arm `Hardware`, `Revision`, `Serial`, `Model`). */
  readonly global: Block;
}

/** The x86 flags and arm64 Features worth reporting: the ones inference kernels dispatch on. */
const X86_FEATURES = new Set([
  'sse4_2', 'avx', 'avx2', 'fma', 'f16c', 'avx_vnni',
  'avx512f', 'avx512bw', 'avx512vl', 'avx512_vnni', 'avx512_bf16', 'avx512_fp16',
  'amx_tile', 'amx_int8', 'amx_bf16',
]);
/** Kernel Features names to the names people use; `asimd` is NEON on AArch64. */
const ARM_FEATURES: Readonly<Record<string, string>> = {
  asimd: 'neon', neon: 'neon', asimdhp: 'fp16', asimddp: 'dotprod', i8mm: 'i8mm', bf16: 'bf16', sve: 'sve', sve2: 'sve2',
};

/** MIDR implementer:part to core name; the common parts in robots, boards and Arm servers. */
const ARM_PARTS: Readonly<Record<string, string>> = {
  '0x41:0xd03': 'Cortex-A53', '0x41:0xd04': 'Cortex-A35', '0x41:0xd05': 'Cortex-A55', '0x41:0xd07': 'Cortex-A57',
  '0x41:0xd08': 'Cortex-A72', '0x41:0xd09': 'Cortex-A73', '0x41:0xd0a': 'Cortex-A75', '0x41:0xd0b': 'Cortex-A76',
  '0x41:0xd0c': 'Neoverse-N1', '0x41:0xd0d': 'Cortex-A77', '0x41:0xd40': 'Neoverse-V1', '0x41:0xd41': 'Cortex-A78',
  '0x41:0xd42': 'Cortex-A78AE', '0x41:0xd44': 'Cortex-X1', '0x41:0xd46': 'Cortex-A510', '0x41:0xd47': 'Cortex-A710',
  '0x41:0xd48': 'Cortex-X2', '0x41:0xd49': 'Neoverse-N2', '0x41:0xd4b': 'Cortex-A78C', '0x41:0xd4f': 'Neoverse-V2',
  '0x4e:0x003': 'NVIDIA Denver 2', '0x4e:0x004': 'NVIDIA Carmel',
};

function parseCpuinfo(text: string): Cpuinfo {
  const processors: Block[] = [];
  const global: Record<string, string> = {};
  // Blocks are separated by blank lines; lines are `key<tabs>: value`.
  for (const chunk of text.split(/\n\s*\n/u)) {
    const block: Record<string, string> = {};
    for (const line of chunk.split('\n')) {
      const colon = line.indexOf(':');
      if (colon <= 0) continue;
      block[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
    }
    if ('processor' in block) processors.push(block);
    else Object.assign(global, block);
  }
  return { processors, global };
}

function archOf(cpuinfo: Cpuinfo): string {
  const first = cpuinfo.processors[0] ?? {};
  if (first['flags'] !== undefined || first['vendor_id'] !== undefined) {
    // `lm` (long mode) is what makes an x86 CPU 64-bit.
    return (first['flags'] ?? '').split(/\s+/u).includes('lm') ? 'x86_64' : 'x86';
  }
  const armArch = first['CPU architecture'];
  if (armArch !== undefined) return armArch === '8' || armArch === 'AArch64' ? 'aarch64' : 'armv7l';
  return 'unknown';
}

function nameOf(processors: readonly Block[], arch: string): string {
  if (arch === 'aarch64' || arch === 'armv7l') {
    // Count cores per part, keeping file order, so big.LITTLE reads "4× Cortex-A76 + 4× Cortex-A55".
    const counts = new Map<string, number>();
    for (const p of processors) {
      const implementer = p['CPU implementer']?.toLowerCase() ?? '?';
      const part = p['CPU part']?.toLowerCase() ?? '?';
      const name = ARM_PARTS[`${implementer}:${part}`] ?? `Arm core ${implementer}:${part}`;
      counts.set(name, (counts.get(name) ?? 0) + 1);
    }
    if (counts.size > 0) return [...counts].map(([name, n]) => `${n}× ${name}`).join(' + ');
  }
  return processors[0]?.['model name'] ?? 'Unknown CPU';
}

function physicalCores(processors: readonly Block[]): number {
  // Distinct (socket, core) pairs are exact on any machine, including trimmed captures and
  // machines with CPUs taken offline; `cpu cores` x sockets is the fallback when core ids are absent.
  const pairs = new Set<string>();
  for (const p of processors) {
    if (p['physical id'] === undefined || p['core id'] === undefined) {
      pairs.clear();
      break;
    }
    pairs.add(`${p['physical id']}:${p['core id']}`);
  }
  if (pairs.size > 0) return pairs.size;
  const perSocket = Number(processors[0]?.['cpu cores']);
  const sockets = new Set(processors.map((p) => p['physical id']).filter((id) => id !== undefined)).size;
  if (Number.isInteger(perSocket) && perSocket > 0 && sockets > 0) return perSocket * sockets;
  // ARM cores have no SMT (a few server parts aside), so each processor entry is a core.
  return processors.length;
}

function socketsOf(processors: readonly Block[]): { sockets?: number } {
  const sockets = new Set(processors.map((p) => p['physical id']).filter((id) => id !== undefined)).size;
  return sockets > 0 ? { sockets } : {};
}

function featuresOf(first: Block, arch: string): string[] {
  const found = new Set<string>();
  if (arch === 'x86_64' || arch === 'x86') {
    for (const flag of (first['flags'] ?? '').split(/\s+/u)) if (X86_FEATURES.has(flag)) found.add(flag);
  } else {
    for (const feature of (first['Features'] ?? '').split(/\s+/u)) {
      const name = ARM_FEATURES[feature];
      if (name !== undefined) found.add(name);
    }
  }
  return [...found].sort();
}
