import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { Command, Option } from 'commander';
import { UsageError } from '../../../drivers/errors.js';
import type { Feeds } from '../../../drivers/hal/types.js';
import { readNpy, writeNpy } from '../../../drivers/tensor/npy.js';
import type { Tensor } from '../../../drivers/tensor/tensor.js';
import { InferenceService } from '../../../runtime/inference/inference-service.js';
import { table } from '../format.js';
import { collectList, positiveInt } from '../args.js';

interface InferOptions {
  input: string[];
  device: string[];
  json?: boolean;
  out?: string;
  threads?: number;
}

/** `aios infer`: one inference of a model on .npy inputs, on the best device available. */
export function inferCommand(): Command {
  return new Command('infer')
    .description('run a model once on .npy inputs and print (or save) its outputs')
    .argument('<model>', 'model file (.onnx, .tflite) or TF.js model folder')
    .option('-i, --input <name=file.npy>', 'an input tensor; repeat for each input (the name may be left out when the model has one input)', collect, [])
    .option('-d, --device <kind|id>', 'device kind or id to run on, best first; repeat or comma-separate (default: accelerators first, then cpu)', collectList, [])
    .addOption(new Option('-t, --threads <n>', 'intra-op threads (default: engine choice)').argParser(positiveInt('--threads')))
    .option('--out <dir>', 'write each output to DIR/<name>.npy')
    .option('--json', 'print { device, engine, backend, skipped, warnings, latencyMs, outputs: { NAME: { dtype, shape, data } } }')
    .addHelpText('after', `
Examples:
  aios infer models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx \\
      --input input:0=test/fixtures/inputs/blazeface128-face.npy
  aios infer model.onnx -i image=frame.npy --device cuda,cpu --out results/ --json`)
    .action(async (model: string, options: InferOptions) => {
      const feeds = await readInputs(options.input);
      const service = new InferenceService(model, {
        devices: options.device,
        ...(options.threads === undefined ? {} : { threads: options.threads }),
      });
      await service.start();
      try {
        const named = nameSoleInput(feeds, service.inputs.map((s) => s.name));
        const t0 = performance.now();
        const outputs = await service.infer(named);
        const ms = performance.now() - t0;
        if (options.out !== undefined) await writeOutputs(options.out, outputs);
        const report = { device: service.device.id, engine: service.engine, backend: service.backend, skipped: service.skipped, warnings: service.warnings, latencyMs: Number(ms.toFixed(3)) };
        if (options.json) {
          const out: Record<string, { dtype: string; shape: readonly number[]; data: number[] }> = {};
          for (const [name, t] of Object.entries(outputs)) out[name] = { dtype: t.dtype, shape: t.shape, data: t.toNumbers() };
          process.stdout.write(`${JSON.stringify({ ...report, outputs: out })}\n`);
        } else {
          process.stdout.write(`model   ${model}\ndevice  ${report.device} (${report.engine}, ${report.backend})\n`);
          for (const s of report.skipped) process.stdout.write(`skipped ${s.backend}: ${s.reason}\n`);
          for (const w of report.warnings) process.stdout.write(`warning ${w}\n`);
          process.stdout.write(`time    ${report.latencyMs} ms\n\n`);
          process.stdout.write(table(['OUTPUT', 'DTYPE', 'SHAPE', 'MIN', 'MAX', 'MEAN', 'FIRST VALUES'], Object.entries(outputs).map(([name, t]) => summaryRow(name, t))));
          if (options.out !== undefined) process.stdout.write(`\nwrote ${Object.keys(outputs).length} file(s) to ${options.out}\n`);
        }
      } finally {
        await service.stop();
      }
    });
}

const SOLE = '\0sole';

async function readInputs(specs: readonly string[]): Promise<Record<string, Tensor>> {
  if (specs.length === 0) throw new UsageError('EAI_CLI_USAGE', 'No inputs given. Pass each input as --input NAME=FILE.npy (see aios infer --help).');
  const feeds: Record<string, Tensor> = {};
  for (const spec of specs) {
    const eq = spec.lastIndexOf('=');
    const [name, file] = eq > 0 && spec.slice(eq + 1).endsWith('.npy') ? [spec.slice(0, eq), spec.slice(eq + 1)] : [SOLE, spec];
    if (name === SOLE && specs.length > 1) throw new UsageError('EAI_CLI_USAGE', `Input '${spec}' has no name; with several inputs each must be NAME=FILE.npy.`);
    if (!file.endsWith('.npy')) throw new UsageError('EAI_CLI_USAGE', `Input '${spec}' is not a .npy file. Save the tensor with numpy.save('x.npy', array) and pass --input NAME=x.npy.`);
    if (feeds[name] !== undefined) throw new UsageError('EAI_CLI_USAGE', `Input '${name}' is given twice.`);
    feeds[name] = await readNpy(file);
  }
  return feeds;
}

function nameSoleInput(feeds: Record<string, Tensor>, inputNames: readonly string[]): Feeds {
  const sole = feeds[SOLE];
  if (sole === undefined) return feeds;
  if (inputNames.length !== 1) throw new UsageError('EAI_CLI_USAGE', `The model has ${inputNames.length} inputs (${inputNames.join(', ')}); name each one: --input NAME=FILE.npy.`);
  return { [inputNames[0] as string]: sole };
}

async function writeOutputs(dir: string, outputs: Record<string, Tensor>): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const [name, t] of Object.entries(outputs)) {
    // Output names such as "Identity:0" or "scores/softmax" are not safe file names as they are.
    await writeNpy(path.join(dir, `${name.replace(/[^A-Za-z0-9._-]/gu, '_')}.npy`), t);
  }
}

function summaryRow(name: string, t: Tensor): string[] {
  const values = t.toNumbers();
  let min = Number.POSITIVE_INFINITY;
  let max = Number.NEGATIVE_INFINITY;
  let sum = 0;
  for (const v of values) {
    if (v < min) min = v;
    if (v > max) max = v;
    sum += v;
  }
  const fmt = (v: number): string => (Number.isInteger(v) ? String(v) : v.toPrecision(4));
  const empty = values.length === 0;
  return [name, t.dtype, `[${t.shape.join(', ')}]`, empty ? '-' : fmt(min), empty ? '-' : fmt(max), empty ? '-' : fmt(sum / values.length), values.slice(0, 4).map(fmt).join(' ') + (values.length > 4 ? ' ...' : '')];
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}


