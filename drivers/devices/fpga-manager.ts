import { promises as fs } from 'node:fs';
import path from 'node:path';
import { DeviceUnavailableError } from '../errors.js';
import type { CommandOutput, SysRoot } from '../hal/sysroot.js';

/**
 * Programming the programmable logic (PL) of a Zynq UltraScale+ / Kria SoC, the step before XRT
 * can run a kernel there: Alveo cards load their xclbin through XRT itself, SoCs need the PL
 * bitstream (and a device-tree overlay with a zocl node) first.
 *
 * Two ways, and which one applies:
 * - **dfx-mgr / `xmutil`** (Certified Ubuntu for Kria, PetaLinux with dfx-mgr): the supported way.
 *   An "accelerated application" is a folder `/lib/firmware/xilinx/<app>/` holding the
 *   `.bit.bin`, the `.dtbo` overlay and `shell.json`; `xmutil unloadapp && xmutil loadapp <app>`
 *   swaps it in, overlay and zocl included. When `xmutil` is installed and the name is such an app,
 *   this is what {@link loadBitstream} does.
 * - **the FPGA manager's sysfs files** (Xilinx kernels): write the flags (`0` full, `1` partial
 *   reconfiguration) to `/sys/class/fpga_manager/fpgaN/flags` and a file name relative to
 *   /lib/firmware to `.../firmware`; the kernel programs the PL synchronously, and `.../state`
 *   reads `operating` when it worked. This loads the bitstream only (no overlay, so no zocl node);
 *   used for a plain `.bit.bin`. Under dfx-mgr prefer an app, so dfx-mgr knows what is loaded.
 */
export interface BitstreamRunner {
  /** Writes one sysfs attribute; `sysPath` is as the machine sees it (`/sys/class/...`). */
  write(sysPath: string, value: string): Promise<void>;
  /** Runs a tool (`xmutil`); undefined when it is not installed. */
  command(file: string, args: readonly string[]): Promise<CommandOutput | undefined>;
}

export interface BitstreamLoad {
  /** The manager's entry under /sys/class/fpga_manager (`fpga0`). */
  readonly manager: string;
  readonly method: 'xmutil' | 'sysfs';
  readonly firmware: string;
  /** What was written (`[path, value]`) or run (`['xmutil', 'loadapp ...']`), in order. */
  readonly actions: readonly (readonly [string, string])[];
  /** The manager's state afterwards (`operating`). */
  readonly state: FpgaManagerState;
  readonly notes: readonly string[];
}

export interface FpgaManagerState {
  readonly manager: string;
  /** The kernel's word for it (`operating`, `write error`), or `missing` when unreadable. */
  readonly state: string;
  /** Whether the PL is programmed and running. */
  readonly ok: boolean;
  readonly meaning: string;
}

/** Where dfx-mgr keeps accelerated applications. */
export const APP_FOLDER = '/lib/firmware/xilinx';
const FIRMWARE_FOLDER = '/lib/firmware';
const XMUTIL_PATHS = ['/usr/bin/xmutil', '/usr/sbin/xmutil', '/usr/local/bin/xmutil', '/bin/xmutil'];

/**
 * Loads `firmwareName` into the PL behind `manager` (`fpga0`, `fpga:fpga0` or its sysfs path): by
 * `xmutil` when it is installed and the name is an app under /lib/firmware/xilinx, otherwise
 * through the manager's sysfs files (full reconfiguration unless `options.partial`). Resolves with
 * the state afterwards, `operating`.
 *
 * Writes only on the live root (`/`): on a fixture root the caller must inject `runner.write`
 * (tests record what would be written and play the kernel's part). Throws DeviceUnavailableError
 * EAI_FPGA_MANAGER_NOT_FOUND, EAI_FPGA_FIRMWARE_NOT_FOUND (not in /lib/firmware, where the kernel's
 * firmware loader looks), EAI_FPGA_LOAD_FAILED (with the state and what it means) or
 * EAI_FPGA_WRITE_REFUSED. One load at a time per manager: the caller serialises.
 */
