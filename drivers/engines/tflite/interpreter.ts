import { DeviceUnavailableError, ModelError } from '../../errors.js';
import { checkFeeds } from '../../hal/feeds.js';
import type { DeviceInfo, Feeds, LoadedModel, ModelSource, Outputs, TensorSpec } from '../../hal/types.js';
import { Tensor, type DType } from '../../tensor/tensor.js';
import { TFLITE_OK, TFLITE_STATUS, type Pointer, type QuantizationParams, type TfliteApi } from './c-api.js';
import type { EdgeTpuRecord, OpenedEdgeTpu } from './edgetpu.js';
import { SerialQueue } from '../../hal/serial-queue.js';

/** What runs a TFLite model: TFLite's own CPU kernels, XNNPACK's (float ops) on top, or the Edge TPU. */
export type TfliteBackend = 'cpu' | 'cpu+xnnpack' | 'edgetpu';

/**
 * A model loaded by the `tflite` engine. Beyond LoadedModel it reports what TensorSpec cannot:
 *
 * - `quantization`: for every quantised input and output, by tensor name, the affine parameters
 *   (`real = scale * (q - zeroPoint)`). Inputs are fed in the model's own dtype (uint8 / int8 for
 *   a quantised model), so callers quantise with these: `q = round(real / scale) + zeroPoint`.
 * - `warnings`: things the user should fix that did not stop the load (a plain .tflite placed on
 *   an Edge TPU runs on the CPU).
 * - `threads`: CPU threads TFLite (and XNNPACK) were given.
 * - `libraries`: which TFLite (and libedgetpu) binaries run it, and the Edge TPU opened.
 *
 * `run` calls may overlap; they are queued and run one at a time, because a TFLite interpreter is
 * not thread-safe and holds one set of input and output tensors. Each run's Invoke is a
 * synchronous C call on the main thread: it blocks the event loop for the inference time (1 ms for
 * BlazeFace with XNNPACK, 80 ms for the quantised SSD on one x86 core); moving Invoke to a worker
 * thread is future work. `dispose` waits for queued runs, then frees the interpreter, XNNPACK and
 * Edge TPU delegates, options and model once; later calls are no-ops.
 */
export interface TfliteLoadedModel extends LoadedModel {
  readonly backend: TfliteBackend;
  readonly threads: number;
  readonly quantization: Readonly<Record<string, QuantizationParams>>;
  readonly warnings: readonly string[];
  readonly libraries: {
    readonly tflite: string;
    readonly tfliteVersion: string;
    readonly edgetpu?: { readonly path: string; readonly version: string; readonly device: EdgeTpuRecord };
  };
}

/** How to build one interpreter: threads, XNNPACK wish, the Edge TPU delegate if any. */
export interface InterpreterPlan {
  readonly threads: number;
  readonly xnnpack: boolean;
  readonly edgetpu: OpenedEdgeTpu | null;
  readonly warnings: readonly string[];
}

/**
 * Builds the interpreter for `source` and wraps it as a TfliteLoadedModel. Owns `plan.edgetpu`'s
 * delegate from the moment it is called: on failure it frees everything it (and the caller)
 * allocated before throwing.
 *
 * Throws ModelError EAI_MODEL_CORRUPT (not a loadable flatbuffer), EAI_MODEL_UNSUPPORTED_OP,
 * EAI_MODEL_NEEDS_EDGETPU (edgetpu-custom-op without the Edge TPU delegate),
 * EAI_MODEL_DELEGATE_FAILED (the Edge TPU delegate would not take the graph),
 * EAI_MODEL_UNSUPPORTED_TYPE (a tensor type aios tensors cannot carry).
 */
