import { Command, Option } from 'commander';
import { createBuiltinHal } from '../../../drivers/builtin.js';
import { UsageError } from '../../../drivers/errors.js';
import type { EngineSupport, HalRegistry } from '../../../drivers/hal/registry.js';
import { SysRoot } from '../../../drivers/hal/sysroot.js';
import type { DeviceInfo, DeviceTelemetry } from '../../../drivers/hal/types.js';
import { formatBytes, table } from '../format.js';

interface DevicesOptions {
  sysroot: string;
  json?: boolean;
  engines: boolean;
  watch?: number;
  count?: number;
}

/** `aios devices`: what compute this machine (or a captured system root) has, and whether it is usable. */
export function devicesCommand(): Command {
  return new Command('devices')
    .description('list the compute devices found (CPU, NVIDIA GPUs, Jetson, Coral Edge TPU, FPGA) with their status and, when unusable, the fix')
    .option('--sysroot <dir>', 'probe a captured system root instead of this machine (see scripts/capture-sysroot.sh)', '/')
    .option('--json', 'print an array of DeviceInfo objects (with --watch: one JSON array of readings per line)')
    .option('--no-engines', 'skip checking which inference engines can use each device (on a captured --sysroot the check uses its files: libraries present, not loaded)')
    .addOption(new Option('--watch [seconds]', 'show live telemetry (load, memory, temperature, power, clocks) every SECONDS until Ctrl-C').preset('2').argParser(positiveSeconds))
    .addOption(new Option('--count <n>', 'with --watch: stop after N readings').argParser(positiveCount))
    .addHelpText('after', `
Examples:
  aios devices
  aios devices --json | jq '.[] | select(.status.state == "ready") | .id'
  aios devices --sysroot test/fixtures/sysroots/jetson-orin-nx-jp6
  aios devices --watch              # redraws every 2 s; Ctrl-C stops
  aios devices --watch 1 --json | jq -c '.[] | {deviceId, temperatureC, powerW}'
  aios devices --watch 5 --count 12 --json > telemetry.ndjson`)
    .action(async (options: DevicesOptions) => {
      if (options.count !== undefined && options.watch === undefined) {
        throw new UsageError('EAI_CLI_USAGE', '--count limits the readings of --watch; add --watch (e.g. aios devices --watch --count 5).');
      }
      const sys = await SysRoot.open(options.sysroot);
      const hal = createBuiltinHal({ sys });
      const devices = await hal.discover(sys);
      if (options.watch !== undefined) {
        await watch(hal, sys, devices, { seconds: options.watch, ...(options.count === undefined ? {} : { count: options.count }), json: options.json === true });
        return;
      }
      const reports: DeviceReport[] = [];
      for (const device of devices) {
        reports.push(options.engines && device.status.state === 'ready' ? { ...device, engines: await hal.support(device) } : device);
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

interface WatchOptions {
  readonly seconds: number;
  readonly count?: number;
  readonly json: boolean;
}

/**
 * Reads every device's telemetry each `seconds` (each reading passing the previous one back, for
 * rates) and prints it: a redrawn table on a terminal, the tables one after another when piped,
 * or one JSON array per line with `json`. Stops after `count` readings or on SIGINT (Ctrl-C),
 * returning normally so the command exits 0. The wait is measured from the start of a reading,
 * so slow tools (nvidia-smi) do not stretch the interval.
 */
async function watch(hal: HalRegistry, sys: SysRoot, devices: readonly DeviceInfo[], options: WatchOptions): Promise<void> {
  const stop = new AbortController();
  const onSigint = (): void => stop.abort();
  process.once('SIGINT', onSigint);
  const clear = !options.json && process.stdout.isTTY === true;
  try {
    let previous = new Map<string, DeviceTelemetry>();
    for (let round = 1; !stop.signal.aborted; round++) {
      const started = Date.now();
      const readings = await hal.telemetry(sys, devices, previous);
      previous = new Map(readings.map((r) => [r.deviceId, r]));
      if (options.json) {
        process.stdout.write(`${JSON.stringify(readings.map(withoutCounters))}\n`);
      } else {
        // Home + clear screen on a terminal; a blank line between readings in a log file.
        process.stdout.write(`${clear ? '\x1b[H\x1b[2J' : round > 1 ? '\n' : ''}${renderTelemetry(readings, sys, options.seconds, started)}`);
      }
      if (options.count !== undefined && round >= options.count) break;
      await sleep(Math.max(0, options.seconds * 1000 - (Date.now() - started)), stop.signal);
    }
  } finally {
    process.removeListener('SIGINT', onSigint);
  }
}

/** A reading as printed: `counters` are raw values for the next reading, not data for users. */
function withoutCounters(reading: DeviceTelemetry): Omit<DeviceTelemetry, 'counters'> {
  const { counters: _counters, ...rest } = reading;
  return rest;
}

function renderTelemetry(readings: readonly DeviceTelemetry[], sys: SysRoot, seconds: number, time: number): string {
  const where = sys.isLive ? 'this machine' : sys.root;
  const header = `${new Date(time).toISOString().replace('T', ' ').slice(0, 19)} UTC  ${where}  every ${seconds} s  (Ctrl-C stops)\n\n`;
  const rows = readings.map((r) => [
    r.deviceId,
    r.utilisation === undefined ? '-' : (r.utilisation * 100).toFixed(1),
    memoryCell(r),
    r.temperatureC === undefined ? '-' : r.temperatureC.toFixed(1),
    r.powerW === undefined ? '-' : r.powerW.toFixed(1),
    clocksCell(r.clocksMHz),
  ]);
  let out = header + table(['ID', 'UTIL%', 'MEM USED/TOTAL', 'TEMP°C', 'POWER W', 'CLOCKS MHz'], rows);
  for (const r of readings) {
    for (const key of ['warning', 'note', 'error']) {
      const text = r.extra?.[key];
      if (typeof text === 'string') out += `\n${r.deviceId}: ${text}`;
    }
  }
  return `${out}${out.endsWith('\n') ? '' : '\n'}`;
}

function memoryCell(r: DeviceTelemetry): string {
  if (r.memoryUsedBytes === undefined && r.memoryTotalBytes === undefined) return '-';
  const used = r.memoryUsedBytes === undefined ? '?' : formatBytes(r.memoryUsedBytes);
  return r.memoryTotalBytes === undefined ? used : `${used} / ${formatBytes(r.memoryTotalBytes)}`;
}

/**
 * Clock domains in one cell: `sm 345 mem 3201`; numbered domains of one kind (`cpu0`..`cpu95`)
 * fold into their range, `cpu 800-3800`, so a many-core CPU stays one line.
 */
function clocksCell(clocks: Readonly<Record<string, number>> | undefined): string {
  if (clocks === undefined || Object.keys(clocks).length === 0) return '-';
  const groups = new Map<string, number[]>();
  for (const [domain, mhz] of Object.entries(clocks)) {
    const key = domain.replace(/\d+$/u, '');
    groups.set(key, [...(groups.get(key) ?? []), mhz]);
  }
  return [...groups]
    .map(([key, values]) => {
      const lo = Math.min(...values);
      const hi = Math.max(...values);
      return `${key} ${lo === hi ? lo : `${lo}-${hi}`}`;
    })
    .join(' ');
}

/** Resolves after `ms`, or at once when `signal` aborts (Ctrl-C during the wait). */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
  });
}

function positiveSeconds(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new UsageError('EAI_CLI_USAGE', `--watch takes a number of seconds above 0 (default 2), got '${value}'.`);
  return n;
}

function positiveCount(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new UsageError('EAI_CLI_USAGE', `--count must be a positive integer, got '${value}'.`);
  return n;
}
