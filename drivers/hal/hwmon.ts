import path from 'node:path';
import type { SysRoot } from './sysroot.js';

/**
 * Sensor families of the kernel hwmon sysfs ABI (Documentation/hwmon/sysfs-interface.rst) that
 * telemetry uses: temperature, power, energy, voltage (`in`), current (`curr`) and fan speed.
 */
export type HwmonSensorType = 'temp' | 'power' | 'energy' | 'in' | 'curr' | 'fan';

/** One `<type><N>_input` (or `power<N>_average`) attribute of a chip, with its label. */
export interface HwmonSensor {
  readonly type: HwmonSensorType;
  /** The N of `temp3_input`; hwmon numbers from 1 except `in`, which may start at 0. */
  readonly index: number;
  /** `<type><N>_label` when the driver writes one (`Package id 0`, `Tctl`, `Core 4`). */
  readonly label?: string;
  /** The attribute exactly as read: m°C, µW, µJ, mV, mA or RPM. Keep it for counters (energy). */
  readonly raw: number;
  /** The same value in °C, W, J, V, A or RPM. */
  readonly value: number;
}

/** One hwmon chip (`/sys/class/hwmon/hwmonN`), as its driver registered it. */
export interface HwmonChip {
  /** Where it was read, as the probed machine sees it (`/sys/class/hwmon/hwmon2`). */
  readonly path: string;
  /** The driver's chip name: `coretemp`, `k10temp`, `cpu_thermal`, `ina260_u14`, `amdgpu`... */
  readonly name: string;
  /**
   * Last part of the chip's `device` link where it has one: a platform device (`coretemp.0`), a
   * PCI address (`0000:01:00.0`) or an I2C client (`1-0040`). Says which hardware a chip belongs to.
   */
  readonly device?: string;
  readonly sensors: readonly HwmonSensor[];
}

/** One `/sys/class/thermal/thermal_zoneN`: the zone's type (`x86_pkg_temp`, `cpu-thermal`) and temperature. */
export interface ThermalZone {
  readonly zone: string;
  readonly type: string;
  readonly temperatureC: number;
}

/**
 * Every hwmon chip under `folder` (default `/sys/class/hwmon`; a device's own
 * `/sys/bus/pci/devices/<address>/hwmon` works too), in hwmonN order. A chip or attribute that
 * cannot be read is left out rather than reported as zero: many drivers fail reads of sensors
 * the board does not wire (-ENODATA), and some attributes are root-only. Never throws.
 */
export async function readHwmon(sys: SysRoot, folder = '/sys/class/hwmon'): Promise<HwmonChip[]> {
  const chips: HwmonChip[] = [];
  for (const entry of sortNumerically(await sys.list(folder), 'hwmon')) {
    const chip = await readHwmonChip(sys, path.posix.join(folder, entry));
    if (chip !== undefined) chips.push(chip);
  }
  return chips;
}

/**
 * One chip folder. Old drivers keep `name` and the attributes in the chip's `device/` folder
 * instead of the chip folder itself; both layouts are read. Undefined when there is no `name`.
 */
export async function readHwmonChip(sys: SysRoot, chipPath: string): Promise<HwmonChip | undefined> {
  let base = chipPath;
  let name = await sys.readAttr(`${chipPath}/name`);
  if (name === undefined) {
    base = `${chipPath}/device`;
    name = await sys.readAttr(`${base}/name`);
  }
  if (name === undefined || name === '') return undefined;
  const entries = await sys.list(base);
  const sensors: HwmonSensor[] = [];
  for (const entry of entries) {
    const m = SENSOR_ATTR.exec(entry);
    if (m === null) continue;
    const [, type = '', index = '', kind = ''] = m;
    // power<N>_average stands in only where the driver has no power<N>_input (amdgpu, some PMBus chips).
    if (kind === 'average' && entries.includes(`${type}${index}_input`)) continue;
    const raw = toNumber(await sys.readAttr(`${base}/${entry}`));
    if (raw === undefined) continue;
    const label = await sys.readAttr(`${base}/${type}${index}_label`);
    const sensorType = type as HwmonSensorType;
    sensors.push({ type: sensorType, index: Number(index), ...(label ? { label } : {}), raw, value: raw / SCALE[sensorType] });
  }
  sensors.sort((a, b) => (a.type === b.type ? a.index - b.index : a.type.localeCompare(b.type)));
  const deviceLink = await sys.readLink(`${chipPath}/device`);
  return { path: chipPath, name, ...(deviceLink === undefined ? {} : { device: path.posix.basename(deviceLink) }), sensors };
}

/** Every thermal zone with a readable temperature, in thermal_zoneN order. Never throws. */
export async function readThermalZones(sys: SysRoot): Promise<ThermalZone[]> {
  const zones: ThermalZone[] = [];
  for (const zone of sortNumerically(await sys.list('/sys/class/thermal'), 'thermal_zone')) {
    const type = await sys.readAttr(`/sys/class/thermal/${zone}/type`);
    const milli = toNumber(await sys.readAttr(`/sys/class/thermal/${zone}/temp`));
    if (type === undefined || milli === undefined) continue;
    zones.push({ zone, type, temperatureC: milli / 1000 });
  }
  return zones;
}

/**
 * The hottest temperature, in °C, among the chips named `name` (every socket's `coretemp`, say),
 * counting only sensors whose label `label` accepts (a RegExp tested against the label; sensors
 * without a label never match one). Undefined when no sensor qualifies.
 */
export function hottest(chips: readonly HwmonChip[], name: string | RegExp, label?: RegExp): number | undefined {
  let best: number | undefined;
  for (const chip of chips) {
    if (typeof name === 'string' ? chip.name !== name : !name.test(chip.name)) continue;
    for (const s of chip.sensors) {
      if (s.type !== 'temp') continue;
      if (label !== undefined && (s.label === undefined || !label.test(s.label))) continue;
      if (best === undefined || s.value > best) best = s.value;
    }
  }
  return best;
}

/** The first sensor of `type` (and index, when given) on a chip. */
export function sensorOf(chip: HwmonChip, type: HwmonSensorType, index?: number): HwmonSensor | undefined {
  return chip.sensors.find((s) => s.type === type && (index === undefined || s.index === index));
}

const SENSOR_ATTR = /^(temp|power|energy|in|curr|fan)(\d+)_(input|average)$/u;

/** Divisors from the hwmon ABI units (m°C, µW, µJ, mV, mA, RPM) to °C, W, J, V, A, RPM. */
const SCALE: Readonly<Record<HwmonSensorType, number>> = { temp: 1000, power: 1e6, energy: 1e6, in: 1000, curr: 1000, fan: 1 };

function toNumber(text: string | undefined): number | undefined {
  if (text === undefined || text === '') return undefined;
  const n = Number(text);
  return Number.isFinite(n) ? n : undefined;
}

/** `hwmon10` after `hwmon9`: sysfs lists names, and a plain sort puts 10 before 2. */
function sortNumerically(entries: readonly string[], prefix: string): string[] {
  return entries
    .filter((e) => new RegExp(`^${prefix}\\d+$`, 'u').test(e))
    .sort((a, b) => Number(a.slice(prefix.length)) - Number(b.slice(prefix.length)));
}
