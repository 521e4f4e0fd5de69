import { EventEmitter } from 'node:events';
import { createBuiltinHal } from '../drivers/builtin.js';
import { AiosError, PlacementError } from '../drivers/errors.js';
import type { DevicePreference, HalRegistry } from '../drivers/hal/registry.js';
import { orderDevices } from '../drivers/hal/registry.js';
import { SysRoot } from '../drivers/hal/sysroot.js';
import type { DeviceInfo } from '../drivers/hal/types.js';
import { DEVICE_KINDS } from '../drivers/hal/types.js';
import { admit, formatRefusal } from './scheduler/admission.js';
import { DeviceScheduler } from './scheduler/device-scheduler.js';
import { entitledRates } from './scheduler/fair-share.js';

/** A claim on part of a device, held by one task until released. */
export interface Reservation {
  readonly id: number;
  readonly deviceId: string;
  readonly owner: string;
  /** Device memory set aside (model weights, activations); 0 when unknown. */
  readonly memoryBytes: number;
  /** Scheduling weight of the owner; the device's scheduler turns priorities into shares. */
  readonly priority: number;
  /** Runs per second the owner declared it needs; what admission checked. */
  readonly rateHz?: number;
  /** The owner's task on the device's scheduler: submit its runs under this id. */
  readonly task: string;
}

export interface ReserveRequest {
  readonly owner: string;
  readonly memoryBytes?: number;
  readonly priority?: number;
  /** Runs per second the owner needs; with `costMs` known, the reservation is refused unless the device can give it at this priority. */
  readonly rateHz?: number;
  /** The owner's cost per run on this device, ms; read each time shares are worked out, so it can follow live measurements. */
  readonly costMs?: () => number | undefined;
  /** Reserve now, check the rate later with `admit()` (once the cost has been measured). */
  readonly admitLater?: boolean;
}

/** A task's share of a device: what the policy entitles it to and what it got, over the stats window. */
export interface DeviceShare {
  readonly owner: string;
  readonly task: string;
  readonly priority: number;
  readonly rateHz?: number;
  readonly costMs?: number;
  readonly entitledRateHz: number;
  readonly receivedRateHz: number;
  /** Fractions of the device's time. */
  readonly entitledShare: number;
  readonly receivedShare: number;
  readonly queueMs: { readonly p50: number; readonly p99: number };
  readonly queued: number;
  readonly expired: number;
  readonly deadlineMisses: number;
}

/** A device that cannot give a task the rate it declared at its priority. */
export class AdmissionError extends AiosError {}

/** What is set aside on one device right now. */
export interface DeviceUsage {
  readonly device: DeviceInfo;
  readonly reservedBytes: number;
  readonly freeBytes?: number;
  readonly reservations: readonly Reservation[];
}

let sharedPool: Promise<ResourcePool> | undefined;

/** What a pool reports when it probes again (refresh, watch). */
export interface PoolEvents {
  lost: [device: DeviceInfo];
  found: [device: DeviceInfo];
  changed: [device: DeviceInfo];
  error: [error: Error];
}

/** Failures of the pool's own bookkeeping: a duplicate id, memory that does not fit. */
export class ResourceError extends AiosError {}

/**
 * The compute devices one process may use: everything the HAL discovered, plus devices the
 * application declares itself (`register`: a board the probes do not know, or a remote peer).
 * Tasks reserve a share of a device and release it when done; a reservation that would exceed a
 * device's known memory is refused, so two models never silently overcommit a 4 GB Jetson.
 *
 * Not thread-safe across workers; one pool per process, shared by every InferenceService in it.
 */
export class ResourcePool extends EventEmitter<PoolEvents> {
  private readonly known = new Map<string, DeviceInfo>();
  /** Devices registered by hand: a re-probe never reports them lost. */
  private readonly declared = new Set<string>();
  private readonly held = new Map<number, Reservation>();
  private readonly costs = new Map<number, () => number | undefined>();
  private readonly schedulers = new Map<string, DeviceScheduler>();
  private readonly lanes = new Map<string, number>();
  private nextId = 1;
  private source: { hal: HalRegistry; sys: SysRoot } | undefined;
  private watcher: NodeJS.Timeout | undefined;

