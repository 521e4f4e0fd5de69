import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import type * as Ort from 'onnxruntime-node';
import { AiosError, DeviceUnavailableError, ModelError } from '../errors.js';
import { checkFeeds } from '../hal/feeds.js';
import { SysRoot } from '../hal/sysroot.js';
import type { DeviceInfo, Engine, Feeds, LoadedModel, LoadOptions, ModelSource, Outputs, Support, TensorSpec } from '../hal/types.js';
import type { DType, TensorData } from '../tensor/tensor.js';
import { Tensor } from '../tensor/tensor.js';
import type { Provider, ProviderContext } from './onnxruntime/providers.js';
import { checkProvider, GPU_PROVIDERS, readBuildInfo } from './onnxruntime/providers.js';
import type { ValueMeta, WireTensor } from './onnxruntime/session-thread.js';
import { SessionThread } from './onnxruntime/session-thread.js';
import { checkWebGpu } from './onnxruntime/webgpu-check.js';

export interface OnnxruntimeEngineOptions {
  /**
   * The machine whose system libraries (CUDA, cuDNN, TensorRT, Vulkan) decide support. Defaults to
   * this one; `aios devices --sysroot` passes a captured machine to ask "would this work there".
   */
  readonly sys?: SysRoot;
  /** Where the aios install (and so the binding folder) lives. Defaults to this machine. */
  readonly install?: SysRoot;
  /**
   * The onnxruntime-node package to use: the npm dependency by default, or a from-source build
   * with CUDA/TensorRT (deploy/jetson/build-onnxruntime-node.sh). Env `AIOS_ONNXRUNTIME_NODE`.
   */
  readonly packageDir?: string;
  /** Folder of the native binding and provider libraries; derived from the package by default. Looked up through `install`. */
  readonly bindingDir?: string;
  /** Replaces the WebGPU adapter check (a child process); for tests. */
  readonly webgpuCheck?: () => Promise<Support>;
  /** Pretends the binding has (or lacks) the WebGPU provider; for tests. Default: asks onnxruntime. */
  readonly webgpuBundled?: boolean;
}

/**
 * The `onnxruntime` engine: ONNX models through onnxruntime-node, on the best execution provider
 * the device and this machine allow. For NVIDIA devices (cuda, jetson) that is TensorRT, then
 * CUDA, then WebGPU (over Vulkan); every loaded model reports which provider runs it and why the
 * better ones were skipped (`LoadedModel.skipped`). CPU devices use the CPU provider.
 *
 * `LoadOptions.engine` keys: `provider` (force one of tensorrt | cuda | webgpu | cpu),
 * `tensorrtCacheDir` (default ~/.cache/aios/tensorrt: TensorRT engines take minutes to build, the
 * cache makes the second start fast), `fp16`, `int8`, `dlaCore` (Jetson DLA, with GPU fallback).
 * The TensorRT options reach TensorRT only through a binding that passes them (an aios source build,
 * `aios-build.json` says `tensorrtOptions: true`); the npm binding passes the device id alone, and
 * the model then carries a warning saying so.
 */
