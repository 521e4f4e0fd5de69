// The xrt engine's worker process: the only place aios loads Xilinx XRT (libxrt_coreutil + one
// driver library) and calls its C API through koffi. XRT can end a process in ways JavaScript
// cannot catch (std::terminate on a missing XILINX_XRT, a segfault in an emulation driver without
// its set-up, two driver libraries in one process), so it runs here, forked by worker.ts, and the
// engine survives whatever happens to this process.
//
// Plain JavaScript on purpose: it runs unchanged from the source tree (tests under vitest) and
// from a build, with no TypeScript loader in the child. The message contract is typed in
// protocol.ts; keep the two in step. One request at a time, one reply per request.
import { readFileSync } from 'node:fs';
import koffi from 'koffi';

const XCL_BO_SYNC_BO_TO_DEVICE = 0;
const XCL_BO_SYNC_BO_FROM_DEVICE = 1;
const XRT_BO_FLAGS_NONE = 0;
const ERT_STATES = ['', 'NEW', 'QUEUED', 'RUNNING', 'COMPLETED', 'ERROR', 'ABORT', 'SUBMITTED', 'TIMEOUT', 'NORESPONSE', 'SKERROR', 'SKCRASHED'];
const ERT_CMD_STATE_COMPLETED = 4;
const REPLY_MARK = '\u001eaios-xrt-reply '; // protocol.ts

let xrt; // bound C functions, once hello has loaded the libraries
let libraries;
const devices = new Map(); // target key -> { handle, users }
const models = new Map(); // handle -> { device, kernel, run, bos: Map(argIndex -> { bo, bytes }) }
let nextHandle = 1;

class StageError extends Error {
  constructor(stage, message, extra = {}) {
    super(message);
    this.stage = stage;
    Object.assign(this, extra);
  }
}

process.on('message', (request) => {
  let reply;
  try {
    reply = { id: request.id, ok: true, result: handle(request) };
  } catch (error) {
    const e = error instanceof StageError ? error : new StageError('internal', error instanceof Error ? error.message : String(error));
    reply = { id: request.id, ok: false, error: { stage: e.stage, message: e.message, ...(e.errno ? { errno: e.errno } : {}), ...(e.state ? { state: e.state } : {}) } };
    // After what XRT printed about the failure, on both streams (pipes write synchronously on
    // Linux): the engine waits for these before it reads the output (REPLY_MARK in protocol.ts).
    process.stdout.write(`${REPLY_MARK}${request.id}\n`);
    process.stderr.write(`${REPLY_MARK}${request.id}\n`);
  }
  process.send(reply);
});
// The engine went away: release the device rather than linger as an orphan.
process.on('disconnect', () => process.exit(0));

function handle(request) {
  switch (request.op) {
    case 'hello':
      return hello(request.libraries);
    case 'load':
      return load(request);
    case 'run':
      return run(request);
    case 'dispose':
      return dispose(request.handle);
    case 'inspect':
      return inspect(request.xclbin);
    default:
      throw new StageError('handle', `unknown request '${request.op}'`);
  }
}

function hello(choice) {
  if (xrt === undefined) {
    // coreutil first: the driver library needs it, and must then bind to this very copy.
    const util = open(choice.coreutil);
    const shim = open(choice.shim);
    xrt = bind(util, shim);
    libraries = { coreutil: mapped(choice.coreutil), shim: mapped(choice.shim) };
  }
  return { ...libraries, deviceCount: xrt.xclProbe() };
}

