import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DeviceUnavailableError, ModelError } from '../../../../drivers/errors.js';
import { createTfliteEngine, type TfliteLoadedModel } from '../../../../drivers/engines/tflite.js';
import { detectModel } from '../../../../drivers/hal/model-format.js';
import type { DeviceInfo } from '../../../../drivers/hal/types.js';
import { readNpy } from '../../../../drivers/tensor/npy.js';
import { buildFakeEdgeTpu, type FakeEdgeTpu } from '../../../fixtures/delegates/build.js';
import { BOTH_TPUS, edgetpuStyleExpected, edgetpuStyleFeed, edgetpuStyleModel, PCI_TPU, Q, USB_TPU, writeModels } from '../../../fixtures/delegates/models.js';
import { tempRoot } from '../../../support/sysroots.js';

// The Edge TPU path against a stand-in libedgetpu built from test/fixtures/delegates/fake-edgetpu.c:
// the same C entry points and a real TfLiteDelegate that claims edgetpu-custom-op nodes. What
// this cannot show is real Edge TPU hardware (see test/fixtures/delegates/README.md).

const repo = path.resolve(import.meta.dirname, '../../../..');
const BLAZEFACE = path.join(repo, 'models/zoo/blazeface-short-range-tflite/face_detection_short_range.tflite');
const SSD_EDGETPU = path.join(repo, 'models/zoo/ssd-mobilenet-v2-coco-quant-tflite/mobilenet_ssd_v2_coco_quant_postprocess_edgetpu.tflite');
const inputs = (name: string): string => path.join(repo, 'test/fixtures/inputs', name);

const usbTpu = USB_TPU;
const pciTpu = PCI_TPU;
const LISTED = BOTH_TPUS;
const models = writeModels({ tpu: edgetpuStyleModel() });
const feed = edgetpuStyleFeed;

let fake: FakeEdgeTpu | undefined;
let skip = '';
beforeAll(async () => {
  const built = await buildFakeEdgeTpu();
  if ('skip' in built) {
    skip = built.skip;
    console.warn(`edgetpu-delegate tests skipped: ${skip}`);
    return;
  }
  fake = built;
  process.env['FAKE_EDGETPU_DEVICES'] = LISTED;
});
afterEach(() => {
  delete process.env['FAKE_EDGETPU_FAIL'];
  process.env['FAKE_EDGETPU_DEVICES'] = LISTED;
});

/** Every test needs the built library; without gcc they are skipped with the printed reason. */
function withFake(name: string, body: (fake: FakeEdgeTpu) => Promise<void>): void {
  it(name, async (ctx) => {
    if (fake === undefined) {
      ctx.skip(`needs the fake libedgetpu: ${skip}`);
      return;
    }
    await body(fake);
  });
}

async function rejection(promise: Promise<unknown>): Promise<{ code: string; message: string } & Error> {
  const error = await promise.then(() => undefined, (e: unknown) => e);
  expect(error, 'expected a rejection').toBeInstanceOf(Error);
  return error as { code: string; message: string } & Error;
}

describe('Edge TPU delegate: an edgetpu-custom-op model on the TPU', () => {
  let model: TfliteLoadedModel | undefined;
  afterAll(async () => model?.dispose());

  withFake('is detected as tflite-edgetpu and loads with the delegate on the probed USB device', async (f) => {
    const source = await detectModel(models.tpu);
    expect(source.format).toBe('tflite-edgetpu');
    const engine = createTfliteEngine({ edgetpuLibrary: f.library });
    expect(await engine.supports(usbTpu)).toEqual({ ok: true });
    model = await engine.load(source, usbTpu);
    expect(model.backend).toBe('edgetpu');
    expect(f.lastOpened()).toBe('usb:/sys/bus/usb/devices/2-1');
    expect(model.libraries.edgetpu).toEqual({ path: f.library, version: 'aios fake libedgetpu (test delegate)', device: { type: 'usb', path: '/sys/bus/usb/devices/2-1' } });
    expect(model.inputs).toEqual([{ name: 'image', dtype: 'uint8', shape: [1, 8] }]);
    expect(model.outputs).toEqual([{ name: 'scores', dtype: 'float32', shape: [1, 8] }]);
    expect(model.quantization).toEqual({ image: { scale: 0.5, zeroPoint: 10 } });
    expect(f.liveDelegates()).toBe(1);
  });

  withFake('runs the custom op in the delegate and the DEQUANTIZE after it on the CPU', async (f) => {
    if (model === undefined) throw new Error('the load test above failed');
    const before = f.invocations();
    const out = await model.run(feed());
    expect(Array.from(out['scores']?.data as Float32Array)).toEqual(edgetpuStyleExpected(Q));
    expect(Array.from(out['scores']?.data as Float32Array)).toEqual([-31.25, -31, -30.75, -6.25, 0, 18.75, -32, -31.5]);
    expect(f.invocations() - before).toBe(1);
  });

  withFake('reports an unplugged accelerator mid-run as EAI_HAL_DEVICE_LOST, and recovers when it answers again', async (f) => {
    if (model === undefined) throw new Error('the load test above failed');
    await model.run(feed());
    process.env['FAKE_EDGETPU_FAIL'] = 'invoke';
    const e = await rejection(model.run(feed()));
    expect(e).toBeInstanceOf(DeviceUnavailableError);
    expect(e.code).toBe('EAI_HAL_DEVICE_LOST');
    expect(e.message).toContain('edgetpu:usb-2-1 (usb /sys/bus/usb/devices/2-1) stopped responding');
    expect(e.message).toContain('USB transfer error -4 [LIBUSB_ERROR_NO_DEVICE]');
    expect((e as DeviceUnavailableError).fix).toContain('load it again');
    delete process.env['FAKE_EDGETPU_FAIL'];
    expect(Array.from((await model.run(feed()))['scores']?.data as Float32Array)).toEqual(edgetpuStyleExpected(Q));
    expect(f.liveDelegates()).toBe(1);
  });

  withFake('frees the delegate exactly once on dispose', async (f) => {
    if (model === undefined) throw new Error('the load test above failed');
    await Promise.all([model.dispose(), model.dispose()]);
    await model.dispose();
    expect(f.liveDelegates()).toBe(0);
    model = undefined;
  });
});

