import path from 'node:path';
import { Type } from '@sinclair/typebox';
import { createBuiltinHal } from '../../../../drivers/builtin.js';
import { ModelError, PlacementError } from '../../../../drivers/errors.js';
import { detectModel } from '../../../../drivers/hal/model-format.js';
import type { TensorSpec } from '../../../../drivers/hal/types.js';
import { Tensor } from '../../../../drivers/tensor/tensor.js';
import { InferenceService } from '../../../inference/inference-service.js';
import { ModelCatalog } from '../../../model-catalog.js';
import { ResourcePool } from '../../../resource-pool.js';
import { defineNode, PortTypeMismatch, type ConfigProblem } from '../../definition.js';
import { describe, type PortType } from '../../port-types.js';
import { parseDuration } from '../../graph.js';
import { Duration } from '../../schema.js';

const Params = Type.Object(
  {
    model: Type.String({ description: "model file (.onnx, .tflite, .xrt.json) or TF.js folder, relative to the pipeline file; or store:<name>, the active version of <name> in the device's model store (swapped in place when a new version is activated)" }),
    devices: Type.Optional(Type.Array(Type.String(), { description: "device kinds or ids, best first (e.g. ['jetson', 'cuda', 'cpu']); default: accelerators first" })),
    threads: Type.Optional(Type.Integer({ minimum: 1 })),
    input: Type.Optional(Type.String({ description: "the model input the 'in' port feeds (default: the model's only input)" })),
    engine: Type.Optional(Type.Record(Type.String(), Type.Unknown(), { description: 'engine options, e.g. { provider: tensorrt, fp16: true }' })),
    constants: Type.Optional(
      Type.Record(Type.String(), Type.Object({ dtype: Type.Union([Type.Literal('float32'), Type.Literal('int32'), Type.Literal('int64')]), value: Type.Union([Type.Number(), Type.Array(Type.Number())]) }, { additionalProperties: false }), {
        description: 'model inputs fed the same value every run, e.g. { sr: { dtype: int64, value: 16000 } }',
      }),
    ),
    state: Type.Optional(Type.Record(Type.String(), Type.String(), { description: 'recurrent state: output name -> input name it feeds on the next run (zeros at first), e.g. { hn: h, cn: c }' })),
    rate: Type.Optional(Type.Number({ exclusiveMinimum: 0, description: 'runs per second this stage expects (Hz). With it the pipeline is refused at start when no listed device can give that rate at its priority (admission control, docs/scheduling.md)' })),
    batching: Type.Optional(
      Type.Object(
        {
          maxBatch: Type.Integer({ minimum: 2, maximum: 256, description: 'most requests in one run' }),
          maxDelay: Type.Optional(Duration),
          symbol: Type.Optional(Type.String({ description: "the model's name for its batch dimension, when several dynamic dimensions qualify" })),
        },
        { additionalProperties: false, description: 'run messages that arrive close together as one batch (models with a dynamic batch dimension); maxDelay (default 2ms) is how long the first waits for company' },
      ),
    ),
    inFlight: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 16,
        description: 'runs started before the oldest has finished (default 2; 1 with recurrent state, where each run needs the last one\'s output). Results leave in arrival order.',
      }),
    ),
  },
  { additionalProperties: false },
);

/**
 * `infer`: runs a model on every message through an InferenceService. The `in` port takes one
 * tensor (fed to the model's only input, or to `params.input`) or a record of tensors by input
 * name; `out` carries all the model's outputs as a record of tensors (PortType `tensors`).
 *
 * Validation loads the model's signature once (cached) to check the upstream tensor type
 * against the model's input — an image of 640×480 into a model wanting [1, 128, 128, 3] is
 * reported with both — and asks the HAL whether any listed device can run it.
 */
