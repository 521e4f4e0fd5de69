import path from 'node:path';
import { listPci, type PciFunction } from '../hal/buses.js';
import type { DeviceInfo, DeviceProbe, DeviceStatus, ModelFormat } from '../hal/types.js';
import type { SysRoot } from '../hal/sysroot.js';
import { readFpgaTelemetry } from './fpga-telemetry.js';

/** FPGAs run xclbin containers (bitstream plus kernel metadata) through Xilinx XRT. */
export const FPGA_FORMATS: readonly ModelFormat[] = ['xclbin'];

/**
 * Xilinx/AMD FPGAs that XRT can drive: Alveo cards on PCIe and Zynq UltraScale+ SoCs (Kria).
 *
 * Alveo (vendor `10ee`): each card shows a management function bound to `xclmgmt` and a user
 * function bound to `xocl` (e.g. `0000:3b:00.0` / `0000:3b:00.1`); one device per card, id
 * `fpga:<user function address>`. The card comes from the PCI device id, or from the shell's
 * `rom.*`/`VBNV` attribute, and its HBM/DDR size from a table. Ready needs XRT's user-space
 * library (`libxrt_coreutil.so.2`, normally under /opt/xilinx/xrt/lib) and `xocl` on the user
 * function.
 *
 * SoC FPGA: a `/sys/class/fpga_manager/fpgaN` that is not an Alveo card's own manager (xclmgmt
 * registers one too), named after the device tree. Ready needs XRT and its embedded driver `zocl`.
 * `memoryBytes` is the CMA pool (`CmaTotal`), where zocl allocates buffers shared with the fabric.
 *
 * `details`: `bus`, addresses, `vbnv`/`shell`, `fpgaPart`, `xrtVersion`, `driverVersion`,
 * `renderNode`, `fpgaManagerState` where readable. Reads files only, plus `xbutil --version` when
 * XRT is installed but its version.json is not.
 *
 * Telemetry (Alveo XMC sensors, Zynq AMS temperatures, board power) is read by {@link readFpgaTelemetry}.
 */
export const fpgaProbe: DeviceProbe = {
  kind: 'fpga',
  async probe(sys: SysRoot): Promise<DeviceInfo[]> {
    const cards = await alveoCards(sys);
    const socs = await socManagers(sys);
    if (cards.length === 0 && socs.length === 0) return [];
    const xrt = await findXrt(sys);
    const alveo = await Promise.all(cards.map((card) => alveoDevice(sys, card, xrt)));
    const soc = await Promise.all(socs.map((manager) => socDevice(sys, manager, xrt)));
    return [...alveo, ...soc];
  },
  telemetry: (sys, device) => readFpgaTelemetry(sys, device),
};

interface AlveoModel {
  readonly name: string;
  readonly hbmBytes: number;
  readonly ddrBytes: number;
}

const GiB = 1024 ** 3;
const U200: AlveoModel = { name: 'Alveo U200', hbmBytes: 0, ddrBytes: 64 * GiB };
const U250: AlveoModel = { name: 'Alveo U250', hbmBytes: 0, ddrBytes: 64 * GiB };
const U280: AlveoModel = { name: 'Alveo U280', hbmBytes: 8 * GiB, ddrBytes: 32 * GiB };
const U50: AlveoModel = { name: 'Alveo U50', hbmBytes: 8 * GiB, ddrBytes: 0 };
const U55C: AlveoModel = { name: 'Alveo U55C', hbmBytes: 16 * GiB, ddrBytes: 0 };

/** PCI device ids (mgmt, user) from XRT's xocl/xclmgmt id tables (devices.h). */
const ALVEO_IDS: Readonly<Record<string, AlveoModel>> = {
  '5000': U200, '5001': U200, '5004': U250, '5005': U250, '500c': U280, '500d': U280,
  '5020': U50, '5021': U50, '505c': U55C, '505d': U55C,
};
const MODELS_BY_BOARD: Readonly<Record<string, AlveoModel>> = { u200: U200, u250: U250, u280: U280, u50: U50, u55c: U55C };

