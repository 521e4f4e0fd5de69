import { cpuProbe } from './devices/cpu.js';
import { cudaProbe } from './devices/cuda.js';
import { edgetpuProbe } from './devices/edgetpu.js';
import { fpgaProbe } from './devices/fpga.js';
import { jetsonProbe } from './devices/jetson.js';
import { createOnnxruntimeEngine } from './engines/onnxruntime.js';
import { createTfjsEngine } from './engines/tfjs.js';
import { createTfliteEngine } from './engines/tflite.js';
import { HalRegistry } from './hal/registry.js';

/**
 * The composition root of the HAL: every built-in probe and engine, with the priorities that
 * make the default device order "dedicated accelerators first, CPU last" and make onnxruntime
 * the first choice for formats more than one engine reads. A new accelerator is one more line.
 */
export function createBuiltinHal(): HalRegistry {
  return new HalRegistry()
    .register(jetsonProbe, 50)
    .register(cudaProbe, 40)
    .register(edgetpuProbe, 30)
    .register(fpgaProbe, 20)
    .register(cpuProbe, 0)
    .register(createOnnxruntimeEngine(), 10)
    .register(createTfliteEngine(), 8)
    .register(createTfjsEngine(), 5);
}
