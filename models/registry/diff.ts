/**
 * The difference between two versions of a model: files added, removed and changed (with sizes
 * and deltas), manifest fields changed (old → new), and for ONNX files present in both versions
 * and changed, which initializers (weight tensors) were added, removed, reshaped or changed, and
 * how many of their data bytes differ. Encrypted files are compared by digest only.
 */
import { open } from 'node:fs/promises';
import type { BlobStore } from './blob-store.js';
import { readInitializers, withFileSource, type OnnxInitializer } from './onnx-initializers.js';
import type { FileInfo, VersionDetail } from './registry.js';

export interface FileChange {
  readonly path: string;
  readonly status: 'added' | 'removed' | 'changed' | 'unchanged';
  readonly oldSize?: number;
  readonly newSize?: number;
  /** newSize - oldSize (0 for unchanged; the size for added, minus it for removed). */
  readonly delta: number;
}

export interface FieldChange {
  /** `version`, `notes`, `metrics.accuracy`, `inputs`, ... */
  readonly field: string;
  readonly old?: unknown;
  readonly new?: unknown;
}

export interface InitializerChange {
  readonly name: string;
  readonly status: 'added' | 'removed' | 'changed' | 'reshaped';
  readonly dataType?: number;
  readonly oldDims?: readonly number[];
  readonly newDims?: readonly number[];
  readonly oldBytes?: number;
  readonly newBytes?: number;
  /** Data bytes that differ, when both are stored in the file with the same length. */
  readonly changedBytes?: number;
}

export interface OnnxDiff {
  readonly path: string;
  readonly oldInitializers: number;
  readonly newInitializers: number;
  readonly unchanged: number;
  readonly changes: readonly InitializerChange[];
  /** Why no initializer comparison was made (encrypted, unreadable). */
  readonly skipped?: string;
}

export interface VersionDiff {
  readonly model: string;
  readonly from: string;
  readonly to: string;
  readonly files: readonly FileChange[];
  readonly metadata: readonly FieldChange[];
  readonly onnx: readonly OnnxDiff[];
}

const COMPARED = ['version', 'parentVersion', 'branch', 'format', 'entry', 'inputs', 'outputs', 'labels', 'targets', 'minRuntimeVersion', 'created', 'expires', 'author', 'notes'] as const;

export async function diffVersions(a: VersionDetail, b: VersionDetail, blobs: BlobStore): Promise<VersionDiff> {
  const before = new Map(a.files.map((f) => [f.path, f]));
  const after = new Map(b.files.map((f) => [f.path, f]));
  const files: FileChange[] = [];
  for (const f of a.files) {
    const n = after.get(f.path);
    if (n === undefined) files.push({ path: f.path, status: 'removed', oldSize: f.size, delta: -f.size });
    else files.push({ path: f.path, status: n.sha256 === f.sha256 ? 'unchanged' : 'changed', oldSize: f.size, newSize: n.size, delta: n.size - f.size });
  }
  for (const f of b.files) if (!before.has(f.path)) files.push({ path: f.path, status: 'added', newSize: f.size, delta: f.size });

  const pa = a.statement.predicate as Readonly<Record<string, unknown>>;
  const pb = b.statement.predicate as Readonly<Record<string, unknown>>;
  const metadata: FieldChange[] = [];
  for (const field of COMPARED) pushChange(metadata, field, pa[field], pb[field]);
  const ma = a.metrics;
  const mb = b.metrics;
  for (const k of [...new Set([...Object.keys(ma), ...Object.keys(mb)])].sort()) pushChange(metadata, `metrics.${k}`, ma[k], mb[k]);

  const onnx: OnnxDiff[] = [];
  for (const change of files) {
    if (change.status !== 'changed' || !change.path.toLowerCase().endsWith('.onnx')) continue;
    onnx.push(await diffOnnx(before.get(change.path) as FileInfo, after.get(change.path) as FileInfo, blobs));
  }
  return { model: a.model, from: a.version, to: b.version, files, metadata, onnx };
}

