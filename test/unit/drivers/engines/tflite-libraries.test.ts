import { mkdtempSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DeviceUnavailableError } from '../../../../drivers/errors.js';
import { createTfliteEngine } from '../../../../drivers/engines/tflite.js';
import { loadTflite } from '../../../../drivers/engines/tflite/library.js';
import type { DeviceInfo } from '../../../../drivers/hal/types.js';

const cpu: DeviceInfo = { id: 'cpu:0', kind: 'cpu', name: 'cpu', formats: ['tflite'], status: { state: 'ready' } };
const tpu: DeviceInfo = { id: 'edgetpu:usb-2-1', kind: 'edgetpu', name: 'Coral USB Accelerator', formats: ['tflite-edgetpu', 'tflite'], status: { state: 'ready' }, details: { bus: 'usb', port: '2-1' } };
const ccDeps = path.dirname(createRequire(import.meta.url).resolve('tfjs-tflite-node/package.json'));
const otherArch = path.join(ccDeps, 'cc_deps', process.arch === 'x64' ? 'linux_arm64' : 'linux_amd64', 'libtensorflowlite_c.so');

describe('tflite engine: a library that is there but wrong', () => {
  it('a TFLite library built for another architecture is refused with the loader\'s reason, listing every place tried', async () => {
    const koffi = await import('koffi');
    let error: unknown;
    try {
      loadTflite(koffi, [{ source: 'AIOS_TFLITE_LIB', path: otherArch }, { source: 'system', missing: 'libtensorflowlite_c.so is not in the dynamic loader\'s folders' }]);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(DeviceUnavailableError);
    const e = error as DeviceUnavailableError;
    expect(e.code).toBe('EAI_HAL_ENGINE_UNAVAILABLE');
    expect(e.reason).toContain(otherArch);
    expect(e.reason).toMatch(/wrong ELF class|ELF|cannot open shared object/u);
    expect(e.reason).toContain('system: libtensorflowlite_c.so is not in the dynamic loader\'s folders');
  });

  it('with a wrong library first, the engine still finds the right one and runs', async () => {
    expect(await createTfliteEngine({ libraryPath: otherArch }).supports(cpu)).toEqual({ ok: true });
  });

  it('a libedgetpu without the Edge TPU entry points (wrong library or version) is refused, naming the library and the package', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'aios-badtpu-'));
    const fake = path.join(dir, 'libedgetpu.so.1');
    writeFileSync(fake, 'not a shared library');
    const s = await createTfliteEngine({ edgetpuLibrary: fake }).supports(tpu);
    expect(s.ok).toBe(false);
    if (s.ok) return;
    expect(s.reason).toContain('libedgetpu.so.1');
    expect(s.reason).toContain(fake);
    expect(s.fix).toContain('libedgetpu1-std');
  });
});
