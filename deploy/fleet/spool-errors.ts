import { AiosError, type AiosErrorOptions } from '../../drivers/errors.js';

/**
 * A failure of the device agent's on-disk spool (deploy/fleet/spool.ts). Thrown for bad options,
 * bad records, use after close and file-system failures; passed to the spool's `warn` for problems
 * it recovers from by itself (a corrupt record, an unreadable head file). Codes: `EAI_SPOOL_*`.
 */
export class SpoolError extends AiosError {}

/**
 * An `EAI_SPOOL_IO` error for a file-system call that failed: names the call, the file and the
 * system's own code, and says what usually fixes it.
 */
export function spoolIoError(action: string, file: string, cause: unknown, options: AiosErrorOptions = {}): SpoolError {
  const code = typeof cause === 'object' && cause !== null && 'code' in cause ? String((cause as { code: unknown }).code) : undefined;
  const reason = cause instanceof Error ? cause.message : String(cause);
  const fix =
    code === 'ENOSPC' || code === 'EDQUOT'
      ? 'free space on that file system or lower maxBytes'
      : code === 'EACCES' || code === 'EPERM' || code === 'EROFS'
        ? 'give the agent write access to the spool directory (it must be writable, mode 0700, owned by the agent user)'
        : 'check the disk and the kernel log (dmesg) for I/O errors';
  return new SpoolError('EAI_SPOOL_IO', `spool: could not ${action} ${file}: ${reason}. Fix: ${fix}`, {
    cause,
    details: { file, action, ...(code === undefined ? {} : { errno: code }), ...options.details },
  });
}
