/**
 * Durable writes for state that must survive a power cut: replace a small file atomically
 * (`writeFileAtomic`), and make directory changes durable (`syncDir`). Shared by the trust store
 * (models/trust) and the model store (models/store).
 *
 * Why it works on Linux (ext4, xfs, btrfs, f2fs): `rename(2)` replaces the target name in one
 * step, so any reader, and the file system after a crash, sees either the old file or the new one
 * under that name, never a mix. The data must reach the disk before the rename does, hence the
 * fsync of the temporary file; and the rename itself is only durable once the directory holding
 * the name is fsynced. Without the first fsync a power cut can leave the new name pointing at an
 * empty file (the classic ext4 zero-length-file problem); without the second, the old file can
 * come back after the caller was told the write was done.
 *
 * The file system is injected (`FileSystem`, which `node:fs/promises` satisfies as is) so tests
 * can fail a call (ENOSPC) or record the order of calls.
 */
import { randomBytes } from 'node:crypto';
import * as fsPromises from 'node:fs/promises';
import path from 'node:path';

/** The file-system calls durable stores make. `node:fs/promises` is one (`nodeFileSystem`). */
export interface FileSystem {
  open(path: string, flags: string, mode?: number): Promise<FileHandle>;
  /** Not recursive: the caller makes each level, so it knows which directories to fsync. */
  mkdir(path: string, options: { readonly mode: number }): Promise<unknown>;
  readFile(path: string, encoding: 'utf8'): Promise<string>;
  readdir(path: string): Promise<string[]>;
  lstat(path: string): Promise<FileStats>;
  rename(from: string, to: string): Promise<void>;
  /** Adds a second name for a file; fails with EEXIST rather than replacing (unlike rename). */
  link(existing: string, name: string): Promise<void>;
  rm(path: string, options: { readonly recursive?: boolean; readonly force?: boolean }): Promise<void>;
  chmod(path: string, mode: number): Promise<void>;
}

/** An open file: what `FileSystem.open` gives. */
export interface FileHandle {
  writeFile(data: string | Uint8Array): Promise<void>;
  read(buffer: Uint8Array, offset: number, length: number, position: number | null): Promise<{ bytesRead: number }>;
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** The part of `fs.Stats` the stores read. */
export interface FileStats {
  readonly mode: number;
  readonly size: number;
  readonly mtimeMs: number;
  isFile(): boolean;
  isDirectory(): boolean;
}

export const nodeFileSystem: FileSystem = fsPromises;

/** Options of `writeFileAtomic`. */
export interface AtomicWriteOptions {
  /** Permissions of the new file. Default 0o600. */
  readonly mode?: number;
  readonly fs?: FileSystem;
}

/**
 * Replaces `file` with `data` so that after a crash or power cut at any instant the file holds
 * either its old content or `data`: writes a temporary file beside it (`tempName`), fsyncs it,
 * renames it over `file`, and fsyncs the directory. Resolves once the new content is durable.
 *
 * On failure it rejects with the file system's own error (ENOSPC, EACCES, EIO, ...), for the
 * caller to wrap in its error family. When the failure came before the rename, the temporary
 * file is removed (best effort) and `file` is untouched; only a failed directory fsync (after the
 * rename) leaves the new content in place without the durability promise.
 *
 * Two writers of the same file must be serialised by the caller (a lock): each write is atomic,
 * but the last rename wins.
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array, options: AtomicWriteOptions = {}): Promise<void> {
  const fs = options.fs ?? nodeFileSystem;
  const temp = tempName(file);
  try {
    const handle = await fs.open(temp, 'wx', options.mode ?? 0o600);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(temp, file);
  } catch (error) {
    await fs.rm(temp, { force: true }).catch(() => undefined);
    throw error;
  }
  await syncDir(path.dirname(file), fs);
}

/**
 * Makes the entries of `dir` durable: names created, renamed or removed in it survive a power
 * cut once this resolves. A failure (EIO) rejects: the caller must not report the change as done.
 * On Windows, where a directory cannot be opened for fsync, it does nothing (NTFS journals
 * renames itself).
 */
export async function syncDir(dir: string, fs: FileSystem = nodeFileSystem): Promise<void> {
  if (process.platform === 'win32') return;
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * A fresh temporary name beside `file`: `<file>.<pid>.<12 hex>.tmp`. The pid tells a cleaner
 * whose it is; `isTempOf` recognises these names.
 */
export function tempName(file: string): string {
  return `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
}

/** Whether `name` (a bare file name) is a temporary file `tempName` made for the file named `base`. */
export function isTempOf(name: string, base: string): boolean {
  return name.startsWith(`${base}.`) && /^\.\d+\.[0-9a-f]{12}\.tmp$/u.test(name.slice(base.length));
}
