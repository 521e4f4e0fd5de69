import { hottest, readHwmon, readThermalZones } from '../hal/hwmon.js';
import type { SysRoot } from '../hal/sysroot.js';
import type { DeviceInfo, DeviceTelemetry } from '../hal/types.js';

/** Jiffies of one `/proc/stat` cpu line: all accounted time, and the part spent idle or in I/O wait. */
export interface CpuTimes {
  readonly total: number;
  readonly idle: number;
}

/**
 * The `cpu` (all CPUs) and `cpuN` lines of `/proc/stat`, keyed `cpu`, `cpu0`, `cpu1`...
 * Fields are `user nice system idle iowait irq softirq steal guest guest_nice` (fs/proc/stat.c);
 * `total` sums user..steal, leaving out guest and guest_nice because the kernel already counts
 * them inside user and nice. `idle` is idle + iowait: a CPU waiting on I/O is free to run work.
 * Older kernels print fewer fields; missing ones count as 0. Offline CPUs have no line.
 */
export function parseProcStat(text: string): Map<string, CpuTimes> {
  const out = new Map<string, CpuTimes>();
  for (const line of text.split('\n')) {
    const m = /^(cpu\d*)\s+(.*)$/u.exec(line);
    if (m === null) continue;
    const fields = (m[2] ?? '').trim().split(/\s+/u).map(Number);
    if (fields.some((f) => !Number.isFinite(f))) continue;
    const at = (i: number): number => fields[i] ?? 0;
    const total = fields.slice(0, 8).reduce((sum, f) => sum + f, 0);
    out.set(m[1] ?? 'cpu', { total, idle: at(3) + at(4) });
  }
  return out;
}

/**
 * Busy fraction 0..1: over the interval between `before` and `now` when the counters advanced,
 * otherwise (first reading, same jiffy, counters from before a reboot) the average since boot.
 * Busy = total − idle − iowait. Undefined only for a line with no time at all.
 */
export function busyFraction(now: CpuTimes, before?: CpuTimes): number | undefined {
  if (before !== undefined && now.total > before.total && now.idle >= before.idle) {
    const total = now.total - before.total;
    return clamp01((total - (now.idle - before.idle)) / total);
  }
  return now.total > 0 ? clamp01((now.total - now.idle) / now.total) : undefined;
}

/**
 * Average power in watts of a cumulative energy counter (RAPL `energy_uj`, hwmon `energy*_input`)
 * between two readings `ms` milliseconds apart. A counter that went backwards wrapped at `rangeUj`
 * (RAPL's `max_energy_range_uj`); without a range the interval is unusable and the answer is undefined.
 */
export function averagePowerW(nowUj: number, beforeUj: number, ms: number, rangeUj?: number): number | undefined {
  if (!(ms > 0)) return undefined;
  let delta = nowUj - beforeUj;
  if (delta < 0) {
    if (rangeUj === undefined || rangeUj <= 0) return undefined;
    delta += rangeUj;
  }
  return delta / (ms * 1000);
}

/**
 * One reading of the host CPU, `now` being the wall-clock time to stamp it with (tests pass one).
 *
 * - utilisation: `/proc/stat`, the aggregate `cpu` line, rate against `previous.counters`
 *   (see {@link busyFraction}); per-core loads in `extra.cores` (`{ cpu0: 0.12, ... }`);
 * - clocksMHz: `/sys/devices/system/cpu/cpuN/cpufreq/scaling_cur_freq` (kHz) as `cpu0`, `cpu1`...;
 * - memory: `/proc/meminfo` MemTotal, used = MemTotal − MemAvailable;
 * - temperatureC: the first of hwmon `coretemp` "Package id N" (hottest socket), `k10temp`
 *   Tdie/Tctl, `cpu_thermal` (Raspberry Pi), `coretemp` cores, then thermal zones `x86_pkg_temp`,
 *   `cpu-thermal` or `CPU-therm` (Jetson); `extra.temperatureSensor` names the one used;
 * - powerW: RAPL package energy (`/sys/class/powercap/intel-rapl:N/energy_uj`, all packages summed,
 *   also on AMD), a counter, so only from the second reading on. The file is root-only on kernels
 *   patched for CVE-2020-8694; then `extra.note` says so and power stays absent.
 *
 * `counters` carry `cpu.total`/`cpu.idle` per line and `rapl:<zone>` energy for the next reading.
 * Every source may be missing (containers, VMs): the reading then simply has fewer fields.
 */