export function createTfliteModel(api: TfliteApi, source: ModelSource, device: DeviceInfo, plan: InterpreterPlan): TfliteLoadedModel {
  const natives = new Natives(api, plan.edgetpu);
  try {
    const messages = new Messages();
    const model = (natives.model = api.modelCreateFromFile(source.path));
    if (model === null) {
      throw new ModelError('EAI_MODEL_CORRUPT', `TFLite ${api.version} cannot read ${source.path}: it is not a valid TFLite flatbuffer (truncated or damaged). Copy the model again.`, { details: { path: source.path } });
    }
    const options = (natives.options = api.optionsCreate());
    if (options === null) throw new Error('TfLiteInterpreterOptionsCreate returned NULL (out of memory)');
    api.optionsSetNumThreads(options, plan.threads);
    natives.unroute = api.optionsSetErrorReporter(options, messages.sink);
    if (plan.edgetpu !== null) api.optionsAddDelegate(options, plan.edgetpu.delegate);
    const interpreter = (natives.interpreter = api.interpreterCreate(model, options));
    if (interpreter === null) throw buildFailure(messages.take(), source, api, plan.edgetpu !== null);

    let backend: TfliteBackend = plan.edgetpu === null ? 'cpu' : 'edgetpu';
    const inputs = tensors(api, interpreter, 'input', source.path);
    if (plan.xnnpack && plan.edgetpu === null && api.xnnpack !== null && inputs.every((t) => t.spec.dtype === 'float32')) {
      // XNNPACK only takes float ops here (its quantised paths are off in this options layout), so
      // it is applied to float models alone and `backend` says so truthfully. The TFLite 2.9 C
      // library does not apply it by default (no "Created XNNPACK delegate" log, 6.6 ms vs 1.0 ms
      // for BlazeFace), hence the explicit delegate.
      const xnn = (natives.xnnpack = api.xnnpack.create(plan.threads));
      if (xnn !== null && api.interpreterModifyGraphWithDelegate(interpreter, xnn) === TFLITE_OK) backend = 'cpu+xnnpack';
    }
    if (api.allocateTensors(interpreter) !== TFLITE_OK) throw buildFailure(messages.take(), source, api, plan.edgetpu !== null);
    // Tensor pointers are only stable after AllocateTensors, so read them (again) now.
    const inputsAfter = tensors(api, interpreter, 'input', source.path);
    const outputs = tensors(api, interpreter, 'output', source.path);
    const quantization: Record<string, QuantizationParams> = {};
    for (const t of [...inputsAfter, ...outputs]) if (t.quantization.scale !== 0) quantization[t.spec.name] = t.quantization;
    return new TfliteModel(api, natives, messages, source, device, backend, plan, inputsAfter, outputs, quantization);
  } catch (error) {
    natives.release();
    throw error;
  }
}

/** One input or output tensor of the interpreter. */
interface NativeTensor {
  readonly pointer: Pointer;
  readonly spec: TensorSpec;
  readonly quantization: QuantizationParams;
}

class TfliteModel implements TfliteLoadedModel {
  readonly engine = 'tflite';
  readonly inputs: readonly TensorSpec[];
  readonly outputs: readonly TensorSpec[];
  readonly threads: number;
  readonly warnings: readonly string[];
  readonly libraries: TfliteLoadedModel['libraries'];
  private readonly queue = new SerialQueue();
  private disposed = false;

  constructor(
    private readonly api: TfliteApi,
    private readonly natives: Natives,
    private readonly messages: Messages,
    private readonly source: ModelSource,
    readonly device: DeviceInfo,
    readonly backend: TfliteBackend,
    plan: InterpreterPlan,
    private readonly inputTensors: readonly NativeTensor[],
    private readonly outputTensors: readonly NativeTensor[],
    readonly quantization: Readonly<Record<string, QuantizationParams>>,
  ) {
    this.inputs = inputTensors.map((t) => t.spec);
    this.outputs = outputTensors.map((t) => t.spec);
    this.threads = plan.threads;
    this.warnings = plan.warnings;
    const tpu = plan.edgetpu;
    this.libraries = { tflite: api.path, tfliteVersion: api.version, ...(tpu === null ? {} : { edgetpu: { path: tpu.runtime.path, version: tpu.runtime.version, device: tpu.device } }) };
  }

  run(feeds: Feeds): Promise<Outputs> {
    if (this.disposed) return Promise.reject(new ModelError('EAI_MODEL_DISPOSED', `${this.source.path} was unloaded; load it again before running it.`));
    try {
      checkFeeds(this.inputs, feeds, this.source.path);
    } catch (error) {
      return Promise.reject(error);
    }
    // Extended synchronously, so runs execute in call order.
    return this.queue.push(() => this.runNow(feeds));
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.queue.drain();
    this.natives.release();
  }

