import { createRequire } from 'node:module';

/**
 * systemd's notification protocol for `Type=notify` services: READY=1 once the agent is up,
 * WATCHDOG=1 on every healthy tick (with `WatchdogSec=`, systemd restarts an agent that stops
 * sending them), STOPPING=1 on the way out. Sent through libsystemd's sd_notify (via koffi), so
 * the message comes from the agent's own PID: `systemd-notify` run as a child is a different
 * process, which systemd may fail to attribute to the unit once the child has exited.
 *
 * Outside systemd (no NOTIFY_SOCKET), or without libsystemd, every call does nothing.
 */
export interface SystemdNotifier {
  readonly active: boolean;
  notify(state: 'READY=1' | 'WATCHDOG=1' | 'STOPPING=1' | `STATUS=${string}`): void;
  /** The watchdog interval systemd asked for (WATCHDOG_USEC), or undefined. Ping at half of it. */
  readonly watchdogMs: number | undefined;
}

export function systemdNotifier(env: NodeJS.ProcessEnv = process.env): SystemdNotifier {
  const watchdogUsec = Number(env['WATCHDOG_USEC']);
  const watchdogMs = Number.isFinite(watchdogUsec) && watchdogUsec > 0 && (env['WATCHDOG_PID'] === undefined || Number(env['WATCHDOG_PID']) === process.pid) ? watchdogUsec / 1000 : undefined;
  if (env['NOTIFY_SOCKET'] === undefined) return { active: false, notify: () => undefined, watchdogMs };
  let sdNotify: ((unsetEnvironment: number, state: string) => number) | undefined;
  try {
    const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');
    sdNotify = koffi.load('libsystemd.so.0').func('int sd_notify(int unset_environment, const char* state)') as (u: number, s: string) => number;
  } catch {
    sdNotify = undefined;
  }
  return {
    active: sdNotify !== undefined,
    watchdogMs,
    notify(state) {
      sdNotify?.(0, state);
    },
  };
}
