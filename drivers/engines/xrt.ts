import { existsSync } from 'node:fs';
import path from 'node:path';
import { DeviceUnavailableError, ModelError } from '../errors.js';
import { checkFeeds } from '../hal/feeds.js';
import { SysRoot } from '../hal/sysroot.js';
import type { DeviceInfo, Engine, Feeds, LoadedModel, ModelSource, Outputs, Support, TensorSpec } from '../hal/types.js';
import { bytesPerElement, Tensor, type DType } from '../tensor/tensor.js';
import { parseXclbin, type Xclbin } from './xrt/axlf.js';
import { checkDescriptor, findDescriptor, readDescriptor, tensorSpecs, type XrtDescriptor } from './xrt/descriptor.js';
import { explainFailure, LIBRARY_FIX, noDeviceFix, type FailureContext } from './xrt/failures.js';
import type { DeviceTarget, HelloResult, LibraryChoice, LoadResult, RunResult, VaType, WireArg } from './xrt/protocol.js';
import { XrtWorker } from './xrt/worker.js';

export interface XrtEngineOptions {
  /** Where to look for the XRT libraries before loading them; the live machine by default. */
  readonly sys?: SysRoot;
  /**
   * Folder holding libxrt_coreutil.so.2 and the driver library. Default: `$XILINX_XRT/lib`, then
   * AMD's `/opt/xilinx/xrt/lib`, then the dynamic loader's folders (Debian's libxrt1).
   */
  readonly libraryDir?: string;
  /** Environment of the worker process; defaults to this process's (XCL_EMULATION_MODE, XILINX_XRT, XRT_INI_PATH). */
  readonly env?: NodeJS.ProcessEnv;
  /** The worker script; defaults to drivers/engines/xrt/child.mjs (see resolveChildScript). */
  readonly workerScript?: string;
  /** Longest a bitstream load may take before the worker is presumed stuck and killed. */
  readonly loadTimeoutMs?: number;
}

/**
 * The `xrt` engine: FPGA kernels in `.xclbin` containers through Xilinx XRT's C API, on Alveo cards
 * (PCIe, `xocl`) and Zynq UltraScale+/Kria SoCs (`zocl`). A model is a kernel descriptor
 * (`<name>.xrt.json` beside the xclbin, or a folder's `model.xrt.json`; see descriptor.ts) naming
 * the kernel and its arguments; it is validated against the xclbin's own metadata before anything
 * touches the device.
 *
 * XRT runs in a worker process that this engine starts on first use and restarts after a crash:
 * XRT can abort a process in ways JavaScript cannot catch, and that must not take the runtime
 * down. One worker serves every model of this engine instance; runs are serialised in it. The
 * worker is released when idle, so it never keeps the process alive.
 *
 * Device mapping: an Alveo card is opened by its PCIe user function (`details.pciAddress`, via
 * `xrtDeviceOpenByBDF`, which matches XRT's `dddd:bb:dd.f` spelling of sysfs addresses), so the
 * probe's device and XRT's agree even when XRT enumerates cards in another order; a SoC has one
 * zocl device, index 0.
 */