export function createOnnxruntimeEngine(options: OnnxruntimeEngineOptions = {}): Engine {
  const packageDir = options.packageDir ?? process.env['AIOS_ONNXRUNTIME_NODE'] ?? defaultPackageDir();
  const bindingDir = options.bindingDir ?? path.join(packageDir, 'bin', 'napi-v6', process.platform, process.arch);
  let ort: Promise<typeof Ort> | undefined;
  const loadOrt = (): Promise<typeof Ort> => {
    ort ??= (async () => {
      const entry = packageEntry(packageDir);
      const m = ((await import(entry)) as { default?: typeof Ort }).default ?? ((await import(entry)) as typeof Ort);
      // ORT logs every graph rewrite at warning level; keep stderr for what the user must act on.
      m.env.logLevel = 'error';
      return m;
    })();
    return ort;
  };
  let context: Promise<ProviderContext> | undefined;
  const providerContext = (): Promise<ProviderContext> => {
    context ??= (async (): Promise<ProviderContext> => {
      const m = await loadOrt();
      let webgpu: Promise<Support> | undefined;
      const entry = packageEntry(packageDir);
      const live = await SysRoot.open('/');
      const install = options.install ?? live;
      return {
        sys: options.sys ?? live,
        install,
        bindingDir,
        arch: process.arch,
        build: await readBuildInfo(install, bindingDir),
        webgpuBundled: options.webgpuBundled ?? m.listSupportedBackends().some((b) => b.name === 'webgpu' && b.bundled),
        webgpuAdapter: () => (webgpu ??= (options.webgpuCheck ?? (() => checkWebGpu(entry)))()),
      };
    })();
    return context;
  };

  return {
    name: 'onnxruntime',
    formats: ['onnx'],

    async supports(device: DeviceInfo): Promise<Support> {
      try {
        await loadOrt();
      } catch (error) {
        return { ok: false, reason: `onnxruntime-node failed to load from ${packageDir}: ${error instanceof Error ? error.message : String(error)}`, fix: 'reinstall dependencies with `npm ci` (the package ships its native binding for linux x64/arm64), or fix AIOS_ONNXRUNTIME_NODE' };
      }
      if (device.kind === 'cpu') return { ok: true };
      if (device.kind !== 'cuda' && device.kind !== 'jetson') {
        return { ok: false, reason: `onnxruntime has no execution provider for ${device.kind} devices`, fix: `convert the model to a format ${device.kind} devices run (${device.formats.join(', ') || 'none'})` };
      }
      const ctx = await providerContext();
      const refusals: string[] = [];
      let fix = '';
      for (const provider of GPU_PROVIDERS) {
        const s = await checkProvider(provider, device, ctx);
        if (s.ok) return s;
        refusals.push(`${provider}: ${s.reason}`);
        if (provider === 'cuda') fix = s.fix;
      }
      return { ok: false, reason: `no GPU execution provider can run here (${refusals.join('; ')})`, fix };
    },

    async load(model: ModelSource, device: DeviceInfo, loadOptions: LoadOptions = {}): Promise<LoadedModel> {
      const m = await loadOrt();
      const ctx = await providerContext();
      const forced = loadOptions.engine?.['provider'] as Provider | undefined;
      const candidates: readonly Provider[] = device.kind === 'cpu' ? ['cpu'] : forced !== undefined ? [forced] : GPU_PROVIDERS;
      const skipped: { backend: string; reason: string }[] = [];
      const warnings: string[] = [];
      for (const provider of candidates) {
        const support = await checkProvider(provider, device, ctx);
        if (!support.ok) {
          skipped.push({ backend: provider, reason: support.reason });
          continue;
        }
        if (provider === 'tensorrt' && ctx.build?.tensorrtOptions !== true) {
          warnings.push('this onnxruntime-node binding passes no TensorRT options, so engines are not cached and the first run of every start rebuilds them (minutes); use an aios source build (deploy/jetson/README.md) to enable the cache, FP16 and DLA');
        }
        if (provider !== 'cpu') process.env['CUDA_DEVICE_ORDER'] ??= 'PCI_BUS_ID';
        const sessionOptions: Ort.InferenceSession.SessionOptions = {
          executionProviders: executionProviders(provider, device, loadOptions),
          graphOptimizationLevel: loadOptions.graphOptimization ?? 'all',
          logSeverityLevel: 3,
          ...(loadOptions.threads === undefined ? {} : { intraOpNumThreads: loadOptions.threads, interOpNumThreads: 1 }),
        };
        let session: Session;
        try {
          session = (loadOptions.executor ?? 'thread') === 'thread'
            ? { executor: 'thread', session: await SessionThread.open(packageEntry(packageDir), model.path, sessionOptions) }
            : { executor: 'inline', session: await m.InferenceSession.create(model.path, sessionOptions) };
        } catch (cause) {
          const message = firstLine(cause);
          // A provider that passed the file checks can still fail to initialise (driver mismatch);
          // that is a reason to try the next provider, not a corrupt model.
          if (provider !== 'cpu' && !/protobuf|parse|Load model|invalid model/iu.test(message)) {
            skipped.push({ backend: provider, reason: `session creation failed: ${message}` });
            continue;
          }
          throw new ModelError('EAI_MODEL_CORRUPT', `onnxruntime could not load ${model.path}: ${message}. Check the file is a complete ONNX model (re-export or copy it again) and that its opset is supported by onnxruntime ${m.env.versions.common}.`, { cause, details: { path: model.path } });
        }
        return new OnnxModel(m, session, model, device, provider, skipped, warnings);
      }
      throw new DeviceUnavailableError('EAI_HAL_ENGINE_UNAVAILABLE', `onnxruntime cannot run ${model.path} on ${device.id}: ${skipped.map((s) => `${s.backend}: ${s.reason}`).join('; ')}`, 'install what the first reason names, or place the model on another device (--device cpu)', { details: { device: device.id, skipped } });
    },
  };
}