  private runNow(feeds: Feeds): Outputs {
    const { api } = this;
    const interpreter = this.natives.interpreter as Pointer;
    for (const t of this.inputTensors) {
      const bytes = (feeds[t.spec.name] as Tensor).bytes();
      if (api.tensorCopyFromBuffer(t.pointer, bytes, bytes.byteLength) !== TFLITE_OK) {
        throw new ModelError('EAI_MODEL_INPUT_SHAPE', `Input '${t.spec.name}' of ${this.source.path} takes ${api.tensorByteSize(t.pointer)} bytes, got ${bytes.byteLength}.`, { details: { model: this.source.path, input: t.spec.name } });
      }
    }
    this.messages.take();
    const status = api.invoke(interpreter);
    if (status !== TFLITE_OK) throw this.runFailure(status, this.messages.take());
    const out: Outputs = {};
    for (const t of this.outputTensors) {
      // Output shapes may change at Invoke (dynamic outputs); read them now.
      const shape = dims(api, t.pointer);
      const tensor = Tensor.zeros(t.spec.dtype, shape);
      const bytes = tensor.bytes();
      if (api.tensorCopyToBuffer(t.pointer, bytes, bytes.byteLength) !== TFLITE_OK) {
        throw new ModelError('EAI_MODEL_RUN_FAILED', `TFLite could not copy output '${t.spec.name}' of ${this.source.path} (${api.tensorByteSize(t.pointer)} bytes, expected ${bytes.byteLength}).`, { details: { model: this.source.path, output: t.spec.name } });
      }
      out[t.spec.name] = tensor;
    }
    return out;
  }

  private runFailure(status: number, messages: string[]): Error {
    const said = messages.length > 0 ? `: ${messages.join(' / ')}` : '';
    const code = TFLITE_STATUS[status] ?? `status ${status}`;
    const tpu = this.libraries.edgetpu;
    if (tpu !== undefined) {
      // The Edge TPU kernel is the only part of the graph that talks to hardware; a failing
      // Invoke with it applied means the accelerator stopped answering (unplugged, reset, hung).
      return new DeviceUnavailableError(
        'EAI_HAL_DEVICE_LOST',
        `The Edge TPU ${this.device.id} (${tpu.device.type} ${tpu.device.path}) stopped responding while running ${this.source.path} (${code}${said})`,
        'check the accelerator is still connected (USB cable, a powered USB 3 port) or that the apex driver is loaded, then dispose this model and load it again',
        { details: { model: this.source.path, device: this.device.id, status, messages } },
      );
    }
    return new ModelError('EAI_MODEL_RUN_FAILED', `TFLite ${this.api.version} failed to run ${this.source.path} (${code}${said}).`, { details: { model: this.source.path, status, messages } });
  }
}

/** The native objects of one model, each freed exactly once, interpreter first. */
class Natives {
  model: Pointer | null = null;
  options: Pointer | null = null;
  interpreter: Pointer | null = null;
  xnnpack: Pointer | null = null;
  unroute: (() => void) | null = null;

  constructor(
    private readonly api: TfliteApi,
    private edgetpu: OpenedEdgeTpu | null,
  ) {}

  release(): void {
    const { api } = this;
    // The interpreter uses the delegates and (in TFLite 2.9) the model's buffers: it goes first.
    if (this.interpreter !== null) api.interpreterDelete(this.interpreter);
    if (this.xnnpack !== null) api.xnnpack?.delete(this.xnnpack);
    if (this.edgetpu !== null) this.edgetpu.runtime.freeDelegate(this.edgetpu.delegate);
    if (this.options !== null) api.optionsDelete(this.options);
    if (this.model !== null) api.modelDelete(this.model);
    this.unroute?.();
    this.interpreter = this.xnnpack = this.options = this.model = null;
    this.edgetpu = null;
    this.unroute = null;
  }
}

/** TFLite error-reporter messages since the last `take`, capped so a chatty kernel cannot grow memory. */
class Messages {
  private list: string[] = [];
  readonly sink = (message: string): void => {
    if (this.list.length < 20) this.list.push(message.trim());
  };

  take(): string[] {
    const taken = this.list.filter((m) => m !== '');
    this.list = [];
    return taken;
  }
}

