import { promises as fs } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import type * as Tf from '@tensorflow/tfjs';
import { DeviceUnavailableError, ModelError, UsageError } from '../errors.js';
import { checkFeeds } from '../hal/feeds.js';
import type { DeviceInfo, Engine, Feeds, LoadedModel, LoadOptions, ModelSource, Outputs, Support, TensorSpec } from '../hal/types.js';
import type { DType, TensorData } from '../tensor/tensor.js';
import { Tensor } from '../tensor/tensor.js';
import { SerialQueue } from '../hal/serial-queue.js';

/**
 * TF.js backends this engine can run on: `tensorflow` is libtensorflow through
 * @tensorflow/tfjs-node-gpu (CUDA devices) or @tensorflow/tfjs-node (CPU), `wasm` is XNNPACK
 * compiled to WebAssembly, `cpu` is plain JavaScript.
 */
export type TfjsBackendName = 'tensorflow' | 'wasm' | 'cpu';
export const TFJS_BACKENDS: readonly TfjsBackendName[] = ['tensorflow', 'wasm', 'cpu'];

export interface TfjsEngineOptions {
  /**
   * Backends to try, in order; the first that initialises wins and is kept for the life of the
   * engine. Defaults to `tensorflow, wasm, cpu` for cpu devices. On cuda and jetson devices only
   * `tensorflow` (from @tensorflow/tfjs-node-gpu) is ever used: running a GPU placement on the
   * CPU would hide the misconfiguration from the scheduler.
   */
  readonly backends?: readonly string[];
}

/** A loaded TF.js model; `threads` is what the backend actually uses where it says (wasm). */
export interface TfjsLoadedModel extends LoadedModel {
  readonly threads: number | undefined;
}

/**
 * The `tfjs` engine: TF.js graph models (tensorflowjs_converter output) and layers models (Keras
 * exports, `model.save`) read from a local folder holding `model.json` and its weight shards.
 * Nothing is ever fetched over the network.
 *
 * Every tfjs module is imported on first use, so a machine without them still starts. TF.js keeps
 * one active backend per process; this engine chooses it once (memoised per device class, cpu or
 * gpu) and re-activates a model's backend before running it, so a second engine instance with
 * other backends works but switches backends between runs. `run` calls on one model are
 * serialised; different models may run concurrently.
 *
 * @tensorflow/tfjs-node and @tensorflow/tfjs-node-gpu are optional peers the user installs; when
 * they are missing the import failure is kept as the reason shown by `supports` and by load errors.
 */
export function createTfjsEngine(options: TfjsEngineOptions = {}): Engine {
  const order = backendOrder(options.backends);
  const modules = new ModuleCache();
  const chosen = new Map<'cpu' | 'gpu', Promise<ActiveBackend>>();
  const backendFor = (device: DeviceInfo, threads: number | undefined): Promise<ActiveBackend> => {
    const cls = device.kind === 'cpu' ? 'cpu' : 'gpu';
    let active = chosen.get(cls);
    if (active === undefined) {
      active = chooseBackend(modules, cls === 'gpu' ? ['tensorflow'] : order, cls, threads);
      chosen.set(cls, active);
    }
    return active;
  };

  return {
    name: 'tfjs',
    formats: ['tfjs-graph', 'tfjs-layers'],

    async supports(device: DeviceInfo): Promise<Support> {
      if (device.kind !== 'cpu' && device.kind !== 'cuda' && device.kind !== 'jetson') {
        return { ok: false, reason: `TF.js has no backend for ${device.kind} devices`, fix: `convert the model to a format ${device.kind} devices run (${device.formats.join(', ') || 'none'}), or place it on a cpu device` };
      }
      if (device.kind !== 'cpu') {
        try {
          await modules.tensorflow('gpu');
        } catch (error) {
          return { ok: false, reason: importFailure('@tensorflow/tfjs-node-gpu', error), fix: GPU_FIX };
        }
      }
      try {
        await backendFor(device, undefined);
        return { ok: true };
      } catch (error) {
        if (error instanceof DeviceUnavailableError) return { ok: false, reason: error.reason, fix: error.fix };
        return { ok: false, reason: `@tensorflow/tfjs failed to load: ${messageOf(error)}`, fix: 'reinstall dependencies with `npm ci` (@tensorflow/tfjs 4.22.0 is a dependency of aios)' };
      }
    },

    async load(model: ModelSource, device: DeviceInfo, loadOptions: LoadOptions = {}): Promise<TfjsLoadedModel> {
      if (model.format !== 'tfjs-graph' && model.format !== 'tfjs-layers') {
        throw new ModelError('EAI_MODEL_FORMAT', `The tfjs engine runs tfjs-graph and tfjs-layers models; ${model.path} is ${model.format}. Place it with an engine for ${model.format}.`, { details: { path: model.path, format: model.format } });
      }
      if (device.kind !== 'cpu' && device.kind !== 'cuda' && device.kind !== 'jetson') {
        throw new DeviceUnavailableError('EAI_HAL_ENGINE_UNAVAILABLE', `TF.js has no backend for ${device.kind} devices`, 'place the model on a cpu, cuda or jetson device', { details: { engine: 'tfjs', device: device.id } });
      }
      const active = await backendFor(device, loadOptions.threads);
      const artifacts = await readArtifacts(active.tf, model);
      await activate(active);
      return artifacts.kind === 'tfjs-graph' ? loadGraph(active, artifacts, model, device) : loadLayers(active, artifacts, model, device);
    },
  };
}

