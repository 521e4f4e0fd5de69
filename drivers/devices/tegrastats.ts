/**
 * One line of NVIDIA's `tegrastats` as structured data, for every JetPack generation whose output
 * we have seen (real lines and their sources: test/fixtures/tegrastats/PROVENANCE.md):
 *
 * - JetPack 4 (L4T R32): `RAM 717/3964MB (lfb 140x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB)
 *   CPU [18%@102,2%@102,off,off] EMC_FREQ 2%@204 GR3D_FREQ 0%@76 APE 25 PLL@26C CPU@29.5C ...
 *   POM_5V_IN 1057/1057 POM_5V_GPU 0/0` — rails in mW without a unit, `cur/avg`;
 * - JetPack 5 (L4T R35): a `MM-DD-YYYY HH:MM:SS` prefix, `VIC_FREQ 729`, sensors that are powered
 *   off print `-256C` (`CV0@-256C`), rails carry units (`VDD_IN 5299mW/5299mW`), and early R35
 *   prints the two Orin GPCs as `GR3D_FREQ 0%@0 GR3D2_FREQ 0%@0`;
 * - JetPack 6 (L4T R36): engines by name with `off` or `load%@MHz` (`NVENC 1%@115 NVDEC off
 *   NVDLA0 off PVA0_FREQ off`), the GPU as a per-GPC list (`GR3D_FREQ 84%@[713]`), lowercase
 *   temperatures (`cpu@65.562C tj@65.562C`), and cores taken offline by the power mode as `off`;
 * - JetPack 7 (L4T R39): temperatures `cur/max` (`cpu@52.968C/52.968C`), rails `cur/avg/max`.
 *
 * The parser never throws: a token it does not recognise lands in `unparsed`, in order, so a new
 * tegrastats field shows up in telemetry instead of breaking it.
 */
export interface TegrastatsReading {
  /** The `MM-DD-YYYY HH:MM:SS` prefix (JetPack 5 and later), exactly as printed. */
  readonly timestamp?: string;
  readonly ram?: { readonly usedMB: number; readonly totalMB: number; readonly largestFreeBlock?: { readonly count: number; readonly sizeKB: number } };
  readonly swap?: { readonly usedMB: number; readonly totalMB: number; readonly cachedMB?: number };
  readonly iram?: { readonly usedKB: number; readonly totalKB: number; readonly largestFreeBlockKB?: number };
  /** One entry per core in order; a core the power mode took offline is `null`/`null`. */
  readonly cpus: readonly CpuCore[];
  /** GR3D: the GPU. `gpcFreqMHz` lists each GPC when tegrastats prints them (`@[305,305]`, `GR3D2_FREQ`). */
  readonly gpu?: Clocked & { readonly gpcFreqMHz?: readonly number[] };
  /** EMC: the memory controller (load on the memory bus and its clock). */
  readonly emc?: Clocked;
  /** `MTS fg 0% bg 0%` (JetPack 4 Xavier/TX2): the CPU time the MTS firmware gave foreground and background work. */
  readonly mts?: { readonly foregroundPercent: number; readonly backgroundPercent: number };
  /**
   * Fixed-function engines by name without the `_FREQ` suffix: `NVENC`, `NVDEC`, `NVJPG1`, `VIC`,
   * `OFA`, `NVDLA0`, `PVA0`, `APE`, `MSENC`... `off` is `{ on: false }`; a bare number (`APE 174`,
   * `VIC_FREQ 729`) is a clock with no load figure.
   */
  readonly engines: Readonly<Record<string, EngineState>>;
  /** Temperatures by the name tegrastats prints (`CPU`, `tj`, `SOC0`, `gpu`...); `null` is a sensor that reads `-256C` (powered off). */
  readonly temperaturesC: Readonly<Record<string, number | null>>;
  /** Power rails by name (`VDD_IN`, `VDD_CPU_GPU_CV`, `POM_5V_GPU`...). `NC` (not connected) rails are dropped. */
  readonly rails: Readonly<Record<string, PowerRail>>;
  /** Board input power: the `VDD_IN` or `POM_5V_IN` rail, or the sum of all rails when the module has no input rail (AGX Orin, AGX Xavier). */
  readonly totalPower?: PowerRail & { readonly source: string };
  /** Tokens this parser did not recognise, in the order they appeared. */
  readonly unparsed: readonly string[];
}