describe('Edge TPU delegate: choosing and opening the device', () => {
  withFake('opens the PCIe card by its /dev/apex_N node', async (f) => {
    const model = await createTfliteEngine({ edgetpuLibrary: f.library }).load(await detectModel(models.tpu), pciTpu);
    expect(f.lastOpened()).toBe('pci:/dev/apex_0');
    expect(Array.from((await model.run(feed()))['scores']?.data as Float32Array)).toEqual(edgetpuStyleExpected(Q));
    await model.dispose();
    expect(f.liveDelegates()).toBe(0);
  });

  withFake('finds libedgetpu.so.1 in the system library folders, or through AIOS_EDGETPU_LIB', async (f) => {
    const sys = await tempRoot({ '/usr/lib/aarch64-linux-gnu/libedgetpu.so.1': { link: f.library } });
    const model = await createTfliteEngine({ sys }).load(await detectModel(models.tpu), usbTpu);
    expect(model.libraries.edgetpu?.path).toBe(sys.resolve('/usr/lib/aarch64-linux-gnu/libedgetpu.so.1'));
    await model.dispose();
    process.env['AIOS_EDGETPU_LIB'] = f.library;
    try {
      const viaEnv = await createTfliteEngine({ sys: await tempRoot({}) }).load(await detectModel(models.tpu), usbTpu);
      expect(viaEnv.libraries.edgetpu?.path).toBe(f.library);
      await viaEnv.dispose();
    } finally {
      delete process.env['AIOS_EDGETPU_LIB'];
    }
  });

  withFake('refuses a device libedgetpu does not list, naming what it does list', async (f) => {
    const elsewhere: DeviceInfo = { ...usbTpu, id: 'edgetpu:usb-3-4', details: { ...usbTpu.details, port: '3-4' } };
    const e = await rejection(createTfliteEngine({ edgetpuLibrary: f.library }).load(await detectModel(models.tpu), elsewhere));
    expect(e).toBeInstanceOf(DeviceUnavailableError);
    expect(e.code).toBe('EAI_HAL_DEVICE_OPEN_FAILED');
    expect(e.message).toContain('does not see edgetpu:usb-3-4 at /sys/bus/usb/devices/3-4; it lists: usb /sys/bus/usb/devices/2-1, pci /dev/apex_0');
    expect(f.liveDelegates()).toBe(0);
  });

  withFake('reports a device that will not open (busy) as EAI_HAL_DEVICE_OPEN_FAILED', async (f) => {
    process.env['FAKE_EDGETPU_FAIL'] = 'open';
    const e = await rejection(createTfliteEngine({ edgetpuLibrary: f.library }).load(await detectModel(models.tpu), usbTpu));
    expect(e.code).toBe('EAI_HAL_DEVICE_OPEN_FAILED');
    expect(e.message).toContain('could not open edgetpu:usb-2-1');
  });

  withFake('reports a delegate that cannot take the graph as EAI_MODEL_DELEGATE_FAILED and frees it', async (f) => {
    process.env['FAKE_EDGETPU_FAIL'] = 'prepare';
    const e = await rejection(createTfliteEngine({ edgetpuLibrary: f.library }).load(await detectModel(models.tpu), usbTpu));
    expect(e).toBeInstanceOf(ModelError);
    expect(e.code).toBe('EAI_MODEL_DELEGATE_FAILED');
    expect(e.message).toContain('compiled for another Edge TPU runtime');
    expect(f.liveDelegates()).toBe(0);
  });

  withFake('loads the real edgetpu_compiler output: the delegate claims its custom op, TFLite runs the post-processing', async (f) => {
    const source = await detectModel(SSD_EDGETPU);
    expect(source.format).toBe('tflite-edgetpu');
    const model = await createTfliteEngine({ edgetpuLibrary: f.library }).load(source, usbTpu);
    expect(model.backend).toBe('edgetpu');
    expect(model.inputs).toEqual([{ name: 'normalized_input_image_tensor', dtype: 'uint8', shape: [1, 300, 300, 3] }]);
    const before = f.invocations();
    const x = await readNpy(inputs('ssd300-messi.npy'));
    const a = await model.run({ normalized_input_image_tensor: x });
    const b = await model.run({ normalized_input_image_tensor: x });
    expect(f.invocations() - before).toBe(2);
    // The fake computes no detector, so only the shape of the answer is checked, and that it is
    // deterministic; TFLite_Detection_PostProcess ran on the CPU over the delegate's output.
    const count = (a['TFLite_Detection_PostProcess:3']?.data as Float32Array)[0] as number;
    expect(count).toBeGreaterThanOrEqual(0);
    expect(count).toBeLessThanOrEqual(20);
    expect(a['TFLite_Detection_PostProcess']?.shape).toEqual([1, 20, 4]);
    expect(Array.from(a['TFLite_Detection_PostProcess:2']?.data as Float32Array)).toEqual(Array.from(b['TFLite_Detection_PostProcess:2']?.data as Float32Array));
    await model.dispose();
    expect(f.liveDelegates()).toBe(0);
  });
});

