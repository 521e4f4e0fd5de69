import { readHwmon, sensorOf } from '../hal/hwmon.js';
import type { SysRoot } from '../hal/sysroot.js';
import type { DeviceInfo, DeviceTelemetry } from '../hal/types.js';

/**
 * One reading of an FPGA that `fpgaProbe` found.
 *
 * Alveo (`details.bus` `pci`): the card management controller's sensors as XRT's xocl/xclmgmt
 * drivers publish them (XRT `xocl/subdev/xmc.c`), under the user function's `xmc.u.<instance>/`
 * or, failing that, the management function's `xmc.m.<instance>/`:
 * `xmc_fpga_temp`, `xmc_hbm_temp`, `xmc_se98_temp0..2` (°C), `xmc_power` (µW, what `xbutil`
 * reports as power), the rails `xmc_12v_pex_vol`/`_curr`, `xmc_12v_aux_vol`/`_curr`,
 * `xmc_3v3_pex_vol`/`_curr`, `xmc_vccint_vol`/`_curr` (mV, mA) and `xmc_fan_rpm`. The XMC reads 0 for
 * a sensor the card does not have, so zeros are left out. Power falls back to the sum of the
 * 12 V PEX, 12 V AUX and 3.3 V PEX rails (as the driver computes `xmc_power`).
 *
 * Zynq UltraScale+ / Kria (`platform`): the AMS system monitor's IIO device (`name` `ams` on AMD's
 * kernels, `xilinx-ams` upstream) under `/sys/bus/iio/devices/iio:deviceN/`: every
 * `in_temp<N>[_<channel>]_raw` with its `_offset` and `_scale` (°C = (raw + offset) × scale / 1000;
 * AMD kernels name the channels `ps_temp`, `remote_temp`, `pl_temp`). Power from an INA260 hwmon
 * chip (`ina260_u14` on the KV260/KR260 carrier: the whole SOM's 5 V input, so PS, PL and DDR
 * together). Memory is the CMA pool zocl allocates from (`/proc/meminfo` CmaTotal − CmaFree).
 *
 * `temperatureC` is the hottest sensor; each one is listed in `extra.temperaturesC`. A board
 * without these sources gets a reading whose `extra.note` says what is missing.
 */
export async function readFpgaTelemetry(sys: SysRoot, device: DeviceInfo): Promise<DeviceTelemetry> {
  const time = Date.now();
  return device.details?.['bus'] === 'pci' ? readAlveo(sys, device, time) : readSoc(sys, device, time);
}

/**
 * °C of an IIO temperature channel: (raw + offset) × scale / 1000, the IIO ABI's rule for
 * temperature channels (scale in millidegrees per LSB). Offset defaults to 0, scale to 1.
 */
export function iioTemperatureC(raw: number, offset = 0, scale = 1): number {
  return ((raw + offset) * scale) / 1000;
}

async function readAlveo(sys: SysRoot, device: DeviceInfo, time: number): Promise<DeviceTelemetry> {
  const functions = [device.details?.['pciAddress'], device.details?.['mgmtAddress']].filter((a): a is string => typeof a === 'string');
  let base: string | undefined;
  for (const fn of functions) {
    const xmc = (await sys.list(`/sys/bus/pci/devices/${fn}`)).find((e) => e.startsWith('xmc.'));
    if (xmc !== undefined) {
      base = `/sys/bus/pci/devices/${fn}/${xmc}`;
      break;
    }
  }
  if (base === undefined) {
    return {
      deviceId: device.id,
      time,
      extra: {
        note: `no XMC sensors under ${functions.map((f) => `${f}/xmc.*`).join(' or ')}: the card's management controller is not running or the shell has none; check \`xbutil examine -d ${functions[0] ?? ''} -r thermal electrical\``,
      },
    };
  }
  const dir = base;
  const read = async (name: string): Promise<number | undefined> => {
    const n = Number(await sys.readAttr(`${dir}/${name}`));
    // The XMC answers 0 for sensors the board does not carry (no fan on a passive U50, no DIMMs).
    return Number.isFinite(n) && n !== 0 ? n : undefined;
  };
  const temperatures: Record<string, number> = {};
  for (const [key, attr] of XMC_TEMPERATURES) {
    const value = await read(attr);
    if (value !== undefined) temperatures[key] = value;
  }
  const rails: Record<string, { volts: number; amps: number }> = {};
  for (const rail of ['12v_pex', '12v_aux', '3v3_pex', 'vccint']) {
    const mV = await read(`xmc_${rail}_vol`);
    const mA = await read(`xmc_${rail}_curr`);
    if (mV !== undefined || mA !== undefined) rails[rail] = { volts: (mV ?? 0) / 1000, amps: (mA ?? 0) / 1000 };
  }
  const microwatts = await read('xmc_power');
  // Board input power = the three supply connectors; VCCINT is a rail inside the card, not an input.
  const summed = ['12v_pex', '12v_aux', '3v3_pex'].reduce((w, r) => w + (rails[r] === undefined ? 0 : rails[r].volts * rails[r].amps), 0);
  const powerW = microwatts !== undefined ? microwatts / 1e6 : summed > 0 ? round(summed, 3) : undefined;
  const fanRpm = await read('xmc_fan_rpm');
  const hottestC = Object.keys(temperatures).filter((k) => k === 'fpga' || k === 'hbm').map((k) => temperatures[k] ?? Number.NEGATIVE_INFINITY);
  return {
    deviceId: device.id,
    time,
    ...(hottestC.length === 0 ? {} : { temperatureC: Math.max(...hottestC) }),
    ...(powerW === undefined ? {} : { powerW }),
    extra: {
      sensors: base,
      temperaturesC: temperatures,
      ...(Object.keys(rails).length === 0 ? {} : { rails }),
      ...(fanRpm === undefined ? {} : { fanRpm }),
    },
  };
}