function pushChange(out: FieldChange[], field: string, before: unknown, after: unknown): void {
  if (JSON.stringify(before) === JSON.stringify(after)) return;
  out.push({ field, ...(before === undefined ? {} : { old: before }), ...(after === undefined ? {} : { new: after }) });
}

/** The initializer diff of one ONNX file present in both versions. */
export async function diffOnnx(a: FileInfo, b: FileInfo, blobs: BlobStore): Promise<OnnxDiff> {
  const base = { path: a.path, oldInitializers: 0, newInitializers: 0, unchanged: 0, changes: [] };
  if (a.encrypted || b.encrypted) return { ...base, skipped: 'encrypted: compared by digest only' };
  let olds: OnnxInitializer[];
  let news: OnnxInitializer[];
  try {
    olds = await withFileSource(blobs.pathOf(a.blob), readInitializers);
    news = await withFileSource(blobs.pathOf(b.blob), readInitializers);
  } catch (error) {
    return { ...base, skipped: error instanceof Error ? error.message : String(error) };
  }
  return { ...compareInitializers(olds, news, a.path), ...(await countChangedBytes(olds, news, blobs.pathOf(a.blob), blobs.pathOf(b.blob))) };
}

/** Compares two initializer lists by name (pure; `changedBytes` is filled by countChangedBytes). */
export function compareInitializers(olds: readonly OnnxInitializer[], news: readonly OnnxInitializer[], file = ''): OnnxDiff {
  const byName = new Map(news.map((t) => [t.name, t]));
  const oldNames = new Set(olds.map((t) => t.name));
  const changes: InitializerChange[] = [];
  let unchanged = 0;
  for (const o of olds) {
    const n = byName.get(o.name);
    if (n === undefined) changes.push({ name: o.name, status: 'removed', dataType: o.dataType, oldDims: o.dims, oldBytes: o.bytes });
    else if (o.dataType !== n.dataType || o.dims.join('x') !== n.dims.join('x')) changes.push({ name: o.name, status: 'reshaped', dataType: n.dataType, oldDims: o.dims, newDims: n.dims, oldBytes: o.bytes, newBytes: n.bytes });
    else if (o.sha256 !== n.sha256) changes.push({ name: o.name, status: 'changed', dataType: n.dataType, oldDims: o.dims, newDims: n.dims, oldBytes: o.bytes, newBytes: n.bytes });
    else unchanged++;
  }
  for (const n of news) if (!oldNames.has(n.name)) changes.push({ name: n.name, status: 'added', dataType: n.dataType, newDims: n.dims, newBytes: n.bytes });
  return { path: file, oldInitializers: olds.length, newInitializers: news.length, unchanged, changes };
}

async function countChangedBytes(olds: readonly OnnxInitializer[], news: readonly OnnxInitializer[], oldFile: string, newFile: string): Promise<{ changes: InitializerChange[] }> {
  const oldBy = new Map(olds.map((t) => [t.name, t]));
  const newBy = new Map(news.map((t) => [t.name, t]));
  const diff = compareInitializers(olds, news);
  const [fa, fb] = await Promise.all([open(oldFile, 'r'), open(newFile, 'r')]);
  try {
    const changes: InitializerChange[] = [];
    for (const c of diff.changes) {
      const o = oldBy.get(c.name);
      const n = newBy.get(c.name);
      const ro = o?.ranges[0];
      const rn = n?.ranges[0];
      if (c.status !== 'changed' || o === undefined || n === undefined || o.ranges.length !== 1 || n.ranges.length !== 1 || ro === undefined || rn === undefined || ro[1] !== rn[1]) {
        changes.push(c);
        continue;
      }
      let differing = 0;
      const chunk = 1024 * 1024;
      const ba = Buffer.allocUnsafe(chunk);
      const bb = Buffer.allocUnsafe(chunk);
      for (let done = 0; done < ro[1]; done += chunk) {
        const len = Math.min(chunk, ro[1] - done);
        await fa.read(ba, 0, len, ro[0] + done);
        await fb.read(bb, 0, len, rn[0] + done);
        for (let i = 0; i < len; i++) if (ba[i] !== bb[i]) differing++;
      }
      changes.push({ ...c, changedBytes: differing });
    }
    return { changes };
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}