export async function loadBitstream(sys: SysRoot, manager: string, firmwareName: string, runner: Partial<BitstreamRunner> = {}, options: { readonly partial?: boolean } = {}): Promise<BitstreamLoad> {
  const entry = managerEntry(manager);
  const base = `/sys/class/fpga_manager/${entry}`;
  if (!(await sys.exists(base))) {
    const present = (await sys.list('/sys/class/fpga_manager')).join(', ') || 'none';
    throw new DeviceUnavailableError('EAI_FPGA_MANAGER_NOT_FOUND', `no FPGA manager '${entry}' (${base} is missing; present: ${present})`, 'use a manager listed under /sys/class/fpga_manager; if there is none, the kernel lacks the PL driver (CONFIG_FPGA_MGR_ZYNQMP_FPGA on Zynq UltraScale+)', { details: { manager: entry } });
  }
  if (firmwareName === '' || path.posix.isAbsolute(firmwareName) || firmwareName.split('/').includes('..')) {
    throw new DeviceUnavailableError('EAI_FPGA_FIRMWARE_NOT_FOUND', `firmware name '${firmwareName}' must be a path inside /lib/firmware, such as 'design.bit.bin' or an app name`, 'copy the bitstream into /lib/firmware and pass its name relative to that folder', { details: { firmware: firmwareName } });
  }
  const io = { write: runner.write ?? defaultWriter(sys), command: runner.command ?? ((file: string, args: readonly string[]) => sys.command(file, args, 120_000)) };
  const isApp = !firmwareName.includes('/') && (await isFolder(sys, `${APP_FOLDER}/${firmwareName}`));
  const xmutil = await hasXmutil(sys);
  if (isApp && xmutil) return loadApp(sys, entry, firmwareName, io);
  if (isApp) {
    throw new DeviceUnavailableError('EAI_FPGA_FIRMWARE_NOT_FOUND', `'${firmwareName}' is an accelerated-application folder (${APP_FOLDER}/${firmwareName}), which dfx-mgr loads, and xmutil is not installed`, `install dfx-mgr (\`sudo apt install xlnx-dfx-mgr\` on Ubuntu for Kria) and run \`sudo xmutil loadapp ${firmwareName}\`, or pass the .bit.bin inside that folder`, { details: { firmware: firmwareName } });
  }
  const file = `${FIRMWARE_FOLDER}/${firmwareName}`;
  if (!(await sys.exists(file)) || (await isFolder(sys, file))) {
    throw new DeviceUnavailableError('EAI_FPGA_FIRMWARE_NOT_FOUND', `firmware '${firmwareName}' not found in /lib/firmware (${file}); the kernel's firmware loader only looks there`, 'copy the bitstream there as a .bit.bin (from a .bit: `bootgen -arch zynqmp -process_bitstream bin -image design.bif`) and pass its name relative to /lib/firmware', { details: { firmware: firmwareName } });
  }
  if (!(await sys.exists(`${base}/firmware`))) {
    throw new DeviceUnavailableError('EAI_FPGA_LOAD_FAILED', `${base} has no 'firmware' file: loading by name through sysfs is a Xilinx kernel feature this kernel lacks`, 'load the bitstream with a device-tree overlay whose fpga-region names it (firmware-name), or with dfx-mgr (`xmutil loadapp`)', { details: { manager: entry } });
  }
  const actions: [string, string][] = [];
  const notes: string[] = [];
  if (xmutil) notes.push('dfx-mgr (xmutil) is installed: it does not know about a bitstream loaded through sysfs; package the design as an app and use `xmutil loadapp` to keep it in the picture');
  const flags = options.partial === true ? '1' : '0';
  if (await sys.exists(`${base}/flags`)) actions.push([`${base}/flags`, flags]);
  else if (options.partial === true) {
    throw new DeviceUnavailableError('EAI_FPGA_LOAD_FAILED', `${base} has no 'flags' file, so partial reconfiguration cannot be requested`, 'load a full bitstream, or use dfx-mgr for partial reconfiguration', { details: { manager: entry } });
  }
  actions.push([`${base}/firmware`, firmwareName]);
  let writeError: unknown;
  for (const [p, value] of actions) {
    try {
      await io.write(p, value);
    } catch (error) {
      if (error instanceof DeviceUnavailableError) throw error;
      writeError = error;
      break;
    }
  }
  const state = await fpgaManagerState(sys, entry);
  if (writeError !== undefined || !state.ok) {
    const why = writeError instanceof Error ? `; the write failed: ${writeError.message}` : '';
    throw loadFailed(entry, firmwareName, state, why, writeError);
  }
  return { manager: entry, method: 'sysfs', firmware: firmwareName, actions, state, notes };
}

/** The manager's state now, with what it means. Reads only. */
export async function fpgaManagerState(sys: SysRoot, manager: string): Promise<FpgaManagerState> {
  const entry = managerEntry(manager);
  const raw = await sys.readAttr(`/sys/class/fpga_manager/${entry}/state`);
  if (raw === undefined) return { manager: entry, state: 'missing', ok: false, meaning: `no readable /sys/class/fpga_manager/${entry}/state` };
  return { manager: entry, state: raw, ...describeState(raw) };
}