export interface CpuCore {
  readonly loadPercent: number | null;
  readonly freqMHz: number | null;
}

export interface Clocked {
  readonly loadPercent?: number;
  readonly freqMHz?: number;
}

export type EngineState = { readonly on: false } | ({ readonly on: true } & Clocked);

export interface PowerRail {
  /** Power now, watts. */
  readonly currentW: number;
  /** Mean since tegrastats started, watts. */
  readonly averageW: number;
  /** Peak since tegrastats started (JetPack 7 prints it), watts. */
  readonly maxW?: number;
}

/** Parses one tegrastats line (see {@link TegrastatsReading}); any string is accepted. */
export function parseTegrastats(line: string): TegrastatsReading {
  const tokens = line.trim().split(/\s+/u).filter((t) => t !== '');
  const out: Draft = { cpus: [], engines: {}, temperaturesC: {}, rails: {}, unparsed: [] };
  let i = 0;
  if (DATE.test(tokens[0] ?? '') && TIME.test(tokens[1] ?? '')) {
    out.timestamp = `${tokens[0] ?? ''} ${tokens[1] ?? ''}`;
    i = 2;
  }
  while (i < tokens.length) {
    const used = readField(tokens, i, out);
    if (used === 0) out.unparsed.push(tokens[i] ?? '');
    i += Math.max(used, 1);
  }
  const total = totalOf(out.rails);
  return total === undefined ? out : { ...out, totalPower: total };
}

/**
 * The last complete reading in a capture of several tegrastats lines (what a `timeout` one-shot
 * prints); undefined when no line holds a RAM or CPU field, the two every tegrastats prints.
 */
export function lastTegrastatsLine(output: string): TegrastatsReading | undefined {
  const lines = output.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  for (let k = lines.length - 1; k >= 0; k--) {
    const reading = parseTegrastats(lines[k] ?? '');
    if (reading.ram !== undefined || reading.cpus.length > 0) return reading;
  }
  return undefined;
}

/** A reading while it is being filled in. */
interface Draft {
  timestamp?: string;
  ram?: TegrastatsReading['ram'];
  swap?: TegrastatsReading['swap'];
  iram?: TegrastatsReading['iram'];
  cpus: CpuCore[];
  gpu?: TegrastatsReading['gpu'];
  emc?: Clocked;
  mts?: TegrastatsReading['mts'];
  engines: Record<string, EngineState>;
  temperaturesC: Record<string, number | null>;
  rails: Record<string, PowerRail>;
  unparsed: string[];
}

const DATE = /^\d{2}-\d{2}-\d{4}$/u;
const TIME = /^\d{2}:\d{2}:\d{2}$/u;
const NAME = /^[A-Z][A-Z0-9_]*$/u;
const USED_TOTAL_MB = /^(\d+)\/(\d+)MB$/u;
const TEMPERATURE = /^([A-Za-z][A-Za-z0-9_-]*)@(-?\d+(?:\.\d+)?)C(?:\/-?\d+(?:\.\d+)?C)*$/u;
const RAIL = /^(\d+)(?:mW)?\/(\d+)(?:mW)?(?:\/(\d+)(?:mW)?)?$/u;
const LOAD_AT = /^(?:(\d+)%)?(?:@(?:(\d+)|\[(\d+(?:,\d+)*)\]))?$/u;
/** tegrastats prints this for a sensor whose domain is powered off. */
const SENSOR_OFF_C = -256;