export async function readCpuTelemetry(sys: SysRoot, device: DeviceInfo, previous?: DeviceTelemetry, now = Date.now()): Promise<DeviceTelemetry> {
  const before = previous?.counters ?? {};
  const counters: Record<string, number> = {};
  const extra: Record<string, unknown> = {};

  const stat = parseProcStat((await sys.readText('/proc/stat')) ?? '');
  let utilisation: number | undefined;
  const cores: Record<string, number> = {};
  for (const [name, times] of stat) {
    counters[`${name}.total`] = times.total;
    counters[`${name}.idle`] = times.idle;
    const prior = timesOf(before, name);
    const busy = busyFraction(times, prior);
    if (busy === undefined) continue;
    if (name === 'cpu') utilisation = round(busy, 4);
    else cores[name] = round(busy, 4);
  }
  if (Object.keys(cores).length > 0) extra['cores'] = cores;

  const memory = memoryOf((await sys.readText('/proc/meminfo')) ?? '');
  const clocks = await frequenciesMHz(sys);
  const temperature = await cpuTemperature(sys);
  if (temperature !== undefined) extra['temperatureSensor'] = temperature.sensor;

  const rapl = await readRapl(sys);
  let powerW: number | undefined;
  if (rapl.zones.length > 0) {
    let sum = 0;
    let complete = previous !== undefined;
    for (const zone of rapl.zones) {
      counters[`rapl:${zone.zone}`] = zone.energyUj;
      const prior = before[`rapl:${zone.zone}`];
      const watts = prior === undefined || previous === undefined ? undefined : averagePowerW(zone.energyUj, prior, now - previous.time, zone.rangeUj);
      if (watts === undefined) complete = false;
      else sum += watts;
    }
    if (complete) powerW = round(sum, 3);
    extra['powerSensor'] = `RAPL ${rapl.zones.map((z) => `${z.zone} (${z.name})`).join(' + ')}`;
  } else if (rapl.unreadable.length > 0) {
    extra['note'] = `CPU power needs read access to ${rapl.unreadable.map((z) => `/sys/class/powercap/${z}/energy_uj`).join(', ')} (root-only on kernels patched for CVE-2020-8694): run as root or grant read access with a udev rule`;
  }

  return {
    deviceId: device.id,
    time: now,
    ...(utilisation === undefined ? {} : { utilisation }),
    ...(memory === undefined ? {} : { memoryUsedBytes: memory.used, memoryTotalBytes: memory.total }),
    ...(temperature === undefined ? {} : { temperatureC: temperature.celsius }),
    ...(powerW === undefined ? {} : { powerW }),
    ...(Object.keys(clocks).length === 0 ? {} : { clocksMHz: clocks }),
    ...(Object.keys(extra).length === 0 ? {} : { extra }),
    counters,
  };
}

function timesOf(counters: Readonly<Record<string, number>>, name: string): CpuTimes | undefined {
  const total = counters[`${name}.total`];
  const idle = counters[`${name}.idle`];
  return total === undefined || idle === undefined ? undefined : { total, idle };
}

function memoryOf(meminfo: string): { used: number; total: number } | undefined {
  const kb = (field: string): number | undefined => {
    const m = new RegExp(`^${field}:\\s+(\\d+)\\s*kB`, 'mu').exec(meminfo);
    return m?.[1] === undefined ? undefined : Number(m[1]) * 1024;
  };
  const total = kb('MemTotal');
  if (total === undefined) return undefined;
  // MemAvailable (Linux 3.14+) is the kernel's own estimate; before it, free + reclaimable caches.
  const available = kb('MemAvailable') ?? (kb('MemFree') ?? 0) + (kb('Buffers') ?? 0) + (kb('Cached') ?? 0);
  return { used: total - available, total };
}

