import { DeviceUnavailableError, ModelError } from '../errors.js';
import type { DeviceInfo, Engine, Feeds, LoadedModel, LoadOptions, ModelSource, Outputs, Support } from '../hal/types.js';

/** What goes wrong on one device, switchable while a test runs. */
export interface Faults {
  /** Every run (and load) fails as an unplugged device does. */
  lost?: boolean;
  /** Runs never finish (a hung driver). */
  hang?: boolean;
  /** Runs fail with an engine error (not a lost device). */
  failRuns?: boolean;
  /** Extra time every run takes, ms. */
  slowMs?: number;
  /** Loads fail. */
  failLoad?: boolean;
}

/** Calls seen by the engine, per device: how many runs each device actually answered. */
export interface FaultLog {
  readonly runs: Map<string, number>;
  readonly loads: Map<string, number>;
}

/**
 * Fault injection for rehearsing failover: wraps a real engine (so answers are real) and, per
 * device id, makes runs fail, hang, slow down or vanish on command, the ways accelerators fail in
 * the field (a Coral stick pulled out, a GPU driver hang, a thermal slowdown). It is an ordinary
 * Engine registered in an ordinary HAL. Any device kind is accepted and its runs are done by the
 * wrapped engine on the CPU, so a test or a bench can stand a `cuda` or `edgetpu` device up on a
 * machine without one. Not registered by `createBuiltinHal`; tests and benches add it themselves.
 */
export function createFaultInjectingEngine(inner: Engine, faults: Map<string, Faults>, log: FaultLog = { runs: new Map(), loads: new Map() }): Engine & { readonly log: FaultLog } {
  const cpu = (device: DeviceInfo): DeviceInfo => ({ ...device, kind: 'cpu' });
  return {
    name: 'fault-injection',
    formats: inner.formats,
    log,
    async supports(): Promise<Support> {
      return { ok: true };
    },
    async load(model: ModelSource, device: DeviceInfo, options?: LoadOptions): Promise<LoadedModel> {
      const f = faults.get(device.id) ?? {};
      if (f.failLoad === true || f.lost === true) throw new DeviceUnavailableError('EAI_HAL_DEVICE_LOST', `${device.id} is not responding`, 'reconnect it');
      log.loads.set(device.id, (log.loads.get(device.id) ?? 0) + 1);
      const real = await inner.load(model, cpu(device), options);
      let disposed = false;
      return {
        engine: 'fault-injection',
        device,
        inputs: real.inputs,
        outputs: real.outputs,
        backend: real.backend,
        ...(real.executor === undefined ? {} : { executor: real.executor }),
        async run(feeds: Feeds): Promise<Outputs> {
          if (disposed) throw new ModelError('EAI_MODEL_DISPOSED', 'disposed');
          const now = faults.get(device.id) ?? {};
          if (now.lost === true) throw new DeviceUnavailableError('EAI_HAL_DEVICE_LOST', `${device.id} was disconnected`, 'reconnect it');
          if (now.hang === true) return new Promise<Outputs>(() => undefined);
          if (now.failRuns === true) throw new ModelError('EAI_MODEL_RUN_FAILED', `${device.id}: injected run failure`);
          if (now.slowMs !== undefined) await new Promise((r) => setTimeout(r, now.slowMs));
          const out = await real.run(feeds);
          log.runs.set(device.id, (log.runs.get(device.id) ?? 0) + 1);
          return out;
        },
        async dispose(): Promise<void> {
          disposed = true;
          await real.dispose();
        },
      };
    },
  };
}
