import { createRequire } from 'node:module';
import path from 'node:path';
import type * as Ort from 'onnxruntime-node';
import { ModelError } from '../errors.js';
import { checkFeeds } from '../hal/feeds.js';
import { SysRoot } from '../hal/sysroot.js';
import type { DeviceInfo, Engine, Feeds, LoadedModel, LoadOptions, ModelSource, Outputs, Support, TensorSpec } from '../hal/types.js';
import type { DType, TensorData } from '../tensor/tensor.js';
import { Tensor } from '../tensor/tensor.js';

export interface OnnxruntimeEngineOptions {
  /**
   * Where to look for execution-provider libraries and CUDA/TensorRT system libraries. Defaults to
   * the live machine; tests pass a fixture root.
   */
  readonly sys?: SysRoot;
  /**
   * Folder holding onnxruntime-node's native binding and any provider libraries installed beside
   * it (`libonnxruntime_providers_cuda.so`). Defaults to the installed package's own folder.
   */
  readonly bindingDir?: string;
}

/**
 * The `onnxruntime` engine: ONNX models through onnxruntime-node. The CPU execution provider ships
 * in the npm package and runs everywhere; the CUDA and TensorRT providers are separate shared
 * libraries that onnxruntime-node's install script fetches from NuGet, which offline installs skip
 * (`.npmrc`), so on GPUs this engine reports exactly which library is missing and how to add it.
 *
 * onnxruntime-node is imported on first use, so a machine where it cannot load still starts.
 */
export function createOnnxruntimeEngine(options: OnnxruntimeEngineOptions = {}): Engine {
  let ort: Promise<typeof Ort> | undefined;
  const loadOrt = (): Promise<typeof Ort> => {
    ort ??= import('onnxruntime-node').then((m) => {
      // ORT logs every graph rewrite at warning level; keep stderr for what the user must act on.
      m.env.logLevel = 'error';
      return m;
    });
    return ort;
  };
  const bindingDir = options.bindingDir ?? defaultBindingDir();
  const sysRoot = async (): Promise<SysRoot> => options.sys ?? SysRoot.open('/');

  return {
    name: 'onnxruntime',
    formats: ['onnx'],

    async supports(device: DeviceInfo): Promise<Support> {
      try {
        await loadOrt();
      } catch (error) {
        return { ok: false, reason: `onnxruntime-node failed to load: ${error instanceof Error ? error.message : String(error)}`, fix: 'reinstall dependencies with `npm ci` on this machine (the package ships its native binding for linux x64/arm64)' };
      }
      switch (device.kind) {
        case 'cpu':
          return { ok: true };
        case 'cuda':
        case 'jetson':
          return gpuSupport(await sysRoot(), bindingDir, 'cuda');
        default:
          return { ok: false, reason: `onnxruntime has no execution provider for ${device.kind} devices`, fix: `convert the model to a format ${device.kind} devices run (${device.formats.join(', ') || 'none'})` };
      }
    },

    async load(model: ModelSource, device: DeviceInfo, loadOptions: LoadOptions = {}): Promise<LoadedModel> {
      const m = await loadOrt();
      const provider = device.kind === 'cpu' ? 'cpu' : providerChoice(loadOptions);
      const sessionOptions: Ort.InferenceSession.SessionOptions = {
        executionProviders: executionProviders(provider, device, loadOptions),
        graphOptimizationLevel: loadOptions.graphOptimization ?? 'all',
        logSeverityLevel: 3,
        ...(loadOptions.threads === undefined ? {} : { intraOpNumThreads: loadOptions.threads, interOpNumThreads: 1 }),
      };
      if (provider !== 'cpu') process.env['CUDA_DEVICE_ORDER'] ??= 'PCI_BUS_ID';
      let session: Ort.InferenceSession;
      try {
        session = await m.InferenceSession.create(model.path, sessionOptions);
      } catch (cause) {
        const message = cause instanceof Error ? cause.message : String(cause);
        throw new ModelError('EAI_MODEL_CORRUPT', `onnxruntime could not load ${model.path}: ${message.split('\n')[0]}. Check the file is a complete ONNX model (re-export or copy it again) and that its opset is supported by onnxruntime ${m.env.versions.common}.`, { cause, details: { path: model.path } });
      }
      return new OnnxModel(m, session, model, device, provider);
    },
  };
}

type Provider = 'cpu' | 'cuda' | 'tensorrt';

class OnnxModel implements LoadedModel {
  readonly engine = 'onnxruntime';
  readonly inputs: readonly TensorSpec[];
  readonly outputs: readonly TensorSpec[];
  private disposed = false;

