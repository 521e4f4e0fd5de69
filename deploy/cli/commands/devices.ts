import { Command } from 'commander';
import { createBuiltinHal } from '../../../drivers/builtin.js';
import { SysRoot } from '../../../drivers/hal/sysroot.js';
import type { DeviceInfo } from '../../../drivers/hal/types.js';
import { formatBytes, table } from '../format.js';

/** `aios devices`: what compute this machine (or a captured system root) has, and whether it is usable. */
export function devicesCommand(): Command {
  return new Command('devices')
    .description('list the compute devices found (CPU, NVIDIA GPUs, Jetson, Coral Edge TPU, FPGA) with their status and, when unusable, the fix')
    .option('--sysroot <dir>', 'probe a captured system root instead of this machine (see scripts/capture-sysroot.sh)', '/')
    .option('--json', 'print an array of DeviceInfo objects')
    .addHelpText('after', `
Examples:
  aios devices
  aios devices --json | jq '.[] | select(.status.state == "ready") | .id'
  aios devices --sysroot test/fixtures/sysroots/jetson-orin-nx-jp6`)
    .action(async (options: { sysroot: string; json?: boolean }) => {
      const sys = await SysRoot.open(options.sysroot);
      const devices = await createBuiltinHal().discover(sys);
      process.stdout.write(options.json ? `${JSON.stringify(devices, null, 2)}\n` : render(devices));
    });
}

function render(devices: readonly DeviceInfo[]): string {
  const rows = devices.map((d) => [
    d.id,
    d.kind,
    d.name,
    d.memoryBytes === undefined ? '-' : formatBytes(d.memoryBytes),
    d.formats.join(',') || '-',
    d.status.state,
  ]);
  let out = table(['ID', 'KIND', 'NAME', 'MEMORY', 'FORMATS', 'STATUS'], rows);
  const problems = devices.filter((d) => d.status.state === 'unavailable');
  for (const d of problems) {
    if (d.status.state !== 'unavailable') continue;
    out += `\n${d.id}: ${d.status.reason}\n  fix: ${d.status.fix}\n`;
  }
  return out;
}
