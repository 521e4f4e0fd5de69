import { AiosError } from '../../drivers/errors.js';

/**
 * Anything wrong with the device model store: a bad model or version name, content a writer left
 * that does not match what it reported, files changed at rest, a damaged state file, a lock held
 * by another process, or a file-system failure (`EAI_STORE_IO`, with `details.errno`). Codes are
 * listed in docs/errors.md; docs/store.md says what each means for the installed models.
 */
export class StoreError extends AiosError {}

/** Wraps a file-system failure: what the store was doing, the errno, and that the old state stands. */
export function ioError(doing: string, cause: unknown, details: Readonly<Record<string, unknown>> = {}): StoreError {
  if (cause instanceof StoreError) return cause;
  const errno = (cause as NodeJS.ErrnoException | undefined)?.code;
  const hint =
    errno === 'ENOSPC' || errno === 'EDQUOT'
      ? 'the disk is full: free space (remove unused models, or run the store GC) and retry'
      : errno === 'EACCES' || errno === 'EPERM'
        ? 'the store directory is not writable by this user: run as the agent user (root), or fix the owner of the store root'
        : errno === 'EROFS'
          ? 'the file system is mounted read-only: remount it read-write'
          : errno === 'EIO'
            ? 'the storage device reported an I/O error: check it (dmesg, smartctl) before trusting anything on it'
            : 'check the store directory and retry';
  return new StoreError('EAI_STORE_IO', `cannot ${doing} (${(cause as Error | undefined)?.message ?? String(cause)}); the models that were active stay active. Fix: ${hint}.`, {
    cause,
    details: { ...details, errno },
  });
}
