import { PlacementError } from '../errors.js';
import type { SysRoot } from './sysroot.js';
import type { DeviceInfo, DeviceKind, DeviceProbe, DeviceTelemetry, Engine, ModelSource, Support } from './types.js';
import { DEVICE_KINDS } from './types.js';

/** A (device, engine) pair that can run a model. */
export interface Placement {
  readonly device: DeviceInfo;
  readonly engine: Engine;
}

/** One pair the registry considered and why it was refused; PlacementError lists them all. */
export interface Refusal {
  readonly device: string;
  readonly engine?: string;
  readonly reason: string;
  readonly fix?: string;
}

/** Whether one engine can run work on one device here, as `aios devices` reports it. */
export type EngineSupport = { readonly engine: string } & Support;

/**
 * Which devices to try, best first. Each entry is a device kind (`cuda`) or a device id
 * (`cuda:0000:01:00.0`). Empty or absent means every device, in probe priority order.
 */
export type DevicePreference = readonly string[];

/**
 * The HAL: the device probes and inference engines one process knows, each with a priority.
 * An instance, not a global, so every test builds its own; `drivers/builtin.ts` fills the one
 * production registry. Nothing outside the probes and engines switches on a device kind.
 */
export class HalRegistry {
  private readonly probeEntries: { probe: DeviceProbe; priority: number }[] = [];
  private readonly engineEntries: { engine: Engine; priority: number }[] = [];

  /**
   * Adds a probe or an engine. Higher priority probes' devices come first when the caller gives
   * no preference (accelerators above the CPU); higher priority engines are tried first for a
   * format two engines share.
   */
  register(part: DeviceProbe | Engine, priority = 0): this {
    if ('probe' in part) {
      if (this.probeEntries.some((e) => e.probe.kind === part.kind)) throw new Error(`A probe for '${part.kind}' devices is already registered.`);
      this.probeEntries.push({ probe: part, priority });
      this.probeEntries.sort((a, b) => b.priority - a.priority);
    } else {
      if (this.engineEntries.some((e) => e.engine.name === part.name)) throw new Error(`An engine named '${part.name}' is already registered.`);
      this.engineEntries.push({ engine: part, priority });
      this.engineEntries.sort((a, b) => b.priority - a.priority);
    }
    return this;
  }

  get probes(): readonly DeviceProbe[] {
    return this.probeEntries.map((e) => e.probe);
  }

  get engines(): readonly Engine[] {
    return this.engineEntries.map((e) => e.engine);
  }

  engine(name: string): Engine | undefined {
    return this.engineEntries.find((e) => e.engine.name === name)?.engine;
  }

  /**
   * Runs every probe over `sys`, in priority order. A probe that throws (a bug, or a system file
   * in a shape nobody has seen) does not hide the other devices: it shows up as one unavailable
   * entry naming the failure, so `aios devices` still tells the truth about the rest.
   */
  async discover(sys: SysRoot): Promise<DeviceInfo[]> {
    const results = await Promise.all(
      this.probeEntries.map(async ({ probe }): Promise<DeviceInfo[]> => {
        try {
          return await probe.probe(sys);
        } catch (error) {
          return [{
            id: `${probe.kind}:probe-error`,
            kind: probe.kind,
            name: `${probe.kind} probe failed`,
            formats: [],
            status: {
              state: 'unavailable',
              reason: `the ${probe.kind} probe failed: ${error instanceof Error ? error.message : String(error)}`,
              fix: `report this with the output of 'aios devices --debug' and the files under ${sys.root} it reads`,
            },
          }];
        }
      }),
    );
    return results.flat();
  }

  /**
   * One telemetry reading per device, from the probe of the device's kind. `previous` maps device
   * ids to their last readings (for rates). A device whose probe has no telemetry, or whose read
   * fails, gets a bare reading with `extra.error` saying why, so a watcher keeps running.
   */
  async telemetry(sys: SysRoot, devices: readonly DeviceInfo[], previous: ReadonlyMap<string, DeviceTelemetry> = new Map()): Promise<DeviceTelemetry[]> {
    return Promise.all(
      devices.map(async (device): Promise<DeviceTelemetry> => {
        const probe = this.probeEntries.find((e) => e.probe.kind === device.kind)?.probe;
        if (probe?.telemetry === undefined) return { deviceId: device.id, time: Date.now() };
        try {
          return await probe.telemetry(sys, device, previous.get(device.id));
        } catch (error) {
          return { deviceId: device.id, time: Date.now(), extra: { error: error instanceof Error ? error.message : String(error) } };
        }
      }),
    );
  }

  /**
   * For each engine that reads a format the device runs: can it run there now, and if not, why.
   * Engines check this machine's libraries, so this answers for the live system only.
   */
  async support(device: DeviceInfo): Promise<EngineSupport[]> {
    const engines = this.engines.filter((e) => e.formats.some((f) => device.formats.includes(f)));
    return Promise.all(engines.map(async (engine) => ({ engine: engine.name, ...(await checkSupport(engine, device)) })));
  }

