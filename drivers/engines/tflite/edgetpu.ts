import type * as KoffiModule from 'koffi';
import { EDGETPU_LIBRARY } from '../../devices/edgetpu.js';
import { DeviceUnavailableError } from '../../errors.js';
import type { SysRoot } from '../../hal/sysroot.js';
import type { DeviceInfo } from '../../hal/types.js';
import type { Pointer } from './c-api.js';
import { bindFirst, libraryCandidates, type LibraryCandidate } from './library.js';

/** What to install when libedgetpu is missing (the probe says the same). */
export const EDGETPU_FIX =
  'install libedgetpu1-std (Coral apt repository: https://packages.cloud.google.com/apt coral-edgetpu-stable), ' +
  'or libedgetpu1-max for the faster clock, or point AIOS_EDGETPU_LIB at libedgetpu.so.1';

/** One Edge TPU as libedgetpu enumerates it: `usb` + `/sys/bus/usb/devices/2-1`, `pci` + `/dev/apex_0`. */
export interface EdgeTpuRecord {
  readonly type: 'usb' | 'pci';
  readonly path: string;
}

/**
 * The Edge TPU runtime's C API (libedgetpu's `edgetpu_c.h`). The delegate a call to
 * `createDelegate` returns is owned by the caller and must go back through `freeDelegate` once,
 * after the interpreter using it is deleted.
 */
export interface EdgeTpuRuntime {
  readonly path: string;
  readonly version: string;
  listDevices(): EdgeTpuRecord[];
  createDelegate(device: EdgeTpuRecord): Pointer | null;
  freeDelegate(delegate: Pointer): void;
}

/** An Edge TPU delegate opened on one device, and what libedgetpu calls that device. */
export interface OpenedEdgeTpu {
  readonly delegate: Pointer;
  readonly device: EdgeTpuRecord;
  readonly runtime: EdgeTpuRuntime;
}

/** Places to look for libedgetpu.so.1: explicit path, `AIOS_EDGETPU_LIB`, the loader's folders. */
export async function edgetpuCandidates(explicit: string | undefined, sys: SysRoot): Promise<LibraryCandidate[]> {
  return libraryCandidates(EDGETPU_LIBRARY, { source: 'options.edgetpuLibrary', path: explicit }, 'AIOS_EDGETPU_LIB', sys);
}

/**
 * Binds the first libedgetpu that loads. Throws DeviceUnavailableError EAI_HAL_ENGINE_UNAVAILABLE
 * naming libedgetpu.so.1 and the package that provides it when none does.
 */
export function loadEdgeTpu(koffi: typeof KoffiModule, candidates: readonly LibraryCandidate[]): EdgeTpuRuntime {
  const bound = bindFirst(candidates, (file) => bindEdgeTpu(koffi, file));
  if ('value' in bound) return bound.value;
  const { attempts, tried } = bound;
  throw new DeviceUnavailableError('EAI_HAL_ENGINE_UNAVAILABLE', `${EDGETPU_LIBRARY} (the Edge TPU runtime) could not be loaded. Tried ${tried}`, EDGETPU_FIX, { details: { engine: 'tflite', library: EDGETPU_LIBRARY, attempts } });
}

/**
 * Opens the Edge TPU delegate on exactly the device the probe found.
 *
 * Why `edgetpu_create_delegate` and not the external-delegate entry point
 * `tflite_plugin_create_delegate` (option `device=usb:0`): the plugin only takes an index into
 * libedgetpu's enumeration order, which changes as accelerators are plugged in and out, so two
 * sticks could swap between probe and load. `edgetpu_list_devices` reports each device by the
 * path the probe also knows (the USB port path under /sys/bus/usb/devices, or /dev/apex_N), and
 * `edgetpu_create_delegate(type, path, ...)` opens that one, so `edgetpu:usb-2-1` really is the
 * stick in port 2-1.
 *
 * Throws DeviceUnavailableError EAI_HAL_DEVICE_OPEN_FAILED when libedgetpu does not list the
 * device or cannot open it.
 */
