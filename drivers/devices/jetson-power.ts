import { execFile } from 'node:child_process';
import { AiosError } from '../errors.js';
import type { SysRoot } from '../hal/sysroot.js';

/**
 * Jetson power: what the module draws (its INA3221 power monitor, {@link readPowerRails}), the
 * power mode that limits it (nvpmodel) and the jetson_clocks state. Read through a `SysRoot`;
 * changed only by {@link setPowerMode}.
 *
 * Where each fact comes from, cheapest first:
 * - the modes a board offers: `/etc/nvpmodel.conf` (`< POWER_MODEL ID=2 NAME=15W >` headers and
 *   `< PM_CONFIG DEFAULT=2 >`; on JetPack 5/6 a link to `/etc/nvpmodel/nvpmodel_<board>.conf`);
 * - the current mode: `nvpmodel -q` (`NV Power Mode: 15W` then `2`), else the file nvpmodel itself
 *   writes, `/var/lib/nvpmodel/status` (`pmode:0002`), which needs no root and no child process;
 * - jetson_clocks: it pins every clock's floor to its ceiling, so it is on when the GPU devfreq
 *   node (`/sys/class/devfreq/<gpu>/`) has `min_freq == max_freq` (and cpu0's
 *   `scaling_min_freq == scaling_max_freq` where cpufreq is visible). `jetson_clocks --show` says
 *   the same but needs root; it is read only where sysfs has no GPU devfreq node.
 */
export class PowerError extends AiosError {}

export interface PowerMode {
  readonly id: number;
  readonly name: string;
}

/** The modes one board's nvpmodel.conf defines, in file order, and its boot default. */
export interface NvpmodelConf {
  readonly modes: readonly PowerMode[];
  readonly defaultId?: number;
}

/** The GPU's devfreq node: where it is and its clocks now, Hz. */
export interface GpuClocks {
  /** The node as seen on the machine, e.g. `/sys/class/devfreq/17000000.gpu`. */
  readonly node: string;
  readonly curHz?: number;
  readonly minHz?: number;
  readonly maxHz?: number;
}

/** One power rail: what the INA3221 monitor measures now, and tegrastats' running mean where it is the source. */
export interface JetsonRail {
  readonly powerW: number;
  readonly averageW?: number;
  readonly voltageV?: number;
  readonly currentA?: number;
}

export type JetsonClocksState = 'on' | 'off' | 'unknown';

export interface PowerStatus {
  /** False when there is no nvpmodel here at all (not a Jetson, or JetPack without nvidia-l4t-nvpmodel). */
  readonly supported: boolean;
  readonly current?: PowerMode;
  readonly currentSource?: 'nvpmodel -q' | '/var/lib/nvpmodel/status';
  readonly modes: readonly PowerMode[];
  readonly defaultId?: number;
  readonly jetsonClocks: JetsonClocksState;
  readonly jetsonClocksSource?: 'sysfs' | 'jetson_clocks --show';
  readonly gpuClocks?: GpuClocks;
}

/** What a mode change did. `rebootRequired`: nvpmodel said the mode applies fully only after a reboot. */
export interface PowerChange {
  readonly previous?: PowerMode;
  readonly mode: PowerMode;
  readonly changed: boolean;
  readonly rebootRequired: boolean;
  /** nvpmodel's own words, for the log. */
  readonly output: string;
}

/**
 * How a mode change reaches the machine: the command runner and who we run as. The default runs
 * `nvpmodel` here; tests (or a remote shell) pass their own. Calls never overlap.
 */
export interface PowerControl {
  run(file: string, args: readonly string[], input?: string): Promise<{ readonly stdout: string; readonly stderr: string; readonly exitCode: number }>;
  isRoot(): boolean;
}

export const NVPMODEL_CONF = '/etc/nvpmodel.conf';
export const NVPMODEL_STATUS = '/var/lib/nvpmodel/status';

