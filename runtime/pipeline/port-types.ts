import type { DType } from '../../drivers/tensor/tensor.js';
import type { PixelFormat } from '../../drivers/sensors/types.js';

/**
 * What flows on a port, as far as it is known before anything runs. The validator propagates
 * these from sources through stages to sinks and reports a mismatch (an image of 640×480 into a
 * model wanting 128×128×3) with both ends named. `null` dimensions are unknown until run time.
 */
export type PortType =
  | { readonly kind: 'image'; readonly width: number | null; readonly height: number | null; readonly format: PixelFormat | null }
  | { readonly kind: 'tensor'; readonly dtype: DType | null; readonly shape: readonly (number | null)[] | null }
  | { readonly kind: 'tensors' }
  | { readonly kind: 'audio'; readonly sampleRate: number | null; readonly channels: number | null; readonly frameSize: number | null }
  | { readonly kind: 'pointcloud' }
  | { readonly kind: 'gnss' }
  | { readonly kind: 'can' }
  | { readonly kind: 'detections' }
  | { readonly kind: 'classes' }
  | { readonly kind: 'json' }
  | { readonly kind: 'any' };

export type PortKind = PortType['kind'];

/** Anything: used by sinks that record whatever they are given. */
export const ANY: PortType = { kind: 'any' };

/**
 * Whether a value of type `from` may flow into a port expecting `to`; when not, why (one
 * sentence naming both). Unknown (`null`) fields match anything.
 */
export function compatible(from: PortType, to: PortType): { ok: true } | { ok: false; why: string } {
  if (to.kind === 'any' || from.kind === 'any') return { ok: true };
  // Decoded detections and classes are JSON-shaped; a JSON consumer takes them.
  if (to.kind === 'json' && (from.kind === 'detections' || from.kind === 'classes' || from.kind === 'gnss' || from.kind === 'json')) return { ok: true };
  if (from.kind !== to.kind) return { ok: false, why: `${describe(from)} cannot flow into a port that takes ${describe(to)}` };
  if (from.kind === 'image' && to.kind === 'image') {
    const bad = (['width', 'height', 'format'] as const).filter((k) => from[k] !== null && to[k] !== null && from[k] !== to[k]);
    return bad.length === 0 ? { ok: true } : { ok: false, why: `${describe(from)} cannot flow into a port that takes ${describe(to)} (add an image.resize or image.convert stage)` };
  }
  if (from.kind === 'tensor' && to.kind === 'tensor') {
    if (from.dtype !== null && to.dtype !== null && from.dtype !== to.dtype) return { ok: false, why: `${describe(from)} cannot flow into a port that takes ${describe(to)}` };
    if (from.shape !== null && to.shape !== null) {
      const same = from.shape.length === to.shape.length && from.shape.every((d, i) => d === null || to.shape?.[i] === null || d === to.shape?.[i]);
      if (!same) return { ok: false, why: `${describe(from)} cannot flow into a port that takes ${describe(to)}` };
    }
    return { ok: true };
  }
  if (from.kind === 'audio' && to.kind === 'audio') {
    const bad = (['sampleRate', 'channels', 'frameSize'] as const).filter((k) => from[k] !== null && to[k] !== null && from[k] !== to[k]);
    return bad.length === 0 ? { ok: true } : { ok: false, why: `${describe(from)} cannot flow into a port that takes ${describe(to)}` };
  }
  return { ok: true };
}

/** `image 640×480 rgb24`, `tensor float32[1, 128, 128, 3]`, `audio 16000 Hz × 1, 512 samples`. */
export function describe(t: PortType): string {
  const n = (v: number | null): string => (v === null ? '?' : String(v));
  switch (t.kind) {
    case 'image':
      return `image ${n(t.width)}×${n(t.height)} ${t.format ?? '(any format)'}`;
    case 'tensor':
      return `tensor ${t.dtype ?? '?'}${t.shape === null ? '' : `[${t.shape.map(n).join(', ')}]`}`;
    case 'audio':
      return `audio ${n(t.sampleRate)} Hz × ${n(t.channels)}, ${n(t.frameSize)} samples`;
    default:
      return t.kind;
  }
}
