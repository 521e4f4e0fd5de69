import { busyFraction, parseProcStat, type CpuTimes } from '../../drivers/devices/cpu-telemetry.js';
import { inputPowerW, readPowerRails } from '../../drivers/devices/jetson-power.js';
import { readHwmon, readThermalZones, sensorOf } from '../../drivers/hal/hwmon.js';
import { SerialQueue } from '../../drivers/hal/serial-queue.js';
import type { SysRoot } from '../../drivers/hal/sysroot.js';
import type { DeviceInfo, DeviceTelemetry } from '../../drivers/hal/types.js';
import type { NodeStatsSnapshot } from '../../runtime/pipeline/node-stats.js';
import type { PipelineStats } from '../../runtime/pipeline/pipeline.js';
import type { aios } from '../proto/gen/aios.js';
import { parseMeminfo } from './hardware.js';

/** Reads every device's telemetry in one call; `HalRegistry` is one. */
export interface DeviceTelemetryReader {
  telemetry(sys: SysRoot, devices: readonly DeviceInfo[], previous?: ReadonlyMap<string, DeviceTelemetry>): Promise<DeviceTelemetry[]>;
}

export interface TelemetrySamplerOptions {
  /** The machine: `/` in the agent, a fixture root in tests. */
  readonly sys: SysRoot;
  /** What the HAL found at start-up (`HalRegistry.discover`); the same list the birth message describes. */
  readonly devices: readonly DeviceInfo[];
  /** Per-device telemetry, usually the agent's `HalRegistry`. */
  readonly hal: DeviceTelemetryReader;
  /** The running pipelines' counters, asked once per sample (`pipeline.stats()` of each). */
  readonly pipelines: () => readonly PipelineStats[];
  /**
   * Called the first time a source fails (not again for the same source), so the agent logs
   * each problem once however many samples it spoils. Must not throw.
   */
  readonly onProblem?: (problem: TelemetryProblem) => void;
}

/**
 * A source that failed: `source` is `cpu`, `memory`, `temperature`, `power`, `uptime`,
 * `accelerators` (the whole HAL read), `accelerator:<id>` (one device), or `pipelines`.
 */
export interface TelemetryProblem {
  readonly source: string;
  /** The latest failure, for people (log it with `source`). */
  readonly message: string;
  /** In how many samples it failed. */
  readonly count: number;
  readonly firstUnixMs: number;
  readonly lastUnixMs: number;
}

/**
 * Takes the device's `Telemetry` records: machine load, accelerators and pipeline stages.
 *
 * Rates and shares (CPU busy %, stage rate, accelerator utilisation where the HAL counts it) are
 * over the interval since the previous `sample`, so the sampler keeps the previous counters; the
 * first sample has no interval and reports the average since boot (CPU) or since the pipeline
 * started (stages). Overlapping `sample` calls run one after the other, so a slow tool
 * (nvidia-smi) cannot interleave two intervals.
 *
 * A sample never fails because a source does: the field becomes NaN (doubles), is left unset
 * (integers, which have no NaN) or the entry is missing (an accelerator list the HAL could not
 * read), and the failure is counted in {@link problems}. `sequence` and `spool_dropped` are
 * left unset: the spool stamps them.
 */
export class TelemetrySampler {
  private readonly options: TelemetrySamplerOptions;
  private readonly queue = new SerialQueue();
  private readonly failures = new Map<string, TelemetryProblem>();
  private cpuBefore: CpuTimes | undefined;
  private readingsBefore = new Map<string, DeviceTelemetry>();
  private stagesBefore = new Map<string, StageCounters>();

  constructor(options: TelemetrySamplerOptions) {
    this.options = options;
  }

  /** Every source that failed so far, in the order they first failed, with how often. */
  get problems(): readonly TelemetryProblem[] {
    return [...this.failures.values()];
  }

  /** One record, stamped `now` (ms since the epoch); rates use the interval since the previous call's `now`. */
  sample(now = Date.now()): Promise<aios.fleet.v1.ITelemetry> {
    return this.queue.push(() => this.take(now));
  }

  private async take(now: number): Promise<aios.fleet.v1.ITelemetry> {
    const [device, accelerators] = await Promise.all([this.deviceMetrics(now), this.acceleratorMetrics(now)]);
    return { timeUnixMs: now, device, accelerators, stages: this.stageMetrics(now) };
  }

