import type * as KoffiModule from 'koffi';

/**
 * The TFLite C API (tensorflow/lite/c/c_api.h, plus the few experimental and XNNPACK entry points
 * the engine uses) bound through koffi, typed in this one file so the rest of the engine never
 * sees koffi's untyped functions. Pointers are koffi's: a BigInt address, `null` for NULL.
 *
 * Every function here is a plain synchronous C call on the calling (main) thread. The objects
 * behind the pointers are owned by whoever created them; `TfliteModel` in interpreter.ts owns the
 * model, options, interpreter and delegates of one loaded model and frees each exactly once.
 */
export type Pointer = bigint;

/** TfLiteStatus values (c_api_types.h); anything but `OK` is a failure. */
export const TFLITE_OK = 0;
export const TFLITE_STATUS: Readonly<Record<number, string>> = {
  1: 'kTfLiteError',
  2: 'kTfLiteDelegateError',
  3: 'kTfLiteApplicationError',
  4: 'kTfLiteDelegateDataNotFound',
  5: 'kTfLiteDelegateDataWriteError',
  6: 'kTfLiteDelegateDataReadError',
  7: 'kTfLiteUnresolvedOps',
};

/** Per-tensor affine quantisation: `real = scale * (quantised - zeroPoint)`; scale 0 = none. */
export interface QuantizationParams {
  readonly scale: number;
  readonly zeroPoint: number;
}

/** Typed views of the C entry points; names follow the C functions without the `TfLite` prefix. */
export interface TfliteApi {
  /** The shared library this was loaded from, and what `TfLiteVersion()` says ("2.9.0"). */
  readonly path: string;
  readonly version: string;
  modelCreateFromFile(file: string): Pointer | null;
  modelDelete(model: Pointer): void;
  optionsCreate(): Pointer | null;
  optionsDelete(options: Pointer): void;
  optionsSetNumThreads(options: Pointer, threads: number): void;
  optionsAddDelegate(options: Pointer, delegate: Pointer): void;
  /**
   * Routes TFLite's error messages for interpreters built from `options` to `report`. Call the
   * returned function once the interpreter and the options are deleted, to drop the route.
   */
  optionsSetErrorReporter(options: Pointer, report: ErrorSink): () => void;
  interpreterCreate(model: Pointer, options: Pointer): Pointer | null;
  interpreterDelete(interpreter: Pointer): void;
  /** c_api_experimental.h: applies a delegate to a built interpreter (before AllocateTensors). */
  interpreterModifyGraphWithDelegate(interpreter: Pointer, delegate: Pointer): number;
  allocateTensors(interpreter: Pointer): number;
  invoke(interpreter: Pointer): number;
  inputCount(interpreter: Pointer): number;
  input(interpreter: Pointer, index: number): Pointer | null;
  outputCount(interpreter: Pointer): number;
  output(interpreter: Pointer, index: number): Pointer | null;
  tensorType(tensor: Pointer): number;
  tensorNumDims(tensor: Pointer): number;
  tensorDim(tensor: Pointer, index: number): number;
  tensorByteSize(tensor: Pointer): number;
  tensorName(tensor: Pointer): string;
  tensorQuantization(tensor: Pointer): QuantizationParams;
  tensorCopyFromBuffer(tensor: Pointer, data: ArrayBufferView, bytes: number): number;
  tensorCopyToBuffer(tensor: Pointer, data: ArrayBufferView, bytes: number): number;
  /** XNNPACK delegate; `null` when this build of the library has none. */
  readonly xnnpack: { create(threads: number): Pointer | null; delete(delegate: Pointer): void } | null;
}

/** Receives one formatted TFLite error message. */
export type ErrorSink = (message: string) => void;

/**
 * Binds the C API of the library at `file`. Throws (koffi's own error) when the file cannot be
 * loaded or lacks a required symbol; the caller turns that into a reason for the user.
 */