/** `extra.temperaturesC` keys and their XMC attributes; the first two are on the FPGA package. */
const XMC_TEMPERATURES: readonly (readonly [string, string])[] = [
  ['fpga', 'xmc_fpga_temp'],
  ['hbm', 'xmc_hbm_temp'],
  ['boardTopFront', 'xmc_se98_temp0'],
  ['boardTopRear', 'xmc_se98_temp1'],
  ['boardBottomFront', 'xmc_se98_temp2'],
];

async function readSoc(sys: SysRoot, device: DeviceInfo, time: number): Promise<DeviceTelemetry> {
  const ams = await amsTemperatures(sys);
  const extra: Record<string, unknown> = {};
  if (ams === undefined) {
    extra['note'] = 'no AMS system monitor in /sys/bus/iio/devices (name ams or xilinx-ams): enable CONFIG_XILINX_AMS and the ams node of the device tree for PS/PL temperatures';
  } else {
    extra['temperaturesC'] = ams.temperatures;
    extra['sensors'] = ams.device;
  }
  const ina = (await readHwmon(sys)).find((c) => c.name.startsWith('ina260'));
  const power = ina === undefined ? undefined : sensorOf(ina, 'power');
  if (ina !== undefined && power !== undefined) extra['powerSensor'] = `hwmon ${ina.name} (board input: PS, PL and DDR together)`;
  const meminfo = (await sys.readText('/proc/meminfo')) ?? '';
  const kb = (field: string): number | undefined => {
    const m = new RegExp(`^${field}:\\s+(\\d+)\\s*kB`, 'mu').exec(meminfo);
    return m?.[1] === undefined ? undefined : Number(m[1]) * 1024;
  };
  const cmaTotal = kb('CmaTotal');
  const cmaFree = kb('CmaFree');
  const temps = ams === undefined ? [] : Object.values(ams.temperatures);
  return {
    deviceId: device.id,
    time,
    ...(cmaTotal === undefined || cmaFree === undefined || cmaTotal === 0 ? {} : { memoryUsedBytes: cmaTotal - cmaFree, memoryTotalBytes: cmaTotal }),
    ...(temps.length === 0 ? {} : { temperatureC: Math.max(...temps) }),
    ...(power === undefined ? {} : { powerW: power.value }),
    extra,
  };
}

/** Temperatures of the first AMS IIO device, keyed by channel name (`pl_temp`) or `temp<N>`. */
async function amsTemperatures(sys: SysRoot): Promise<{ device: string; temperatures: Record<string, number> } | undefined> {
  for (const entry of await sys.list('/sys/bus/iio/devices')) {
    const base = `/sys/bus/iio/devices/${entry}`;
    const name = await sys.readAttr(`${base}/name`);
    if (name !== 'ams' && name !== 'xilinx-ams') continue;
    const temperatures: Record<string, number> = {};
    for (const file of await sys.list(base)) {
      const m = /^in_temp(\d+)(?:_(\w+?))?_raw$/u.exec(file);
      if (m === null) continue;
      const stem = file.slice(0, -'_raw'.length);
      // Offset and scale are per channel, or shared by all temperature channels (`in_temp_scale`).
      const number = async (attr: 'offset' | 'scale'): Promise<number | undefined> => {
        const text = (await sys.readAttr(`${base}/${stem}_${attr}`)) ?? (await sys.readAttr(`${base}/in_temp_${attr}`));
        const n = text === undefined || text === '' ? Number.NaN : Number(text);
        return Number.isFinite(n) ? n : undefined;
      };
      const raw = Number(await sys.readAttr(`${base}/${file}`));
      if (!Number.isFinite(raw)) continue;
      temperatures[m[2] ?? `temp${m[1] ?? ''}`] = round(iioTemperatureC(raw, await number('offset'), await number('scale')), 3);
    }
    return { device: base, temperatures };
  }
  return undefined;
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