  constructor(
    private readonly ort: typeof Ort,
    private readonly session: Ort.InferenceSession,
    private readonly model: ModelSource,
    readonly device: DeviceInfo,
    readonly backend: Provider,
  ) {
    this.inputs = session.inputMetadata.map((m) => toSpec(m, model.path));
    this.outputs = session.outputMetadata.map((m) => toSpec(m, model.path));
  }

  async run(feeds: Feeds): Promise<Outputs> {
    if (this.disposed) throw new ModelError('EAI_MODEL_DISPOSED', `${this.model.path} was unloaded; load it again before running it.`);
    checkFeeds(this.inputs, feeds, this.model.path);
    const ortFeeds: Record<string, Ort.Tensor> = {};
    for (const [name, t] of Object.entries(feeds)) {
      // Zero-copy: ort.Tensor wraps the same typed array.
      ortFeeds[name] = new this.ort.Tensor(ORT_TYPE[t.dtype], t.data as Ort.Tensor.DataType, t.shape as number[]);
    }
    const results = await this.session.run(ortFeeds);
    const out: Outputs = {};
    for (const [name, value] of Object.entries(results)) {
      const dtype = fromOrtType(value.type, this.model.path);
      out[name] = new Tensor(dtype, value.dims, value.data as TensorData);
    }
    return out;
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.session.release();
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

function toSpec(meta: Ort.InferenceSession.ValueMetadata, model: string): TensorSpec {
  if (!meta.isTensor) throw new ModelError('EAI_MODEL_UNSUPPORTED_TYPE', `${model}: '${meta.name}' is not a tensor (sequence or map values are not supported).`, { details: { model, name: meta.name } });
  return { name: meta.name, dtype: fromOrtType(meta.type, model), shape: meta.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : null)) };
}

function providerChoice(options: LoadOptions): Provider {
  return options.engine?.['provider'] === 'tensorrt' ? 'tensorrt' : 'cuda';
}

function executionProviders(provider: Provider, device: DeviceInfo, options: LoadOptions): Ort.InferenceSession.ExecutionProviderConfig[] {
  if (provider === 'cpu') return ['cpu'];
  const deviceId = typeof device.details?.['index'] === 'number' ? device.details['index'] : 0;
  const cuda: Ort.InferenceSession.ExecutionProviderConfig = { name: 'cuda', deviceId };
  if (provider === 'cuda') return [cuda, 'cpu'];
  const cacheDir = options.engine?.['tensorrtCacheDir'];
  return [{ name: 'tensorrt', deviceId, ...(typeof cacheDir === 'string' ? { trtEngineCacheEnable: true, trtEngineCachePath: cacheDir } : {}) } as Ort.InferenceSession.ExecutionProviderConfig, cuda, 'cpu'];
}

/**
 * The CUDA provider needs its own library beside the binding, onnxruntime's shared-provider shim,
 * and the CUDA 12 / cuDNN 9 runtime on the system. Report the first thing missing, with its fix.
 */
async function gpuSupport(sys: SysRoot, bindingDir: string, provider: 'cuda'): Promise<Support> {
  if (process.arch !== 'x64') {
    return { ok: false, reason: `onnxruntime-node for linux/${process.arch} ships no CUDA execution provider`, fix: 'build onnxruntime-node from source with --use_cuda --use_tensorrt on this JetPack (see docs/hardware.md), or place the model on cpu' };
  }
  for (const lib of [`libonnxruntime_providers_${provider}.so`, 'libonnxruntime_providers_shared.so']) {
    const file = path.join(bindingDir, lib);
    if (!(await sys.exists(file))) {
      return { ok: false, reason: `${lib} not found in ${bindingDir}`, fix: "install the CUDA provider where the network allows: `npx onnxruntime-node-install --onnxruntime-node-install=cuda12` from node_modules/onnxruntime-node, or copy the library from the Microsoft.ML.OnnxRuntime.Gpu.Linux NuGet package into that folder" };
    }
  }
  for (const [lib, pkg] of [['libcudart.so.12', 'cuda-cudart-12-x (NVIDIA CUDA repository) or nvidia-cuda-toolkit'], ['libcublasLt.so.12', 'libcublas-12-x'], ['libcudnn.so.9', 'libcudnn9-cuda-12']] as const) {
    if ((await sys.findLibrary(lib)) === undefined) return { ok: false, reason: `${lib} not found (the CUDA execution provider needs CUDA 12 and cuDNN 9)`, fix: `install ${pkg}, or add its folder to /etc/ld.so.conf.d and run ldconfig` };
  }
  return { ok: true };
}

function defaultBindingDir(): string {
  try {
    const pkg = createRequire(import.meta.url).resolve('onnxruntime-node/package.json');
    return path.join(path.dirname(pkg), 'bin', 'napi-v6', process.platform, process.arch);
  } catch {
    return '';
  }
}