/** Reads the field starting at tokens[i] into `out`; returns how many tokens it used, 0 if none. */
function readField(tokens: readonly string[], i: number, out: Draft): number {
  const name = tokens[i] ?? '';
  const value = tokens[i + 1] ?? '';
  const temperature = TEMPERATURE.exec(name);
  if (temperature !== null) {
    const celsius = Number(temperature[2]);
    out.temperaturesC[temperature[1] ?? ''] = celsius <= SENSOR_OFF_C ? null : celsius;
    return 1;
  }
  if (!NAME.test(name)) return 0;
  switch (name) {
    case 'RAM': return readRam(tokens, i, out);
    case 'SWAP': return readSwap(tokens, i, out);
    case 'IRAM': return readIram(tokens, i, out);
    case 'CPU':
      // `CPU 618/618` is a power rail on JetPack 4 AGX Xavier; only `CPU [..]` is the core list.
      if (value.startsWith('[')) return readCpus(value, out);
      break;
    case 'MTS': return readMts(tokens, i, out);
    case 'GR3D_FREQ':
    case 'GR3D2_FREQ': return readGpu(name, value, out);
    case 'EMC_FREQ': {
      const emc = loadAt(value);
      if (emc === undefined || emc.gpcs !== undefined) return 0;
      out.emc = emc.clocked;
      return 2;
    }
    default: break;
  }
  const rail = RAIL.exec(value);
  if (rail !== null) {
    // NC marks an INA3221 channel that is not connected on this module (AGX Orin prints two).
    if (name !== 'NC') {
      const max = rail[3] === undefined ? {} : { maxW: Number(rail[3]) / 1000 };
      out.rails[name] = { currentW: Number(rail[1]) / 1000, averageW: Number(rail[2]) / 1000, ...max };
    }
    return 2;
  }
  return readEngine(name, value, out);
}

function readRam(tokens: readonly string[], i: number, out: Draft): number {
  const m = USED_TOTAL_MB.exec(tokens[i + 1] ?? '');
  if (m === null) return 0;
  const lfb = tokens[i + 2] === '(lfb' ? /^(\d+)x(\d+)(MB|kB)\)$/u.exec(tokens[i + 3] ?? '') : null;
  out.ram = {
    usedMB: Number(m[1]),
    totalMB: Number(m[2]),
    ...(lfb === null ? {} : { largestFreeBlock: { count: Number(lfb[1]), sizeKB: Number(lfb[2]) * (lfb[3] === 'MB' ? 1024 : 1) } }),
  };
  return lfb === null ? 2 : 4;
}

function readSwap(tokens: readonly string[], i: number, out: Draft): number {
  const m = USED_TOTAL_MB.exec(tokens[i + 1] ?? '');
  if (m === null) return 0;
  const cached = tokens[i + 2] === '(cached' ? /^(\d+)MB\)$/u.exec(tokens[i + 3] ?? '') : null;
  out.swap = { usedMB: Number(m[1]), totalMB: Number(m[2]), ...(cached === null ? {} : { cachedMB: Number(cached[1]) }) };
  return cached === null ? 2 : 4;
}

/** `IRAM 0/252kB(lfb 252kB)`: tegrastats glues `(lfb` to the size, so the split differs from RAM's. */
function readIram(tokens: readonly string[], i: number, out: Draft): number {
  const m = /^(\d+)\/(\d+)kB(\(lfb)?$/u.exec(tokens[i + 1] ?? '');
  if (m === null) return 0;
  const lfb = m[3] === undefined ? null : /^(\d+)kB\)$/u.exec(tokens[i + 2] ?? '');
  out.iram = { usedKB: Number(m[1]), totalKB: Number(m[2]), ...(lfb === null ? {} : { largestFreeBlockKB: Number(lfb[1]) }) };
  return lfb === null ? 2 : 3;
}

function readCpus(value: string, out: Draft): number {
  const body = /^\[(.*)\]$/u.exec(value)?.[1];
  if (body === undefined) return 0;
  const cores: CpuCore[] = [];
  for (const entry of body.split(',')) {
    if (entry === 'off') {
      cores.push({ loadPercent: null, freqMHz: null });
      continue;
    }
    const m = /^(\d+)%(?:@(\d+))?$/u.exec(entry);
    if (m === null) return 0;
    cores.push({ loadPercent: Number(m[1]), freqMHz: m[2] === undefined ? null : Number(m[2]) });
  }
  out.cpus = cores;
  return 2;
}