/** The two ways a session runs: on the caller's thread, or on a thread of its own. */
type Session =
  | { readonly executor: 'inline'; readonly session: Ort.InferenceSession }
  | { readonly executor: 'thread'; readonly session: SessionThread };

class OnnxModel implements LoadedModel {
  readonly engine = 'onnxruntime';
  readonly inputs: readonly TensorSpec[];
  readonly outputs: readonly TensorSpec[];
  private disposed = false;

  constructor(
    private readonly ort: typeof Ort,
    private readonly session: Session,
    private readonly model: ModelSource,
    readonly device: DeviceInfo,
    readonly backend: Provider,
    readonly skipped: readonly { backend: string; reason: string }[],
    readonly warnings: readonly string[],
  ) {
    this.inputs = session.session.inputMetadata.map((meta) => toSpec(meta, model.path));
    this.outputs = session.session.outputMetadata.map((meta) => toSpec(meta, model.path));
  }

  get executor(): 'inline' | 'thread' {
    return this.session.executor;
  }

  async run(feeds: Feeds): Promise<Outputs> {
    if (this.disposed) throw new ModelError('EAI_MODEL_DISPOSED', `${this.model.path} was unloaded; load it again before running it.`);
    checkFeeds(this.inputs, feeds, this.model.path);
    const out: Outputs = {};
    if (this.session.executor === 'thread') {
      const wire: Record<string, WireTensor> = {};
      for (const [name, t] of Object.entries(feeds)) wire[name] = { type: ORT_TYPE[t.dtype], dims: t.shape, data: t.data };
      let results: Record<string, WireTensor>;
      try {
        results = await this.session.session.run(wire);
      } catch (cause) {
        if (cause instanceof AiosError) throw cause;
        throw new ModelError('EAI_MODEL_RUN_FAILED', `onnxruntime failed running ${this.model.path}: ${firstLine(cause)}`, { cause, details: { path: this.model.path } });
      }
      for (const [name, value] of Object.entries(results)) out[name] = new Tensor(fromOrtType(value.type, this.model.path), value.dims, value.data as TensorData);
      return out;
    }
    const ortFeeds: Record<string, Ort.Tensor> = {};
    for (const [name, t] of Object.entries(feeds)) {
      // Zero-copy: ort.Tensor wraps the same typed array. The Node binding refuses memory shared
      // between threads (frames from a worker pool), so those alone are copied once.
      const data = typeof SharedArrayBuffer !== 'undefined' && t.data.buffer instanceof SharedArrayBuffer ? t.data.slice() : t.data;
      ortFeeds[name] = new this.ort.Tensor(ORT_TYPE[t.dtype], data as Ort.Tensor.DataType, t.shape as number[]);
    }
    let results: Ort.InferenceSession.ReturnType;
    try {
      results = await this.session.session.run(ortFeeds);
    } catch (cause) {
      throw new ModelError('EAI_MODEL_RUN_FAILED', `onnxruntime failed running ${this.model.path}: ${firstLine(cause)}`, { cause, details: { path: this.model.path } });
    }
    for (const [name, value] of Object.entries(results)) {
      out[name] = new Tensor(fromOrtType(value.type, this.model.path), value.dims, value.data as TensorData);
    }
    return out;
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.session.session.release();
  }
}

