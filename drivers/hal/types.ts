import type { DType, Tensor } from '../tensor/tensor.js';
import type { SysRoot } from './sysroot.js';

/** The kinds of compute device aios knows. Adding one means one new probe file, nothing else. */
export type DeviceKind = 'cpu' | 'cuda' | 'jetson' | 'edgetpu' | 'fpga';
export const DEVICE_KINDS: readonly DeviceKind[] = ['cpu', 'cuda', 'jetson', 'edgetpu', 'fpga'];

/**
 * Model file formats. `tfjs-graph` / `tfjs-layers` are folders holding a TF.js `model.json`;
 * `xclbin` is an FPGA kernel container; `tflite-edgetpu` is a .tflite compiled by edgetpu_compiler.
 */
export type ModelFormat = 'onnx' | 'tflite' | 'tflite-edgetpu' | 'tfjs-graph' | 'tfjs-layers' | 'xclbin';
export const MODEL_FORMATS: readonly ModelFormat[] = ['onnx', 'tflite', 'tflite-edgetpu', 'tfjs-graph', 'tfjs-layers', 'xclbin'];

/** Either ready, or unavailable with why and what to do about it. */
export type DeviceStatus = { readonly state: 'ready' } | { readonly state: 'unavailable'; readonly reason: string; readonly fix: string };

/**
 * One compute device as a probe found it. `id` is stable across reboots where the hardware allows
 * (PCI address, USB port path) and unique on the machine: `cuda:0000:01:00.0`, `edgetpu:usb-1-1`.
 * `details` holds kind-specific facts (driver version, CUDA compute capability, JetPack release,
 * DLA core count, ISA features) for display and placement; keys are camelCase, values JSON.
 */
export interface DeviceInfo {
  readonly id: string;
  readonly kind: DeviceKind;
  readonly name: string;
  readonly memoryBytes?: number;
  readonly formats: readonly ModelFormat[];
  readonly status: DeviceStatus;
  readonly details?: Readonly<Record<string, unknown>>;
}

/**
 * One reading of a device's health and load. Every field is optional because hardware reports
 * different things (an Edge TPU has a temperature and nothing else; a Jetson has power rails).
 * `counters` holds raw cumulative values (CPU jiffies, energy in µJ) so that the next reading can
 * turn them into rates; callers pass the previous reading back in and never interpret them.
 */
export interface DeviceTelemetry {
  readonly deviceId: string;
  /** Wall-clock time of the reading, ms since the epoch. */
  readonly time: number;
  /** Busy fraction 0..1 over the interval since the previous reading (or since boot). */
  readonly utilisation?: number;
  readonly memoryUsedBytes?: number;
  readonly memoryTotalBytes?: number;
  /** The device's own temperature (the hottest of its sensors when it has several). */
  readonly temperatureC?: number;
  /** Power the device draws now, watts. */
  readonly powerW?: number;
  /** Clock frequencies by domain (`gpu`, `emc`, `cpu0`...), MHz. */
  readonly clocksMHz?: Readonly<Record<string, number>>;
  /** Kind-specific readings: per-core CPU load, power rails, thermal zones, power mode. */
  readonly extra?: Readonly<Record<string, unknown>>;
  readonly counters?: Readonly<Record<string, number>>;
}

/** Finds the devices of one kind under a system root. Cheap, and never changes the system. */
export interface DeviceProbe {
  readonly kind: DeviceKind;
  probe(sys: SysRoot): Promise<DeviceInfo[]>;
  /**
   * Reads one device's telemetry (a device this probe returned). `previous` is the last reading
   * of the same device, for rates. Optional: a probe without telemetry simply has none. Reads
   * only; may run read-only query tools (nvidia-smi, tegrastats --interval once).
   */
  telemetry?(sys: SysRoot, device: DeviceInfo, previous?: DeviceTelemetry): Promise<DeviceTelemetry>;
}

export type Support = { readonly ok: true } | { readonly ok: false; readonly reason: string; readonly fix: string };

/** Name, dtype and shape of one model input or output; `null` marks a dynamic dimension. */
export interface TensorSpec {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly (number | null)[];
  /**
   * The model's own names for its dynamic dimensions (ONNX `dim_param`, e.g. `batch`), null where
   * a dimension is fixed or unnamed; absent when the format has no names. Two tensors sharing a
   * name share that size: that is how batching finds the batch axis of each input and output.
   */
  readonly dimNames?: readonly (string | null)[];
}

/** Where a model comes from: a file or folder on disk, with its format already known. */
export interface ModelSource {
  readonly path: string;
  readonly format: ModelFormat;
}

export interface LoadOptions {
  /** Threads for one inference (intra-op); engines choose a default from the device's cores. */
  readonly threads?: number;
  /** Graph optimisation level where the engine has one. */
  readonly graphOptimization?: 'disabled' | 'basic' | 'extended' | 'all';
  /**
   * Where runs execute. `thread`: on a thread of the model's own, so the caller's event loop
   * stays free while the model runs and inference overlaps with the caller's other work; each
   * run pays one hand-over (tens of µs). `inline`: on the caller's thread, no hand-over, but the
   * caller is blocked for the whole run. Engines whose runs are already off the caller's thread
   * (xrt's worker process) ignore it. Default `thread`; InferenceService picks per model.
   */
  readonly executor?: 'inline' | 'thread';
  /** Engine-specific extras (for example TensorRT's engine cache folder). */
  readonly engine?: Readonly<Record<string, unknown>>;
}

export type Feeds = Readonly<Record<string, Tensor>>;
export type Outputs = Record<string, Tensor>;

/**
 * A model ready to run on one device. `run` calls may overlap; the engine serialises them where
 * its runtime needs it. `dispose` releases native memory; calling `run` afterwards is an error.
 */
export interface LoadedModel {
  readonly engine: string;
  readonly device: DeviceInfo;
  readonly inputs: readonly TensorSpec[];
  readonly outputs: readonly TensorSpec[];
  /** What actually executes, for reports: 'cpu', 'cuda', 'tensorrt', tfjs backend 'wasm', ... */
  readonly backend: string;
  /** Better backends the engine passed over for this model, best first, each with why. */
  readonly skipped?: readonly { readonly backend: string; readonly reason: string }[];
  /** What the user should know about how the model runs (a model not compiled for its TPU...). */
  readonly warnings?: readonly string[];
  /** Where runs execute (see LoadOptions.executor); absent when the engine has one way only. */
  readonly executor?: 'inline' | 'thread';
  run(feeds: Feeds): Promise<Outputs>;
  dispose(): Promise<void>;
}

/** Runs one or more model formats on some device kinds. */
export interface Engine {
  readonly name: string;
  readonly formats: readonly ModelFormat[];
  /** Whether this engine can run on `device` here and now (library present, provider available). */
  supports(device: DeviceInfo): Promise<Support>;
  load(model: ModelSource, device: DeviceInfo, options?: LoadOptions): Promise<LoadedModel>;
}
