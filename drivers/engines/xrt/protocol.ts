/**
 * Messages between the xrt engine and its worker process (`child.mjs`), sent over the Node IPC
 * channel with `serialization: 'advanced'` so that buffers travel as bytes, not JSON. The child is
 * plain JavaScript (see worker.ts for why); these types are the contract both sides keep, and the
 * child's header comment points here.
 *
 * Every request carries an `id`; the child answers each with exactly one reply of the same id, in
 * order (it handles one request at a time: XRT calls block). Before a failure reply the child
 * writes the line `REPLY_MARK + id` to stdout and to stderr, so the engine knows it has read
 * everything XRT printed about that failure.
 */

export const REPLY_MARK = '\u001eaios-xrt-reply ';

/** Which XRT libraries to load: absolute paths, or sonames for the dynamic loader to find. */
export interface LibraryChoice {
  readonly coreutil: string;
  /** The driver ("shim") library: libxrt_core for hardware, libxrt_swemu/hwemu for emulation. */
  readonly shim: string;
}

/** How XRT names the device: its PCIe user function (Alveo) or an index (the SoC's zocl device). */
export type DeviceTarget = { readonly bdf: string } | { readonly index: number };

/** One kernel argument as the child sets it up. Arguments are given in kernel order. */
export type WireArg =
  | { readonly index: number; readonly kind: 'buffer'; readonly bytes: number }
  | { readonly index: number; readonly kind: 'scalar'; readonly vaType: VaType; readonly value: number | bigint }
  | { readonly index: number; readonly kind: 'stream' };

/**
 * The C type a scalar is passed as through `xrtRunSetArg(run, index, ...)`: XRT reads it with
 * `va_arg` by the kernel's declared type, so floats travel as double (C default promotion) and
 * narrow integers as 32-bit ints.
 */
export type VaType = 'int32' | 'uint32' | 'int64' | 'uint64' | 'double';

export type Request =
  | { readonly id: number; readonly op: 'hello'; readonly libraries: LibraryChoice }
  | { readonly id: number; readonly op: 'load'; readonly target: DeviceTarget; readonly xclbin: string; readonly kernel: string; readonly args: readonly WireArg[] }
  | { readonly id: number; readonly op: 'run'; readonly handle: number; readonly inputs: readonly (readonly [number, Uint8Array])[]; readonly outputs: readonly number[]; readonly timeoutMs: number }
  | { readonly id: number; readonly op: 'dispose'; readonly handle: number }
  | { readonly id: number; readonly op: 'inspect'; readonly xclbin: string };

export interface HelloResult {
  /** Paths the dynamic loader resolved (from /proc/self/maps), or the names asked for. */
  readonly coreutil: string;
  readonly shim: string;
  /** `xclProbe()`: devices the driver library sees. */
  readonly deviceCount: number;
}

export interface LoadResult {
  readonly handle: number;
  /** The uuid XRT reports for the xclbin now on the device. */
  readonly uuid: string;
  /** Memory bank group of each buffer argument (`xrtKernelArgGroupId`), by argument index. */
  readonly groups: readonly (readonly [number, number])[];
}

/** XRT's own reading of an xclbin (`xrtXclbinAllocFilename`), no device needed: a second opinion on parseXclbin. */
export interface InspectResult {
  readonly uuid: string;
  /** The platform (XSA) name, `m_header.m_platformVBNV`. */
  readonly platform: string;
  readonly kernels: number;
  readonly computeUnits: number;
}

export interface RunResult {
  readonly outputs: readonly (readonly [number, Uint8Array])[];
}

/**
 * Where the child failed: which XRT step (`library`, `open-device`, `load-xclbin`, `xclbin-uuid`,
 * `open-kernel`, `group-id`, `alloc`, `run-open`, `set-arg`, `write`, `sync`, `start`, `wait`,
 * `read`, `inspect`, `handle`) and what it said. `errno` is the C errno XRT left, where it set one; `state`
 * the `ert_cmd_state` a run ended in.
 */
export interface WireError {
  readonly stage: string;
  readonly message: string;
  readonly errno?: number;
  readonly state?: string;
}

export type Reply =
  | { readonly id: number; readonly ok: true; readonly result: unknown }
  | { readonly id: number; readonly ok: false; readonly error: WireError };