export function openEdgeTpu(runtime: EdgeTpuRuntime, device: DeviceInfo): OpenedEdgeTpu {
  const wanted = libedgetpuRecord(device);
  const listed = runtime.listDevices();
  const found = wanted === undefined ? undefined : listed.find((r) => r.type === wanted.type && r.path === wanted.path);
  const seen = listed.map((r) => `${r.type} ${r.path}`).join(', ') || 'none';
  if (found === undefined) {
    throw new DeviceUnavailableError(
      'EAI_HAL_DEVICE_OPEN_FAILED',
      `libedgetpu (${runtime.path}) does not see ${device.id}${wanted === undefined ? '' : ` at ${wanted.path}`}; it lists: ${seen}`,
      accessFix(wanted?.type ?? 'usb'),
      { details: { device: device.id, expected: wanted, listed } },
    );
  }
  const delegate = runtime.createDelegate(found);
  if (delegate === null) {
    throw new DeviceUnavailableError(
      'EAI_HAL_DEVICE_OPEN_FAILED',
      `libedgetpu could not open ${device.id} (${found.type} ${found.path}); another process may be using it (an Edge TPU serves one process at a time)`,
      `stop the other user of the accelerator, or ${accessFix(found.type)}`,
      { details: { device: device.id, path: found.path } },
    );
  }
  return { delegate, device: found, runtime };
}

/** The name libedgetpu gives the device a probe reported, from its details (or its id). */
export function libedgetpuRecord(device: DeviceInfo): EdgeTpuRecord | undefined {
  const details = device.details ?? {};
  const port = typeof details['port'] === 'string' ? details['port'] : /^edgetpu:usb-(.+)$/u.exec(device.id)?.[1];
  if (details['bus'] === 'usb' || (details['bus'] === undefined && port !== undefined)) {
    return port === undefined ? undefined : { type: 'usb', path: `/sys/bus/usb/devices/${port}` };
  }
  const devicePath = details['devicePath'];
  return typeof devicePath === 'string' ? { type: 'pci', path: devicePath } : undefined;
}

// edgetpu_c.h: enum edgetpu_device_type { EDGETPU_APEX_PCI = 0, EDGETPU_APEX_USB = 1 }.
const PCI = 0;
const USB = 1;

function bindEdgeTpu(koffi: typeof KoffiModule, file: string): EdgeTpuRuntime {
  const lib = koffi.load(file);
  const fn = <T>(signature: string): T => lib.func(signature) as unknown as T;
  // struct edgetpu_device { enum edgetpu_device_type type; const char* path; };
  const Device = koffi.struct({ type: 'int', path: 'const char *' });
  const list = fn<(count: [number]) => Pointer | null>('void *edgetpu_list_devices(_Out_ size_t *num_devices)');
  const freeDevices = fn<(devices: Pointer) => void>('void edgetpu_free_devices(void *devices)');
  const create = fn<(type: number, name: string, options: null, count: number) => Pointer | null>('void *edgetpu_create_delegate(int type, const char *name, void *options, size_t num_options)');
  const version = fn<() => string | null>('const char *edgetpu_version(void)');
  return {
    path: file,
    version: version() ?? 'unknown',
    listDevices: () => {
      const count: [number] = [0];
      const devices = list(count);
      if (devices === null || count[0] === 0) return [];
      try {
        const raw = koffi.decode(devices, Device, count[0]) as { type: number; path: string | null }[];
        return raw.filter((d) => d.path !== null && (d.type === USB || d.type === PCI)).map((d) => ({ type: d.type === USB ? 'usb' : 'pci', path: d.path as string }));
      } finally {
        freeDevices(devices);
      }
    },
    createDelegate: (device) => create(device.type === 'usb' ? USB : PCI, device.path, null, 0),
    freeDelegate: fn('void edgetpu_free_delegate(void *delegate)'),
  };
}

function accessFix(type: 'usb' | 'pci'): string {
  return type === 'usb'
    ? 'check the USB Accelerator is plugged in (a USB 3 port) and that this user may open it (libedgetpu1-std installs a udev rule for the plugdev group), then load the model again'
    : 'check the apex driver is loaded (`lsmod | grep apex`) and that this user may open /dev/apex_N (the apex group), then load the model again';
}