export function createXrtEngine(options: XrtEngineOptions = {}): Engine {
  const env = options.env ?? process.env;
  const worker = new XrtWorker({ env, ...(options.workerScript === undefined ? {} : { script: options.workerScript }) });
  const loadTimeoutMs = options.loadTimeoutMs ?? 120_000;
  let ready: { generation: number; hello: Promise<HelloResult> } | undefined;

  const libraries = async (): Promise<LibraryChoice | { reason: string; fix: string }> => chooseLibraries(options.sys ?? (await SysRoot.open('/')), options.libraryDir, env);
  const hello = (choice: LibraryChoice): Promise<HelloResult> => {
    if (ready !== undefined && worker.running && ready.generation === worker.generation) return ready.hello;
    const pending = worker.request<HelloResult>({ op: 'hello', libraries: choice }, 30_000);
    ready = { generation: worker.generation, hello: pending };
    pending.catch(() => {
      if (ready?.hello === pending) ready = undefined;
    });
    return pending;
  };
  /** Libraries present, loadable, and a device visible; otherwise why not. */
  const availability = async (device: DeviceInfo): Promise<{ ok: true; hello: HelloResult } | { ok: false; reason: string; fix: string; code: string; cause?: unknown }> => {
    const choice = await libraries();
    if ('reason' in choice) return { ok: false, ...choice, code: 'EAI_XRT_UNAVAILABLE' };
    let result: HelloResult;
    try {
      result = await hello(choice);
    } catch (error) {
      if (error instanceof DeviceUnavailableError) return { ok: false, reason: error.reason, fix: error.fix, code: error.code, cause: error };
      // The worker reports dlopen's own message (missing file, wrong architecture, missing dependency).
      return { ok: false, reason: `the XRT libraries could not be loaded: ${error instanceof Error ? error.message : String(error)}`, fix: LIBRARY_FIX, code: 'EAI_XRT_UNAVAILABLE', cause: error };
    }
    if (result.deviceCount === 0) return { ok: false, reason: 'no FPGA device visible to XRT (xclProbe found 0 devices)', fix: noDeviceFix(device), code: 'EAI_XRT_NO_DEVICE' };
    return { ok: true, hello: result };
  };

  return {
    name: 'xrt',
    formats: ['xclbin'],

    async supports(device: DeviceInfo): Promise<Support> {
      if (device.kind !== 'fpga') return notFpga(device);
      // A captured machine cannot be asked for its devices from here: answer from its files.
      if (options.sys !== undefined && !options.sys.isLive) {
        const choice = await libraries();
        return 'reason' in choice ? { ok: false, reason: choice.reason, fix: choice.fix } : { ok: true };
      }
      const a = await availability(device);
      return a.ok ? { ok: true } : { ok: false, reason: a.reason, fix: a.fix };
    },

    async load(model: ModelSource, device: DeviceInfo): Promise<LoadedModel> {
      if (device.kind !== 'fpga') {
        const why = notFpga(device);
        throw new DeviceUnavailableError('EAI_XRT_UNAVAILABLE', why.reason, why.fix, { details: { device: device.id } });
      }
      // Everything that can be checked without the device is checked first, so a wrong descriptor
      // is reported the same way on a laptop as on the vehicle.
      const descriptor = await readDescriptor(await findDescriptor(model.path));
      if (model.path.endsWith('.xclbin') && path.resolve(model.path) !== descriptor.xclbin) {
        throw new ModelError('EAI_XRT_DESCRIPTOR', `Kernel descriptor ${descriptor.file} names ${descriptor.xclbin}, not ${path.resolve(model.path)}. Point its "xclbin" at the model file, or load the descriptor itself.`, { details: { path: descriptor.file } });
      }
      const xclbin = await parseXclbin(descriptor.xclbin);
      checkDescriptor(descriptor, xclbin);
      const a = await availability(device);
      if (!a.ok) throw new DeviceUnavailableError(a.code, a.reason, a.fix, { ...(a.cause === undefined ? {} : { cause: a.cause }), details: { device: device.id } });
      const target = deviceTarget(device);
      const ctx: FailureContext = { device, target, descriptor: descriptor.file, xclbin, kernel: descriptor.kernel };
      let loaded: LoadResult;
      try {
        loaded = await worker.request<LoadResult>({ op: 'load', target, xclbin: xclbin.path, kernel: descriptor.kernel, args: wireArgs(descriptor) }, loadTimeoutMs);
      } catch (error) {
        throw explainFailure(error, ctx);
      }
      const mode = env['XCL_EMULATION_MODE'];
      return new XrtModel(worker, worker.generation, loaded, descriptor, xclbin, device, ctx, mode === 'sw_emu' || mode === 'hw_emu' ? `xrt-${mode}` : 'xrt');
    },
  };
}

