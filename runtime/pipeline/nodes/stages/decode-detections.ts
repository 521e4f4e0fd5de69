import { access, readFile } from 'node:fs/promises';
import path from 'node:path';
import { Type } from '@sinclair/typebox';
import { Tensor } from '../../../../drivers/tensor/tensor.js';
import { PortTypeMismatch, type ConfigProblem } from '../../definition.js';
import { describe, type PortType } from '../../port-types.js';
import { StageError, summarize } from './stage-error.js';
import type { Detection } from '../../payloads.js';

/**
 * What the decoders share: the value a `detections` port carries, non-maximum suppression,
 * reading model outputs out of an `infer` message, and label files.
 */

/** A box as fractions of the image, with what NMS averages along. */
export interface RelativeBox {
  readonly xmin: number;
  readonly ymin: number;
  readonly xmax: number;
  readonly ymax: number;
  readonly score: number;
  readonly keypoints: readonly { readonly x: number; readonly y: number }[];
}

/** Intersection over union of two boxes; 0 when either is empty. */
export function iou(a: RelativeBox, b: RelativeBox): number {
  const w = Math.min(a.xmax, b.xmax) - Math.max(a.xmin, b.xmin);
  const h = Math.min(a.ymax, b.ymax) - Math.max(a.ymin, b.ymin);
  if (w <= 0 || h <= 0) return 0;
  const inter = w * h;
  const union = (a.xmax - a.xmin) * (a.ymax - a.ymin) + (b.xmax - b.xmin) * (b.ymax - b.ymin) - inter;
  return union > 0 ? inter / union : 0;
}

/**
 * Non-maximum suppression, best score first. `plain` keeps the best box of each cluster of boxes
 * overlapping it by more than `threshold` IoU; `weighted` (MediaPipe's choice for BlazeFace)
 * replaces it with the score-weighted mean of the cluster's boxes and keypoints, keeping the best
 * score, which steadies boxes from frame to frame. At most `max` results.
 */
export function nonMaxSuppression(boxes: readonly RelativeBox[], threshold: number, max: number, mode: 'plain' | 'weighted'): RelativeBox[] {
  let remaining = [...boxes].sort((a, b) => b.score - a.score);
  const kept: RelativeBox[] = [];
  while (remaining.length > 0 && kept.length < max) {
    const top = remaining[0] as RelativeBox;
    const cluster: RelativeBox[] = [];
    const rest: RelativeBox[] = [];
    for (const b of remaining) (b === top || iou(top, b) > threshold ? cluster : rest).push(b);
    kept.push(mode === 'weighted' ? weightedMean(cluster, top.score) : top);
    remaining = rest;
  }
  return kept;
}

/** A relative box in pixels of a `width × height` image. */
export function toPixels(box: RelativeBox, width: number, height: number, extra: { classId?: number; label?: string; keypointNames?: readonly string[] } = {}): Detection {
  const keypoints = box.keypoints.map((k, i) => ({ x: k.x * width, y: k.y * height, ...(extra.keypointNames?.[i] === undefined ? {} : { name: extra.keypointNames[i] }) }));
  return {
    x: box.xmin * width,
    y: box.ymin * height,
    width: (box.xmax - box.xmin) * width,
    height: (box.ymax - box.ymin) * height,
    score: box.score,
    ...(extra.classId === undefined ? {} : { classId: extra.classId }),
    ...(extra.label === undefined ? {} : { label: extra.label }),
    ...(keypoints.length === 0 ? {} : { keypoints }),
  };
}

/** The `in` port of a decoder reading `infer` output: a record of tensors (or unknown). */
export function tensorsInput(inputs: Readonly<Record<string, PortType>>, use: string): void {
  const t = inputs['in'];
  if (t !== undefined && t.kind !== 'tensors' && t.kind !== 'any') throw new PortTypeMismatch('in', `${use} takes the outputs of an infer stage (tensors), not ${describe(t)}`);
}