/** The POWER_MODEL headers and PM_CONFIG default of an nvpmodel.conf; bodies are nvpmodel's business. */
export function parseNvpmodelConf(text: string): NvpmodelConf {
  const modes: PowerMode[] = [];
  for (const m of text.matchAll(/^<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+?)\s*>/gmu)) {
    modes.push({ id: Number(m[1]), name: m[2] ?? '' });
  }
  const def = /^<\s*PM_CONFIG\s+DEFAULT=(\d+)\s*>/mu.exec(text)?.[1];
  return def === undefined ? { modes } : { modes, defaultId: Number(def) };
}

/**
 * `nvpmodel -q`: `NV Power Mode: <NAME>` and the id on the next line, possibly after `NVPM WARN`
 * lines. The name alone when no id follows.
 */
export function parseNvpmodelQuery(stdout: string): { readonly name: string; readonly id?: number } | undefined {
  const lines = stdout.split('\n').map((l) => l.trim());
  const at = lines.findIndex((l) => /^NV Power Mode:\s*\S/u.test(l));
  if (at < 0) return undefined;
  const name = (lines[at] ?? '').replace(/^NV Power Mode:\s*/u, '');
  const id = lines.slice(at + 1).find((l) => l !== '');
  return id !== undefined && /^\d+$/u.test(id) ? { name, id: Number(id) } : { name };
}

/** The mode id in `/var/lib/nvpmodel/status` (`pmode:0002`, sometimes followed by `fmode:...`). */
export function parseNvpmodelStatus(text: string): number | undefined {
  const m = /pmode:(\d+)/u.exec(text);
  return m === null ? undefined : Number(m[1]);
}

/** The `GPU MinFreq=... MaxFreq=... CurrentFreq=...` line of `jetson_clocks --show`, Hz. */
export function parseJetsonClocksShow(stdout: string): { readonly gpu?: { readonly minHz: number; readonly maxHz: number; readonly curHz: number }; readonly powerMode?: string } {
  const gpu = /^GPU MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)/mu.exec(stdout);
  const mode = /^NV Power Mode:\s*(\S+)/mu.exec(stdout)?.[1];
  return {
    ...(gpu === null ? {} : { gpu: { minHz: Number(gpu[1]), maxHz: Number(gpu[2]), curHz: Number(gpu[3]) } }),
    ...(mode === undefined ? {} : { powerMode: mode }),
  };
}

/**
 * The integrated GPU's devfreq node: `17000000.gpu` (Orin, JetPack 6), `17000000.ga10b` (Orin,
 * JetPack 5), `17000000.gv11b` (Xavier), `17000000.gp10b` (TX2), `57000000.gpu` (Nano, TX1).
 * JetPack 6 also lists the video engines there (`15480000.nvdec`, `15340000.vic`): not the GPU.
 */
export async function readGpuClocks(sys: SysRoot): Promise<GpuClocks | undefined> {
  const name = (await sys.list('/sys/class/devfreq')).find((n) => /^[0-9a-f]+\.(?:gpu|ga10b|gv11b|gp10b|gm20b)$/u.test(n));
  if (name === undefined) return undefined;
  const node = `/sys/class/devfreq/${name}`;
  const hz = async (attr: string): Promise<number | undefined> => toNumber(await sys.readAttr(`${node}/${attr}`));
  const [curHz, minHz, maxHz] = await Promise.all([hz('cur_freq'), hz('min_freq'), hz('max_freq')]);
  return { node, ...(curHz === undefined ? {} : { curHz }), ...(minHz === undefined ? {} : { minHz }), ...(maxHz === undefined ? {} : { maxHz }) };
}

/**
 * Everything about power this machine will say without root: modes, current mode, jetson_clocks.
 * With `query: false` no tool is run at all (telemetry reads this once a second); otherwise
 * `nvpmodel -q` is asked first because it is the authority when the status file is stale.
 */