  private async deviceMetrics(now: number): Promise<aios.fleet.v1.IDeviceMetrics> {
    const { sys } = this.options;
    const [cpuPercent, memory, temperatureC, powerW, uptimeS] = await Promise.all([
      this.attempt('cpu', now, async () => {
        const times = parseProcStat((await sys.readText('/proc/stat')) ?? '').get('cpu');
        if (times === undefined) throw new Error('/proc/stat is missing or has no aggregate "cpu" line');
        const busy = busyFraction(times, this.cpuBefore);
        this.cpuBefore = times;
        if (busy === undefined) throw new Error('/proc/stat counts no CPU time at all');
        return busy * 100;
      }),
      this.attempt('memory', now, async () => {
        const meminfo = parseMeminfo((await sys.readText('/proc/meminfo')) ?? '');
        if (meminfo === undefined) throw new Error('/proc/meminfo is missing or has no MemTotal line');
        return meminfo;
      }),
      this.attempt('temperature', now, () => hottestCelsius(sys)),
      // Most machines have no board power monitor at all; that is no failure, just NaN.
      this.attempt('power', now, async () => (await boardPowerW(sys)) ?? Number.NaN),
      this.attempt('uptime', now, async () => {
        const seconds = Number((await sys.readText('/proc/uptime'))?.trim().split(/\s+/u)[0]);
        if (!Number.isFinite(seconds) || seconds < 0) throw new Error('/proc/uptime is missing or unreadable');
        return seconds;
      }),
    ]);
    return {
      cpuPercent: cpuPercent ?? Number.NaN,
      ...(memory === undefined ? {} : { memoryUsedBytes: memory.totalBytes - memory.availableBytes, memoryTotalBytes: memory.totalBytes }),
      temperatureC: temperatureC ?? Number.NaN,
      powerW: powerW ?? Number.NaN,
      uptimeS: uptimeS ?? Number.NaN,
    };
  }

  private async acceleratorMetrics(now: number): Promise<aios.fleet.v1.IAcceleratorMetrics[]> {
    const { sys, devices, hal } = this.options;
    const readings = await this.attempt('accelerators', now, () => hal.telemetry(sys, devices, this.readingsBefore));
    if (readings === undefined) return [];
    const next = new Map<string, DeviceTelemetry>();
    const out: aios.fleet.v1.IAcceleratorMetrics[] = [];
    for (const reading of readings) {
      const error = reading.extra?.['error'];
      if (typeof error === 'string') {
        this.fail(`accelerator:${reading.deviceId}`, error, now);
        // Keep the last good reading: its counters still give the next good one a rate.
        const before = this.readingsBefore.get(reading.deviceId);
        if (before !== undefined) next.set(reading.deviceId, before);
      } else {
        next.set(reading.deviceId, reading);
      }
      const memoryUsedBytes = wholeBytes(reading.memoryUsedBytes);
      out.push({
        id: reading.deviceId,
        utilizationPercent: reading.utilisation === undefined ? Number.NaN : reading.utilisation * 100,
        ...(memoryUsedBytes === undefined ? {} : { memoryUsedBytes }),
        temperatureC: reading.temperatureC ?? Number.NaN,
        powerW: reading.powerW ?? Number.NaN,
      });
    }
    this.readingsBefore = next;
    return out;
  }

  private stageMetrics(now: number): aios.fleet.v1.IStageMetrics[] {
    const pipelines = this.attemptNow('pipelines', now, () => this.options.pipelines());
    if (pipelines === undefined) return [];
    const next = new Map<string, StageCounters>();
    const out: aios.fleet.v1.IStageMetrics[] = [];
    for (const pipeline of pipelines) {
      for (const node of pipeline.nodes) {
        const key = `${pipeline.name}\0${node.node}`;
        const counters: StageCounters = { processed: processedOf(node), time: now, uptimeMs: pipeline.uptimeMs };
        const before = this.stagesBefore.get(key);
        next.set(key, counters);
        // A pipeline restarted since the previous sample (uptime or counters went back) starts a
        // new series: its rate is then the mean since that start, like the first sample's.
        const continued = before !== undefined && counters.processed >= before.processed && pipeline.uptimeMs >= before.uptimeMs && now > before.time;
        let rateHz: number;
        if (continued) rateHz = ((counters.processed - before.processed) * 1000) / (now - before.time);
        else rateHz = pipeline.uptimeMs > 0 ? (counters.processed * 1000) / pipeline.uptimeMs : 0;
        // The window holds the last 1024 latencies, not the interval's: when the stage ran
        // nothing in the interval its percentiles describe older messages, so they are unknown.
        const fresh = node.latencyMs.count > 0 && (!continued || counters.processed > before.processed);
        out.push({
          pipeline: pipeline.name,
          stage: node.node,
          processed: counters.processed,
          dropped: node.dropped + node.late,
          errors: node.errors,
          rateHz,
          latencyP50Ms: fresh ? node.latencyMs.p50 : Number.NaN,
          latencyP99Ms: fresh ? node.latencyMs.p99 : Number.NaN,
        });
      }
    }
    this.stagesBefore = next;
    return out;
  }

