import { AiosError } from '../../drivers/errors.js';

/**
 * Anything wrong with the model registry: a version or channel that does not exist, a push that
 * conflicts with what is stored, a blob whose bytes no longer match its name, a channel record
 * that does not verify or is older than one a device already accepted. Codes are listed in
 * docs/errors.md; docs/registry.md says what each means.
 */
export class RegistryError extends AiosError {}

/** Wraps a file-system or SQLite failure: what the registry was doing and that nothing was half-done. */
export function registryIo(doing: string, cause: unknown, details: Readonly<Record<string, unknown>> = {}): RegistryError {
  if (cause instanceof AiosError) return cause as RegistryError;
  const errno = (cause as NodeJS.ErrnoException | undefined)?.code;
  return new RegistryError('EAI_REGISTRY_IO', `cannot ${doing} (${(cause as Error | undefined)?.message ?? String(cause)}); the registry is unchanged. Fix: check that the registry folder is writable and has free space, then retry.`, { cause, details: { ...details, errno } });
}