const GPU_FIX = 'npm install @tensorflow/tfjs-node-gpu@4.22.0 (downloads libtensorflow with CUDA; needs CUDA 11.8 + cuDNN 8)';
const CPU_FIX = 'npm install @tensorflow/tfjs-node@4.22.0 (downloads libtensorflow for this CPU)';

/** The TF.js module with the backend this engine chose, and what that backend reports. */
interface ActiveBackend {
  readonly tf: typeof Tf;
  readonly name: TfjsBackendName;
  readonly threads: number | undefined;
}

interface Artifacts {
  readonly kind: 'tfjs-graph' | 'tfjs-layers';
  readonly artifacts: Tf.io.ModelArtifacts;
}

/**
 * Runs one model. Tensors given to tfjs and read back from it are disposed before `run` returns,
 * including on errors, so the process's tfjs tensor count stays flat across runs.
 */
class TfjsModel implements TfjsLoadedModel {
  readonly engine = 'tfjs';
  readonly backend: TfjsBackendName;
  readonly threads: number | undefined;
  private readonly queue = new SerialQueue();
  private disposed = false;

  constructor(
    private readonly active: ActiveBackend,
    private readonly source: ModelSource,
    readonly device: DeviceInfo,
    readonly inputs: readonly TensorSpec[],
    readonly outputs: readonly TensorSpec[],
    private readonly invoke: (inputs: Tf.Tensor[]) => Promise<Tf.Tensor[]>,
    private readonly release: () => void,
  ) {
    this.backend = active.name;
    this.threads = active.threads;
  }

  async run(feeds: Feeds): Promise<Outputs> {
    if (this.disposed) throw new ModelError('EAI_MODEL_DISPOSED', `${this.source.path} was unloaded; load it again before running it.`);
    checkFeeds(this.inputs, feeds, this.source.path);
    // One run at a time per model: executeAsync keeps per-graph state, and a backend switch
    // between two awaits must not interleave with another run. (This runs before the first
    // await, so the queue is extended in call order.)
    return this.queue.push(() => this.runNow(feeds));
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.queue.drain();
    this.release();
  }

  private async runNow(feeds: Feeds): Promise<Outputs> {
    const { tf } = this.active;
    await activate(this.active);
    const given: Tf.Tensor[] = [];
    let produced: Tf.Tensor[] = [];
    try {
      for (const spec of this.inputs) given.push(toTf(tf, spec, feeds[spec.name] as Tensor, this.source.path));
      try {
        produced = await this.invoke(given);
      } catch (cause) {
        throw runFailure(cause, this.source.path, this.active.name);
      }
      const out: Outputs = {};
      for (const [i, spec] of this.outputs.entries()) {
        const t = produced[i];
        if (t === undefined) continue;
        out[spec.name] = await fromTf(t, spec, this.active.name, this.source.path);
      }
      return out;
    } finally {
      tf.dispose([...given, ...produced]);
    }
  }
}

function backendOrder(requested: readonly string[] | undefined): readonly TfjsBackendName[] {
  if (requested === undefined) return TFJS_BACKENDS;
  const unknown = requested.filter((b) => !(TFJS_BACKENDS as readonly string[]).includes(b));
  if (unknown.length > 0 || requested.length === 0) {
    throw new UsageError('EAI_HAL_UNKNOWN_BACKEND', `Unknown TF.js backend list [${requested.join(', ')}]: use one or more of ${TFJS_BACKENDS.join(', ')}.`, { details: { backends: requested } });
  }
  return requested as readonly TfjsBackendName[];
}

