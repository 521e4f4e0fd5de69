import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTfliteEngine } from '../../../../drivers/engines/tflite.js';
import { HalRegistry } from '../../../../drivers/hal/registry.js';
import { InferenceService } from '../../../../runtime/inference/inference-service.js';
import { ResourcePool } from '../../../../runtime/resource-pool.js';
import { buildFakeEdgeTpu, type FakeEdgeTpu } from '../../../fixtures/delegates/build.js';
import { BOTH_TPUS, edgetpuStyleExpected, edgetpuStyleFeed as feed, edgetpuStyleModel, PCI_TPU, Q, USB_TPU, writeModels } from '../../../fixtures/delegates/models.js';
import { until } from '../../../support/wait.js';

// Failover through the real tflite engine and the Edge TPU delegate path (the stand-in
// libedgetpu of test/fixtures/delegates): a robot with a Coral USB stick and an M.2 card pulls the
// stick out mid-stream. What this cannot show is real Edge TPU hardware.

const usb = USB_TPU;
const pci = PCI_TPU;
const models = writeModels({ tpu: edgetpuStyleModel() });

let fake: FakeEdgeTpu | undefined;
let skip = '';
beforeAll(async () => {
  const built = await buildFakeEdgeTpu();
  if ('skip' in built) {
    skip = built.skip;
    console.warn(`Edge TPU failover test skipped: ${skip}`);
    return;
  }
  fake = built;
  process.env['FAKE_EDGETPU_DEVICES'] = BOTH_TPUS;
});
afterAll(() => {
  delete process.env['FAKE_EDGETPU_DEVICES'];
});

describe('InferenceService failover with the real tflite engine and Edge TPU delegate', () => {
  it('moves to the M.2 card when the USB stick is pulled out, loses no request, and goes back when it is plugged in', async (ctx) => {
    if (fake === undefined) {
      ctx.skip(`needs the stand-in libedgetpu: ${skip}`);
      return;
    }
    const engine = createTfliteEngine({ edgetpuLibrary: fake.library });
    const service = new InferenceService(models.tpu, { pool: new ResourcePool([usb, pci]), hal: new HalRegistry().register(engine), devices: [usb.id, pci.id], retry: { initialMs: 50, maxMs: 100 }, name: 'detector' });
    await service.start();
    try {
      expect(service.device.id).toBe(usb.id);
      expect(fake.lastOpened()).toBe('usb:/sys/bus/usb/devices/2-1');
      const expected = edgetpuStyleExpected(Q);
      const answers = async (n: number): Promise<void> => {
        const outs = await Promise.all(Array.from({ length: n }, () => service.infer(feed())));
        for (const out of outs) expect(Array.from(out['scores']?.data as Float32Array)).toEqual(expected);
      };
      await answers(10);

      // The stick is pulled: it no longer enumerates, and its delegate's transfers fail.
      process.env['FAKE_EDGETPU_DEVICES'] = 'pci:/dev/apex_0';
      await answers(20);
      expect(service.stats()).toMatchObject({ device: pci.id, failovers: 1, errors: 0 });
      expect(service.stats().replicas[0]).toMatchObject({ state: 'down', reason: expect.stringContaining('stopped responding') });
      expect(fake.lastOpened()).toBe('pci:/dev/apex_0');

      // Plugged back in: the retry opens a delegate on it again and requests return to it.
      process.env['FAKE_EDGETPU_DEVICES'] = BOTH_TPUS;
      await until(() => service.stats().device === usb.id, 3000);
      await answers(5);
      expect(service.stats().replicas.map((r) => r.state)).toEqual(['up', 'idle']);
      expect(service.stats().requests).toBe(35);
    } finally {
      await service.stop();
    }
    expect(fake.liveDelegates()).toBe(0);
  });
});
