import { AiosError, PlacementError } from '../drivers/errors.js';
import type { DevicePreference, HalRegistry } from '../drivers/hal/registry.js';
import { orderDevices } from '../drivers/hal/registry.js';
import { SysRoot } from '../drivers/hal/sysroot.js';
import type { DeviceInfo } from '../drivers/hal/types.js';
import { DEVICE_KINDS } from '../drivers/hal/types.js';

/** A claim on part of a device, held by one task until released. */
export interface Reservation {
  readonly id: number;
  readonly deviceId: string;
  readonly owner: string;
  /** Device memory set aside (model weights, activations); 0 when unknown. */
  readonly memoryBytes: number;
  /** Scheduling priority of the owner; the scheduler turns priorities into shares. */
  readonly priority: number;
}

export interface ReserveRequest {
  readonly owner: string;
  readonly memoryBytes?: number;
  readonly priority?: number;
}

/** What is set aside on one device right now. */
export interface DeviceUsage {
  readonly device: DeviceInfo;
  readonly reservedBytes: number;
  readonly freeBytes?: number;
  readonly reservations: readonly Reservation[];
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
export class ResourcePool {
  private readonly known = new Map<string, DeviceInfo>();
  private readonly held = new Map<number, Reservation>();
  private nextId = 1;

  constructor(devices: readonly DeviceInfo[] = []) {
    for (const d of devices) this.known.set(d.id, d);
  }

  /** Probes `sysroot` (default `/`) with every probe in `hal` and pools what it finds. */
  static async discover(hal: HalRegistry, sysroot = '/'): Promise<ResourcePool> {
    const sys = await SysRoot.open(sysroot);
    return new ResourcePool(await hal.discover(sys));
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
  }

  /** Removes a device; refused while reservations on it are held. */
  unregister(id: string): void {
    const holders = [...this.held.values()].filter((r) => r.deviceId === id);
    if (holders.length > 0) {
      throw new ResourceError('EAI_POOL_IN_USE', `Device '${id}' is reserved by ${holders.map((r) => r.owner).join(', ')}; release those reservations first.`, { details: { device: id } });
    }
    this.known.delete(id);
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
    const reservation: Reservation = { id: this.nextId++, deviceId, owner: request.owner, memoryBytes, priority: request.priority ?? 1 };
    this.held.set(reservation.id, reservation);
    return reservation;
  }

  /** Gives a reservation back; releasing twice is harmless. */
  release(reservation: Reservation): void {
    this.held.delete(reservation.id);
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