/** Memoised dynamic imports; a failed optional import is remembered with its reason. */
class ModuleCache {
  private core: Promise<typeof Tf> | undefined;
  private readonly node = new Map<'cpu' | 'gpu', Promise<void>>();
  private wasmModule: Promise<WasmModule> | undefined;

  tf(): Promise<typeof Tf> {
    this.core ??= import('@tensorflow/tfjs').then((m) => ('loadGraphModel' in m ? m : (m as { default: typeof Tf }).default));
    return this.core;
  }

  /** Imports tfjs-node(-gpu), which registers the `tensorflow` backend with tfjs-core on import. */
  tensorflow(cls: 'cpu' | 'gpu'): Promise<void> {
    let loaded = this.node.get(cls);
    if (loaded === undefined) {
      // A string variable, not a literal: these peers are optional and not installed at build time.
      const specifier: string = cls === 'gpu' ? '@tensorflow/tfjs-node-gpu' : '@tensorflow/tfjs-node';
      loaded = import(specifier).then(() => undefined);
      this.node.set(cls, loaded);
    }
    return loaded;
  }

  wasm(): Promise<WasmModule> {
    this.wasmModule ??= import('@tensorflow/tfjs-backend-wasm').then((m) => ('setWasmPaths' in m ? m : (m as { default: WasmModule }).default));
    return this.wasmModule;
  }
}

type WasmModule = typeof import('@tensorflow/tfjs-backend-wasm');

/** Tries each backend in order; every failure is kept so the final error lists them all. */
async function chooseBackend(modules: ModuleCache, order: readonly TfjsBackendName[], cls: 'cpu' | 'gpu', threads: number | undefined): Promise<ActiveBackend> {
  const tf = await modules.tf();
  const failures: string[] = [];
  for (const name of order) {
    try {
      const active = await initBackend(tf, modules, name, cls, threads);
      return active;
    } catch (error) {
      failures.push(`${name}: ${messageOf(error)}`);
    }
  }
  const gpu = cls === 'gpu';
  const fix = gpu ? GPU_FIX : `${CPU_FIX}, or allow the wasm or cpu backend (backends: ${TFJS_BACKENDS.join(', ')})`;
  throw new DeviceUnavailableError('EAI_HAL_ENGINE_UNAVAILABLE', `No TF.js backend could start for ${gpu ? 'a GPU' : 'the CPU'}: ${failures.join('; ')}`, fix, { details: { engine: 'tfjs', failures } });
}

async function initBackend(tf: typeof Tf, modules: ModuleCache, name: TfjsBackendName, cls: 'cpu' | 'gpu', threads: number | undefined): Promise<ActiveBackend> {
  if (name === 'tensorflow') {
    const pkg = cls === 'gpu' ? '@tensorflow/tfjs-node-gpu' : '@tensorflow/tfjs-node';
    try {
      await modules.tensorflow(cls);
    } catch (cause) {
      throw new Error(importFailure(pkg, cause), { cause });
    }
    // tfjs-node registers with the tfjs-core it resolves; a second copy of tfjs-core never sees it.
    if (tf.findBackendFactory('tensorflow') === null) throw new Error(`${pkg} loaded but registered its backend with another copy of @tensorflow/tfjs-core; install it at the same version as @tensorflow/tfjs (4.22.0)`);
  } else if (name === 'wasm') {
    const wasm = await modules.wasm();
    // Point the loader at the package's own folder: its default (the script's directory) breaks
    // under bundlers, and a plain path is what Emscripten's Node loader reads with fs.
    wasm.setWasmPaths(wasmDir());
    // Node gets the single-threaded SIMD binary (tfjs disables wasm threads on Node), so this
    // only matters where a threaded build runs; ask for what the caller or the machine offers.
    wasm.setThreadsCount(threads ?? os.availableParallelism());
  }
  if (!(await tf.setBackend(name))) throw new Error(`the ${name} backend failed to initialise`);
  const threadsUsed = name === 'wasm' ? (await modules.wasm()).getThreadsCount() : undefined;
  return { tf, name, threads: threadsUsed };
}