  constructor(devices: readonly DeviceInfo[] = []) {
    super();
    for (const d of devices) this.known.set(d.id, d);
  }

  /**
   * This process's pool: this machine probed once with the built-in HAL. Every pipeline `infer`
   * stage reserves from it, so pipelines run side by side share each device's scheduler.
   */
  static shared(): Promise<ResourcePool> {
    sharedPool ??= ResourcePool.discover(createBuiltinHal());
    return sharedPool;
  }

  /** Probes `sysroot` (default `/`) with every probe in `hal` and pools what it finds. */
  static async discover(hal: HalRegistry, sysroot = '/'): Promise<ResourcePool> {
    const sys = await SysRoot.open(sysroot);
    const pool = new ResourcePool(await hal.discover(sys));
    pool.source = { hal, sys };
    return pool;
  }

  /**
   * Probes again and updates each discovered device: one the probes no longer find (a Coral USB
   * stick pulled out, a GPU fallen off the bus) stays in the pool, so its reservations do not
   * dangle, but becomes unavailable and is reported `lost`; one that comes back, or whose status
   * changed, is reported `changed`; a new one is added and reported `found`. Devices registered
   * by hand are left alone. `hal`/`sysroot` default to those `discover` used.
   */
  async refresh(hal?: HalRegistry, sysroot?: string): Promise<{ lost: DeviceInfo[]; found: DeviceInfo[]; changed: DeviceInfo[] }> {
    const source = hal !== undefined ? { hal, sys: await SysRoot.open(sysroot ?? '/') } : this.source;
    if (source === undefined) throw new ResourceError('EAI_POOL_NO_SOURCE', 'This pool was not made by ResourcePool.discover, so it does not know how to probe again; pass the HAL (and system root) to refresh().');
    const now = await source.hal.discover(source.sys);
    const seen = new Set(now.map((d) => d.id));
    const lost: DeviceInfo[] = [];
    const found: DeviceInfo[] = [];
    const changed: DeviceInfo[] = [];
    for (const device of now) {
      const before = this.known.get(device.id);
      this.known.set(device.id, device);
      if (before === undefined) found.push(device);
      else if (before.status.state !== device.status.state) changed.push(device);
    }
    for (const [id, device] of this.known) {
      if (seen.has(id) || this.declared.has(id) || (device.status.state === 'unavailable' && device.status.reason.startsWith('no longer found'))) continue;
      const gone: DeviceInfo = { ...device, status: { state: 'unavailable', reason: `no longer found by the ${device.kind} probe`, fix: 'reconnect the device or check its driver; aios brings it back when the probe finds it again' } };
      this.known.set(id, gone);
      lost.push(gone);
    }
    for (const d of lost) this.emit('lost', d);
    for (const d of found) this.emit('found', d);
    for (const d of changed) this.emit('changed', d);
    return { lost, found, changed };
  }

  /**
   * Re-probes every `intervalMs` (default 2 s) until `unwatch()`, emitting `lost`, `found` and
   * `changed` as `refresh` finds them; a failed probe is reported as `error` (when something
   * listens) and retried on the next tick. The timer does not keep the process alive.
   */
  watch(intervalMs = 2000): void {
    if (this.watcher !== undefined) return;
    let running = false;
    this.watcher = setInterval(() => {
      if (running) return;
      running = true;
      this.refresh().then(
        () => (running = false),
        (error: unknown) => {
          running = false;
          // An 'error' event nobody listens to would throw; a watcher must never take the process down.
          if (this.listenerCount('error') > 0) this.emit('error', error instanceof Error ? error : new Error(String(error)));
        },
      );
    }, intervalMs);
    this.watcher.unref();
  }

  unwatch(): void {
    clearInterval(this.watcher);
    this.watcher = undefined;
  }

  /** Every device, discovered or registered, in discovery order. */
  get devices(): DeviceInfo[] {
    return [...this.known.values()];
  }

  device(id: string): DeviceInfo | undefined {
    return this.known.get(id);
  }