/**
 * How XRT is asked for `device`: Alveo cards by PCIe user function, a SoC's zocl device by index 0
 * (`details.xrtIndex` overrides, for a machine with several SoC devices).
 */
export function deviceTarget(device: DeviceInfo): DeviceTarget {
  const d = device.details ?? {};
  if (typeof d['xrtIndex'] === 'number') return { index: d['xrtIndex'] };
  if (typeof d['pciAddress'] === 'string') return { bdf: d['pciAddress'] };
  return { index: 0 };
}

/**
 * Which XRT libraries the worker loads. libxrt_coreutil holds the C API; the driver library
 * ("shim") must be loaded next to it explicitly: Debian's coreutil cannot locate it by itself (its
 * module loader wants $XILINX_XRT and looks in /usr/lib, not the multiarch folder) and aborts the
 * process. The shim follows XCL_EMULATION_MODE as XRT's own loader would; both come from one
 * folder, since two XRT copies in one process crash it.
 */
export async function chooseLibraries(sys: SysRoot, libraryDir: string | undefined, env: NodeJS.ProcessEnv): Promise<LibraryChoice | { reason: string; fix: string }> {
  const mode = env['XCL_EMULATION_MODE'];
  const shim = mode === 'sw_emu' ? 'libxrt_swemu.so.2' : mode === 'hw_emu' ? 'libxrt_hwemu.so.2' : 'libxrt_core.so.2';
  if (libraryDir !== undefined) {
    const coreutil = path.join(libraryDir, 'libxrt_coreutil.so.2');
    if (!existsSync(coreutil)) return { reason: `libxrt_coreutil.so.2 not found in ${libraryDir}`, fix: `point libraryDir at the folder holding XRT's libraries, or ${LIBRARY_FIX}` };
    return { coreutil, shim: path.join(libraryDir, shim) };
  }
  const dirs = [...(env['XILINX_XRT'] ? [path.posix.join(env['XILINX_XRT'], 'lib')] : []), '/opt/xilinx/xrt/lib'];
  for (const dir of dirs) {
    if (await sys.exists(`${dir}/libxrt_coreutil.so.2`)) return { coreutil: `${dir}/libxrt_coreutil.so.2`, shim: `${dir}/${shim}` };
  }
  const found = await sys.findLibrary('libxrt_coreutil.so.2');
  if (found === undefined) return { reason: 'XRT is not installed: libxrt_coreutil.so.2 not found', fix: LIBRARY_FIX };
  return { coreutil: found, shim: path.posix.join(path.posix.dirname(found), shim) };
}

/**
 * XRT reads a scalar with `va_arg` as the kernel's declared C type (int, unsigned, size_t...). On
 * LP64 targets (x86-64, aarch64) every integer vararg occupies a 64-bit slot and a narrower
 * `va_arg` reads its low bits, so integers go as 64-bit values (right whether XRT reads 4 or 8
 * bytes); floats go as double, which is what XRT reads for a `float` argument.
 */
export function scalarVaType(dtype: DType): VaType {
  if (dtype === 'float32' || dtype === 'float64') return 'double';
  return dtype.startsWith('u') ? 'uint64' : 'int64';
}

/** A kernel loaded in the worker, with its device buffers allocated and arguments set. */
class XrtModel implements LoadedModel {
  readonly engine = 'xrt';
  readonly inputs: readonly TensorSpec[];
  readonly outputs: readonly TensorSpec[];
  /** The uuid of the xclbin XRT loaded; the compute units and memory banks behind each argument. */
  readonly xclbinUuid: string;
  readonly memoryGroups: Readonly<Record<string, number>>;
  private disposed = false;
  private readonly indexOf: Map<string, number>;