export function bindTflite(koffi: typeof KoffiModule, file: string): TfliteApi {
  const lib = koffi.load(file);
  const fn = <T>(signature: string): T => lib.func(signature) as unknown as T;
  const Quantization = koffi.struct({ scale: 'float', zero_point: 'int32_t' });
  const quantization = lib.func('TfLiteTensorQuantizationParams', Quantization, ['void *']) as unknown as (t: Pointer) => { scale: number; zero_point: number };
  const version = fn<() => string>('const char *TfLiteVersion(void)')();
  const reporter = new ErrorReporter(koffi);
  const setReporter = fn<(o: Pointer, cb: Pointer, user: Pointer) => void>('void TfLiteInterpreterOptionsSetErrorReporter(void *options, void *reporter, void *user_data)');
  const optional = <T>(signature: string): T | null => {
    try {
      return fn<T>(signature);
    } catch {
      return null;
    }
  };
  const modify = optional<(i: Pointer, d: Pointer) => number>('int TfLiteInterpreterModifyGraphWithDelegate(void *interpreter, void *delegate)');
  const xnnCreate = optional<(opts: Uint8Array) => Pointer | null>('void *TfLiteXNNPackDelegateCreate(const void *options)');
  const xnnDelete = optional<(d: Pointer) => void>('void TfLiteXNNPackDelegateDelete(void *delegate)');

  return {
    path: file,
    version,
    modelCreateFromFile: fn('void *TfLiteModelCreateFromFile(const char *path)'),
    modelDelete: fn('void TfLiteModelDelete(void *model)'),
    optionsCreate: fn('void *TfLiteInterpreterOptionsCreate(void)'),
    optionsDelete: fn('void TfLiteInterpreterOptionsDelete(void *options)'),
    optionsSetNumThreads: fn('void TfLiteInterpreterOptionsSetNumThreads(void *options, int32_t threads)'),
    optionsAddDelegate: fn('void TfLiteInterpreterOptionsAddDelegate(void *options, void *delegate)'),
    optionsSetErrorReporter: (options, report) => {
      const id = reporter.route(report);
      setReporter(options, reporter.callback, BigInt(id));
      return () => reporter.unroute(id);
    },
    interpreterCreate: fn('void *TfLiteInterpreterCreate(void *model, void *options)'),
    interpreterDelete: fn('void TfLiteInterpreterDelete(void *interpreter)'),
    interpreterModifyGraphWithDelegate: modify ?? (() => 1),
    allocateTensors: fn('int TfLiteInterpreterAllocateTensors(void *interpreter)'),
    invoke: fn('int TfLiteInterpreterInvoke(void *interpreter)'),
    inputCount: fn('int32_t TfLiteInterpreterGetInputTensorCount(void *interpreter)'),
    input: fn('void *TfLiteInterpreterGetInputTensor(void *interpreter, int32_t index)'),
    outputCount: fn('int32_t TfLiteInterpreterGetOutputTensorCount(void *interpreter)'),
    output: fn('void *TfLiteInterpreterGetOutputTensor(void *interpreter, int32_t index)'),
    tensorType: fn('int TfLiteTensorType(void *tensor)'),
    tensorNumDims: fn('int32_t TfLiteTensorNumDims(void *tensor)'),
    tensorDim: fn('int32_t TfLiteTensorDim(void *tensor, int32_t index)'),
    tensorByteSize: fn('size_t TfLiteTensorByteSize(void *tensor)'),
    tensorName: fn('const char *TfLiteTensorName(void *tensor)'),
    tensorQuantization: (t) => {
      const q = quantization(t);
      return { scale: q.scale, zeroPoint: q.zero_point };
    },
    tensorCopyFromBuffer: fn('int TfLiteTensorCopyFromBuffer(void *tensor, const void *data, size_t bytes)'),
    tensorCopyToBuffer: fn('int TfLiteTensorCopyToBuffer(void *tensor, void *data, size_t bytes)'),
    xnnpack:
      xnnCreate === null || xnnDelete === null || modify === null
        ? null
        : {
            // TfLiteXNNPackDelegateOptions starts with `int32_t num_threads` in every release;
            // later releases append flags and a weights cache, for which zero means "off". A
            // zeroed block larger than any version's struct is therefore valid for all of them.
            create: (threads) => {
              const options = new Uint8Array(64);
              new DataView(options.buffer).setInt32(0, threads > 1 ? threads : 0, true);
              return xnnCreate(options);
            },
            delete: xnnDelete,
          },
  };
}

/**
 * One registered C callback per loaded library, routing TFLite's error-reporter calls to the sink
 * of the interpreter options they came from (`user_data` carries a routing id). The message is
 * printf-formatted in C with vsnprintf; where libc cannot be bound the raw format string is kept.
 *
 * A route must outlive the interpreter and options that report to it; `Natives.release` drops it
 * after deleting both. A message for an unknown route is ignored, never a crash.
 */
class ErrorReporter {
  readonly callback: Pointer;
  private readonly sinks = new Map<number, ErrorSink>();
  private next = 1;

  constructor(koffi: typeof KoffiModule) {
    const format = libcFormatter(koffi);
    const proto = koffi.proto(null, 'void', ['void *', 'const char *', 'void *']);
    this.callback = koffi.register((user: Pointer | null, fmt: string | null, args: Pointer | null) => {
      const sink = this.sinks.get(Number(user ?? 0n));
      if (sink === undefined || fmt === null) return;
      sink(args === null ? fmt : format(fmt, args));
    }, koffi.pointer(proto));
  }

  route(sink: ErrorSink): number {
    const id = this.next++;
    this.sinks.set(id, sink);
    return id;
  }

  unroute(id: number): void {
    this.sinks.delete(id);
  }
}

/** vsnprintf from the C library, so `%s`/`%d` in TFLite's messages are filled in. */
function libcFormatter(koffi: typeof KoffiModule): (fmt: string, args: Pointer) => string {
  const vsnprintf = bindVsnprintf(koffi);
  return (fmt, args) => {
    if (vsnprintf === null) return fmt;
    const buf = new Uint8Array(2048);
    const n = vsnprintf(buf, buf.length, fmt, args);
    if (n < 0) return fmt;
    return Buffer.from(buf.buffer, 0, Math.min(n, buf.length - 1)).toString('utf8');
  };
}

type Vsnprintf = (buf: Uint8Array, size: number, fmt: string, args: Pointer) => number;

function bindVsnprintf(koffi: typeof KoffiModule): Vsnprintf | null {
  for (const name of ['libc.so.6', 'libc.so']) {
    try {
      return koffi.load(name).func('int vsnprintf(void *buf, size_t size, const char *format, void *args)') as unknown as Vsnprintf;
    } catch {
      // musl or an unusual libc name: try the next; messages keep their printf placeholders.
    }
  }
  return null;
}
