import { createBuiltinHal } from '../drivers/builtin.js';
import type { DevicePreference } from '../drivers/hal/registry.js';
import type { DeviceInfo } from '../drivers/hal/types.js';
import { ResourcePool } from './resource-pool.js';

/**
 * The best ready device on this machine for a preference list (kinds or ids, best first), found
 * with the built-in probes. A shortcut for scripts; long-running code should keep one
 * ResourcePool and call its `getDevice` so that reservations are shared.
 */
export async function getDevice(preference: DevicePreference = [], sysroot = '/'): Promise<DeviceInfo> {
  const pool = await ResourcePool.discover(createBuiltinHal(), sysroot);
  return pool.getDevice(preference);
}
