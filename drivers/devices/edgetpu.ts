import path from 'node:path';
import { listPci, listUsb, type PciFunction, type UsbDevice } from '../hal/buses.js';
import type { DeviceInfo, DeviceProbe, DeviceStatus, DeviceTelemetry, ModelFormat } from '../hal/types.js';
import type { SysRoot } from '../hal/sysroot.js';

/** Edge TPU models (edgetpu_compiler output) and plain TFLite, which falls back to the host CPU. */
export const EDGETPU_FORMATS: readonly ModelFormat[] = ['tflite-edgetpu', 'tflite'];

/**
 * The Edge TPU's on-chip SRAM, 8 MiB: the parameter cache that holds a model's weights. A model
 * whose parameters fit runs from the cache; a larger one streams weights over USB or PCIe on every
 * inference, which is what `memoryBytes` lets the scheduler warn about. It is not general memory.
 */
export const EDGETPU_SRAM_BYTES = 8 * 1024 * 1024;

/** The Edge TPU runtime library (libedgetpu1-std / libedgetpu1-max) that TFLite's delegate loads. */
export const EDGETPU_LIBRARY = 'libedgetpu.so.1';

/**
 * Coral Edge TPUs: the USB Accelerator and the M.2 / Mini PCIe / PCIe modules.
 *
 * USB: `1a6e:089a` (Global Unichip, the stick's DFU bootloader, as it enumerates after power-on)
 * and `18d1:9302` (Google, after libedgetpu has pushed the firmware on first open). Both are the
 * same ready device; `details.firmwareLoaded` says which state it is in. PCIe: function `1ac1:089a`
 * driven by the `apex` kernel module (gasket-dkms), which creates `/sys/class/apex/apex_N` and
 * `/dev/apex_N`. Every device needs `libedgetpu.so.1`, found the way the dynamic loader would.
 *
 * ids are stable per physical slot: `edgetpu:usb-<port path>`, `edgetpu:pci-<PCI address>`.
 * Reads sysfs only; never opens the device (opening a USB stick would load its firmware).
 *
 * Telemetry: the PCIe/M.2 modules' die temperature and the apex driver's thermal thresholds
 * ({@link readEdgetpuTelemetry}); USB sticks report nothing to the host, and say so.
 */
export const edgetpuProbe: DeviceProbe = {
  kind: 'edgetpu',
  async probe(sys: SysRoot): Promise<DeviceInfo[]> {
    const usb = (await listUsb(sys)).filter((d) => USB_IDS.has(`${d.vendor}:${d.product}`));
    const pci = (await listPci(sys, '1ac1')).filter((f) => f.device === '089a');
    if (usb.length === 0 && pci.length === 0) return [];
    const library = await sys.findLibrary(EDGETPU_LIBRARY);
    const devices: DeviceInfo[] = [];
    for (const stick of usb) devices.push(usbDevice(stick, library));
    for (const fn of pci) devices.push(await pciDevice(sys, fn, library));
    return devices;
  },
  telemetry: (sys, device) => readEdgetpuTelemetry(sys, device),
};

/**
 * One Edge TPU reading. PCIe/M.2 (apex driver, gasket-driver `apex_driver.c`): `temperatureC`
 * from `/sys/class/apex/apex_N/temp`, and in `extra.thresholds` (°C) the driver's
 * `trip_point0_temp`..`trip_point2_temp` (where it halves the TPU clock, 500 -> 250 -> 125 ->
 * 62.5 MHz) and `hw_temp_warn1`/`hw_temp_warn2` (the chip raises an interrupt, then its shutdown
 * alarm, when the matching `_en` is set). All are millidegrees in sysfs.
 *
 * `extra.throttling` is true when the temperature is at or above trip point 0 and the driver polls
 * the temperature (`temp_poll_interval` > 0 ms; the gasket default 0 means it never throttles, and
 * then `extra.warning` says the die is past the trip point without protection). USB Accelerators
 * expose no sensor to the host: their reading carries only `extra.note`.
 */