export const inferStage = defineNode({
  use: 'infer',
  role: 'stage',
  description: 'run a model on each message (onnx, tflite, tfjs, xclbin) on the best device in the preference list',
  params: Params,
  inputs: ['in'],
  outputs: ['out'],

  async types(params, inputs) {
    // Types are checked in `check`, which knows the pipeline's folder; here only the shape of the output.
    const upstream = inputs['in'];
    if (upstream !== undefined && upstream.kind !== 'tensor' && upstream.kind !== 'tensors' && upstream.kind !== 'any') {
      throw new PortTypeMismatch('in', `${describe(upstream)} cannot feed model ${params.model}, which takes tensors: add an image.normalize or image.to_tensor stage before it`);
    }
    return { out: { kind: 'tensors' } };
  },

  async check(params, env) {
    const problems: ConfigProblem[] = [];
    if ((params.inFlight ?? 1) > 1 && Object.keys(params.state ?? {}).length > 0) {
      problems.push({ path: ['params', 'inFlight'], message: `inFlight ${params.inFlight} cannot be used with recurrent state: each run needs the previous run's ${Object.keys(params.state ?? {}).join(', ')}; remove inFlight or set it to 1` });
    }
    let signature: readonly TensorSpec[];
    try {
      const file = await modelFile(params.model, env.baseDir);
      signature = await modelInputs(file, params.devices);
    } catch (error) {
      problems.push({ path: ['params', error instanceof PlacementError ? 'devices' : 'model'], message: error instanceof Error ? error.message.split('\n').join(' ') : String(error) });
      return problems;
    }
    const upstream = env.inputs['in'];
    const fixed = new Set([...Object.keys(params.constants ?? {}), ...Object.values(params.state ?? {})]);
    for (const name of fixed) {
      if (!signature.some((s) => s.name === name)) problems.push({ path: ['params', Object.keys(params.constants ?? {}).includes(name) ? 'constants' : 'state'], message: `model ${params.model} has no input '${name}'; its inputs: ${signature.map((s) => s.name).join(', ')}` });
    }
    const fed = signature.filter((s) => !fixed.has(s.name));
    const target = params.input === undefined ? (fed.length === 1 ? fed[0] : undefined) : signature.find((s) => s.name === params.input);
    if (params.input !== undefined && target === undefined) {
      problems.push({ path: ['params', 'input'], message: `model ${params.model} has no input '${params.input}'; its inputs: ${signature.map((s) => s.name).join(', ')}` });
    } else if (params.input === undefined && fed.length > 1 && upstream?.kind === 'tensor') {
      problems.push({ path: ['params', 'input'], message: `model ${params.model} has ${fed.length} inputs not given as constants or state (${fed.map((s) => s.name).join(', ')}): say which one 'in' feeds, or feed a record of tensors` });
    } else if (target !== undefined && upstream?.kind === 'tensor') {
      const wanted: PortType = { kind: 'tensor', dtype: target.dtype, shape: target.shape };
      const sameRank = upstream.shape === null || upstream.shape.length === target.shape.length;
      const fits = sameRank && (upstream.dtype === null || upstream.dtype === target.dtype) && (upstream.shape === null || upstream.shape.every((d, i) => d === null || target.shape[i] === null || target.shape[i] === d));
      if (!fits) problems.push({ path: ['params', 'model'], message: `the upstream ${describe(upstream)} does not fit input '${target.name}' of ${params.model}, which takes ${describe(wanted)}: add an image.resize / image.normalize stage to match` });
    }
    return problems;
  },

  async start(ctx) {
    const hal = createBuiltinHal();
    const pool = await sharedPool();
    const serviceFor = (file: string): InferenceService =>
      new InferenceService(file, {
        hal,
        pool,
        name: `${ctx.pipeline}/${ctx.name}`,
        priority: ctx.policy.priority,
        ...(ctx.params.rate === undefined ? {} : { rateHz: ctx.params.rate }),
        ...(ctx.params.batching === undefined ? {} : { batching: { maxBatch: ctx.params.batching.maxBatch, maxDelayMs: ctx.params.batching.maxDelay === undefined ? 2 : parseDuration(ctx.params.batching.maxDelay), ...(ctx.params.batching.symbol === undefined ? {} : { symbol: ctx.params.batching.symbol }) } }),
        ...(ctx.params.devices === undefined ? {} : { devices: ctx.params.devices }),
        ...(ctx.params.threads === undefined ? {} : { threads: ctx.params.threads }),
        ...(ctx.params.engine === undefined ? {} : { engineOptions: ctx.params.engine }),
      });
    const service = serviceFor(await modelFile(ctx.params.model, ctx.baseDir));
    await service.start();
    const fixed = new Set([...Object.keys(ctx.params.constants ?? {}), ...Object.values(ctx.params.state ?? {})]);
    const inputName = ctx.params.input ?? service.inputs.find((s) => !fixed.has(s.name))?.name ?? 'input';
    const constants: Record<string, Tensor> = {};
    for (const [name, c] of Object.entries(ctx.params.constants ?? {})) constants[name] = constantTensor(c.dtype, c.value, service.inputs.find((s) => s.name === name));
    // Recurrent state starts at zeros in the shape the model declares (dynamic dimensions as 1).
    const recurrent: Record<string, Tensor> = {};
    for (const input of Object.values(ctx.params.state ?? {})) {
      const spec = service.inputs.find((s) => s.name === input);
      if (spec !== undefined) recurrent[input] = Tensor.zeros(spec.dtype, spec.shape.map((d) => d ?? 1));
    }
    // With batching, as many runs in flight as a batch holds, so batches can fill.
    const inFlight = ctx.params.inFlight ?? (Object.keys(ctx.params.state ?? {}).length > 0 ? 1 : Math.max(2, ctx.params.batching?.maxBatch ?? 0));
    const state = { service, inputName, constants, recurrent, inFlight, running: [] as Promise<unknown>[], tail: Promise.resolve() as Promise<unknown>, unwatch: undefined as (() => void) | undefined };
    const name = ModelCatalog.storeName(ctx.params.model);
    if (name !== undefined) {
      // Hot swap: the new version is loaded and warmed beside the old one, then takes the next
      // message; runs already started finish on the old one, which is stopped after them.
      state.unwatch = ModelCatalog.shared().watch(name, async (file, version) => {
        const next = serviceFor(file);
        await next.start();
        const fit = compatibility(state.service.inputs, next.inputs, state.inputName);
        if (fit.problem !== undefined) {
          await next.stop();
          throw new ModelError('EAI_MODEL_SWAP_INCOMPATIBLE', `${ctx.pipeline}/${ctx.name} cannot switch to ${name} ${version}: ${fit.problem}. The stage keeps the version it runs; a model with other inputs needs a new pipeline configuration (setConfig).`, { details: { model: name, version } });
        }
        const old = state.service;
        state.service = next;
        state.inputName = fit.inputName;
        await Promise.all([...state.running, state.tail]);
        await old.stop();
      });
    }
    return state;
  },

  async process(_port, message, ctx, state) {
    const value = message.value;
    const given = value instanceof Tensor ? { [state.inputName]: value } : (value as Record<string, Tensor>);
    if (state.inFlight > 1) {
      // Start this run while earlier ones may still be going (on the model's thread or device),
      // so the device never waits for this thread to hand it the next input.
      const run = state.service.infer({ ...state.constants, ...given }, deadlineOf(message, ctx.policy));
      const emitted = state.tail.then(() => run).then((outputs) => ctx.emit('out', outputs, message));
      state.tail = emitted.catch(() => undefined);
      ctx.track(emitted);
      state.running.push(emitted.catch(() => undefined));
      if (state.running.length >= state.inFlight) await state.running.shift();
      return;
    }
    const outputs = await state.service.infer({ ...state.constants, ...state.recurrent, ...given }, deadlineOf(message, ctx.policy));
    for (const [output, input] of Object.entries(ctx.params.state ?? {})) {
      const next = outputs[output];
      if (next !== undefined) state.recurrent[input] = next;
    }
    await ctx.emit('out', outputs, message);
  },

  async stop(_ctx, state) {
    state?.unwatch?.();
    await state?.service.stop();
  },

  stats(state) {
    if (!state.service.started) return {};
    const s = state.service.stats();
    return {
      scheduling: {
        device: s.device,
        priority: s.priority,
        ...(s.rateHz === undefined ? {} : { rateHz: s.rateHz }),
        entitledRateHz: s.share?.entitledRateHz ?? 0,
        receivedRateHz: s.share?.receivedRateHz ?? 0,
        entitledShare: s.share?.entitledShare ?? 0,
        receivedShare: s.share?.receivedShare ?? 0,
        queueMs: s.queueMs,
        expired: s.expired,
        deadlineMisses: s.deadlineMisses,
        failovers: s.failovers,
        ...(s.batches === undefined ? {} : { batches: { count: s.batches.count, meanRows: s.batches.meanRows } }),
      },
    };
  },
});

