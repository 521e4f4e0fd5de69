import { NodeKinds } from '../node-kinds.js';
import { inferStage } from './stages/infer.js';

/**
 * Every built-in node kind: the composition root of pipelines, as drivers/builtin.ts is of the
 * HAL. A new sensor, stage or sink is one more entry.
 */
export function builtinNodeKinds(): NodeKinds {
  return new NodeKinds().register(inferStage);
}
