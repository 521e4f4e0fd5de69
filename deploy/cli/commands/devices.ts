import { Command } from 'commander';
import { createBuiltinHal } from '../../../drivers/builtin.js';
import { SysRoot } from '../../../drivers/hal/sysroot.js';
import type { EngineSupport } from '../../../drivers/hal/registry.js';
import type { DeviceInfo } from '../../../drivers/hal/types.js';
import { formatBytes, table } from '../format.js';

/** `aios devices`: what compute this machine (or a captured system root) has, and whether it is usable. */
export function devicesCommand(): Command {
  return new Command('devices')
    .description('list the compute devices found (CPU, NVIDIA GPUs, Jetson, Coral Edge TPU, FPGA) with their status and, when unusable, the fix')
    .option('--sysroot <dir>', 'probe a captured system root instead of this machine (see scripts/capture-sysroot.sh)', '/')
    .option('--json', 'print an array of DeviceInfo objects')
    .option('--no-engines', "skip checking which inference engines can use each device (checked only when probing this machine, since engines load this machine's libraries)")
    .addHelpText('after', `
Examples:
  aios devices
  aios devices --json | jq '.[] | select(.status.state == "ready") | .id'
  aios devices --sysroot test/fixtures/sysroots/jetson-orin-nx-jp6`)
    .action(async (options: { sysroot: string; json?: boolean; engines: boolean }) => {
      const sys = await SysRoot.open(options.sysroot);
      const hal = createBuiltinHal();
      const devices = await hal.discover(sys);
      const reports: DeviceReport[] = [];
      for (const device of devices) {
        reports.push(options.engines && sys.isLive && device.status.state === 'ready' ? { ...device, engines: await hal.support(device) } : device);
      }
      process.stdout.write(options.json ? `${JSON.stringify(reports, null, 2)}\n` : render(reports));
    });
}

/** A DeviceInfo, plus which engines can use it when that was checked. */
type DeviceReport = DeviceInfo & { readonly engines?: readonly EngineSupport[] };

function render(devices: readonly DeviceReport[]): string {
  const checked = devices.some((d) => d.engines !== undefined);
  const rows = devices.map((d) => [
    d.id,
    d.kind,
    d.name,
    d.memoryBytes === undefined ? '-' : formatBytes(d.memoryBytes),
    d.formats.join(',') || '-',
    d.status.state,
    ...(checked ? [d.engines?.filter((e) => e.ok).map((e) => e.engine).join(',') || '-'] : []),
  ]);
  let out = table(['ID', 'KIND', 'NAME', 'MEMORY', 'FORMATS', 'STATUS', ...(checked ? ['ENGINES'] : [])], rows);
  for (const d of devices) {
    const notes: string[] = [];
    if (d.status.state === 'unavailable') notes.push(`${d.status.reason}\n  fix: ${d.status.fix}`);
    for (const e of d.engines ?? []) if (!e.ok) notes.push(`${e.engine} cannot use it: ${e.reason}\n  fix: ${e.fix}`);
    if (notes.length > 0) out += `\n${d.id}: ${notes.join(`\n${d.id}: `)}\n`;
  }
  return out;
}