export async function readPowerStatus(sys: SysRoot, options: { readonly query?: boolean } = {}): Promise<PowerStatus> {
  const query = options.query ?? true;
  const confText = await sys.readText(NVPMODEL_CONF);
  const conf = parseNvpmodelConf(confText ?? '');
  let current: PowerMode | undefined;
  let currentSource: PowerStatus['currentSource'];
  const asked = query ? await sys.command('nvpmodel', ['-q']) : undefined;
  const answer = asked?.exitCode === 0 ? parseNvpmodelQuery(asked.stdout) : undefined;
  if (answer !== undefined) {
    const id = answer.id ?? conf.modes.find((m) => m.name === answer.name)?.id;
    if (id !== undefined) [current, currentSource] = [{ id, name: answer.name }, 'nvpmodel -q'];
  }
  if (current === undefined) {
    const id = parseNvpmodelStatus((await sys.readText(NVPMODEL_STATUS)) ?? '');
    const mode = conf.modes.find((m) => m.id === id);
    if (mode !== undefined) [current, currentSource] = [mode, NVPMODEL_STATUS];
  }

  const gpuClocks = await readGpuClocks(sys);
  let jetsonClocks: JetsonClocksState = 'unknown';
  let jetsonClocksSource: PowerStatus['jetsonClocksSource'];
  if (gpuClocks?.minHz !== undefined && gpuClocks.maxHz !== undefined) {
    const cpuMin = toNumber(await sys.readAttr('/sys/devices/system/cpu/cpu0/cpufreq/scaling_min_freq'));
    const cpuMax = toNumber(await sys.readAttr('/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq'));
    const cpuPinned = cpuMin === undefined || cpuMax === undefined || cpuMin === cpuMax;
    [jetsonClocks, jetsonClocksSource] = [gpuClocks.minHz === gpuClocks.maxHz && cpuPinned ? 'on' : 'off', 'sysfs'];
  } else if (query) {
    const shown = await sys.command('jetson_clocks', ['--show']);
    const gpu = shown?.exitCode === 0 ? parseJetsonClocksShow(shown.stdout).gpu : undefined;
    if (gpu !== undefined) [jetsonClocks, jetsonClocksSource] = [gpu.minHz === gpu.maxHz ? 'on' : 'off', 'jetson_clocks --show'];
  }

  return {
    supported: confText !== undefined || asked !== undefined,
    ...(current === undefined ? {} : { current, currentSource }),
    modes: conf.modes,
    ...(conf.defaultId === undefined ? {} : { defaultId: conf.defaultId }),
    jetsonClocks,
    ...(jetsonClocksSource === undefined ? {} : { jetsonClocksSource }),
    ...(gpuClocks === undefined ? {} : { gpuClocks }),
  };
}

/**
 * The mode `target` names: an id (`2`) or a name, case-insensitive (`15w`, `MAXN`). Throws
 * EAI_POWER_UNKNOWN_MODE listing the board's modes.
 */
export function resolvePowerMode(modes: readonly PowerMode[], target: string): PowerMode {
  const wanted = target.trim();
  const found = /^\d+$/u.test(wanted) ? modes.find((m) => m.id === Number(wanted)) : modes.find((m) => m.name.toLowerCase() === wanted.toLowerCase());
  if (found !== undefined) return found;
  throw new PowerError('EAI_POWER_UNKNOWN_MODE', `'${target}' is not a power mode of this board. Its modes are ${modes.map((m) => `${m.id} ${m.name}`).join(', ')}: pass one of those ids or names.`, { details: { target, modes } });
}

/**
 * Switches the power mode with `nvpmodel -m <id>`. Checks first, in this order: the board has
 * modes (EAI_POWER_UNSUPPORTED), `target` is one of them (EAI_POWER_UNKNOWN_MODE), `sys` is this
 * machine (EAI_POWER_NOT_LIVE: a captured root cannot be changed, unless the caller brings its
 * own `control`), we are root (EAI_POWER_NOT_ROOT). Asking for the current mode changes nothing.
 * nvpmodel asks on stdin whether to reboot when a mode needs one; we answer NO and report
 * `rebootRequired`, because rebooting a vehicle computer is the operator's call.
 */