  /**
   * Declares a device by hand. Its id must be new and its kind one the HAL knows; a device that
   * replaces a discovered one must be released first (unregister), so reservations never dangle.
   */
  register(device: DeviceInfo): void {
    if (!(DEVICE_KINDS as readonly string[]).includes(device.kind)) {
      throw new ResourceError('EAI_POOL_BAD_DEVICE', `Device '${device.id}' has unknown kind '${device.kind}'; use one of ${DEVICE_KINDS.join(', ')}.`, { details: { device: device.id } });
    }
    if (this.known.has(device.id)) {
      throw new ResourceError('EAI_POOL_DUPLICATE', `A device with id '${device.id}' is already in the pool; pick another id or unregister the old one first.`, { details: { device: device.id } });
    }
    this.known.set(device.id, device);
    this.declared.add(device.id);
  }

  /** Removes a device; refused while reservations on it are held. */
  unregister(id: string): void {
    const holders = [...this.held.values()].filter((r) => r.deviceId === id);
    if (holders.length > 0) {
      throw new ResourceError('EAI_POOL_IN_USE', `Device '${id}' is reserved by ${holders.map((r) => r.owner).join(', ')}; release those reservations first.`, { details: { device: id } });
    }
    this.known.delete(id);
    this.declared.delete(id);
  }

  /**
   * The first ready device in preference order (kinds or ids, as in `aios infer --device`), or,
   * with no preference, the first ready device discovered (accelerators before the CPU).
   * Throws PlacementError EAI_HAL_NO_DEVICE listing what was found and why it is not ready.
   */
  getDevice(preference: DevicePreference = []): DeviceInfo {
    const ordered = orderDevices(this.devices, preference);
    const ready = ordered.find((d) => d.status.state === 'ready');
    if (ready !== undefined) return ready;
    const why = ordered.map((d) => `  - ${d.id}: ${d.status.state === 'unavailable' ? `${d.status.reason} (fix: ${d.status.fix})` : 'ready'}`);
    throw new PlacementError('EAI_HAL_NO_DEVICE', `No ready device for preference [${preference.join(', ') || 'any'}]:\n${why.join('\n') || '  - none of that kind found'}`, { details: { preference } });
  }

  /** Sets aside part of a device for `owner`. Refuses (EAI_POOL_NO_MEMORY) what would not fit. */
  reserve(deviceId: string, request: ReserveRequest): Reservation {
    const device = this.known.get(deviceId);
    if (device === undefined) {
      throw new ResourceError('EAI_POOL_UNKNOWN_DEVICE', `No device '${deviceId}' in the pool; known: ${[...this.known.keys()].join(', ') || 'none'}.`, { details: { device: deviceId } });
    }
    const memoryBytes = request.memoryBytes ?? 0;
    if (!Number.isFinite(memoryBytes) || memoryBytes < 0) {
      throw new ResourceError('EAI_POOL_BAD_REQUEST', `memoryBytes must be a non-negative number, got ${memoryBytes}.`);
    }
    const usage = this.usage(deviceId);
    if (usage.freeBytes !== undefined && memoryBytes > usage.freeBytes) {
      throw new ResourceError('EAI_POOL_NO_MEMORY', `${request.owner} needs ${mib(memoryBytes)} on ${deviceId} but only ${mib(usage.freeBytes)} of ${mib(device.memoryBytes ?? 0)} is free (held by ${usage.reservations.map((r) => `${r.owner} ${mib(r.memoryBytes)}`).join(', ') || 'nobody'}). Stop a model on that device or place this one elsewhere.`, { details: { device: deviceId, requested: memoryBytes, free: usage.freeBytes } });
    }
    const id = this.nextId++;
    const reservation: Reservation = { id, deviceId, owner: request.owner, memoryBytes, priority: request.priority ?? 1, task: `${request.owner}#${id}`, ...(request.rateHz === undefined ? {} : { rateHz: request.rateHz }) };
    this.scheduler(deviceId).addTask({ id: reservation.task, priority: reservation.priority, ...(request.rateHz === undefined ? {} : { demandHz: request.rateHz }) });
    this.held.set(id, reservation);
    if (request.costMs !== undefined) this.costs.set(id, request.costMs);
    if (request.admitLater !== true) {
      try {
        this.admit(reservation);
      } catch (error) {
        this.release(reservation);
        throw error;
      }
    }
    return reservation;
  }