async function activate(active: ActiveBackend): Promise<void> {
  if (active.tf.getBackend() !== active.name) await active.tf.setBackend(active.name);
}

function wasmDir(): string {
  const entry = createRequire(import.meta.url).resolve('@tensorflow/tfjs-backend-wasm');
  return path.dirname(entry) + path.sep;
}

/**
 * Reads `model.json` and its weight shards from disk into ModelArtifacts. `model.path` is the
 * model folder or the JSON file itself. Shards must stay inside the model folder and add up to
 * the bytes the manifest declares, so a truncated copy is reported here, not as garbage output.
 */
async function readArtifacts(tf: typeof Tf, model: ModelSource): Promise<Artifacts> {
  const jsonPath = model.path.toLowerCase().endsWith('.json') ? model.path : path.join(model.path, 'model.json');
  const dir = path.dirname(jsonPath);
  let text: string;
  try {
    text = await fs.readFile(jsonPath, 'utf8');
  } catch (cause) {
    throw new ModelError('EAI_MODEL_NOT_FOUND', `TF.js model file '${jsonPath}' does not exist. A TF.js model folder holds model.json and its weight shards.`, { cause, details: { path: jsonPath } });
  }
  let json: Tf.io.ModelJSON;
  try {
    json = JSON.parse(text) as Tf.io.ModelJSON;
  } catch (cause) {
    throw new ModelError('EAI_MODEL_CORRUPT', `'${jsonPath}' is not valid JSON. Copy the model again or re-export it with tensorflowjs_converter.`, { cause, details: { path: jsonPath } });
  }
  if (typeof json !== 'object' || json === null || typeof json.modelTopology !== 'object' || json.modelTopology === null) {
    throw new ModelError('EAI_MODEL_CORRUPT', `'${jsonPath}' has no modelTopology, so it is not a TF.js model.json.`, { details: { path: jsonPath } });
  }
  const topology = json.modelTopology as { node?: unknown };
  const kind = json.format === 'graph-model' || Array.isArray(topology.node) ? 'tfjs-graph' : 'tfjs-layers';
  if (kind !== model.format) {
    throw new ModelError('EAI_MODEL_FORMAT', `'${jsonPath}' holds a ${kind} model but was given as ${model.format}; detect the format with detectModel().`, { details: { path: jsonPath, expected: model.format, found: kind } });
  }
  const artifacts = await tf.io.getModelArtifactsForJSON(json, async (manifest) => readWeights(manifest, dir, jsonPath));
  return { kind, artifacts };
}

async function readWeights(manifest: Tf.io.WeightsManifestConfig, dir: string, jsonPath: string): Promise<[Tf.io.WeightsManifestEntry[], ArrayBuffer[]]> {
  const specs: Tf.io.WeightsManifestEntry[] = [];
  const buffers: ArrayBuffer[] = [];
  let bytes = 0;
  for (const group of manifest) {
    specs.push(...group.weights);
    for (const shard of group.paths) {
      const file = path.resolve(dir, shard);
      const inside = path.relative(dir, file);
      if (path.isAbsolute(shard) || inside === '..' || inside.startsWith(`..${path.sep}`)) {
        throw new ModelError('EAI_MODEL_CORRUPT', `Weight shard '${shard}' in ${jsonPath} points outside the model folder; a model may only read files beside its model.json.`, { details: { path: jsonPath, shard } });
      }
      let data: Buffer;
      try {
        data = await fs.readFile(file);
      } catch (cause) {
        throw new ModelError('EAI_MODEL_CORRUPT', `Weight shard '${shard}' named in ${jsonPath} is missing (${file}). Copy the whole model folder again.`, { cause, details: { path: jsonPath, shard, file } });
      }
      bytes += data.byteLength;
      // A Node Buffer may be a slice of a shared pool; tfjs needs ArrayBuffers it owns.
      buffers.push(data.byteOffset === 0 && data.byteLength === data.buffer.byteLength ? (data.buffer as ArrayBuffer) : data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) as ArrayBuffer);
    }
  }
  const expected = expectedWeightBytes(specs);
  if (expected !== undefined && expected !== bytes) {
    throw new ModelError('EAI_MODEL_CORRUPT', `The weight shards of ${jsonPath} hold ${bytes} bytes but the manifest declares ${expected}; a shard is truncated or from another model. Copy the model folder again.`, { details: { path: jsonPath, expected, found: bytes } });
  }
  return [specs, buffers];
}

