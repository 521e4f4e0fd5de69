import path from 'node:path';
import type { SysRoot } from './sysroot.js';

/** One PCI function as sysfs shows it under /sys/bus/pci/devices/<address>. */
export interface PciFunction {
  /** Domain:bus:device.function, e.g. `0000:01:00.0`. */
  readonly address: string;
  /** Lower-case hex without 0x, e.g. `10de`. */
  readonly vendor: string;
  readonly device: string;
  /** Six hex digits, e.g. `030000` (VGA controller). */
  readonly classCode: string;
  /** Kernel driver bound to it (`nvidia`, `apex`, `xocl`), if any. */
  readonly driver?: string;
  readonly subsystemVendor?: string;
  readonly subsystemDevice?: string;
}

/** One USB device as sysfs shows it under /sys/bus/usb/devices/<port path>. */
export interface UsbDevice {
  /** Port path such as `1-1` or `2-1.3`; stable for a given physical port. */
  readonly port: string;
  readonly vendor: string;
  readonly product: string;
  readonly manufacturer?: string;
  readonly productName?: string;
  readonly serial?: string;
  readonly busnum?: number;
  readonly devnum?: number;
  /** Negotiated speed in Mbit/s (`480` for USB 2, `5000` for USB 3). */
  readonly speedMbps?: number;
}

/** Every PCI function on the machine, optionally only one vendor's. */
export async function listPci(sys: SysRoot, vendor?: string): Promise<PciFunction[]> {
  const out: PciFunction[] = [];
  for (const address of await sys.list('/sys/bus/pci/devices')) {
    const base = `/sys/bus/pci/devices/${address}`;
    const v = hex(await sys.readAttr(`${base}/vendor`));
    if (v === undefined || (vendor !== undefined && v !== vendor.toLowerCase())) continue;
    const driverLink = await sys.readLink(`${base}/driver`);
    const subsystemVendor = hex(await sys.readAttr(`${base}/subsystem_vendor`));
    const subsystemDevice = hex(await sys.readAttr(`${base}/subsystem_device`));
    out.push({
      address,
      vendor: v,
      device: hex(await sys.readAttr(`${base}/device`)) ?? '',
      classCode: hex(await sys.readAttr(`${base}/class`))?.padStart(6, '0') ?? '',
      ...(driverLink === undefined ? {} : { driver: path.posix.basename(driverLink) }),
      ...(subsystemVendor === undefined ? {} : { subsystemVendor }),
      ...(subsystemDevice === undefined ? {} : { subsystemDevice }),
    });
  }
  return out;
}

/** Every USB device (not interface) on the machine, optionally only those with one vendor id. */
export async function listUsb(sys: SysRoot, vendor?: string): Promise<UsbDevice[]> {
  const out: UsbDevice[] = [];
  for (const port of await sys.list('/sys/bus/usb/devices')) {
    // Interfaces are named `1-1:1.0`; root hubs `usb1`. Only real devices carry idVendor.
    if (port.includes(':')) continue;
    const base = `/sys/bus/usb/devices/${port}`;
    const v = hex(await sys.readAttr(`${base}/idVendor`));
    if (v === undefined || (vendor !== undefined && v !== vendor.toLowerCase())) continue;
    const optional = async (name: string): Promise<string | undefined> => sys.readAttr(`${base}/${name}`);
    const num = (s: string | undefined): number | undefined => (s === undefined || Number.isNaN(Number(s)) ? undefined : Number(s));
    const manufacturer = await optional('manufacturer');
    const productName = await optional('product');
    const serial = await optional('serial');
    const busnum = num(await optional('busnum'));
    const devnum = num(await optional('devnum'));
    const speedMbps = num(await optional('speed'));
    out.push({
      port,
      vendor: v,
      product: hex(await sys.readAttr(`${base}/idProduct`)) ?? '',
      ...(manufacturer === undefined ? {} : { manufacturer }),
      ...(productName === undefined ? {} : { productName }),
      ...(serial === undefined ? {} : { serial }),
      ...(busnum === undefined ? {} : { busnum }),
      ...(devnum === undefined ? {} : { devnum }),
      ...(speedMbps === undefined ? {} : { speedMbps }),
    });
  }
  return out;
}

function hex(value: string | undefined): string | undefined {
  if (value === undefined || value === '') return undefined;
  return value.toLowerCase().replace(/^0x/u, '');
}