function open(library) {
  try {
    return koffi.load(library);
  } catch (error) {
    throw new StageError('library', `${library}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

function bind(util, shim) {
  return {
    xclProbe: shim.func('unsigned int xclProbe()'),
    deviceOpen: util.func('void *xrtDeviceOpen(unsigned int index)'),
    deviceOpenByBDF: util.func('void *xrtDeviceOpenByBDF(const char *bdf)'),
    deviceClose: util.func('int xrtDeviceClose(void *device)'),
    loadXclbinFile: util.func('int xrtDeviceLoadXclbinFile(void *device, const char *path)'),
    getXclbinUUID: util.func('int xrtDeviceGetXclbinUUID(void *device, _Out_ uint8_t *uuid)'),
    kernelOpen: util.func('void *xrtPLKernelOpen(void *device, const uint8_t *uuid, const char *name)'),
    kernelClose: util.func('int xrtKernelClose(void *kernel)'),
    argGroupId: util.func('int xrtKernelArgGroupId(void *kernel, int argno)'),
    boAlloc: util.func('void *xrtBOAlloc(void *device, size_t size, uint64_t flags, uint32_t group)'),
    boFree: util.func('int xrtBOFree(void *bo)'),
    boWrite: util.func('int xrtBOWrite(void *bo, const void *src, size_t size, size_t seek)'),
    boRead: util.func('int xrtBORead(void *bo, void *dst, size_t size, size_t skip)'),
    boSync: util.func('int xrtBOSync(void *bo, int direction, size_t size, size_t offset)'),
    runOpen: util.func('void *xrtRunOpen(void *kernel)'),
    runSetArg: util.func('int xrtRunSetArg(void *run, int index, ...)'),
    runStart: util.func('int xrtRunStart(void *run)'),
    runWaitFor: util.func('int xrtRunWaitFor(void *run, unsigned int timeoutMs)'),
    runClose: util.func('int xrtRunClose(void *run)'),
    xclbinAlloc: util.func('void *xrtXclbinAllocFilename(const char *path)'),
    xclbinFree: util.func('int xrtXclbinFreeHandle(void *xclbin)'),
    xclbinUUID: util.func('int xrtXclbinGetUUID(void *xclbin, _Out_ uint8_t *uuid)'),
    xclbinXSAName: util.func('int xrtXclbinGetXSAName(void *xclbin, _Out_ uint8_t *name, int size, _Out_ int *length)'),
    xclbinKernels: util.func('size_t xrtXclbinGetNumKernels(void *xclbin)'),
    xclbinComputeUnits: util.func('size_t xrtXclbinGetNumKernelComputeUnits(void *xclbin)'),
  };
}

function load({ target, xclbin, kernel: name, args }) {
  if (xrt === undefined) throw new StageError('library', 'XRT is not loaded (hello first)');
  const key = 'bdf' in target ? `bdf:${target.bdf}` : `index:${target.index}`;
  let device = devices.get(key);
  if (device === undefined) {
    const h = 'bdf' in target ? xrt.deviceOpenByBDF(target.bdf) : xrt.deviceOpen(target.index);
    if (h === null) throw failed('open-device', `could not open device ${'bdf' in target ? target.bdf : `index ${target.index}`}`);
    device = { handle: h, users: 0 };
    devices.set(key, device);
  }
  const model = { key, device, kernel: null, run: null, bos: new Map() };
  device.users++;
  try {
    check('load-xclbin', xrt.loadXclbinFile(device.handle, xclbin), `could not load ${xclbin}`);
    const uuid = Buffer.alloc(16);
    check('xclbin-uuid', xrt.getXclbinUUID(device.handle, uuid), 'could not read the uuid of the loaded xclbin');
    model.kernel = xrt.kernelOpen(device.handle, uuid, name);
    if (model.kernel === null) throw failed('open-kernel', `could not open kernel '${name}'`);
    const groups = [];
    for (const arg of args) {
      if (arg.kind !== 'buffer') continue;
      const group = xrt.argGroupId(model.kernel, arg.index);
      if (group < 0) throw failed('group-id', `argument ${arg.index} of '${name}' has no memory bank (is it a buffer argument?)`);
      const bo = xrt.boAlloc(device.handle, arg.bytes, XRT_BO_FLAGS_NONE, group);
      if (bo === null) throw failed('alloc', `could not allocate ${arg.bytes} bytes in memory bank ${group} for argument ${arg.index}`);
      model.bos.set(arg.index, { bo, bytes: arg.bytes });
      groups.push([arg.index, group]);
    }
    model.run = xrt.runOpen(model.kernel);
    if (model.run === null) throw failed('run-open', `could not create a run of '${name}'`);
    // Buffers and scalars never change between runs, so the arguments are set once here.
    for (const arg of args) {
      if (arg.kind === 'stream') continue;
      const rc = arg.kind === 'buffer' ? xrt.runSetArg(model.run, arg.index, 'void *', model.bos.get(arg.index).bo) : xrt.runSetArg(model.run, arg.index, arg.vaType, arg.value);
      check('set-arg', rc, `could not set argument ${arg.index}`);
    }
    const handle = nextHandle++;
    models.set(handle, model);
    return { handle, uuid: formatUuid(uuid), groups };
  } catch (error) {
    release(model);
    throw error;
  }
}

function run({ handle, inputs, outputs, timeoutMs }) {
  const model = models.get(handle);
  if (model === undefined) throw new StageError('handle', `no loaded model ${handle}`);
  for (const [index, bytes] of inputs) {
    const { bo, bytes: size } = model.bos.get(index);
    if (bytes.byteLength !== size) throw new StageError('write', `argument ${index} needs ${size} bytes, got ${bytes.byteLength}`);
    check('write', xrt.boWrite(bo, bytes, size, 0), `could not write argument ${index}`);
    check('sync', xrt.boSync(bo, XCL_BO_SYNC_BO_TO_DEVICE, size, 0), `could not sync argument ${index} to the device`);
  }
  check('start', xrt.runStart(model.run), 'could not start the kernel');
  const state = xrt.runWaitFor(model.run, timeoutMs);
  if (state !== ERT_CMD_STATE_COMPLETED) {
    throw new StageError('wait', `the kernel run ended in state ${ERT_STATES[state] ?? state}`, { state: ERT_STATES[state] ?? String(state) });
  }
  const results = [];
  for (const index of outputs) {
    const { bo, bytes: size } = model.bos.get(index);
    check('sync', xrt.boSync(bo, XCL_BO_SYNC_BO_FROM_DEVICE, size, 0), `could not sync argument ${index} from the device`);
    const out = Buffer.alloc(size);
    check('read', xrt.boRead(bo, out, size, 0), `could not read argument ${index}`);
    results.push([index, out]);
  }
  return { outputs: results };
}

/** XRT's own reading of an xclbin file, with no device involved. */
function inspect(file) {
  if (xrt === undefined) throw new StageError('library', 'XRT is not loaded (hello first)');
  const h = xrt.xclbinAlloc(file);
  if (h === null) throw failed('inspect', `XRT could not read ${file}`);
  try {
    const uuid = Buffer.alloc(16);
    check('inspect', xrt.xclbinUUID(h, uuid), 'could not read the uuid');
    const name = Buffer.alloc(256);
    const length = [0];
    check('inspect', xrt.xclbinXSAName(h, name, name.length, length), 'could not read the platform name');
    const platform = name.toString('latin1', 0, Math.min(length[0], name.length)).replace(/\0+$/u, '');
    return { uuid: formatUuid(uuid), platform, kernels: Number(xrt.xclbinKernels(h)), computeUnits: Number(xrt.xclbinComputeUnits(h)) };
  } finally {
    xrt.xclbinFree(h);
  }
}

function dispose(handle) {
  const model = models.get(handle);
  if (model === undefined) return {};
  models.delete(handle);
  release(model);
  return {};
}

/** Frees in reverse order of creation; the device closes with its last model. */
function release(model) {
  if (model.run) xrt.runClose(model.run);
  for (const { bo } of model.bos.values()) xrt.boFree(bo);
  if (model.kernel) xrt.kernelClose(model.kernel);
  if (--model.device.users === 0) {
    xrt.deviceClose(model.device.handle);
    devices.delete(model.key);
  }
}

function check(stage, rc, what) {
  if (rc !== 0) throw failed(stage, `${what} (XRT returned ${rc})`);
}

/** XRT's C API reports failure by a null handle or non-zero return and sets errno. */
function failed(stage, what) {
  const errno = koffi.errno();
  return new StageError(stage, errno ? `${what}: errno ${errno}` : what, errno ? { errno } : {});
}

/** The file the dynamic loader actually mapped for a soname, for reports. */
function mapped(name) {
  if (name.startsWith('/')) return name;
  try {
    const line = readFileSync('/proc/self/maps', 'utf8').split('\n').find((l) => l.includes(`/${name}`));
    return line === undefined ? name : line.slice(line.indexOf('/'));
  } catch {
    return name;
  }
}

function formatUuid(b) {
  const hex = b.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