  /**
   * Checks that the device can give `reservation` the rate it declared, at its priority, against
   * everything else reserved there (docs/scheduling.md: admission). Throws AdmissionError
   * EAI_SCHED_ADMISSION saying by how much it falls short; a reservation without a declared rate
   * or without a measured cost is always admitted. Others that would then fall below their own
   * declared rates (lower priorities giving way) are not refused: `shares()` shows them.
   */
  admit(reservation: Reservation): void {
    const cost = this.costs.get(reservation.id)?.();
    if (reservation.rateHz === undefined || cost === undefined) return;
    const others = [...this.held.values()].filter((r) => r.deviceId === reservation.deviceId && r.id !== reservation.id);
    // Owners' names read better than task ids in the message; the id only where a name repeats.
    const label = (r: Reservation): string => ([...this.held.values()].filter((x) => x.deviceId === r.deviceId && x.owner === r.owner).length > 1 ? r.task : r.owner);
    const decision = admit(
      others.flatMap((r) => {
        const c = this.costs.get(r.id)?.();
        return c === undefined ? [] : [{ id: label(r), priority: r.priority, costMs: c, ...(r.rateHz === undefined ? {} : { demandHz: r.rateHz }) }];
      }),
      [{ id: label(reservation), priority: reservation.priority, costMs: cost, demandHz: reservation.rateHz }],
      this.capacity(reservation.deviceId),
    );
    if (!decision.ok) {
      throw new AdmissionError('EAI_SCHED_ADMISSION', formatRefusal(decision, { device: reservation.deviceId }), { details: { device: reservation.deviceId, owner: reservation.owner, shortfalls: decision.shortfalls } });
    }
  }

  /**
   * Gives a reservation back; releasing twice is harmless. Runs still queued for its task on the
   * device's scheduler are rejected with `reason` (the owner can send them elsewhere).
   */
  release(reservation: Reservation, reason?: Error): void {
    if (!this.held.delete(reservation.id)) return;
    this.costs.delete(reservation.id);
    const scheduler = this.schedulers.get(reservation.deviceId);
    if (scheduler?.hasTask(reservation.task) === true) scheduler.removeTask(reservation.task, reason ?? new ResourceError('EAI_POOL_RELEASED', `${reservation.owner} released ${reservation.deviceId} before this run started.`));
  }

  /**
   * The run queue of one device: every owner of a reservation on it submits its runs here, and the
   * device is shared by the policy in docs/scheduling.md.
   */
  scheduler(deviceId: string): DeviceScheduler {
    let scheduler = this.schedulers.get(deviceId);
    if (scheduler === undefined) {
      if (!this.known.has(deviceId)) throw new ResourceError('EAI_POOL_UNKNOWN_DEVICE', `No device '${deviceId}' in the pool; known: ${[...this.known.keys()].join(', ') || 'none'}.`, { details: { device: deviceId } });
      scheduler = new DeviceScheduler(deviceId, { lanes: this.capacity(deviceId) });
      this.schedulers.set(deviceId, scheduler);
    }
    return scheduler;
  }

  /**
   * Sets how many runs a device takes at once: its capacity R in the share formula
   * (docs/scheduling.md). Default: 1, one queue per device. Raise it for a device that runs
   * several models side by side without slowing each (a GPU with spare streams, a many-core CPU
   * whose models use few threads each). Set it before the first reservation on the device.
   */
  configure(deviceId: string, options: { readonly lanes: number }): void {
    if (!(Number.isInteger(options.lanes) && options.lanes >= 1)) throw new ResourceError('EAI_POOL_BAD_REQUEST', `lanes must be a whole number ≥ 1, got ${options.lanes}.`);
    if (this.schedulers.has(deviceId)) throw new ResourceError('EAI_POOL_IN_USE', `${deviceId} already has tasks scheduled; configure it before the first reservation.`, { details: { device: deviceId } });
    this.lanes.set(deviceId, options.lanes);
  }