  /** Runs one source; a throw becomes a problem and an undefined value. */
  private async attempt<T>(source: string, now: number, read: () => Promise<T | undefined>): Promise<T | undefined> {
    try {
      const value = await read();
      if (value === undefined) this.fail(source, 'nothing to read', now);
      return value;
    } catch (error) {
      this.fail(source, error instanceof Error ? error.message : String(error), now);
      return undefined;
    }
  }

  private attemptNow<T>(source: string, now: number, read: () => T): T | undefined {
    try {
      return read();
    } catch (error) {
      this.fail(source, error instanceof Error ? error.message : String(error), now);
      return undefined;
    }
  }

  private fail(source: string, message: string, now: number): void {
    const before = this.failures.get(source);
    const problem: TelemetryProblem = before === undefined
      ? { source, message, count: 1, firstUnixMs: now, lastUnixMs: now }
      : { ...before, message, count: before.count + 1, lastUnixMs: now };
    this.failures.set(source, problem);
    if (before === undefined) {
      try {
        this.options.onProblem?.(problem);
      } catch {
        // A logger that throws must not cost the sample.
      }
    }
  }
}

/** A stage's counters at one sample, for the next sample's rate. */
interface StageCounters {
  readonly processed: number;
  readonly time: number;
  readonly uptimeMs: number;
}

/**
 * Messages a stage has taken off its queues and run (failures included; `errors` counts those).
 * NodeStats has no such counter, so it is what arrived less what was dropped at the queue,
 * skipped past its deadline, or is still waiting; a message being processed right now counts.
 * It never decreases while the pipeline runs. A source has no input: it counts what it emitted.
 */
export function processedOf(node: NodeStatsSnapshot): number {
  if (node.in === 0) return node.out;
  return Math.max(0, node.in - node.dropped - node.late - node.queued);
}

/** Temperatures outside this range are sentinels, not readings (-256 °C: a Jetson zone powered off). */
const PLAUSIBLE_C = { min: -40, max: 150 } as const;

/**
 * Zones that report a constant rather than a measurement: the Tegra PMIC's die zone (Jetson
 * Nano, TX2, Xavier) reads 100 °C at all times, which tegrastats prints as `PMIC@100C`.
 */
const CONSTANT_ZONES = new Set(['PMIC-Die']);

/**
 * The hottest thermal zone, °C. Machines without thermal zones (many x86 servers, VMs) fall back
 * to the hottest hwmon temperature (coretemp, k10temp, nvme...). Throws when neither has one.
 */
async function hottestCelsius(sys: SysRoot): Promise<number> {
  const zones = (await readThermalZones(sys)).filter((z) => !CONSTANT_ZONES.has(z.type) && plausible(z.temperatureC));
  if (zones.length > 0) return Math.max(...zones.map((z) => z.temperatureC));
  const sensors = (await readHwmon(sys)).flatMap((c) => c.sensors).filter((s) => s.type === 'temp' && plausible(s.value));
  if (sensors.length > 0) return Math.max(...sensors.map((s) => s.value));
  throw new Error('no readable temperature: /sys/class/thermal has no thermal zone and /sys/class/hwmon no temperature sensor');
}

function plausible(celsius: number): boolean {
  return celsius >= PLAUSIBLE_C.min && celsius <= PLAUSIBLE_C.max;
}

/**
 * Power into the whole board, W, where a monitor measures it: the INA3221 input rail of a Jetson
 * module (`VDD_IN`, `POM_5V_IN`), or an INA260 on the board input (the Kria K26 carrier's
 * `ina260_u14`: SOM, PL and DDR together). CPU package power (RAPL) or a GPU's own draw is not
 * board power, so a PC reports none.
 */
async function boardPowerW(sys: SysRoot): Promise<number | undefined> {
  const input = inputPowerW(await readPowerRails(sys));
  if (input !== undefined) return input;
  const ina260 = (await readHwmon(sys)).find((c) => c.name.startsWith('ina260'));
  return ina260 === undefined ? undefined : sensorOf(ina260, 'power')?.value;
}

function wholeBytes(n: number | undefined): number | undefined {
  return n !== undefined && Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}
