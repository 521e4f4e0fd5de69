/**
 * aios — the public API of the on-device runtime.
 *
 * ```ts
 * import { ResourcePool, InferenceService, getDevice } from 'aios';
 * const device = await getDevice(['jetson', 'cuda', 'cpu']);
 * const face = new InferenceService('face.onnx', { devices: [device.id] });
 * await face.start();
 * const out = await face.infer({ 'input:0': frame });
 * await face.stop();
 * ```
 */
export { AiosError, DeviceUnavailableError, ModelError, PlacementError, ProbeError, TensorError, UsageError } from './drivers/errors.js';
export type { DType, DTypeArrays, TensorData } from './drivers/tensor/tensor.js';
export { Tensor, DTYPES, bytesPerElement, floatToHalf, halfToFloat, shapeSize } from './drivers/tensor/tensor.js';
export { decodeNpy, encodeNpy, readNpy, writeNpy } from './drivers/tensor/npy.js';
export type { DeviceInfo, DeviceKind, DeviceProbe, DeviceStatus, Engine, Feeds, LoadedModel, LoadOptions, ModelFormat, ModelSource, Outputs, Support, TensorSpec } from './drivers/hal/types.js';
export { DEVICE_KINDS, MODEL_FORMATS } from './drivers/hal/types.js';
export type { DevicePreference, Placement, Refusal } from './drivers/hal/registry.js';
export { HalRegistry } from './drivers/hal/registry.js';
export { SysRoot } from './drivers/hal/sysroot.js';
export { detectModel } from './drivers/hal/model-format.js';
export { createBuiltinHal } from './drivers/builtin.js';
export type { DeviceUsage, Reservation, ReserveRequest } from './runtime/resource-pool.js';
export { ResourceError, ResourcePool } from './runtime/resource-pool.js';
export type { InferenceServiceOptions, ServiceStats } from './runtime/inference/inference-service.js';
export { InferenceService, ServiceError } from './runtime/inference/inference-service.js';
export { getDevice } from './runtime/get-device.js';
export { VERSION } from './runtime/version.js';
export type { CheckEnv, ConfigProblem, Envelope, NodeContext, NodeDefinition, PipelineServices } from './runtime/pipeline/definition.js';
export { defineNode, PortTypeMismatch } from './runtime/pipeline/definition.js';
export type { PortType } from './runtime/pipeline/port-types.js';
export type { PipelineOptions, PipelineStats } from './runtime/pipeline/pipeline.js';
export { Pipeline } from './runtime/pipeline/pipeline.js';
export type { ConfigIssue } from './runtime/pipeline/config-error.js';
export { ConfigError } from './runtime/pipeline/config-error.js';
export { NodeKinds } from './runtime/pipeline/node-kinds.js';
export { builtinNodeKinds } from './runtime/pipeline/nodes/builtin.js';