  /**
   * How loaded a device is, as a fraction of its capacity: the larger of what its scheduler was
   * busy over the last window and what the rates declared on it need (Σ rate × measured cost /
   * lanes). 0 for a device nobody uses. Placement puts work on the least loaded of devices a
   * preference ranks equal (two Coral sticks, two GPUs).
   */
  load(deviceId: string): number {
    const scheduler = this.schedulers.get(deviceId);
    if (scheduler === undefined) return 0;
    let declared = 0;
    for (const r of this.held.values()) {
      if (r.deviceId !== deviceId || r.rateHz === undefined) continue;
      declared += (r.rateHz * (this.costs.get(r.id)?.() ?? 0)) / 1000;
    }
    return Math.max(scheduler.stats().busyFraction, declared / scheduler.lanes);
  }

  /**
   * Changes the memory a reservation holds, once the owner knows more (a loaded model's buffers
   * for its largest batch). Refused (EAI_POOL_NO_MEMORY, the reservation unchanged) when the
   * device's memory cannot hold the new size.
   */
  resize(reservation: Reservation, memoryBytes: number): Reservation {
    const held = this.held.get(reservation.id);
    if (held === undefined) throw new ResourceError('EAI_POOL_RELEASED', `${reservation.owner}'s reservation on ${reservation.deviceId} was already released.`, { details: { device: reservation.deviceId } });
    const device = this.known.get(held.deviceId);
    const others = [...this.held.values()].filter((r) => r.deviceId === held.deviceId && r.id !== held.id).reduce((n, r) => n + r.memoryBytes, 0);
    if (device?.memoryBytes !== undefined && others + memoryBytes > device.memoryBytes) {
      throw new ResourceError('EAI_POOL_NO_MEMORY', `${held.owner} needs ${mib(memoryBytes)} on ${held.deviceId} (weights and its largest batch's inputs and outputs) but only ${mib(Math.max(0, device.memoryBytes - others))} of ${mib(device.memoryBytes)} is free. Lower the batch size, stop a model on that device or place this one elsewhere.`, { details: { device: held.deviceId, requested: memoryBytes } });
    }
    const resized: Reservation = { ...held, memoryBytes };
    this.held.set(held.id, resized);
    return resized;
  }

  /** Every task on a device with its entitled and received share (docs/scheduling.md). */
  shares(deviceId: string): DeviceShare[] {
    const scheduler = this.schedulers.get(deviceId);
    if (scheduler === undefined) return [];
    const byTask = new Map([...this.held.values()].filter((r) => r.deviceId === deviceId).map((r) => [r.task, r]));
    const measured = [...byTask.values()].flatMap((r) => {
      const c = this.costs.get(r.id)?.();
      return c === undefined ? [] : [{ id: r.task, priority: r.priority, costMs: c, ...(r.rateHz === undefined ? {} : { demandHz: r.rateHz }) }];
    });
    const entitled = entitledRates(measured, scheduler.lanes);
    return scheduler.stats().tasks.flatMap((t) => {
      const r = byTask.get(t.id);
      if (r === undefined) return [];
      const e = entitled.get(t.id);
      const cost = this.costs.get(r.id)?.();
      return [{ owner: r.owner, task: t.id, priority: t.priority, ...(r.rateHz === undefined ? {} : { rateHz: r.rateHz }), ...(cost === undefined ? {} : { costMs: cost }), entitledRateHz: e?.rateHz ?? t.entitledRateHz, receivedRateHz: t.receivedRateHz, entitledShare: e?.share ?? t.entitledShare, receivedShare: t.receivedShare, queueMs: t.queueMs, queued: t.queued, expired: t.expired, deadlineMisses: t.deadlineMisses }];
    });
  }

  private capacity(deviceId: string): number {
    return this.lanes.get(deviceId) ?? 1;
  }

  usage(deviceId: string): DeviceUsage {
    const device = this.known.get(deviceId);
    if (device === undefined) throw new ResourceError('EAI_POOL_UNKNOWN_DEVICE', `No device '${deviceId}' in the pool.`, { details: { device: deviceId } });
    const reservations = [...this.held.values()].filter((r) => r.deviceId === deviceId);
    const reservedBytes = reservations.reduce((sum, r) => sum + r.memoryBytes, 0);
    return { device, reservedBytes, reservations, ...(device.memoryBytes === undefined ? {} : { freeBytes: Math.max(0, device.memoryBytes - reservedBytes) }) };
  }
}

function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}