export async function setPowerMode(sys: SysRoot, target: string, control?: PowerControl): Promise<PowerChange> {
  const status = await readPowerStatus(sys);
  if (!status.supported || status.modes.length === 0) throw noPowerModesError(sys);
  const mode = resolvePowerMode(status.modes, target);
  if (control === undefined && !sys.isLive) {
    throw new PowerError('EAI_POWER_NOT_LIVE', `'${sys.root}' is a captured system root, so its power mode cannot be changed. Run 'aios power --set ${target}' on the Jetson itself, without --sysroot.`, { details: { root: sys.root } });
  }
  const ctl = control ?? LOCAL_POWER_CONTROL;
  if (!ctl.isRoot()) {
    throw new PowerError('EAI_POWER_NOT_ROOT', `Switching to ${mode.name} runs 'nvpmodel -m ${mode.id}', which needs root. Run it again with sudo: sudo aios power --set ${target}`, { details: { mode } });
  }
  const previous = status.current;
  if (previous?.id === mode.id) return { ...(previous === undefined ? {} : { previous }), mode, changed: false, rebootRequired: false, output: '' };

  const result = await ctl.run('nvpmodel', ['-m', String(mode.id)], 'NO\n');
  const output = `${result.stdout}${result.stderr}`;
  if (result.exitCode === 127) throw noPowerModesError(sys);
  const error = output.split('\n').find((l) => /NVPM ERROR/u.test(l));
  if (result.exitCode !== 0 || error !== undefined) {
    throw new PowerError('EAI_POWER_SET_FAILED', `'nvpmodel -m ${mode.id}' failed (exit ${result.exitCode})${error === undefined ? '' : `: ${error.trim()}`}. Check the mode with 'sudo nvpmodel -q'; run 'sudo nvpmodel -m ${mode.id}' by hand to see nvpmodel's full output.`, { details: { mode, exitCode: result.exitCode, output } });
  }
  return { ...(previous === undefined ? {} : { previous }), mode, changed: true, rebootRequired: /reboot/iu.test(output), output };
}

/**
 * The module's power rails from its INA3221 monitor, by label, from either driver: `ina3221`
 * (hwmon, JetPack 5/6: `/sys/bus/i2c/drivers/ina3221/<bus-addr>/hwmon/hwmon<K>/` with
 * `in<N>_label`, `in<N>_input` mV, `curr<N>_input` mA) or `ina3221x` (IIO, JetPack 4:
 * `.../ina3221x/<bus-addr>/iio:device<K>/` with `rail_name_<N>`, `in_power<N>_input` mW,
 * `in_voltage<N>_input`, `in_current<N>_input`). Channels labelled `NC` are not connected.
 */
