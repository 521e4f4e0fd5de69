import { DeviceUnavailableError, ModelError } from '../../drivers/errors.js';
import type { DeviceInfo, Engine, Feeds, LoadedModel, LoadOptions, ModelSource, Outputs, Support } from '../../drivers/hal/types.js';

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
 * A fault-injecting engine: wraps a real engine (onnxruntime running the real model, so answers
 * are real) and, per device id, makes runs fail, hang, slow down or vanish on command. It is an
 * ordinary Engine registered in an ordinary HAL, the way a flaky accelerator's driver would be.
 * Any device kind is accepted, so a test can pretend a `cuda` or `edgetpu` device exists and
 * have its runs done by the CPU.
 */
export function faultyEngine(inner: Engine, faults: Map<string, Faults>, log: FaultLog = { runs: new Map(), loads: new Map() }): Engine & { readonly log: FaultLog } {
  const cpu = (device: DeviceInfo): DeviceInfo => ({ ...device, kind: 'cpu' });
  return {
    name: 'faulty',
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
        engine: 'faulty',
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