const XRT_LIBRARY = 'libxrt_coreutil.so.2';
const XRT_OPT_LIBRARY = `/opt/xilinx/xrt/lib/${XRT_LIBRARY}`;

interface Xrt {
  readonly library?: string;
  readonly version?: string;
}

interface AlveoCard {
  readonly user: PciFunction;
  readonly mgmt?: PciFunction;
}

interface FpgaManager {
  readonly entry: string;
  readonly name: string;
  readonly state?: string;
}

async function alveoCards(sys: SysRoot): Promise<AlveoCard[]> {
  // Functions of one card share domain:bus:device and differ in the function number.
  const slots = new Map<string, PciFunction[]>();
  for (const fn of await listPci(sys, '10ee')) {
    const slot = fn.address.replace(/\.\d+$/u, '');
    slots.set(slot, [...(slots.get(slot) ?? []), fn]);
  }
  const cards: AlveoCard[] = [];
  for (const fns of slots.values()) {
    // Other 10ee functions (a dev board's PCIe IP, a SmartNIC) are not XRT cards; keep the ones
    // XRT knows by id, by driver, or by the "processing accelerator" class.
    const known = fns.filter(
      (f) => ALVEO_IDS[f.device] !== undefined || f.driver === 'xocl' || f.driver === 'xclmgmt' || f.classCode.startsWith('12'),
    );
    if (known.length === 0) continue;
    const mgmt = known.find((f) => f.driver === 'xclmgmt') ?? known.find((f) => f.address.endsWith('.0') && known.length > 1);
    const user = known.find((f) => f.driver === 'xocl') ?? known.find((f) => f !== mgmt) ?? known[0];
    if (user !== undefined) cards.push({ user, ...(mgmt === undefined || mgmt === user ? {} : { mgmt }) });
  }
  return cards;
}

async function alveoDevice(sys: SysRoot, card: AlveoCard, xrt: Xrt): Promise<DeviceInfo> {
  const { user, mgmt } = card;
  const rom = await romOf(sys, user.address);
  const model = ALVEO_IDS[user.device] ?? (mgmt === undefined ? undefined : ALVEO_IDS[mgmt.device]) ?? modelFromVbnv(rom.vbnv);
  const renderNode = await renderNodeOf(sys, user.address);
  const driverVersion = (await sys.readAttr('/sys/module/xocl/version'))?.split(',')[0]?.trim();
  let status: DeviceStatus = { state: 'ready' };
  if (xrt.library === undefined) {
    status = {
      state: 'unavailable',
      reason: `XRT not installed (${XRT_LIBRARY} not found)`,
      fix: 'install the xrt package from Xilinx/AMD for your distribution and source /opt/xilinx/xrt/setup.sh',
    };
  } else if (rom.vbnv?.includes('_GOLDEN')) {
    // A card on its recovery image shows only the management function; flashing comes first.
    status = {
      state: 'unavailable',
      reason: `the card runs its golden (recovery) image ${rom.vbnv}`,
      fix:
        "install the card's deployment platform package and flash it with " +
        `\`sudo xbmgmt program --base --device ${mgmt?.address ?? user.address}\`, then cold reboot`,
    };
  } else if (user.driver !== 'xocl') {
    status = {
      state: 'unavailable',
      reason: `the xocl driver is not bound to user function ${user.address}${user.driver === undefined ? '' : ` (bound to ${user.driver})`}`,
      fix: 'reinstall the xrt package so DKMS builds xocl and xclmgmt for the running kernel, then reboot; check `lsmod | grep xocl`',
    };
  }
  return {
    id: `fpga:${user.address}`,
    kind: 'fpga',
    name: model?.name ?? `Xilinx FPGA card ${user.vendor}:${user.device}`,
    ...(model === undefined ? {} : { memoryBytes: model.hbmBytes + model.ddrBytes }),
    formats: FPGA_FORMATS,
    status,
    details: {
      bus: 'pci',
      pciAddress: user.address,
      ...(mgmt === undefined ? {} : { mgmtAddress: mgmt.address }),
      ...(user.driver === undefined ? {} : { driver: user.driver }),
      ...(rom.vbnv === undefined ? {} : { vbnv: rom.vbnv, shell: rom.vbnv }),
      ...(rom.fpgaPart === undefined ? {} : { fpgaPart: rom.fpgaPart }),
      ...(model === undefined ? {} : { hbmBytes: model.hbmBytes, ddrBytes: model.ddrBytes }),
      ...(renderNode === undefined ? {} : { renderNode }),
      ...(xrt.version === undefined ? {} : { xrtVersion: xrt.version }),
      ...(driverVersion ? { driverVersion } : {}),
    },
  };
}