export async function readEdgetpuTelemetry(sys: SysRoot, device: DeviceInfo): Promise<DeviceTelemetry> {
  const time = Date.now();
  const note = (text: string): DeviceTelemetry => ({ deviceId: device.id, time, extra: { note: text } });
  if (device.details?.['bus'] === 'usb') {
    return note('the Coral USB Accelerator reports no temperature, load or power to the host (neither libedgetpu nor the kernel exposes a sensor); only the M.2 / PCIe modules have a readable temperature');
  }
  const address = typeof device.details?.['pciAddress'] === 'string' ? device.details['pciAddress'] : device.id.replace(/^edgetpu:pci-/u, '');
  const apex = await apexNodeOf(sys, address);
  if (apex === undefined) return note(`no apex node for ${address}, so no temperature: the apex driver is not bound (${GASKET_FIX})`);
  const milli = async (name: string): Promise<number | undefined> => {
    const raw = (await sys.readAttr(`/sys/class/apex/${apex}/${name}`)) ?? (await sys.readAttr(`/sys/bus/pci/devices/${address}/apex/${apex}/${name}`));
    const n = raw === undefined || raw === '' ? Number.NaN : Number(raw);
    return Number.isFinite(n) ? n : undefined;
  };
  const temp = await milli('temp');
  const thresholds: Record<string, number> = {};
  for (const [key, attr] of THRESHOLDS) {
    const value = await milli(attr);
    if (value !== undefined) thresholds[key] = value / 1000;
  }
  const pollMs = await milli('temp_poll_interval');
  const extra: Record<string, unknown> = { thresholds };
  if (pollMs !== undefined) extra['tempPollIntervalMs'] = pollMs;
  const tripC = thresholds['tripPoint0C'];
  if (temp !== undefined && tripC !== undefined) {
    const over = temp / 1000 >= tripC;
    extra['throttling'] = over && pollMs !== undefined && pollMs > 0;
    if (over && !(pollMs !== undefined && pollMs > 0)) {
      extra['warning'] = `at or above trip point 0 (${tripC} °C) but the apex driver is not polling the temperature (temp_poll_interval 0), so it does not throttle: load the module with temp_poll_interval=5000 or improve cooling`;
    }
  }
  return { deviceId: device.id, time, ...(temp === undefined ? {} : { temperatureC: temp / 1000 }), extra };
}

/** `extra.thresholds` keys and the apex sysfs attributes they come from. */
const THRESHOLDS: readonly (readonly [string, string])[] = [
  ['tripPoint0C', 'trip_point0_temp'],
  ['tripPoint1C', 'trip_point1_temp'],
  ['tripPoint2C', 'trip_point2_temp'],
  ['hwTempWarn1C', 'hw_temp_warn1'],
  ['hwTempWarn2C', 'hw_temp_warn2'],
];

const BOOTLOADER = '1a6e:089a';
const USB_IDS = new Set([BOOTLOADER, '18d1:9302']);

const LIBRARY_MISSING: DeviceStatus = {
  state: 'unavailable',
  reason: `${EDGETPU_LIBRARY} not found`,
  fix:
    'install libedgetpu1-std (Coral apt repository: https://packages.cloud.google.com/apt coral-edgetpu-stable) ' +
    'or libedgetpu1-max for the faster clock',
};

const GASKET_FIX = 'install the gasket-dkms package (Coral apt repository) and reboot; check `lsmod | grep apex`';