async function frequenciesMHz(sys: SysRoot): Promise<Record<string, number>> {
  const cpus = (await sys.list('/sys/devices/system/cpu')).filter((e) => /^cpu\d+$/u.test(e));
  cpus.sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)));
  const khz = await Promise.all(cpus.map((cpu) => sys.readAttr(`/sys/devices/system/cpu/${cpu}/cpufreq/scaling_cur_freq`)));
  const out: Record<string, number> = {};
  cpus.forEach((cpu, i) => {
    const value = Number(khz[i]);
    if (khz[i] !== undefined && khz[i] !== '' && Number.isFinite(value)) out[cpu] = Math.round(value / 1000);
  });
  return out;
}

/** The CPU's temperature from the most specific sensor present, and which sensor that was. */
async function cpuTemperature(sys: SysRoot): Promise<{ celsius: number; sensor: string } | undefined> {
  const chips = await readHwmon(sys);
  const candidates: [string, () => number | undefined][] = [
    ['hwmon coretemp Package id', () => hottest(chips, 'coretemp', /^Package id \d+$/u)],
    // Tdie is the true die temperature where the part reports an offset Tctl (Threadripper 1000/2000).
    ['hwmon k10temp Tdie', () => hottest(chips, 'k10temp', /^Tdie$/u)],
    ['hwmon k10temp Tctl', () => hottest(chips, 'k10temp', /^Tctl$/u)],
    ['hwmon cpu_thermal', () => hottest(chips, 'cpu_thermal')],
    ['hwmon coretemp cores', () => hottest(chips, 'coretemp')],
  ];
  for (const [sensor, read] of candidates) {
    const celsius = read();
    if (celsius !== undefined) return { celsius, sensor };
  }
  const zones = await readThermalZones(sys);
  // x86 package sensor; `cpu-thermal` on Arm boards and Jetson Orin (JetPack 6); `CPU-therm` on JetPack 5 and older.
  for (const type of ['x86_pkg_temp', 'cpu-thermal', 'cpu_thermal', 'CPU-therm']) {
    const hits = zones.filter((z) => z.type === type);
    if (hits.length > 0) return { celsius: Math.max(...hits.map((z) => z.temperatureC)), sensor: `thermal zone ${type}` };
  }
  return undefined;
}

interface RaplZone {
  readonly zone: string;
  readonly name: string;
  readonly energyUj: number;
  readonly rangeUj?: number;
}

/** Top-level RAPL zones (`intel-rapl:0`, `intel-rapl:1`: one per package), readable or not. */
async function readRapl(sys: SysRoot): Promise<{ zones: RaplZone[]; unreadable: string[] }> {
  const zones: RaplZone[] = [];
  const unreadable: string[] = [];
  for (const zone of (await sys.list('/sys/class/powercap')).filter((z) => /^intel-rapl:\d+$/u.test(z))) {
    const base = `/sys/class/powercap/${zone}`;
    const text = await sys.readAttr(`${base}/energy_uj`);
    const energy = Number(text);
    if (text === undefined || text === '' || !Number.isFinite(energy)) {
      if (await sys.exists(`${base}/energy_uj`)) unreadable.push(zone);
      continue;
    }
    const range = Number(await sys.readAttr(`${base}/max_energy_range_uj`));
    zones.push({ zone, name: (await sys.readAttr(`${base}/name`)) ?? zone, energyUj: energy, ...(Number.isFinite(range) && range > 0 ? { rangeUj: range } : {}) });
  }
  return { zones, unreadable };
}

function clamp01(x: number): number {
  return Math.min(1, Math.max(0, x));
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