/**
 * The output `name` from a message value that is an `infer` result (a record of tensors).
 * Accepts the name with or without TensorFlow's `:0` suffix (TF.js reports `Identity`, ONNX
 * exports `Identity:0`). A missing output is a StageError listing the ones present.
 */
export function outputTensor(value: unknown, name: string, use: string): Tensor {
  if (typeof value !== 'object' || value === null || value instanceof Tensor) throw new StageError('EAI_STAGE_INPUT', `${use} takes a record of model outputs by name (an infer stage's 'out'), got ${summarize(value)}.`);
  const record = value as Record<string, unknown>;
  const alt = name.endsWith(':0') ? name.slice(0, -2) : `${name}:0`;
  const found = record[name] ?? record[alt];
  if (found instanceof Tensor) return found;
  throw new StageError('EAI_STAGE_TENSOR_MISSING', `${use}: the model has no output '${name}'; its outputs are ${Object.keys(record).join(', ') || '(none)'}. Set the decoder's output-name params to these.`);
}

/** The `labels` param of decoders: a labels file (relative to the pipeline file) or the list itself. */
export const LabelsParam = Type.Union([Type.String(), Type.Array(Type.String())], { description: "class names: a file (one per line, or 'id name' per line as coco_labels.txt) or a list" });

/**
 * Class names by id. A file is read as `id name` lines when every non-empty line starts with an
 * integer id (TFLite / Coral label files, which skip unused ids), otherwise as one name per line
 * with ids counted from 0; a list counts from 0 too.
 */
export async function loadLabels(labels: string | readonly string[] | undefined, baseDir: string): Promise<ReadonlyMap<number, string>> {
  if (labels === undefined) return new Map();
  if (typeof labels !== 'string') return new Map(labels.map((l, i) => [i, l]));
  const file = path.resolve(baseDir, labels);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new StageError('EAI_STAGE_LABELS', `Cannot read the labels file ${file}: ${(error as Error).message}. Check the path (relative to the pipeline file).`, { cause: error });
  }
  const lines = text.split(/\r?\n/u).map((l) => l.trim());
  const numbered = lines.filter((l) => l !== '').every((l) => /^\d+\s+\S/u.test(l));
  const map = new Map<number, string>();
  lines.forEach((line, i) => {
    if (numbered) {
      const m = /^(\d+)\s+(.+)$/u.exec(line);
      if (m !== null) map.set(Number(m[1]), (m[2] as string).trim());
    } else if (line !== '' || i < lines.length - 1) {
      map.set(i, line);
    }
  });
  return map;
}

/** Validation of a `labels` param: a file must exist (it is read when the stage starts). */
export async function labelsProblems(labels: string | readonly string[] | undefined, baseDir: string): Promise<ConfigProblem[]> {
  if (typeof labels !== 'string') return [];
  const file = path.resolve(baseDir, labels);
  try {
    await access(file);
    return [];
  } catch {
    return [{ path: ['params', 'labels'], message: `labels file ${file} does not exist (paths are relative to the pipeline file)` }];
  }
}

function weightedMean(cluster: readonly RelativeBox[], score: number): RelativeBox {
  let total = 0;
  let xmin = 0;
  let ymin = 0;
  let xmax = 0;
  let ymax = 0;
  const first = cluster[0] as RelativeBox;
  const kx = new Float64Array(first.keypoints.length);
  const ky = new Float64Array(first.keypoints.length);
  for (const b of cluster) {
    total += b.score;
    xmin += b.xmin * b.score;
    ymin += b.ymin * b.score;
    xmax += b.xmax * b.score;
    ymax += b.ymax * b.score;
    b.keypoints.forEach((k, i) => {
      kx[i] = (kx[i] as number) + k.x * b.score;
      ky[i] = (ky[i] as number) + k.y * b.score;
    });
  }
  return { xmin: xmin / total, ymin: ymin / total, xmax: xmax / total, ymax: ymax / total, score, keypoints: first.keypoints.map((_, i) => ({ x: (kx[i] as number) / total, y: (ky[i] as number) / total })) };
}
