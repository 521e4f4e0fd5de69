import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { fpgaProbe } from '../../../../drivers/devices/fpga.js';
import koffi from 'koffi';
import { chooseLibraries, createXrtEngine, deviceTarget, scalarVaType } from '../../../../drivers/engines/xrt.js';
import { parseXclbin } from '../../../../drivers/engines/xrt/axlf.js';
import type { HelloResult, InspectResult, LibraryChoice } from '../../../../drivers/engines/xrt/protocol.js';
import { resolveChildScript, WorkerFailure, XrtWorker } from '../../../../drivers/engines/xrt/worker.js';
import { DeviceUnavailableError, ModelError } from '../../../../drivers/errors.js';
import { SysRoot } from '../../../../drivers/hal/sysroot.js';
import type { DeviceInfo } from '../../../../drivers/hal/types.js';
import type { DType } from '../../../../drivers/tensor/tensor.js';
import { Tensor } from '../../../../drivers/tensor/tensor.js';
import { fixtureRoot, tempRoot } from '../../../support/sysroots.js';
import { vaddDescriptor, vaddXclbin } from '../../../fixtures/xclbin/axlf-builder.js';

const FAKE_CHILD = fileURLToPath(new URL('../../../fixtures/xclbin/fake-xrt-child.mjs', import.meta.url));
const dir = mkdtempSync(path.join(tmpdir(), 'aios-xrt-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const [alveo] = await fpgaProbe.probe(await fixtureRoot('x86-alveo-u50'));
const [kria] = await fpgaProbe.probe(await fixtureRoot('kria-kv260'));
const CPU: DeviceInfo = { id: 'cpu', kind: 'cpu', name: 'CPU', formats: ['onnx'], status: { state: 'ready' } };

/** A model folder: vadd.xclbin plus, unless `descriptor` is null, vadd.xrt.json beside it. */
function vaddModel(name: string, descriptor: Record<string, unknown> | null = vaddDescriptor(4)): string {
  const folder = path.join(dir, name);
  mkdirSync(folder, { recursive: true });
  writeFileSync(path.join(folder, 'vadd.xclbin'), vaddXclbin());
  if (descriptor !== null) writeFileSync(path.join(folder, 'vadd.xrt.json'), JSON.stringify(descriptor));
  return path.join(folder, 'vadd.xclbin');
}

function fake(mode: string, extra: NodeJS.ProcessEnv = {}) {
  return createXrtEngine({ workerScript: FAKE_CHILD, sys: XRT_HOST, env: { ...process.env, FAKE_XRT_MODE: mode, ...extra } });
}

const f32 = (...v: number[]): Tensor => new Tensor('float32', [v.length], Float32Array.from(v));

// A root where chooseLibraries finds "XRT", so the fake child is reached on machines without it.
const XRT_HOST = await tempRoot({ '/opt/xilinx/xrt/lib/libxrt_coreutil.so.2': '' });
const live = await SysRoot.open('/');
const hasXrt = (await live.findLibrary('libxrt_coreutil.so.2')) !== undefined && (await live.findLibrary('libxrt_core.so.2')) !== undefined;
const hasCard = (await fpgaProbe.probe(live)).length > 0;
const realXrt = hasXrt && !hasCard;
if (!hasXrt) console.warn('xrt engine: skipping the tests against the real XRT library: libxrt_coreutil.so.2 / libxrt_core.so.2 not found (Debian: apt-get install -y libxrt1)');
if (hasCard) console.warn('xrt engine: skipping the "no device" tests: this machine has an FPGA');

describe('the xrt engine without XRT', () => {
  it('is named xrt and runs xclbin models', () => {
    const engine = createXrtEngine();
    expect([engine.name, engine.formats]).toEqual(['xrt', ['xclbin']]);
  });

  it('refuses devices that are not FPGAs', async () => {
    expect(await createXrtEngine().supports(CPU)).toEqual({ ok: false, reason: 'xrt runs FPGA kernels (xclbin) and cpu is a cpu device', fix: 'place xclbin models on an fpga device (an Alveo card or a Kria/Zynq UltraScale+ SoC)' });
  });

  it('says XRT is not installed, and how to install it, when libxrt_coreutil.so.2 is nowhere', async () => {
    const support = await createXrtEngine({ sys: await tempRoot({}), env: {} }).supports(alveo as DeviceInfo);
    expect(support).toEqual({ ok: false, reason: 'XRT is not installed: libxrt_coreutil.so.2 not found', fix: expect.stringContaining('sudo apt install libxrt1') as unknown });
    expect(support.ok ? '' : support.fix).toContain('source /opt/xilinx/xrt/setup.sh');
  });

  it('maps probe devices to XRT: Alveo by PCIe user function, a SoC by index 0', () => {
    expect(deviceTarget(alveo as DeviceInfo)).toEqual({ bdf: '0000:3b:00.1' });
    expect(deviceTarget(kria as DeviceInfo)).toEqual({ index: 0 });
    expect(deviceTarget({ ...(kria as DeviceInfo), details: { xrtIndex: 2 } })).toEqual({ index: 2 });
  });

  it('chooses coreutil and the matching driver library from one folder', async () => {
    const opt = await tempRoot({ '/opt/xilinx/xrt/lib/libxrt_coreutil.so.2': '' });
    expect(await chooseLibraries(opt, undefined, {})).toEqual({ coreutil: '/opt/xilinx/xrt/lib/libxrt_coreutil.so.2', shim: '/opt/xilinx/xrt/lib/libxrt_core.so.2' });
    const debian = await tempRoot({ '/usr/lib/aarch64-linux-gnu/libxrt_coreutil.so.2': '' });
    expect(await chooseLibraries(debian, undefined, { XCL_EMULATION_MODE: 'sw_emu' })).toEqual({ coreutil: '/usr/lib/aarch64-linux-gnu/libxrt_coreutil.so.2', shim: '/usr/lib/aarch64-linux-gnu/libxrt_swemu.so.2' });
    const custom = await tempRoot({ '/tools/xrt/lib/libxrt_coreutil.so.2': '', '/usr/lib/aarch64-linux-gnu/libxrt_coreutil.so.2': '' });
    expect(await chooseLibraries(custom, undefined, { XILINX_XRT: '/tools/xrt', XCL_EMULATION_MODE: 'hw_emu' })).toEqual({ coreutil: '/tools/xrt/lib/libxrt_coreutil.so.2', shim: '/tools/xrt/lib/libxrt_hwemu.so.2' });
    expect(await chooseLibraries(debian, path.join(dir, 'nowhere'), {})).toEqual({ reason: `libxrt_coreutil.so.2 not found in ${path.join(dir, 'nowhere')}`, fix: expect.stringContaining('libraryDir') as unknown });
  });

  it('checks the descriptor before touching the device: a bare xclbin is refused with the fields to write', async () => {
    const error = (await fake('vadd').load({ path: vaddModel('bare', null), format: 'xclbin' }, alveo as DeviceInfo).catch((e: unknown) => e)) as ModelError;
    expect(error).toBeInstanceOf(ModelError);
    expect(error.code).toBe('EAI_XRT_NO_DESCRIPTOR');
    expect(error.message).toContain('"direction" (in/out/inout)');
  });
});

describe('the xrt engine with a stand-in worker process', () => {
  it('loads vadd, runs it with the bytes round-tripping through the worker, and reports specs, backend and banks', async () => {
    const model = await fake('vadd').load({ path: vaddModel('run'), format: 'xclbin' }, alveo as DeviceInfo);
    expect(model.inputs).toEqual([{ name: 'a', dtype: 'float32', shape: [4] }, { name: 'b', dtype: 'float32', shape: [4] }]);
    expect(model.outputs).toEqual([{ name: 'out', dtype: 'float32', shape: [4] }]);
    expect([model.engine, model.backend]).toEqual(['xrt', 'xrt']);
    expect((model as unknown as { xclbinUuid: string }).xclbinUuid).toBe('01234567-89ab-cdef-0011-223344556677');
    expect((model as unknown as { memoryGroups: unknown }).memoryGroups).toEqual({ a: 0, b: 0, out: 0 });
    // A view into a larger buffer: only its own 16 bytes may travel.
    const big = new Float32Array([99, 1, 2, 3, 4, 99]);
    const a = new Tensor('float32', [4], big.subarray(1, 5));
    const [r1, r2] = await Promise.all([model.run({ a, b: f32(10, 20, 30, 40) }), model.run({ a: f32(0.5, 0.5, 0.5, 0.5), b: f32(1, 2, 3, 4) })]);
    expect(r1?.['out']?.toNumbers()).toEqual([11, 22, 33, 44]);
    expect(r2?.['out']?.toNumbers()).toEqual([1.5, 2.5, 3.5, 4.5]);
    await expect(model.run({ a: f32(1, 2, 3), b: f32(1, 2, 3, 4) })).rejects.toMatchObject({ code: 'EAI_MODEL_INPUT_SHAPE' });
    await model.dispose();
    await expect(model.run({ a: f32(1, 2, 3, 4), b: f32(1, 2, 3, 4) })).rejects.toMatchObject({ code: 'EAI_MODEL_DISPOSED' });
  });

  it('turns XRT failures into coded errors that quote XRT', async () => {
    const load = async (stage: string, said: string): Promise<DeviceUnavailableError> =>
      (await fake('fail-load', { FAKE_XRT_STAGE: stage, FAKE_XRT_SAID: said }).load({ path: vaddModel(`fail-${stage}`), format: 'xclbin' }, alveo as DeviceInfo).catch((e: unknown) => e)) as DeviceUnavailableError;
    const xclbin = await load('load-xclbin', 'Xclbin does not match shell on card');
    expect(xclbin.code).toBe('EAI_XRT_XCLBIN_LOAD');
    expect(xclbin.message).toContain("XRT said: [XRT] ERROR: Xclbin does not match shell on card. ");
    expect(xclbin.message).toContain("was built for platform 'xilinx_u50_gen3x16_xdma_5_202210_1' and the card runs shell 'xilinx_u50_gen3x16_xdma_201920_3'");
    expect(xclbin.details).toMatchObject({ stage: 'load-xclbin', errno: 22, target: { bdf: '0000:3b:00.1' } });
    const open = await load('open-device', 'No such device');
    expect(open).toBeInstanceOf(DeviceUnavailableError);
    expect([open.code, open.reason]).toEqual(['EAI_XRT_DEVICE_OPEN', 'XRT could not open Alveo U50 (PCIe 0000:3b:00.1): could not load the xclbin (XRT returned -22) — XRT said: [XRT] ERROR: No such device']);
    expect((await load('alloc', 'bad alloc')).code).toBe('EAI_XRT_BUFFER');
    expect((await load('open-kernel', 'No compute units matching')).code).toBe('EAI_XRT_KERNEL');
  });

  it('reports a kernel that timed out, by the ert state', async () => {
    const model = await fake('vadd', { FAKE_XRT_STATE: 'TIMEOUT' }).load({ path: vaddModel('timeout'), format: 'xclbin' }, kria as DeviceInfo);
    await expect(model.run({ a: f32(1, 2, 3, 4), b: f32(1, 2, 3, 4) })).rejects.toMatchObject({ code: 'EAI_XRT_TIMEOUT', details: { state: 'TIMEOUT', target: { index: 0 } } });
  });

  it('survives a worker that aborts mid-run, says so, and starts a new worker on the next load', async () => {
    const engine = fake('abort-on-run');
    const model = await engine.load({ path: vaddModel('abort'), format: 'xclbin' }, alveo as DeviceInfo);
    const error = (await model.run({ a: f32(1, 2, 3, 4), b: f32(1, 2, 3, 4) }).catch((e: unknown) => e)) as DeviceUnavailableError;
    expect(error).toBeInstanceOf(DeviceUnavailableError);
    expect(error.code).toBe('EAI_XRT_CRASHED');
    expect(error.details).toMatchObject({ op: 'run', signal: 'SIGABRT' });
    expect(error.reason).toBe("the XRT worker process was killed by SIGABRT during 'run'; its last output:\nterminate called after throwing an instance of 'xrt_core::system_error'\n  what():  bad command\n");
    await expect(model.run({ a: f32(1, 2, 3, 4), b: f32(1, 2, 3, 4) })).rejects.toMatchObject({ code: 'EAI_XRT_CRASHED', message: expect.stringContaining('has exited') as unknown });
    const again = await engine.load({ path: vaddModel('abort'), format: 'xclbin' }, alveo as DeviceInfo);
    expect(again.outputs).toHaveLength(1);
  });

  it('keeps the worker in its own process group, so a kill(0, SIGSEGV) in XRT cannot reach this process', async () => {
    const error = (await fake('kill-group').load({ path: vaddModel('group'), format: 'xclbin' }, kria as DeviceInfo).catch((e: unknown) => e)) as DeviceUnavailableError;
    expect(error.code).toBe('EAI_XRT_CRASHED');
    expect(error.details).toMatchObject({ op: 'load', signal: 'SIGSEGV' });
    expect(error.reason).toContain('XILINX_VITIS');
  });

  it('refuses a truncated xclbin before XRT sees it', async () => {
    // XRT 2.13's own reader takes a file that has the magic and little else and reads past its end
    // (seen here: sometimes SIGSEGV, sometimes garbage), so every xclbin is parsed and checked first.
    const file = vaddModel('truncated');
    writeFileSync(file, vaddXclbin().subarray(0, 600));
    const error = (await fake('vadd').load({ path: file, format: 'xclbin' }, alveo as DeviceInfo).catch((e: unknown) => e)) as ModelError;
    expect(error).toBeInstanceOf(ModelError);
    expect(error.code).toBe('EAI_MODEL_CORRUPT');
    expect(error.details['problem']).toBe('the table of 5 section headers needs bytes 456..656 but the file has 600: the file is truncated');
  });

  it('kills a worker stuck inside XRT after the load timeout', async () => {
    const engine = createXrtEngine({ workerScript: FAKE_CHILD, sys: XRT_HOST, loadTimeoutMs: 300, env: { ...process.env, FAKE_XRT_MODE: 'silent-load' } });
    const started = Date.now();
    await expect(engine.load({ path: vaddModel('silent'), format: 'xclbin' }, alveo as DeviceInfo)).rejects.toMatchObject({ code: 'EAI_XRT_CRASHED', reason: "the XRT worker process did not answer within 300 ms and was killed during 'load'" });
    expect(Date.now() - started).toBeLessThan(10_000);
  });
});

describe('scalar kernel arguments', () => {
  it('travel as 64-bit integers or doubles, which the narrower va_arg XRT uses reads back exactly on this ABI', () => {
    // XRT reads a scalar with va_arg as the kernel's C type: "int" -> int, "uint"/4 bytes -> unsigned,
    // 8 bytes -> uint64_t, "float" -> double. libc's snprintf reads its varargs the same way.
    const snprintf = koffi.load('libc.so.6').func('int snprintf(_Out_ uint8_t *buf, size_t size, const char *format, ...)');
    const show = (format: string, dtype: DType, value: number | bigint): string => {
      const buf = Buffer.alloc(64);
      const n = snprintf(buf, buf.length, format, scalarVaType(dtype), value) as number;
      return buf.toString('latin1', 0, n);
    };
    expect(show('%d', 'int32', -5)).toBe('-5');
    expect(show('%d', 'int8', -128)).toBe('-128');
    expect(show('%u', 'uint32', 4_000_000_000)).toBe('4000000000');
    expect(show('%llu', 'uint64', 2n ** 40n + 1n)).toBe('1099511627777');
    expect(show('%lld', 'int64', -(2n ** 40n))).toBe('-1099511627776');
    expect(show('%g', 'float32', 1.5)).toBe('1.5');
    expect(show('%.17g', 'float64', 0.1)).toBe('0.10000000000000001');
  });
});

describe('the worker script', () => {
  const repo = path.resolve(path.dirname(FAKE_CHILD), '../../..');
  const child = path.join(repo, 'drivers/engines/xrt/child.mjs');

  it('is child.mjs beside worker.ts when running from sources', () => {
    expect(resolveChildScript()).toBe(child);
  });

  it('is found in the package source tree from a dist/ build, which tsc leaves without .mjs files', () => {
    // A package laid out like an npm install of aios whose dist/ lacks the script.
    const pkg = path.join(dir, 'aios-package');
    mkdirSync(path.join(pkg, 'drivers/engines/xrt'), { recursive: true });
    mkdirSync(path.join(pkg, 'dist/drivers/engines/xrt'), { recursive: true });
    writeFileSync(path.join(pkg, 'package.json'), JSON.stringify({ name: 'aios', version: '0.0.0' }));
    writeFileSync(path.join(pkg, 'drivers/engines/xrt/child.mjs'), '');
    expect(resolveChildScript(pathToFileURL(path.join(pkg, 'dist/drivers/engines/xrt/worker.js')).href)).toBe(path.join(pkg, 'drivers/engines/xrt/child.mjs'));
    // make build copies it beside the compiled worker, which is then preferred.
    writeFileSync(path.join(pkg, 'dist/drivers/engines/xrt/child.mjs'), '');
    expect(resolveChildScript(pathToFileURL(path.join(pkg, 'dist/drivers/engines/xrt/worker.js')).href)).toBe(path.join(pkg, 'dist/drivers/engines/xrt/child.mjs'));
  });

  it('is a clear EAI_XRT_UNAVAILABLE outside any aios package', () => {
    expect(() => resolveChildScript(pathToFileURL(path.join(dir, 'elsewhere/worker.js')).href)).toThrow(expect.objectContaining({ code: 'EAI_XRT_UNAVAILABLE' }));
  });
});

describe.skipIf(!hasXrt)("XRT's own xclbin reader", () => {
  it('agrees with parseXclbin on the built test files: uuid, platform, kernels and compute units', async () => {
    const worker = new XrtWorker();
    const libraries = (await chooseLibraries(live, undefined, {})) as LibraryChoice;
    await worker.request<HelloResult>({ op: 'hello', libraries }, 30_000);
    for (const [name, bytes, kernels, cus] of [['meta', vaddXclbin(), 1, 2], ['bare', vaddXclbin({ metadata: false }), 0, 0]] as const) {
      const file = path.join(dir, `inspect-${name}.xclbin`);
      writeFileSync(file, bytes);
      const ours = await parseXclbin(file);
      expect(await worker.request<InspectResult>({ op: 'inspect', xclbin: file }, 30_000)).toEqual({ uuid: ours.uuid, platform: ours.platformVbnv, kernels, computeUnits: cus });
    }
    const missing = await worker.request({ op: 'inspect', xclbin: path.join(dir, 'none.xclbin') }, 30_000).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(WorkerFailure);
    expect((missing as WorkerFailure).failure).toMatchObject({ stage: 'inspect', errno: 2 });
    expect((missing as WorkerFailure).output).toContain("[XRT] ERROR: Failed to open file '");
    await worker.close();
    expect(worker.running).toBe(false);
  });
});

describe.skipIf(!realXrt)('the xrt engine against the real XRT library on a machine without an FPGA', () => {
  it('loads libxrt in the worker, calls xclProbe, and reports no device with what to check', async () => {
    const handles = (): number[] => ['ProcessWrap', 'PipeWrap'].map((kind) => process.getActiveResourcesInfo().filter((r) => r === kind).length);
    const before = handles();
    const engine = createXrtEngine();
    expect(await engine.supports(alveo as DeviceInfo)).toEqual({
      ok: false,
      reason: 'no FPGA device visible to XRT (xclProbe found 0 devices)',
      fix: expect.stringMatching(/lspci -d 10ee:.*lsmod \| grep xocl.*bound to 0000:3b:00\.1.*xbutil examine/u) as unknown,
    });
    const soc = await engine.supports(kria as DeviceInfo);
    expect(soc.ok ? '' : soc.fix).toMatch(/lsmod \| grep zocl.*xmutil loadapp/u);
    // The idle worker holds nothing that keeps the process alive.
    // (Compared as "no more than before": workers of earlier tests may still be exiting.)
    const after = handles();
    expect(after[0]).toBeLessThanOrEqual(before[0] ?? 0);
    expect(after[1]).toBeLessThanOrEqual(before[1] ?? 0);
  });

  it('fails a load with EAI_XRT_NO_DEVICE after checking the descriptor', async () => {
    const error = (await createXrtEngine().load({ path: vaddModel('real'), format: 'xclbin' }, alveo as DeviceInfo).catch((e: unknown) => e)) as DeviceUnavailableError;
    expect(error).toBeInstanceOf(DeviceUnavailableError);
    expect([error.code, error.reason]).toEqual(['EAI_XRT_NO_DEVICE', 'no FPGA device visible to XRT (xclProbe found 0 devices)']);
  });

  it('reports a library the worker cannot load, with the loader\'s message', async () => {
    const libs = path.join(dir, 'broken-xrt');
    mkdirSync(libs, { recursive: true });
    writeFileSync(path.join(libs, 'libxrt_coreutil.so.2'), 'not an ELF file');
    const support = await createXrtEngine({ libraryDir: libs }).supports(alveo as DeviceInfo);
    expect(support.ok ? '' : support.reason).toMatch(/^the XRT libraries could not be loaded: .*libxrt_coreutil\.so\.2.*(invalid ELF header|file too short)/u);
  });

  it('survives XRT killing the worker: sw_emu without Vitis segfaults and signals its whole process group', async () => {
    const env: NodeJS.ProcessEnv = { ...process.env, XCL_EMULATION_MODE: 'sw_emu' };
    delete env['XILINX_VITIS'];
    const engine = createXrtEngine({ env });
    const error = (await engine.load({ path: vaddModel('swemu'), format: 'xclbin' }, kria as DeviceInfo).catch((e: unknown) => e)) as DeviceUnavailableError;
    expect(error).toBeInstanceOf(DeviceUnavailableError);
    expect(error.code).toBe('EAI_XRT_CRASHED');
    // Which thread wins is a race in XRT: a segfault answered by kill(0, SIGSEGV), or exit(1).
    expect(error.details['signal'] === 'SIGSEGV' || error.details['exitCode'] === 1).toBe(true);
    expect(error.details['op']).toBe('load');
    expect(error.reason).toContain('XILINX_VITIS environment variable');
    expect(error.reason).not.toContain('Build hash');
    // A new worker answers the next request (the emulated device is "there").
    expect(await engine.supports(kria as DeviceInfo)).toEqual({ ok: true });
  });
});