/** Bytes the manifest's weights take, or undefined where string weights make it unknowable. */
function expectedWeightBytes(specs: readonly Tf.io.WeightsManifestEntry[]): number | undefined {
  let total = 0;
  for (const spec of specs) {
    const count = spec.shape.reduce((a, b) => a * b, 1);
    const stored = spec.quantization?.dtype ?? spec.dtype;
    const size = WEIGHT_BYTES[stored];
    if (size === undefined) return undefined;
    total += count * size;
  }
  return total;
}

const WEIGHT_BYTES: Readonly<Record<string, number>> = { float32: 4, int32: 4, bool: 1, complex64: 8, uint8: 1, uint16: 2, float16: 2 };

async function loadGraph(active: ActiveBackend, { artifacts }: Artifacts, source: ModelSource, device: DeviceInfo): Promise<TfjsModel> {
  const { tf } = active;
  let model: Tf.GraphModel;
  try {
    model = await tf.loadGraphModel(tf.io.fromMemory(artifacts));
  } catch (cause) {
    throw new ModelError('EAI_MODEL_CORRUPT', `TF.js could not load the graph model ${source.path}: ${messageOf(cause)}. Re-export it with tensorflowjs_converter 4.x.`, { cause, details: { path: source.path } });
  }
  // The signature tfjs itself used (top-level, or in userDefinedMetadata as older converters wrote).
  const signature = (model.modelSignature ?? {}) as Signature;
  const nodes = graphNodes(artifacts.modelTopology);
  const [inputs, outputs] = disposingOnError(model, () => [
    model.inputs.map((info) => graphSpec(info, signature.inputs, nodes, source.path)),
    model.outputs.map((info) => graphSpec(info, signature.outputs, nodes, source.path)),
  ]);
  const outputNames = outputs.map((s) => s.name);
  // Control flow and dynamic-shape ops only run through executeAsync; plain graphs run faster
  // through execute, whose intermediates tf.tidy reclaims even when an op throws.
  const dynamic = hasDynamicOps(artifacts.modelTopology);
  const invoke = async (given: Tf.Tensor[]): Promise<Tf.Tensor[]> => {
    const named: Tf.NamedTensorMap = Object.fromEntries(inputs.map((s, i) => [s.name, given[i] as Tf.Tensor]));
    if (dynamic) return asArray(await model.executeAsync(named, outputNames));
    return tf.tidy(() => asArray(model.execute(named, outputNames)));
  };
  return new TfjsModel(active, source, device, inputs, outputs, invoke, () => model.dispose());
}

async function loadLayers(active: ActiveBackend, { artifacts }: Artifacts, source: ModelSource, device: DeviceInfo): Promise<TfjsModel> {
  const { tf } = active;
  let model: Tf.LayersModel;
  try {
    model = await tf.loadLayersModel(tf.io.fromMemory(artifacts));
  } catch (cause) {
    throw new ModelError('EAI_MODEL_CORRUPT', `TF.js could not load the layers model ${source.path}: ${messageOf(cause)}. Re-save it with model.save() or tensorflowjs_converter 4.x.`, { cause, details: { path: source.path } });
  }
  const toSpec = (t: Tf.SymbolicTensor): TensorSpec => ({ name: t.name, dtype: tfDType(t.dtype, t.name, source.path), shape: t.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : null)) });
  const [inputs, outputs] = disposingOnError(model, () => [model.inputs.map(toSpec), model.outputs.map(toSpec)]);
  const invoke = async (given: Tf.Tensor[]): Promise<Tf.Tensor[]> => tf.tidy(() => asArray(model.predict(given.length === 1 ? (given[0] as Tf.Tensor) : given)));
  return new TfjsModel(active, source, device, inputs, outputs, invoke, () => model.dispose());
}

/** Reading a model's signature may refuse it (an unsupported dtype); free its weights if so. */
function disposingOnError<T>(model: { dispose(): unknown }, read: () => T): T {
  try {
    return read();
  } catch (error) {
    model.dispose();
    throw error;
  }
}

