import { mkdir, open, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { IWritable } from '@mcap/core';
import { RecordingError } from './recording-error.js';

/**
 * MCAP's `IWritable` over a file, written front to back. Each `write` has handed all of its bytes
 * to the kernel when its promise resolves, so once a writer has written a complete chunk that
 * chunk survives the process being killed (SIGKILL, OOM killer, a crash): the page cache belongs
 * to the kernel, not to us. Surviving power loss needs `sync()` as well, which the recorder calls
 * on its own schedule because fdatasync is slow on SD cards and eMMC.
 *
 * One owner, one write at a time: callers await each `write` before the next (McapWriter and
 * McapFileWriter both do). `close` is idempotent.
 */
export class FileWritable implements IWritable {
  private offset = 0n;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
  ) {}

  /**
   * Creates the file (and its folder). Refuses to replace an existing file unless `overwrite`,
   * because a recording is data nobody can record again.
   *
   * @throws RecordingError `EAI_RECORDING_EXISTS` when the file is there and `overwrite` is not
   *   set; `EAI_RECORDING_OPEN` when the folder or file cannot be created (permissions, a file
   *   where a folder should be, read-only file system).
   */
  static async create(file: string, options: { readonly overwrite?: boolean } = {}): Promise<FileWritable> {
    let folderMade = false;
    try {
      await mkdir(path.dirname(file), { recursive: true });
      folderMade = true;
      return new FileWritable(file, await open(file, options.overwrite === true ? 'w' : 'wx'));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // mkdir also says EEXIST, when a file stands where a folder should: that is not this case.
      if (code === 'EEXIST' && folderMade) {
        throw new RecordingError('EAI_RECORDING_EXISTS', `Will not overwrite the existing recording ${file}: put {time} or {index} in the path, move the file away, or set overwrite.`, { cause: err, details: { path: file } });
      }
      throw new RecordingError('EAI_RECORDING_OPEN', `Cannot create the recording ${file}: ${(err as Error).message}. Check that the folder is writable and the disk is mounted read-write.`, { cause: err, details: { path: file, errno: code } });
    }
  }

  /** Appends all of `buffer` (a short write is continued, not reported). */
  async write(buffer: Uint8Array): Promise<void> {
    if (this.closed) throw new RecordingError('EAI_RECORDING_CLOSED', `The recording ${this.path} is already closed.`, { details: { path: this.path } });
    let done = 0;
    try {
      while (done < buffer.byteLength) {
        const { bytesWritten } = await this.handle.write(buffer, done, buffer.byteLength - done, null);
        done += bytesWritten;
      }
    } catch (err) {
      throw new RecordingError('EAI_RECORDING_WRITE', `Writing the recording ${this.path} failed after ${this.offset + BigInt(done)} bytes: ${(err as Error).message}. Free disk space or check the device; the file is readable up to its last complete chunk.`, { cause: err, details: { path: this.path, errno: (err as NodeJS.ErrnoException).code } });
    } finally {
      this.offset += BigInt(done);
    }
  }

  /** Bytes written so far: where the next write lands. */
  position(): bigint {
    return this.offset;
  }

  /** Flushes the file's data to the device (fdatasync), for power-loss safety. */
  async sync(): Promise<void> {
    if (!this.closed) await this.handle.datasync();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}
