import { cpuProbe } from './devices/cpu.js';
import { cudaProbe } from './devices/cuda.js';
import { edgetpuProbe } from './devices/edgetpu.js';
import { fpgaProbe } from './devices/fpga.js';
import { jetsonProbe } from './devices/jetson.js';
import { createOnnxruntimeEngine } from './engines/onnxruntime.js';
import { createTfjsEngine } from './engines/tfjs.js';
import { createTfliteEngine } from './engines/tflite.js';
import { createXrtEngine } from './engines/xrt.js';
import { HalRegistry } from './hal/registry.js';
import type { SysRoot } from './hal/sysroot.js';

export interface BuiltinHalOptions {
  /**
   * The machine engines check their system libraries on. Default: this one. `aios devices
   * --sysroot` passes the captured machine, so engines answer "would this run there" from files.
   */
  readonly sys?: SysRoot;
}

/**
 * The composition root of the HAL: every built-in probe and engine, with the priorities that
 * make the default device order "dedicated accelerators first, CPU last" and make onnxruntime
 * the first choice for formats more than one engine reads. A new accelerator is one more line.
 */
export function createBuiltinHal(options: BuiltinHalOptions = {}): HalRegistry {
  const sys = options.sys === undefined || options.sys.isLive ? {} : { sys: options.sys };
  return new HalRegistry()
    .register(jetsonProbe, 50)
    .register(cudaProbe, 40)
    .register(edgetpuProbe, 30)
    .register(fpgaProbe, 20)
    .register(cpuProbe, 0)
    .register(createOnnxruntimeEngine(sys), 10)
    .register(createTfliteEngine(sys), 8)
    .register(createTfjsEngine(), 5)
    .register(createXrtEngine(sys), 5);
}
