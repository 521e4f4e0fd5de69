import { promises as fs } from 'node:fs';
import os from 'node:os';
import type * as KoffiModule from 'koffi';
import { DeviceUnavailableError, ModelError } from '../errors.js';
import { SysRoot } from '../hal/sysroot.js';
import type { DeviceInfo, Engine, LoadOptions, ModelSource, Support } from '../hal/types.js';
import type { TfliteApi } from './tflite/c-api.js';
import { EDGETPU_FIX, edgetpuCandidates, loadEdgeTpu, openEdgeTpu, type EdgeTpuRuntime, type OpenedEdgeTpu } from './tflite/edgetpu.js';
import { createTfliteModel, type TfliteLoadedModel } from './tflite/interpreter.js';
import { loadTflite, tfliteCandidates } from './tflite/library.js';

export type { TfliteBackend, TfliteLoadedModel } from './tflite/interpreter.js';
export type { QuantizationParams } from './tflite/c-api.js';

export interface TfliteEngineOptions {
  /**
   * The machine whose dynamic-loader folders are searched for libtensorflowlite_c.so and
   * libedgetpu.so.1. Defaults to the live root `/`; tests pass a throwaway root.
   */
  readonly sys?: SysRoot;
  /** libtensorflowlite_c.so to use before any other (then `AIOS_TFLITE_LIB`, system, tfjs-tflite-node). */
  readonly libraryPath?: string;
  /** libedgetpu.so.1 to use before any other (then `AIOS_EDGETPU_LIB`, system). */
  readonly edgetpuLibrary?: string;
}

/** The tflite engine's `load` resolves to the richer TfliteLoadedModel. */
export interface TfliteEngine extends Engine {
  load(model: ModelSource, device: DeviceInfo, options?: LoadOptions): Promise<TfliteLoadedModel>;
}

/**
 * The `tflite` engine: .tflite models through the TFLite C library (bound with koffi), on the CPU
 * with XNNPACK for float models, and on Coral Edge TPUs through libedgetpu's delegate for models
 * compiled by edgetpu_compiler.
 *
 * Libraries load on first use and are kept for the life of the engine (one copy per engine):
 * libtensorflowlite_c from `libraryPath`, `AIOS_TFLITE_LIB`, the system's loader folders (Jetson
 * and Raspberry Pi images often carry one built for the board), then the copy that the optional
 * dependency tfjs-tflite-node ships (TFLite 2.9.0, linux x64/arm64); libedgetpu.so.1 from
 * `edgetpuLibrary`, `AIOS_EDGETPU_LIB` or the system. A machine without them still starts:
 * `supports` says what is missing and how to install it.
 *
 * Placement rules:
 * - `tflite-edgetpu` on an `edgetpu` device: the Edge TPU delegate is opened on that very device
 *   (see tflite/edgetpu.ts) and claims the edgetpu-custom-op; `backend` is `edgetpu`.
 * - `tflite-edgetpu` anywhere else: refused (ModelError EAI_MODEL_NEEDS_EDGETPU): the custom op
 *   holds an Edge TPU executable no CPU kernel can run.
 * - plain `tflite` on an `edgetpu` device: runs on the CPU, never opening the accelerator (opening
 *   a USB stick loads its firmware and holds it for this process), with a warning in
 *   `model.warnings` and one `process.emitWarning` per model file and engine.
 * - plain `tflite` on `cpu`: CPU kernels, with XNNPACK for float models (`backend` `cpu+xnnpack`).
 *
 * `LoadOptions.threads` sets TFLite's and XNNPACK's threads (default 1, at most the machine's
 * cores: on a 2-vCPU machine, 4 XNNPACK threads made BlazeFace 500 times slower);
 * `LoadOptions.engine.xnnpack = false` turns XNNPACK off. Loads may overlap; each model's runs are
 * serialised by the model (see TfliteLoadedModel).
 */