function usbDevice(stick: UsbDevice, library: string | undefined): DeviceInfo {
  const firmwareLoaded = `${stick.vendor}:${stick.product}` !== BOOTLOADER;
  const devicePath =
    stick.busnum === undefined || stick.devnum === undefined
      ? undefined
      : `/dev/bus/usb/${pad3(stick.busnum)}/${pad3(stick.devnum)}`;
  // A USB 2 link (480 Mbit/s) starves the TPU: inference runs several times slower than on USB 3.
  const slowLink = stick.speedMbps !== undefined && stick.speedMbps < 5000;
  return {
    id: `edgetpu:usb-${stick.port}`,
    kind: 'edgetpu',
    name: 'Coral USB Accelerator',
    memoryBytes: EDGETPU_SRAM_BYTES,
    formats: EDGETPU_FORMATS,
    status: library === undefined ? LIBRARY_MISSING : { state: 'ready' },
    details: {
      bus: 'usb',
      port: stick.port,
      usbId: `${stick.vendor}:${stick.product}`,
      ...(devicePath === undefined ? {} : { devicePath }),
      firmwareLoaded,
      ...(stick.speedMbps === undefined ? {} : { usbSpeedMbps: stick.speedMbps }),
      ...(slowLink
        ? { warning: `running at ${stick.speedMbps} Mbit/s (USB 2): plug the accelerator into a USB 3 port for full speed` }
        : {}),
      ...(library === undefined ? {} : { library }),
    },
  };
}

async function pciDevice(sys: SysRoot, fn: PciFunction, library: string | undefined): Promise<DeviceInfo> {
  const apex = await apexNodeOf(sys, fn.address);
  const devicePath = apex === undefined ? undefined : `/dev/${apex}`;
  const temp = apex === undefined ? undefined : await apexTemperature(sys, fn.address, apex);
  const driverVersion = await sys.readAttr('/sys/module/apex/version');
  let status: DeviceStatus = { state: 'ready' };
  if (fn.driver !== 'apex') {
    status = {
      state: 'unavailable',
      reason: `the apex driver is not bound to ${fn.address}${fn.driver === undefined ? '' : ` (bound to ${fn.driver})`}`,
      fix: GASKET_FIX,
    };
  } else if (devicePath === undefined || !(await sys.exists(devicePath))) {
    status = { state: 'unavailable', reason: `${devicePath ?? '/dev/apex_N'} not found for ${fn.address}`, fix: GASKET_FIX };
  } else if (library === undefined) {
    status = LIBRARY_MISSING;
  }
  return {
    id: `edgetpu:pci-${fn.address}`,
    kind: 'edgetpu',
    name: 'Coral M.2 / PCIe Accelerator',
    memoryBytes: EDGETPU_SRAM_BYTES,
    formats: EDGETPU_FORMATS,
    status,
    details: {
      bus: 'pci',
      pciAddress: fn.address,
      ...(fn.driver === undefined ? {} : { driver: fn.driver }),
      ...(driverVersion ? { driverVersion } : {}),
      ...(devicePath === undefined ? {} : { devicePath }),
      ...(temp === undefined ? {} : { temperatureC: temp }),
      ...(library === undefined ? {} : { library }),
    },
  };
}

/**
 * The `apex_N` node of a PCI function. sysfs nests it under the function
 * (`/sys/bus/pci/devices/<addr>/apex/apex_N`); failing that, a `/sys/class/apex/apex_N` entry
 * whose link target passes through the function, or whose `device` link names it.
 */
async function apexNodeOf(sys: SysRoot, address: string): Promise<string | undefined> {
  const nested = (await sys.list(`/sys/bus/pci/devices/${address}/apex`)).find((n) => n.startsWith('apex_'));
  if (nested !== undefined) return nested;
  for (const node of await sys.list('/sys/class/apex')) {
    const target = await sys.readLink(`/sys/class/apex/${node}`);
    if (target?.split('/').includes(address)) return node;
    const device = await sys.readLink(`/sys/class/apex/${node}/device`);
    if (device !== undefined && path.posix.basename(device) === address) return node;
  }
  return undefined;
}

/** Die temperature in °C from the apex `temp` attribute, which holds millidegrees Celsius. */
async function apexTemperature(sys: SysRoot, address: string, apex: string): Promise<number | undefined> {
  const raw =
    (await sys.readAttr(`/sys/class/apex/${apex}/temp`)) ?? (await sys.readAttr(`/sys/bus/pci/devices/${address}/apex/${apex}/temp`));
  const milli = raw === undefined || raw === '' ? Number.NaN : Number(raw);
  return Number.isFinite(milli) ? milli / 1000 : undefined;
}

function pad3(n: number): string {
  return String(n).padStart(3, '0');
}