interface SignatureEntry {
  readonly name?: string;
  readonly dtype?: string;
  readonly tensorShape?: { readonly dim?: readonly { readonly size?: string | number }[]; readonly unknownRank?: boolean };
}
interface Signature {
  readonly inputs?: Readonly<Record<string, SignatureEntry>>;
  readonly outputs?: Readonly<Record<string, SignatureEntry>>;
}
interface GraphNode {
  readonly name: string;
  readonly op?: string;
  readonly attr?: Readonly<Record<string, { readonly type?: string } | undefined>>;
}
interface GraphTopology {
  readonly node?: readonly GraphNode[];
  readonly library?: { readonly function?: readonly { readonly nodeDef?: readonly GraphNode[] }[] };
}

const CONTROL_FLOW_OPS = ['Switch', 'Merge', 'Enter', 'Exit', 'NextIteration', 'StatelessIf', 'StatelessWhile', 'If', 'While'];
const DYNAMIC_SHAPE_OPS = ['NonMaxSuppressionV2', 'NonMaxSuppressionV3', 'NonMaxSuppressionV4', 'NonMaxSuppressionV5', 'Where', 'HashTable', 'HashTableV2', 'LookupTableImport', 'LookupTableImportV2', 'LookupTableFind', 'LookupTableFindV2', 'LookupTableSize', 'LookupTableSizeV2'];
const DYNAMIC_OPS = new Set([...CONTROL_FLOW_OPS, ...DYNAMIC_SHAPE_OPS]);

function graphNodes(topology: unknown): Map<string, GraphNode> {
  const t = topology as GraphTopology | undefined;
  return new Map((t?.node ?? []).map((n) => [n.name, n]));
}

/** Whether any node, including those in function bodies (where control flow lives), is dynamic. */
function hasDynamicOps(topology: unknown): boolean {
  const t = topology as GraphTopology | undefined;
  const all = [...(t?.node ?? []), ...(t?.library?.function ?? []).flatMap((f) => f.nodeDef ?? [])];
  return all.some((n) => DYNAMIC_OPS.has(n.op ?? ''));
}

/**
 * A graph input's or output's spec. The converter's signature is the most faithful source (tfjs
 * itself narrows int64 to int32 and often knows no output shapes); tfjs's own view and the node's
 * attributes fill in where the signature is silent. An output of unknown rank reports `[]`.
 */
function graphSpec(info: Tf.ModelTensorInfo, entries: Readonly<Record<string, SignatureEntry>> | undefined, nodes: Map<string, GraphNode>, model: string): TensorSpec {
  const entry = Object.entries(entries ?? {}).find(([key, e]) => baseName(key) === info.name || baseName(e.name ?? '') === info.name)?.[1];
  const node = nodes.get(info.name);
  const tfType = entry?.dtype ?? node?.attr?.['dtype']?.type ?? node?.attr?.['T']?.type;
  const dtype = tfType !== undefined ? protoDType(tfType, info.name, model) : tfDType(info.dtype ?? 'float32', info.name, model);
  let shape: (number | null)[] = [];
  const dims = entry?.tensorShape?.dim;
  if (dims !== undefined && entry?.tensorShape?.unknownRank !== true) shape = dims.map((d) => dimension(Number(d.size ?? -1)));
  else if (info.shape !== undefined) shape = info.shape.map(dimension);
  return { name: info.name, dtype, shape };
}

function dimension(size: number): number | null {
  return Number.isInteger(size) && size >= 0 ? size : null;
}

function baseName(tensorName: string): string {
  return tensorName.replace(/:0$/, '');
}

const PROTO_DTYPES: Readonly<Record<string, DType>> = { DT_FLOAT: 'float32', DT_INT32: 'int32', DT_INT64: 'int64', DT_BOOL: 'bool', DT_INT16: 'int32', DT_INT8: 'int32', DT_UINT8: 'int32', DT_HALF: 'float32', DT_DOUBLE: 'float32' };

/** TF's proto dtypes, as tfjs presents them (it widens small ints and narrows doubles). */
function protoDType(type: string, name: string, model: string): DType {
  const dtype = PROTO_DTYPES[type];
  if (dtype === undefined) throw unsupportedType(type, name, model);
  return dtype;
}

function tfDType(type: string, name: string, model: string): DType {
  if (type === 'float32' || type === 'int32' || type === 'bool') return type;
  throw unsupportedType(type, name, model);
}

function unsupportedType(type: string, name: string, model: string): ModelError {
  return new ModelError('EAI_MODEL_UNSUPPORTED_TYPE', `${model}: tensor '${name}' has type ${type}, which aios tensors cannot carry through TF.js (supported: float32, int32, int64 as int32, bool).`, { details: { model, name, type } });
}