/** The node's deadline, counted from when the source received the message. */
function deadlineOf(message: { readonly arrivalMs: number }, policy: { readonly deadlineMs?: number }): { deadline?: number } {
  return policy.deadlineMs === undefined ? {} : { deadline: message.arrivalMs + policy.deadlineMs };
}

function constantTensor(dtype: 'float32' | 'int32' | 'int64', value: number | number[], spec: TensorSpec | undefined): Tensor {
  const values = Array.isArray(value) ? value : [value];
  const shape = spec !== undefined && spec.shape.length === 0 && values.length === 1 ? [] : [values.length];
  if (dtype === 'int64') return new Tensor('int64', shape, BigInt64Array.from(values, (v) => BigInt(Math.trunc(v))));
  if (dtype === 'int32') return new Tensor('int32', shape, Int32Array.from(values));
  return new Tensor('float32', shape, Float32Array.from(values));
}

/** The file a `model` parameter names: a path relative to the pipeline, or store:<name> through the catalog. */
async function modelFile(model: string, baseDir: string): Promise<string> {
  const name = ModelCatalog.storeName(model);
  return name === undefined ? path.resolve(baseDir, model) : (await ModelCatalog.shared().resolve(name)).file;
}

/**
 * Why a model with inputs `next` cannot take the place of one with inputs `current` (undefined
 * if it can), and the input name the `in` port feeds from then on. Inputs are matched by name;
 * a model with a single input may rename it (another exporter's "input" for "input:0") as long
 * as its type and shape stay.
 */