export function createTfliteEngine(options: TfliteEngineOptions = {}): TfliteEngine {
  let koffi: Promise<typeof KoffiModule> | undefined;
  let tflite: Promise<TfliteApi> | undefined;
  let edgetpu: Promise<EdgeTpuRuntime> | undefined;
  const warned = new Set<string>();
  const sysRoot = async (): Promise<SysRoot> => options.sys ?? SysRoot.open('/');
  const loadKoffi = (): Promise<typeof KoffiModule> => (koffi ??= import('koffi'));
  // A library that loaded is kept; a failure is not, so installing it later needs no restart.
  const tfliteApi = (): Promise<TfliteApi> =>
    (tflite ??= (async () => loadTflite(await loadKoffi(), await tfliteCandidates(options.libraryPath, await sysRoot())))().catch((error: unknown) => {
      tflite = undefined;
      throw error;
    }));
  const edgetpuRuntime = (): Promise<EdgeTpuRuntime> =>
    (edgetpu ??= (async () => loadEdgeTpu(await loadKoffi(), await edgetpuCandidates(options.edgetpuLibrary, await sysRoot())))().catch((error: unknown) => {
      edgetpu = undefined;
      throw error;
    }));

  return {
    name: 'tflite',
    formats: ['tflite', 'tflite-edgetpu'],

    async supports(device: DeviceInfo): Promise<Support> {
      if (device.kind !== 'cpu' && device.kind !== 'edgetpu') {
        return { ok: false, reason: `the tflite engine runs on cpu and edgetpu devices, not ${device.kind} (TFLite's GPU delegate is not wired in)`, fix: `place the model on a cpu device, or convert it to a format ${device.kind} devices run (${device.formats.join(', ') || 'none'})` };
      }
      const sys = await sysRoot();
      // A captured machine's libraries cannot be loaded here: answer from the files alone.
      if (!sys.isLive) return capturedSupport(device, sys, options);
      try {
        await tfliteApi();
        if (device.kind === 'edgetpu') await edgetpuRuntime();
        return { ok: true };
      } catch (error) {
        if (error instanceof DeviceUnavailableError) return { ok: false, reason: error.reason, fix: error.fix };
        throw error;
      }
    },

    async load(model: ModelSource, device: DeviceInfo, loadOptions: LoadOptions = {}): Promise<TfliteLoadedModel> {
      if (model.format !== 'tflite' && model.format !== 'tflite-edgetpu') {
        throw new ModelError('EAI_MODEL_FORMAT', `The tflite engine runs tflite and tflite-edgetpu models; ${model.path} is ${model.format}. Place it with an engine for ${model.format}.`, { details: { path: model.path, format: model.format } });
      }
      if (device.kind !== 'cpu' && device.kind !== 'edgetpu') {
        throw new DeviceUnavailableError('EAI_HAL_ENGINE_UNAVAILABLE', `the tflite engine runs on cpu and edgetpu devices, not ${device.kind} (${device.id})`, 'place the model on a cpu or edgetpu device', { details: { engine: 'tflite', device: device.id } });
      }
      if (model.format === 'tflite-edgetpu' && device.kind !== 'edgetpu') {
        throw new ModelError('EAI_MODEL_NEEDS_EDGETPU', `${model.path} was compiled for the Edge TPU: its edgetpu-custom-op holds an Edge TPU program that only libedgetpu runs, so ${device.id} cannot run it. Place it on an edgetpu device, or run the CPU .tflite it was compiled from.`, { details: { path: model.path, device: device.id } });
      }
      await assertReadable(model.path);
      const api = await tfliteApi();
      const threads = threadCount(loadOptions.threads);
      const warnings: string[] = [];
      let opened: OpenedEdgeTpu | null = null;
      if (model.format === 'tflite-edgetpu') {
        opened = openEdgeTpu(await edgetpuRuntime(), device);
      } else if (device.kind === 'edgetpu') {
        const message = `${model.path} was not compiled with edgetpu_compiler (it has no edgetpu-custom-op), so it runs on the CPU, not on ${device.id}. Compile it for the Edge TPU: edgetpu_compiler ${model.path}`;
        warnings.push(message);
        if (!warned.has(model.path)) {
          warned.add(model.path);
          process.emitWarning(message, { type: 'AiosWarning', code: 'AIOS_TFLITE_CPU_FALLBACK' });
        }
      }
      return createTfliteModel(api, model, device, { threads, xnnpack: loadOptions.engine?.['xnnpack'] !== false, edgetpu: opened, warnings });
    },
  };
}

/**
 * Support on a captured system root (`aios devices --sysroot`): the TFLite library is there
 * (system, or the tfjs-tflite-node copy this install carries for both x64 and arm64), and for an
 * Edge TPU so is libedgetpu.so.1 in that machine's loader folders.
 */
async function capturedSupport(device: DeviceInfo, sys: SysRoot, options: TfliteEngineOptions): Promise<Support> {
  const tflite = await tfliteCandidates(options.libraryPath, sys);
  if (!tflite.some((c) => c.path !== undefined)) {
    return { ok: false, reason: `libtensorflowlite_c.so not found: ${tflite.map((c) => `${c.source}: ${c.missing ?? 'not found'}`).join('; ')}`, fix: 'npm install tfjs-tflite-node@0.0.2 with aios, or install a system libtensorflowlite_c.so' };
  }
  if (device.kind === 'edgetpu') {
    const edgetpu = await edgetpuCandidates(options.edgetpuLibrary, sys);
    if (!edgetpu.some((c) => c.path !== undefined)) return { ok: false, reason: 'libedgetpu.so.1 not found in the dynamic loader\'s folders', fix: EDGETPU_FIX };
  }
  return { ok: true };
}

/** Threads for one model: what the caller asked, within 1..cores; one when unspecified. */
function threadCount(requested: number | undefined): number {
  if (requested === undefined || !Number.isFinite(requested)) return 1;
  return Math.max(1, Math.min(Math.floor(requested), os.availableParallelism()));
}

/** A missing file gets its own code; TFLite would only say "not a valid flatbuffer". */
async function assertReadable(file: string): Promise<void> {
  try {
    await fs.access(file);
  } catch (cause) {
    throw new ModelError('EAI_MODEL_NOT_FOUND', `Model '${file}' does not exist or cannot be read. Give the path of a .tflite file.`, { cause, details: { path: file } });
  }
}