async function socManagers(sys: SysRoot): Promise<FpgaManager[]> {
  const managers: FpgaManager[] = [];
  for (const entry of await sys.list('/sys/class/fpga_manager')) {
    const base = `/sys/class/fpga_manager/${entry}`;
    const name = (await sys.readAttr(`${base}/name`)) ?? '';
    // xclmgmt registers "Xilinx Alveo FPGA Manager" under the card's PCI function: that card is
    // already reported above, so only managers of the SoC itself count here.
    const target = (await sys.readLink(base)) ?? '';
    if (/alveo/iu.test(name) || /\/pci[0-9a-f]{4}:/u.test(target)) continue;
    const state = await sys.readAttr(`${base}/state`);
    managers.push({ entry, name, ...(state === undefined ? {} : { state }) });
  }
  return managers;
}

async function socDevice(sys: SysRoot, manager: FpgaManager, xrt: Xrt): Promise<DeviceInfo> {
  const board = await sys.readAttr('/proc/device-tree/model');
  const compatible = ((await sys.readText('/proc/device-tree/compatible')) ?? '').split('\0').filter((c) => c !== '');
  const zocl = (await sys.exists('/sys/bus/platform/drivers/zocl')) || (await sys.exists('/sys/module/zocl'));
  const renderNode = (await sys.list('/dev/dri')).find((n) => n.startsWith('renderD'));
  const cma = /^CmaTotal:\s+(\d+)\s*kB/mu.exec((await sys.readText('/proc/meminfo')) ?? '')?.[1];
  const fix =
    'on Certified Ubuntu for Kria: `sudo add-apt-repository ppa:xilinx-apps && sudo apt install xrt-dkms`, then load an ' +
    'accelerated app whose overlay has a zocl node (e.g. `sudo apt install xlnx-firmware-kv260-smartcam && sudo xmutil ' +
    'loadapp kv260-smartcam`); on PetaLinux add the xrt and zocl packages to the root file system';
  let status: DeviceStatus = { state: 'ready' };
  if (xrt.library === undefined) status = { state: 'unavailable', reason: `XRT not installed (${XRT_LIBRARY} not found)`, fix };
  else if (!zocl) status = { state: 'unavailable', reason: 'the zocl driver (XRT for embedded platforms) is not loaded', fix };
  return {
    id: `fpga:${manager.entry}`,
    kind: 'fpga',
    name: socName(compatible, board, manager.name),
    ...(cma === undefined || Number(cma) === 0 ? {} : { memoryBytes: Number(cma) * 1024 }),
    formats: FPGA_FORMATS,
    status,
    details: {
      bus: 'platform',
      fpgaManager: manager.name,
      ...(manager.state === undefined ? {} : { fpgaManagerState: manager.state }),
      ...(board ? { board } : {}),
      zoclLoaded: zocl,
      ...(renderNode === undefined ? {} : { renderNode: `/dev/dri/${renderNode}` }),
      ...(xrt.version === undefined ? {} : { xrtVersion: xrt.version }),
    },
  };
}