  /**
   * Chooses where `model` runs: the first device in preference order whose status is ready, that
   * lists the model's format, and that some engine for the format supports here. When nothing
   * fits, throws PlacementError `EAI_HAL_NO_DEVICE` listing every pair tried and why it was
   * refused, so the user sees at once whether to install a library or change the preference.
   */
  async place(model: ModelSource, devices: readonly DeviceInfo[], preference: DevicePreference = []): Promise<Placement> {
    const { placements, refusals } = await this.placements(model, devices, preference, 1);
    const first = placements[0];
    if (first !== undefined) return first;
    const ordered = orderDevices(devices, preference);
    const wanted = preference.length === 0 ? 'any device' : `devices [${preference.join(', ')}]`;
    const lines = refusals.map((r) => `  - ${r.device}${r.engine ? ` with ${r.engine}` : ''}: ${r.reason}${r.fix ? ` (fix: ${r.fix})` : ''}`);
    if (ordered.length === 0) lines.push(`  - no device matches; this machine has: ${devices.map((d) => d.id).join(', ') || 'no devices'}`);
    throw new PlacementError('EAI_HAL_NO_DEVICE', `Cannot run ${model.path} (${model.format}) on ${wanted}:\n${lines.join('\n')}`, { details: { model: model.path, format: model.format, preference, refusals } });
  }

  /**
   * Every (device, engine) pair that can run `model`, in preference order, one per device (its
   * best engine), up to `limit`; and why the others were refused. What failover walks down.
   * Throws only when no engine handles the format at all.
   */
  async placements(model: ModelSource, devices: readonly DeviceInfo[], preference: DevicePreference = [], limit = Number.POSITIVE_INFINITY): Promise<{ placements: Placement[]; refusals: Refusal[] }> {
    const ordered = orderDevices(devices, preference);
    const refusals: Refusal[] = [];
    const placements: Placement[] = [];
    const engines = this.engines.filter((e) => e.formats.includes(model.format));
    if (engines.length === 0) {
      throw new PlacementError('EAI_HAL_NO_ENGINE', `No engine runs ${model.format} models (${model.path}). Engines registered: ${this.engines.map((e) => `${e.name} (${e.formats.join(', ')})`).join('; ') || 'none'}.`, { details: { model: model.path, format: model.format } });
    }
    for (const device of ordered) {
      if (placements.length >= limit) break;
      if (device.status.state !== 'ready') {
        refusals.push({ device: device.id, reason: device.status.reason, fix: device.status.fix });
        continue;
      }
      if (!device.formats.includes(model.format)) {
        refusals.push({ device: device.id, reason: `${device.kind} devices do not run ${model.format} models (they run ${device.formats.join(', ') || 'nothing'})` });
        continue;
      }
      for (const engine of engines) {
        const support = await checkSupport(engine, device);
        if (support.ok) {
          placements.push({ device, engine });
          break;
        }
        refusals.push({ device: device.id, engine: engine.name, reason: support.reason, fix: support.fix });
      }
    }
    return { placements, refusals };
  }
}

/** An engine's answer, with a thrown error turned into a refusal so one engine cannot hide the rest. */
async function checkSupport(engine: Engine, device: DeviceInfo): Promise<Support> {
  try {
    return await engine.supports(device);
  } catch (error) {
    return { ok: false, reason: `checking support failed: ${error instanceof Error ? error.message : String(error)}`, fix: 'run with --debug and report it' };
  }
}

/**
 * Devices in preference order. A kind entry selects every device of that kind (in discovery
 * order), an id entry that one device; duplicates keep their first place. An entry that is
 * neither a known kind nor a present id is an error, since a typo would otherwise silently
 * fall through to the CPU.
 */
export function orderDevices(devices: readonly DeviceInfo[], preference: DevicePreference): DeviceInfo[] {
  if (preference.length === 0) return [...devices];
  const out: DeviceInfo[] = [];
  for (const entry of preference) {
    const matches = (DEVICE_KINDS as readonly string[]).includes(entry) ? devices.filter((d) => d.kind === (entry as DeviceKind)) : devices.filter((d) => d.id === entry);
    if (matches.length === 0 && !(DEVICE_KINDS as readonly string[]).includes(entry)) {
      throw new PlacementError('EAI_HAL_UNKNOWN_DEVICE', `Unknown device '${entry}'. Use a device kind (${DEVICE_KINDS.join(', ')}) or an id from 'aios devices' (${devices.map((d) => d.id).join(', ') || 'none found'}).`, { details: { device: entry } });
    }
    for (const d of matches) if (!out.includes(d)) out.push(d);
  }
  return out;
}