function compatibility(current: readonly TensorSpec[], next: readonly TensorSpec[], inputName: string): { problem?: string; inputName: string } {
  const same = (a: TensorSpec, b: TensorSpec): boolean => a.dtype === b.dtype && a.shape.length === b.shape.length && a.shape.every((d, i) => d === b.shape[i]);
  const show = (t: TensorSpec): string => `${t.dtype} [${t.shape.join(', ')}]`;
  if (current.length === 1 && next.length === 1) {
    const [c, n] = [current[0] as TensorSpec, next[0] as TensorSpec];
    return same(c, n) ? { inputName: n.name } : { problem: `its input is ${show(n)}, the running one takes ${show(c)}`, inputName };
  }
  for (const c of current) {
    const n = next.find((s) => s.name === c.name);
    if (n === undefined) return { problem: `it has no input '${c.name}' (its inputs: ${next.map((s) => s.name).join(', ')})`, inputName };
    if (!same(c, n)) return { problem: `its input '${c.name}' is ${show(n)}, the running one takes ${show(c)}`, inputName };
  }
  if (next.length !== current.length) return { problem: `it has ${next.length} inputs, the running one ${current.length}`, inputName };
  return { inputName };
}

/** One pool per process, so every infer stage's reservations meet. */
function sharedPool(): Promise<ResourcePool> {
  return ResourcePool.shared();
}

const signatures = new Map<string, Promise<readonly TensorSpec[]>>();
/** A model's input specs, loading it once on a device it can run on; also proves placement. */
function modelInputs(file: string, devices: readonly string[] | undefined): Promise<readonly TensorSpec[]> {
  const key = `${file}|${(devices ?? []).join(',')}`;
  let found = signatures.get(key);
  if (found === undefined) {
    found = (async () => {
      await detectModel(file);
      const service = new InferenceService(file, { pool: await sharedPool(), ...(devices === undefined ? {} : { devices }) });
      await service.start();
      try {
        return service.inputs;
      } finally {
        await service.stop();
      }
    })();
    found.catch(() => signatures.delete(key));
    signatures.set(key, found);
  }
  return found;
}
