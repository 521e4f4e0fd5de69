import { Command } from 'commander';
import { noPowerModesError, readPowerStatus, setPowerMode, type PowerChange, type PowerControl, type PowerStatus } from '../../../drivers/devices/jetson-power.js';
import { SysRoot } from '../../../drivers/hal/sysroot.js';
import { table } from '../format.js';

/** What `powerCommand` may be handed: tests (or a remote shell) bring their own way to run nvpmodel. */
export interface PowerCommandOptions {
  readonly control?: PowerControl;
}

/**
 * `aios power`: the Jetson's power mode (nvpmodel), the modes its board offers and whether
 * jetson_clocks holds the clocks at maximum; `--set <id|NAME>` switches mode with
 * `nvpmodel -m <id>`, as root, on this machine only. Not a Jetson: EAI_POWER_UNSUPPORTED.
 */
export function powerCommand(options: PowerCommandOptions = {}): Command {
  return new Command('power')
    .description('show the Jetson power mode (nvpmodel), the modes this board offers and the jetson_clocks state; --set switches mode')
    .option('--sysroot <dir>', 'read a captured system root instead of this machine (read-only: --set is refused there)', '/')
    .option('--json', 'print the status (or, with --set, what changed) as JSON')
    .option('--set <mode>', 'switch to a power mode by id or name, e.g. 0 or MAXN (runs nvpmodel -m <id>; needs root)')
    .addHelpText('after', `
Examples:
  aios power
  aios power --json | jq '.current.name'
  sudo aios power --set MAXN
  aios power --sysroot test/fixtures/sysroots/jetson-orin-nx-jp6`)
    .action(async (opts: { sysroot: string; json?: boolean; set?: string }) => {
      const sys = await SysRoot.open(opts.sysroot);
      if (opts.set !== undefined) {
        const change = await setPowerMode(sys, opts.set, options.control);
        process.stdout.write(opts.json ? `${JSON.stringify(change, null, 2)}\n` : renderChange(change));
        return;
      }
      const status = await readPowerStatus(sys);
      if (!status.supported) throw noPowerModesError(sys);
      process.stdout.write(opts.json ? `${JSON.stringify(status, null, 2)}\n` : renderStatus(status));
    });
}

function renderStatus(status: PowerStatus): string {
  const mode = status.current === undefined ? 'unknown (nvpmodel -q gave no answer and /var/lib/nvpmodel/status names no mode)' : `${status.current.name} (id ${status.current.id}), from ${status.currentSource ?? '?'}`;
  const gpu = status.gpuClocks;
  const mhz = (hz: number | undefined): string => (hz === undefined ? '?' : `${Math.round(hz / 1e6)}`);
  const clocks = gpu === undefined ? '' : ` (GPU ${mhz(gpu.minHz)}-${mhz(gpu.maxHz)} MHz, now ${mhz(gpu.curHz)} MHz)`;
  let out = `Power mode:    ${mode}\njetson_clocks: ${status.jetsonClocks}${clocks}\n`;
  if (status.modes.length > 0) {
    const rows = status.modes.map((m) => {
      const notes = [...(m.id === status.current?.id ? ['current'] : []), ...(m.id === status.defaultId ? ['default'] : [])];
      return [String(m.id), m.name, notes.join(', ')];
    });
    out += `\n${table(['ID', 'MODE', ''], rows)}`;
  }
  return out;
}

function renderChange(change: PowerChange): string {
  const mode = `${change.mode.name} (id ${change.mode.id})`;
  if (!change.changed) return `Power mode is already ${mode}; nothing to do.\n`;
  const was = change.previous === undefined ? '' : `; it was ${change.previous.name} (id ${change.previous.id})`;
  const reboot = change.rebootRequired ? 'nvpmodel says this mode takes full effect after a reboot (sudo reboot); aios did not reboot.\n' : '';
  return `Power mode set to ${mode}${was}.\n${reboot}`;
}