function readMts(tokens: readonly string[], i: number, out: Draft): number {
  const fg = /^(\d+)%$/u.exec(tokens[i + 2] ?? '');
  const bg = /^(\d+)%$/u.exec(tokens[i + 4] ?? '');
  if (tokens[i + 1] !== 'fg' || tokens[i + 3] !== 'bg' || fg === null || bg === null) return 0;
  out.mts = { foregroundPercent: Number(fg[1]), backgroundPercent: Number(bg[1]) };
  return 5;
}

function readGpu(name: string, value: string, out: Draft): number {
  const parsed = loadAt(value);
  if (parsed === undefined) return 0;
  const { clocked, gpcs } = parsed;
  if (name === 'GR3D_FREQ') {
    out.gpu = { ...clocked, ...(gpcs === undefined ? {} : { freqMHz: Math.max(...gpcs), gpcFreqMHz: gpcs }) };
    return 2;
  }
  // GR3D2_FREQ: the second GPC, printed as its own field by early JetPack 5 on Orin.
  const first = out.gpu ?? {};
  const earlier = first.gpcFreqMHz ?? (first.freqMHz === undefined ? [] : [first.freqMHz]);
  const added = gpcs ?? (clocked.freqMHz === undefined ? [] : [clocked.freqMHz]);
  const all = [...earlier, ...added];
  const load = Math.max(first.loadPercent ?? -1, clocked.loadPercent ?? -1);
  out.gpu = { ...first, ...(load < 0 ? {} : { loadPercent: load }), ...(all.length === 0 ? {} : { freqMHz: Math.max(...all), gpcFreqMHz: all }) };
  return 2;
}

/** `N%@MHz`, `N%@[MHz,MHz]`, `N%`, `@MHz` or `@[MHz,...]`; undefined for anything else (and for an empty value). */
function loadAt(value: string): { clocked: Clocked; gpcs?: number[] } | undefined {
  const m = LOAD_AT.exec(value);
  if (m === null || value === '') return undefined;
  const clocked: Clocked = { ...(m[1] === undefined ? {} : { loadPercent: Number(m[1]) }), ...(m[2] === undefined ? {} : { freqMHz: Number(m[2]) }) };
  return m[3] === undefined ? { clocked } : { clocked, gpcs: m[3].split(',').map(Number) };
}

function readEngine(name: string, value: string, out: Draft): number {
  const key = name.endsWith('_FREQ') && name.length > 5 ? name.slice(0, -5) : name;
  if (/^(?:off|OFF)$/u.test(value)) {
    out.engines[key] = { on: false };
    return 2;
  }
  if (/^(?:on|ON)$/u.test(value)) {
    out.engines[key] = { on: true };
    return 2;
  }
  if (/^\d+$/u.test(value)) {
    out.engines[key] = { on: true, freqMHz: Number(value) };
    return 2;
  }
  const parsed = loadAt(value);
  if (parsed === undefined) return 0;
  const freq = parsed.gpcs === undefined ? {} : { freqMHz: Math.max(...parsed.gpcs) };
  out.engines[key] = { on: true, ...parsed.clocked, ...freq };
  return 2;
}

/** The input rail when the board has one, else the sum of what it reports. */
function totalOf(rails: Readonly<Record<string, PowerRail>>): (PowerRail & { source: string }) | undefined {
  for (const source of ['VDD_IN', 'POM_5V_IN']) {
    const rail = rails[source];
    if (rail !== undefined) return { source, currentW: rail.currentW, averageW: rail.averageW, ...(rail.maxW === undefined ? {} : { maxW: rail.maxW }) };
  }
  const all = Object.values(rails);
  if (all.length === 0) return undefined;
  // Summing in mW keeps 2389 + 397 + 2015 from turning into 4.800999999 W.
  const sum = (pick: (r: PowerRail) => number): number => all.reduce((s, r) => s + Math.round(pick(r) * 1000), 0) / 1000;
  return { source: 'sum of rails', currentW: sum((r) => r.currentW), averageW: sum((r) => r.averageW) };
}
