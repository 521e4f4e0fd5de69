import { AiosError } from '../../../../drivers/errors.js';

/**
 * A message a built-in stage cannot use at run time: a value that is not what its port was
 * validated for, a model output the decoder was told to read but the message lacks, a labels file
 * that cannot be read. The executor counts the message as an error and the stage goes on.
 */
export class StageError extends AiosError {}

/** A short description of an unexpected value, for error messages. */
export function summarize(value: unknown): string {
  if (value === null || value === undefined) return String(value);
  if (typeof value !== 'object') return `${typeof value} ${JSON.stringify(value)?.slice(0, 40) ?? ''}`;
  const name = (value as object).constructor?.name ?? 'object';
  return `${name === 'Object' ? 'an object' : `a ${name}`} with keys ${Object.keys(value).slice(0, 6).join(', ') || '(none)'}`;
}