export async function readPowerRails(sys: SysRoot): Promise<Record<string, JetsonRail>> {
  const rails = new Map<string, JetsonRail>();
  const hwmonDriver = '/sys/bus/i2c/drivers/ina3221';
  for (const chip of (await sys.list(hwmonDriver)).filter(isI2cClient)) {
    for (const hwmon of (await sys.list(`${hwmonDriver}/${chip}/hwmon`)).filter((h) => /^hwmon\d+$/u.test(h))) {
      const dir = `${hwmonDriver}/${chip}/hwmon/${hwmon}`;
      for (const file of await sys.list(dir)) {
        const channel = /^in(\d+)_label$/u.exec(file)?.[1];
        if (channel === undefined) continue;
        const label = await sys.readAttr(`${dir}/${file}`);
        const mV = toNumber(await sys.readAttr(`${dir}/in${channel}_input`));
        const mA = toNumber(await sys.readAttr(`${dir}/curr${channel}_input`));
        // Channel 7, "sum of shunt voltages", has a label and a voltage but no current: not a rail.
        if (label === undefined || label === '' || label === 'NC' || mV === undefined || mA === undefined) continue;
        rails.set(label, { powerW: (mV * mA) / 1e6, voltageV: mV / 1000, currentA: mA / 1000 });
      }
    }
  }
  const iioDriver = '/sys/bus/i2c/drivers/ina3221x';
  for (const chip of (await sys.list(iioDriver)).filter(isI2cClient)) {
    for (const iio of (await sys.list(`${iioDriver}/${chip}`)).filter((d) => /^iio:device\d+$/u.test(d))) {
      const dir = `${iioDriver}/${chip}/${iio}`;
      for (const file of await sys.list(dir)) {
        const channel = /^rail_name_(\d+)$/u.exec(file)?.[1];
        if (channel === undefined) continue;
        const label = await sys.readAttr(`${dir}/${file}`);
        const mW = toNumber(await sys.readAttr(`${dir}/in_power${channel}_input`));
        if (label === undefined || label === '' || mW === undefined) continue;
        const mV = toNumber(await sys.readAttr(`${dir}/in_voltage${channel}_input`));
        const mA = toNumber(await sys.readAttr(`${dir}/in_current${channel}_input`));
        rails.set(label, { powerW: mW / 1000, ...(mV === undefined ? {} : { voltageV: mV / 1000 }), ...(mA === undefined ? {} : { currentA: mA / 1000 }) });
      }
    }
  }
  return Object.fromEntries(rails);
}

/** Module input power, W: the `VDD_IN` or `POM_5V_IN` rail, else the sum of the rails (AGX boards have no input rail). */
export function inputPowerW(rails: Readonly<Record<string, JetsonRail>>): number | undefined {
  const input = rails['VDD_IN'] ?? rails['POM_5V_IN'];
  if (input !== undefined) return input.powerW;
  const all = Object.values(rails);
  return all.length === 0 ? undefined : all.reduce((sum, r) => sum + r.powerW, 0);
}

/** EAI_POWER_UNSUPPORTED: the machine (or captured root) has no nvpmodel and no nvpmodel.conf. */
export function noPowerModesError(sys: SysRoot): PowerError {
  return new PowerError('EAI_POWER_UNSUPPORTED', `No Jetson power modes on ${sys.isLive ? 'this machine' : `'${sys.root}'`}: ${NVPMODEL_CONF} is missing and nvpmodel is not installed. Power modes exist on NVIDIA Jetson boards with JetPack (package nvidia-l4t-nvpmodel).`, { details: { root: sys.root } });
}

/** Runs nvpmodel on this machine; a missing binary is exit code 127, as a shell would say. */
export const LOCAL_POWER_CONTROL: PowerControl = {
  isRoot: () => process.getuid?.() === 0,
  run: (file, args, input) => new Promise((resolve) => {
    const child = execFile(file, [...args], { timeout: 30_000, encoding: 'utf8' }, (error, stdout, stderr) => {
      if (error && (error as NodeJS.ErrnoException).code === 'ENOENT') return resolve({ stdout: '', stderr: '', exitCode: 127 });
      resolve({ stdout, stderr, exitCode: error ? (typeof error.code === 'number' ? error.code : 1) : 0 });
    });
    // A command that exits (or is missing) before reading its input closes the pipe: EPIPE on
    // stdin is expected then, and the exit status above already says what happened.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(input ?? '');
  }),
};

function toNumber(text: string | undefined): number | undefined {
  if (text === undefined || !/^-?\d+$/u.test(text)) return undefined;
  return Number(text);
}

/** An I2C client folder (`1-0040`), not the driver's `bind`, `uevent` or `module` entries. */
function isI2cClient(name: string): boolean {
  return /^\d+-[0-9a-f]{4}$/u.test(name);
}
