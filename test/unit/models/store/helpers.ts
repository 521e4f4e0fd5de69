import { createHash } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import path from 'node:path';
import type { FileHandle, FileSystem } from '../../../../models/atomic-write.js';
import type { SlotContent, SlotWriter } from '../../../../models/store/model-store.js';

export const sha256 = (data: string | Uint8Array): string => createHash('sha256').update(data).digest('hex');

/** Model files for version `v` of a test model: distinct bytes per version, one in a subfolder. */
export function modelFiles(v: string, size = 4096): Record<string, Buffer> {
  const fill = (tag: string, n: number): Buffer => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i += 1) b[i] = (i * 31 + tag.charCodeAt(i % tag.length)) & 0xff;
    return b;
  };
  return {
    'model.onnx': fill(`onnx ${v}`, size),
    'labels.txt': Buffer.from(`person\ncar\n# ${v}\n`),
    'weights/shard-1.bin': fill(`shard ${v}`, size / 2),
  };
}

/** What a well-behaved writer reports for `files`. */
export function contentOf(files: Record<string, Uint8Array>, extra: Partial<SlotContent> = {}): SlotContent {
  return {
    manifestDigest: sha256(JSON.stringify(Object.keys(files))),
    entry: Object.keys(files)[0],
    files: Object.entries(files).map(([p, data]) => ({ path: p, size: data.length, sha256: sha256(data) })),
    ...extra,
  };
}

/** A writer that makes the slot folder, writes `files` and reports them (optionally reporting something else). */
export function writerOf(files: Record<string, Uint8Array>, report: (c: SlotContent) => SlotContent = (c) => c): SlotWriter & { dirs: string[] } {
  const dirs: string[] = [];
  const write = async (dir: string): Promise<SlotContent> => {
    dirs.push(dir);
    await fsp.mkdir(dir);
    for (const [p, data] of Object.entries(files)) {
      await fsp.mkdir(path.dirname(path.join(dir, p)), { recursive: true });
      await fsp.writeFile(path.join(dir, p), data, { flag: 'wx' });
    }
    return report(contentOf(files));
  };
  return Object.assign(write, { dirs });
}

/** One call on the file system, as the recording fs logs it: `open`, `rename`, `handle.sync`, … and its paths. */
export interface FsCall {
  readonly op: string;
  readonly args: readonly unknown[];
  /** For handle calls: the path the handle was opened with. */
  readonly file?: string;
}

/**
 * node:fs/promises with every call logged, and `fail(call)` consulted before each: an error it
 * returns is thrown instead of doing the call.
 */
export function recordingFs(fail: (call: FsCall) => Error | undefined = () => undefined): FileSystem & { log: FsCall[] } {
  const log: FsCall[] = [];
  const run = async <T>(call: FsCall, real: () => Promise<T>): Promise<T> => {
    log.push(call);
    const error = fail(call);
    if (error !== undefined) throw error;
    return real();
  };
  const wrap = (file: string, h: fsp.FileHandle): FileHandle => ({
    writeFile: (data) => run({ op: 'handle.writeFile', args: [], file }, () => h.writeFile(data)),
    read: (buffer, offset, length, position) => run({ op: 'handle.read', args: [], file }, () => h.read(buffer, offset, length, position)),
    sync: () => run({ op: 'handle.sync', args: [], file }, () => h.sync()),
    close: () => run({ op: 'handle.close', args: [], file }, () => h.close()),
  });
  return {
    log,
    open: (p, flags, mode) => run({ op: 'open', args: [p, flags, mode] }, async () => wrap(p, await fsp.open(p, flags, mode))),
    mkdir: (p, o) => run({ op: 'mkdir', args: [p, o] }, () => fsp.mkdir(p, o)),
    readFile: (p, e) => run({ op: 'readFile', args: [p] }, () => fsp.readFile(p, e)),
    readdir: (p) => run({ op: 'readdir', args: [p] }, () => fsp.readdir(p)),
    lstat: (p) => run({ op: 'lstat', args: [p] }, () => fsp.lstat(p)),
    rename: (a, b) => run({ op: 'rename', args: [a, b] }, () => fsp.rename(a, b)),
    link: (a, b) => run({ op: 'link', args: [a, b] }, () => fsp.link(a, b)),
    rm: (p, o) => run({ op: 'rm', args: [p, o] }, () => fsp.rm(p, o)),
    chmod: (p, m) => run({ op: 'chmod', args: [p, m] }, () => fsp.chmod(p, m)),
  };
}

export function errno(code: string, syscall = 'write'): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: simulated, ${syscall}`), { code, syscall });
}

/** Every entry under `dir`, relative, '/'-separated, folders with a trailing '/'. */
export async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const e of (await fsp.readdir(path.join(dir, rel), { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const r = rel === '' ? e.name : `${rel}/${e.name}`;
      if (e.isDirectory()) {
        out.push(`${r}/`);
        await walk(r);
      } else out.push(r);
    }
  };
  await walk('');
  return out;
}
