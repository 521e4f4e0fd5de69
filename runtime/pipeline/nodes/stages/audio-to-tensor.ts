import { Type } from '@sinclair/typebox';
import type { AudioFrame } from '../../../../drivers/sensors/types.js';
import { Tensor } from '../../../../drivers/tensor/tensor.js';
import { defineNode, PortTypeMismatch } from '../../definition.js';
import { describe } from '../../port-types.js';

/**
 * `audio.to_tensor`: an audio frame as the float32 tensor audio models take, `[1, samples]`
 * (interleaved channels stay interleaved; mono is the usual case). The samples are copied, since
 * audio sources reuse their frame buffers.
 */
export const audioToTensor = defineNode({
  use: 'audio.to_tensor',
  role: 'stage',
  description: 'audio frame → float32 tensor [1, samples] (or [samples] with batch: false)',
  params: Type.Object({ batch: Type.Boolean({ default: true, description: 'add a leading batch dimension of 1' }) }, { additionalProperties: false }),
  inputs: ['in'],
  outputs: ['out'],
  types(params, inputs) {
    const t = inputs['in'];
    if (t !== undefined && t.kind !== 'audio' && t.kind !== 'any') throw new PortTypeMismatch('in', `audio.to_tensor takes audio, not ${describe(t)}`);
    const samples = t?.kind === 'audio' && t.frameSize !== null && t.channels !== null ? t.frameSize * t.channels : null;
    return { out: { kind: 'tensor', dtype: 'float32', shape: params.batch ? [1, samples] : [samples] } };
  },
  process(_port, message, ctx) {
    const frame = message.value as AudioFrame;
    const data = frame.samples.slice();
    return ctx.emit('out', new Tensor('float32', ctx.params.batch ? [1, data.length] : [data.length], data), message);
  },
});