/**
 * What an FPGA manager state means (the strings of `state_str[]` in Linux drivers/fpga/fpga-mgr.c;
 * kernels before 4.10 wrote them with underscores, `write_err`, which are read the same).
 */
export function describeState(state: string): { ok: boolean; meaning: string } {
  const s = state.trim().replace(/_/gu, ' ').replace(/ err$/u, ' error');
  return { ok: s === 'operating', meaning: STATE_MEANINGS[s] ?? `an FPGA manager state this driver does not know ('${state}')` };
}

const STATE_MEANINGS: Readonly<Record<string, string>> = {
  operating: 'the PL is programmed and running',
  unknown: 'the driver cannot tell whether the PL is programmed (normal before the first load after boot)',
  'power off': 'the PL is powered off',
  'power up': 'the PL is powering up',
  reset: 'the PL is held in reset',
  'firmware request': 'the kernel is reading the bitstream file',
  'firmware request error': 'the kernel could not read the bitstream from /lib/firmware (missing file, or no permission)',
  'parse header': 'the bitstream header is being parsed',
  'parse header error': 'the bitstream header could not be parsed: not a bitstream for this device, or corrupt',
  'write init': 'the PL is being prepared for programming',
  'write init error': 'the PL could not be prepared for programming (full vs partial flags wrong, or the PL is in use)',
  write: 'the bitstream is being written',
  'write error': 'writing the bitstream failed: built for another device, corrupt, or encrypted/authenticated in a way the boot configuration rejects',
  'write complete': 'the bitstream was written and the PL is starting',
  'write complete error': 'the PL did not come up after the bitstream was written (wrong part, or a .bit given where a .bit.bin is needed)',
};

async function loadApp(sys: SysRoot, entry: string, app: string, io: BitstreamRunner): Promise<BitstreamLoad> {
  const actions: [string, string][] = [];
  // unloadapp fails when nothing is loaded; that is fine, the slot is free either way.
  actions.push(['xmutil', 'unloadapp']);
  await io.command('xmutil', ['unloadapp']);
  actions.push(['xmutil', `loadapp ${app}`]);
  const out = await io.command('xmutil', ['loadapp', app]);
  const state = await fpgaManagerState(sys, entry);
  if (out === undefined || out.exitCode !== 0 || !state.ok) {
    const said = out === undefined ? '; xmutil did not run' : out.exitCode !== 0 ? `; xmutil loadapp exited ${out.exitCode}: ${out.stdout.trim().split('\n').slice(-3).join(' | ')}` : '';
    throw loadFailed(entry, app, state, said);
  }
  return { manager: entry, method: 'xmutil', firmware: app, actions, state, notes: [] };
}

function loadFailed(entry: string, firmware: string, state: FpgaManagerState, extra: string, cause?: unknown): DeviceUnavailableError {
  return new DeviceUnavailableError(
    'EAI_FPGA_LOAD_FAILED',
    `loading '${firmware}' into ${entry} failed: its state is '${state.state}' (${state.meaning})${extra}`,
    'check that the bitstream was built for this board\'s part (`dmesg | tail` shows the driver\'s message), that it is a .bit.bin, and that nothing else holds the PL (`sudo xmutil listapps`)',
    { ...(cause === undefined ? {} : { cause }), details: { manager: entry, firmware, state: state.state } },
  );
}

function managerEntry(manager: string): string {
  const entry = path.posix.basename(manager.replace(/^fpga:/u, ''));
  if (!/^fpga\d+$/u.test(entry)) {
    throw new DeviceUnavailableError('EAI_FPGA_MANAGER_NOT_FOUND', `'${manager}' does not name an FPGA manager`, 'pass an entry of /sys/class/fpga_manager such as fpga0 (or the device id fpga:fpga0)', { details: { manager } });
  }
  return entry;
}

function defaultWriter(sys: SysRoot): (sysPath: string, value: string) => Promise<void> {
  return async (sysPath, value) => {
    if (!sys.isLive) {
      throw new DeviceUnavailableError('EAI_FPGA_WRITE_REFUSED', `refusing to write ${sysPath} under the fixture root ${sys.root}: sysfs writes happen only on the live root`, 'pass runner.write to record or simulate the writes, or open the live root (/)', { details: { path: sysPath, root: sys.root } });
    }
    await fs.writeFile(sys.resolve(sysPath), value);
  };
}

async function hasXmutil(sys: SysRoot): Promise<boolean> {
  for (const p of XMUTIL_PATHS) if (await sys.exists(p)) return true;
  return false;
}

async function isFolder(sys: SysRoot, p: string): Promise<boolean> {
  return fs.stat(sys.resolve(p)).then((s) => s.isDirectory(), () => false);
}