/** Starter kits by their carrier-card compatible string; the SOM alone otherwise. */
function socName(compatible: readonly string[], board: string | undefined, managerName: string): string {
  if (compatible.some((c) => c.startsWith('xlnx,zynqmp-sk-kv260'))) return 'Kria KV260 Vision AI Starter Kit (K26 SOM, Zynq UltraScale+)';
  if (compatible.some((c) => c.startsWith('xlnx,zynqmp-sk-kr260'))) return 'Kria KR260 Robotics Starter Kit (K26 SOM, Zynq UltraScale+)';
  if (compatible.some((c) => c.startsWith('xlnx,zynqmp-smk-k26') || c.startsWith('xlnx,zynqmp-sm-k26'))) return 'Kria K26 SOM (Zynq UltraScale+)';
  if (board) return `${board} FPGA`;
  return managerName === '' ? 'FPGA' : managerName;
}

async function findXrt(sys: SysRoot): Promise<Xrt> {
  const library =
    ((await sys.exists(XRT_OPT_LIBRARY)) ? XRT_OPT_LIBRARY : undefined) ??
    (await sys.findLibrary(XRT_LIBRARY)) ??
    (await sys.findLibrary('libxrt_coreutil.so'));
  if (library === undefined) return {};
  const version = versionFromJson(await sys.readText('/opt/xilinx/xrt/version.json')) ?? (await versionFromXbutil(sys));
  return { library, ...(version === undefined ? {} : { version }) };
}

function versionFromJson(text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  try {
    const parsed: unknown = JSON.parse(text);
    const version = typeof parsed === 'object' && parsed !== null ? (parsed as Record<string, unknown>)['BUILD_VERSION'] : undefined;
    return typeof version === 'string' ? version : undefined;
  } catch {
    return undefined;
  }
}

async function versionFromXbutil(sys: SysRoot): Promise<string | undefined> {
  const out = await sys.command('xbutil', ['--version']);
  if (out === undefined || out.exitCode !== 0) return undefined;
  return /^\s*Version\s*:\s*(\S+)/mu.exec(out.stdout)?.[1];
}

/** The feature ROM of an xocl user function: `rom.u.<instance>/{VBNV,FPGA}`. */
async function romOf(sys: SysRoot, address: string): Promise<{ vbnv?: string; fpgaPart?: string }> {
  const base = `/sys/bus/pci/devices/${address}`;
  const rom = (await sys.list(base)).find((e) => e.startsWith('rom.'));
  if (rom === undefined) return {};
  const vbnv = await sys.readAttr(`${base}/${rom}/VBNV`);
  const fpgaPart = await sys.readAttr(`${base}/${rom}/FPGA`);
  return { ...(vbnv ? { vbnv } : {}), ...(fpgaPart ? { fpgaPart } : {}) };
}

function modelFromVbnv(vbnv: string | undefined): AlveoModel | undefined {
  const board = /^xilinx_(u\d+[a-z]?)_/u.exec(vbnv ?? '')?.[1];
  return board === undefined ? undefined : MODELS_BY_BOARD[board];
}

/** `/dev/dri/renderD*` of the user function, via /sys/class/drm or the function's own drm folder. */
async function renderNodeOf(sys: SysRoot, address: string): Promise<string | undefined> {
  for (const node of (await sys.list('/sys/class/drm')).filter((n) => n.startsWith('renderD'))) {
    const target = await sys.readLink(`/sys/class/drm/${node}`);
    const device = await sys.readLink(`/sys/class/drm/${node}/device`);
    if (target?.split('/').includes(address) || (device !== undefined && path.posix.basename(device) === address)) return `/dev/dri/${node}`;
  }
  const nested = (await sys.list(`/sys/bus/pci/devices/${address}/drm`)).find((n) => n.startsWith('renderD'));
  return nested === undefined ? undefined : `/dev/dri/${nested}`;
}
