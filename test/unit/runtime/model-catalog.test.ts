import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import type { Tensor } from '../../../drivers/tensor/tensor.js';
import { ModelCatalog } from '../../../runtime/model-catalog.js';
import { Pipeline } from '../../../runtime/pipeline/pipeline.js';
import { until } from '../../support/wait.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const ONNX = path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx');
const TFLITE = path.join(repo, 'models/zoo/blazeface-short-range-tflite/face_detection_short_range.tflite');
const BACK = path.join(repo, 'models/zoo/blazeface-back-256/face_detection_back_256x256_barracuda.onnx');

describe('store models and hot swap', () => {
  it('an infer stage on store:<name> switches to a new version while it runs, without a lost or failed message', async () => {
    const catalog = ModelCatalog.shared();
    await catalog.set('face', ONNX, '1.0.0');
    const pipeline = await Pipeline.fromConfig(
      {
        name: 'swap',
        sources: { camera: { use: 'synthetic', params: { pattern: 'color-bars', rate: 40, width: 160, height: 120, format: 'rgb24' } } },
        stages: {
          resize: { use: 'image.resize', params: { width: 128, height: 128 } },
          normalize: { use: 'image.normalize', params: { scale: 0.00784313725490196, offset: -1 } },
          detect: { use: 'infer', params: { model: 'store:face', devices: ['cpu'] } },
        },
        sinks: { out: { use: 'callback' } },
        flows: ['camera -> resize', 'resize -> normalize', 'normalize -> detect', 'detect -> out'],
      },
      { baseDir: repo, statsIntervalMs: 0 },
    );
    const seen: string[][] = [];
    pipeline.on('result', (_node: string, message: { value: Record<string, Tensor> }) => seen.push(Object.keys(message.value).sort()));
    await pipeline.start();
    try {
      await until(() => seen.length >= 5, 20_000);
      expect(catalog.users('face')).toBe(1);
      // v2 is another exporter's model with the same input under another name, and other outputs.
      await catalog.set('face', TFLITE, '2.0.0');
      const at = seen.length;
      await until(() => seen.length >= at + 5, 20_000);
      expect(seen[0]).toEqual(['Identity:0', 'Identity_1:0', 'Identity_2:0', 'Identity_3:0']);
      expect(seen.at(-1)).toEqual(['classificators', 'regressors']);
      // A model that takes another input size is refused; the stage keeps running the one it has.
      await expect(catalog.set('face', BACK, '3.0.0')).rejects.toMatchObject({ code: 'EAI_MODEL_SWAP_INCOMPATIBLE' });
      await catalog.set('face', TFLITE, '2.0.0'); // point the name back, as the agent does on a failed switch
      const after = seen.length;
      await until(() => seen.length >= after + 3, 20_000);
      expect(seen.at(-1)).toEqual(['classificators', 'regressors']);
      const detect = pipeline.stats().nodes.find((n) => n.node === 'detect');
      expect(detect?.errors).toBe(0);
    } finally {
      await pipeline.stop();
    }
    expect(catalog.users('face')).toBe(0);
  });

  it('a name nobody set is looked up in the model store, with a clear error when it is not there', async () => {
    const catalog = new ModelCatalog(path.join(repo, 'test/fixtures/no-such-store'));
    await expect(catalog.resolve('face')).rejects.toMatchObject({ code: 'EAI_MODEL_NOT_IN_STORE' });
    expect(ModelCatalog.storeName('store:face')).toBe('face');
    expect(ModelCatalog.storeName('models/face.onnx')).toBeUndefined();
  });
});