/**
 * Our tensor as a tfjs tensor. int64 is narrowed to int32, which is what tfjs computes in anyway;
 * values outside int32 would wrap silently, so they are refused.
 */
function toTf(tf: typeof Tf, spec: TensorSpec, t: Tensor, model: string): Tf.Tensor {
  const shape = [...t.shape];
  switch (t.dtype) {
    case 'float32':
    case 'int32':
    case 'bool':
      return tf.tensor(t.data as Float32Array | Int32Array | Uint8Array, shape, t.dtype);
    case 'int64': {
      const source = t.data as BigInt64Array;
      const narrowed = new Int32Array(source.length);
      for (let i = 0; i < source.length; i++) {
        const v = source[i] as bigint;
        if (v > 2147483647n || v < -2147483648n) {
          throw new ModelError('EAI_MODEL_INPUT_RANGE', `Input '${spec.name}' of ${model} holds ${v} at index ${i}; TF.js computes int64 as int32, so values must lie in [-2^31, 2^31).`, { details: { model, input: spec.name, index: i } });
        }
        narrowed[i] = Number(v);
      }
      return tf.tensor(narrowed, shape, 'int32');
    }
    default:
      throw new ModelError('EAI_MODEL_INPUT_DTYPE', `Input '${spec.name}' of ${model} is ${t.dtype}, which TF.js cannot take (float32, int32, int64 within int32, bool).`, { details: { model, input: spec.name, got: t.dtype } });
  }
}

/** A tfjs tensor copied out into one of ours, widened back to int64 where the spec says so. */
async function fromTf(t: Tf.Tensor, spec: TensorSpec, backend: TfjsBackendName, model: string): Promise<Tensor> {
  const shape = [...t.shape];
  const values = await t.data();
  if (t.dtype === 'int32' && spec.dtype === 'int64') return new Tensor('int64', shape, BigInt64Array.from(values as Int32Array, (v) => BigInt(v)));
  if (t.dtype !== 'float32' && t.dtype !== 'int32' && t.dtype !== 'bool') throw unsupportedType(t.dtype, spec.name, model);
  // The cpu backend hands back its own storage (a constant output would alias a weight); the
  // other backends already copy out of native or wasm memory.
  const data = backend === 'cpu' ? (values as Float32Array).slice() : values;
  return new Tensor<DType>(t.dtype, shape, data as TensorData);
}

/**
 * tfjs only finds out at run time that a graph uses an op it has no kernel for ("Unknown op
 * 'X'"); that is a property of the model, not of this input, so it gets its own code.
 */
function runFailure(cause: unknown, model: string, backend: TfjsBackendName): ModelError {
  const message = messageOf(cause);
  const op = /^(?:Unknown op '([^']+)'|Custom op (\S+) is not registered)/.exec(message);
  if (op !== null) {
    const name = op[1] ?? op[2] ?? '';
    return new ModelError('EAI_MODEL_UNSUPPORTED_OP', `${model} uses the TensorFlow op ${name}, which TF.js 4.22 does not implement. Convert the model to ONNX (tf2onnx) and run it with the onnxruntime engine, or re-export it without that op.`, { cause, details: { model, op: name, backend } });
  }
  return new ModelError('EAI_MODEL_RUN_FAILED', `TF.js (${backend} backend) failed to run ${model}: ${message}`, { cause, details: { model, backend } });
}

function asArray(result: Tf.Tensor | Tf.Tensor[] | Tf.NamedTensorMap): Tf.Tensor[] {
  if (Array.isArray(result)) return result;
  if (isTfTensor(result)) return [result];
  return Object.values(result);
}

function isTfTensor(value: unknown): value is Tf.Tensor {
  return typeof value === 'object' && value !== null && 'dataId' in value && 'shape' in value;
}

/**
 * "not installed" when the package cannot be resolved at all; otherwise the loader's first line
 * (a missing libcuda, say). Resolution is checked separately because import errors differ by
 * loader (Node, bundlers, test runners) while a resolvable package.json means the same everywhere.
 */
function importFailure(pkg: string, error: unknown): string {
  try {
    createRequire(import.meta.url).resolve(`${pkg}/package.json`);
  } catch {
    return `${pkg} is not installed`;
  }
  return `${pkg} failed to load: ${firstLine(messageOf(error))}`;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function firstLine(text: string): string {
  return text.split('\n')[0] ?? text;
}