  constructor(
    private readonly worker: XrtWorker,
    private readonly generation: number,
    private readonly loaded: LoadResult,
    private readonly descriptor: XrtDescriptor,
    readonly xclbin: Xclbin,
    readonly device: DeviceInfo,
    private readonly ctx: FailureContext,
    readonly backend: string,
  ) {
    const specs = tensorSpecs(descriptor);
    this.inputs = specs.inputs;
    this.outputs = specs.outputs;
    this.xclbinUuid = loaded.uuid;
    this.indexOf = new Map(descriptor.args.map((a) => [a.name, a.index]));
    this.memoryGroups = Object.fromEntries(loaded.groups.map(([index, group]) => [descriptor.args[index]?.name ?? String(index), group]));
  }

  async run(feeds: Feeds): Promise<Outputs> {
    if (this.disposed) throw new ModelError('EAI_MODEL_DISPOSED', `${this.descriptor.file} was unloaded; load it again before running it.`);
    if (!this.alive()) {
      throw new DeviceUnavailableError('EAI_XRT_CRASHED', `the XRT worker that held ${this.descriptor.file} has exited, and the kernel with it`, 'load the model again (a new worker starts)', { details: { device: this.device.id } });
    }
    checkFeeds(this.inputs, feeds, this.descriptor.file);
    const inputs = this.inputs.map((s) => [this.indexOf.get(s.name) ?? -1, wireBytes((feeds[s.name] as Tensor).bytes())] as const);
    const outputs = this.outputs.map((s) => this.indexOf.get(s.name) ?? -1);
    let result: RunResult;
    try {
      // The worker's own wait is bounded by timeoutMs; the extra margin covers buffer transfers.
      result = await this.worker.request<RunResult>({ op: 'run', handle: this.loaded.handle, inputs, outputs, timeoutMs: this.descriptor.timeoutMs }, this.descriptor.timeoutMs + 30_000);
    } catch (error) {
      throw explainFailure(error, this.ctx);
    }
    const out: Outputs = {};
    for (const [index, bytes] of result.outputs) {
      const spec = this.outputs.find((s) => this.indexOf.get(s.name) === index);
      if (spec !== undefined) out[spec.name] = toTensor(spec, bytes);
    }
    return out;
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    if (this.alive()) await this.worker.request({ op: 'dispose', handle: this.loaded.handle }, 30_000).catch(() => undefined);
  }

  private alive(): boolean {
    return this.worker.running && this.worker.generation === this.generation;
  }
}

function notFpga(device: DeviceInfo): { ok: false; reason: string; fix: string } {
  return { ok: false, reason: `xrt runs FPGA kernels (xclbin) and ${device.id} is a ${device.kind} device`, fix: 'place xclbin models on an fpga device (an Alveo card or a Kria/Zynq UltraScale+ SoC)' };
}

function wireArgs(descriptor: XrtDescriptor): WireArg[] {
  return descriptor.args.map((a): WireArg => {
    if (a.kind === 'buffer') return { index: a.index, kind: 'buffer', bytes: a.bytes };
    if (a.kind === 'stream') return { index: a.index, kind: 'stream' };
    return { index: a.index, kind: 'scalar', vaType: scalarVaType(a.dtype), value: a.value };
  });
}

/** The bytes to send: the tensor's own view when it spans a plain buffer, else a copy of just its bytes. */
function wireBytes(bytes: Uint8Array): Uint8Array {
  // Structured clone sends a view's whole ArrayBuffer, and cannot send shared memory at all.
  const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer;
  return whole ? bytes : bytes.slice();
}

function toTensor(spec: TensorSpec, bytes: Uint8Array): Tensor {
  const shape = spec.shape.map((d) => d ?? 0);
  // Deserialised buffers are views into the IPC message at any offset; typed arrays need alignment.
  const aligned = bytes.byteOffset % bytesPerElement(spec.dtype) === 0 ? bytes : new Uint8Array(bytes);
  return Tensor.fromBytes(spec.dtype, shape, aligned.buffer, aligned.byteOffset);
}