const ORT_TYPE: Record<DType, Ort.Tensor.Type> = {
  float32: 'float32',
  float16: 'float16',
  float64: 'float64',
  int8: 'int8',
  uint8: 'uint8',
  int16: 'int16',
  uint16: 'uint16',
  int32: 'int32',
  uint32: 'uint32',
  int64: 'int64',
  uint64: 'uint64',
  bool: 'bool',
};

function fromOrtType(type: string, model: string): DType {
  const dtype = (Object.keys(ORT_TYPE) as DType[]).find((d) => ORT_TYPE[d] === type);
  if (dtype === undefined) throw new ModelError('EAI_MODEL_UNSUPPORTED_TYPE', `${model} uses tensor type '${type}', which aios tensors do not hold (supported: ${Object.keys(ORT_TYPE).join(', ')}).`, { details: { model, type } });
  return dtype;
}

function toSpec(meta: Ort.InferenceSession.ValueMetadata | ValueMeta, model: string): TensorSpec {
  if (!meta.isTensor || !('type' in meta)) throw new ModelError('EAI_MODEL_UNSUPPORTED_TYPE', `${model}: '${meta.name}' is not a tensor (sequence or map values are not supported).`, { details: { model, name: meta.name } });
  const shape = meta.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : null));
  const names = meta.shape.map((d) => (typeof d === 'string' && d !== '' ? d : null));
  return { name: meta.name, dtype: fromOrtType(meta.type, model), shape, ...(names.some((n) => n !== null) ? { dimNames: names } : {}) };
}

/**
 * The provider list for one session: the chosen provider, then CPU for the nodes it cannot take
 * (onnxruntime partitions the graph). TensorRT keys use onnxruntime's provider-option names so an
 * options-passing binding can hand them over unchanged; the npm binding ignores them.
 */
function executionProviders(provider: Provider, device: DeviceInfo, options: LoadOptions): Ort.InferenceSession.ExecutionProviderConfig[] {
  if (provider === 'cpu') return ['cpu'];
  const deviceId = typeof device.details?.['index'] === 'number' ? device.details['index'] : 0;
  if (provider === 'webgpu') return [{ name: 'webgpu' }, 'cpu'];
  const cuda = { name: 'cuda', deviceId };
  if (provider === 'cuda') return [cuda, 'cpu'];
  const engine = options.engine ?? {};
  const cacheDir = typeof engine['tensorrtCacheDir'] === 'string' ? engine['tensorrtCacheDir'] : path.join(process.env['XDG_CACHE_HOME'] ?? path.join(os.homedir(), '.cache'), 'aios', 'tensorrt');
  const trt: Record<string, unknown> = { name: 'tensorrt', deviceId, trt_engine_cache_enable: '1', trt_engine_cache_path: cacheDir, trt_timing_cache_enable: '1' };
  if (engine['fp16'] === true) trt['trt_fp16_enable'] = '1';
  if (engine['int8'] === true) trt['trt_int8_enable'] = '1';
  if (typeof engine['dlaCore'] === 'number') Object.assign(trt, { trt_dla_enable: '1', trt_dla_core: String(engine['dlaCore']) });
  return [trt as unknown as Ort.InferenceSession.ExecutionProviderConfig, cuda, 'cpu'];
}

function firstLine(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split('\n')[0] ?? '';
}

/** The file `import()` loads for an onnxruntime-node package folder. */
function packageEntry(packageDir: string): string {
  return createRequire(path.join(packageDir, 'package.json')).resolve(packageDir);
}

function defaultPackageDir(): string {
  try {
    return path.dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json'));
  } catch {
    return path.resolve('node_modules/onnxruntime-node');
  }
}