function tensors(api: TfliteApi, interpreter: Pointer, kind: 'input' | 'output', model: string): NativeTensor[] {
  const count = kind === 'input' ? api.inputCount(interpreter) : api.outputCount(interpreter);
  const seen = new Set<string>();
  const list: NativeTensor[] = [];
  for (let i = 0; i < count; i++) {
    const pointer = kind === 'input' ? api.input(interpreter, i) : api.output(interpreter, i);
    if (pointer === null) throw new ModelError('EAI_MODEL_CORRUPT', `${model}: TFLite has no ${kind} tensor ${i}.`, { details: { model } });
    // Names key the feeds and outputs; an unnamed or repeated name gets its index so none is lost.
    let name = api.tensorName(pointer) || `${kind}_${i}`;
    if (seen.has(name)) name = `${name}#${i}`;
    seen.add(name);
    list.push({ pointer, spec: { name, dtype: dtypeOf(api.tensorType(pointer), name, model), shape: dims(api, pointer) }, quantization: api.tensorQuantization(pointer) });
  }
  return list;
}

function dims(api: TfliteApi, tensor: Pointer): number[] {
  return Array.from({ length: api.tensorNumDims(tensor) }, (_, d) => api.tensorDim(tensor, d));
}

/** TfLiteType (c_api_types.h) → our dtype; string, complex, resource and variant tensors have none. */
const DTYPES: Readonly<Record<number, DType>> = { 1: 'float32', 2: 'int32', 3: 'uint8', 4: 'int64', 6: 'bool', 7: 'int16', 9: 'int8', 10: 'float16', 11: 'float64', 13: 'uint64', 16: 'uint32' };
const TYPE_NAMES: Readonly<Record<number, string>> = { 0: 'kTfLiteNoType', 5: 'kTfLiteString', 8: 'kTfLiteComplex64', 12: 'kTfLiteComplex128', 14: 'kTfLiteResource', 15: 'kTfLiteVariant' };

function dtypeOf(type: number, name: string, model: string): DType {
  const dtype = DTYPES[type];
  if (dtype !== undefined) return dtype;
  const typeName = TYPE_NAMES[type] ?? `TfLiteType ${type}`;
  throw new ModelError('EAI_MODEL_UNSUPPORTED_TYPE', `${model}: tensor '${name}' has type ${typeName}, which aios tensors cannot carry (supported: ${[...new Set(Object.values(DTYPES))].join(', ')}).`, { details: { model, name, type: typeName } });
}

/** Why an interpreter could not be built, from what TFLite's error reporter said. */
function buildFailure(messages: string[], source: ModelSource, api: TfliteApi, withEdgeTpu: boolean): ModelError {
  const said = messages.join(' / ') || 'no message';
  const details = { path: source.path, messages, tflite: api.version };
  if (withEdgeTpu) {
    return new ModelError('EAI_MODEL_DELEGATE_FAILED', `The Edge TPU delegate could not be applied to ${source.path} (TFLite ${api.version}: ${said}). Recompile the model with an edgetpu_compiler matching this libedgetpu, or check the runtime versions match.`, { details });
  }
  const op = /unresolved custom op: ([^.\s]+)|Didn't find (?:custom|op for builtin) (?:operator for name|opcode) '?([^'\s]+)/u.exec(said);
  if (op !== null && said.includes('edgetpu-custom-op')) {
    return new ModelError('EAI_MODEL_NEEDS_EDGETPU', `${source.path} was compiled for the Edge TPU (it contains edgetpu-custom-op, which only libedgetpu runs). Place it on an edgetpu device, or run the CPU model it was compiled from.`, { details });
  }
  if (op !== null) {
    return new ModelError('EAI_MODEL_UNSUPPORTED_OP', `${source.path} uses the operator ${op[1] ?? op[2]}, which TFLite ${api.version} (${api.path}) does not have (${said}). Use a TFLite library built with it, or re-convert the model without it.`, { details });
  }
  return new ModelError('EAI_MODEL_CORRUPT', `TFLite ${api.version} could not prepare ${source.path}: ${said}. The file may be damaged or made for a newer TFLite; convert it again or copy it again.`, { details });
}