describe('Edge TPU delegate: without libedgetpu, and plain models on the TPU', () => {
  it('names libedgetpu.so.1 and libedgetpu1-std when the runtime is missing', async () => {
    const engine = createTfliteEngine({ sys: await tempRoot({}) });
    const saved = process.env['AIOS_EDGETPU_LIB'];
    delete process.env['AIOS_EDGETPU_LIB'];
    try {
      const support = await engine.supports(usbTpu);
      expect(support.ok).toBe(false);
      expect(!support.ok && support.reason).toContain('libedgetpu.so.1');
      expect(!support.ok && support.fix).toContain('libedgetpu1-std');
      const e = await rejection(engine.load(await detectModel(SSD_EDGETPU), usbTpu));
      expect(e).toBeInstanceOf(DeviceUnavailableError);
      expect(e.code).toBe('EAI_HAL_ENGINE_UNAVAILABLE');
      expect(e.message).toContain('libedgetpu.so.1');
      expect(e.message).toContain('install libedgetpu1-std');
    } finally {
      if (saved !== undefined) process.env['AIOS_EDGETPU_LIB'] = saved;
    }
  });

  withFake('runs a plain .tflite on the CPU, says so, and warns once without opening the TPU', async (f) => {
    const engine = createTfliteEngine({ edgetpuLibrary: f.library });
    const warnings: Error[] = [];
    const listen = (w: Error): void => void warnings.push(w);
    process.on('warning', listen);
    try {
      const source = await detectModel(BLAZEFACE);
      const first = await engine.load(source, usbTpu);
      const second = await engine.load(source, usbTpu);
      await new Promise((resolve) => setImmediate(resolve)); // warnings are emitted on the next tick
      expect(first.backend).toBe('cpu+xnnpack');
      expect(first.libraries.edgetpu).toBeUndefined();
      expect(first.warnings).toHaveLength(1);
      expect(first.warnings[0]).toContain('not compiled with edgetpu_compiler');
      expect(first.warnings[0]).toContain('runs on the CPU, not on edgetpu:usb-2-1');
      expect(second.warnings).toEqual(first.warnings);
      expect(warnings.filter((w) => w.message.includes('edgetpu_compiler'))).toHaveLength(1);
      expect(f.liveDelegates()).toBe(0);
      const out = await first.run({ input: await readNpy(inputs('blazeface128-face.npy')) });
      const logits = out['classificators']?.data as Float32Array;
      expect(1 / (1 + Math.exp(-Math.max(...logits)))).toBeCloseTo(0.9549, 3);
      await first.dispose();
      await second.dispose();
    } finally {
      process.off('warning', listen);
    }
  });
});
