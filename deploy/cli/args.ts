import { UsageError } from '../../drivers/errors.js';
import { parseDuration } from '../../runtime/pipeline/graph.js';

/** Commander parsers shared by the commands: each refuses a bad value with EAI_CLI_USAGE naming the option. */

/** A repeatable, comma-separable list option (`-d cuda,cpu -d jetson`). */
export function collectList(value: string, previous: string[]): string[] {
  return [...previous, ...value.split(',').map((s) => s.trim()).filter((s) => s !== '')];
}

/** A whole number ≥ 1 for `option`. */
export function positiveInt(option: string): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1) throw new UsageError('EAI_CLI_USAGE', `${option} must be a positive integer, got '${value}'.`);
    return n;
  };
}

/** A duration for `option` in ms: `30s`, `500ms`, `2m`, or a bare number of seconds; at least 1 ms. */
export function duration(option: string): (value: string) => number {
  return (value) => {
    let ms: number;
    try {
      ms = parseDuration(/^[0-9.]+$/u.test(value) ? `${value}s` : value);
    } catch {
      throw new UsageError('EAI_CLI_USAGE', `${option} '${value}' is not a duration: write e.g. 30s, 500ms, 2m.`);
    }
    if (!(ms >= 1)) throw new UsageError('EAI_CLI_USAGE', `${option} must be at least 1 ms, got '${value}'.`);
    return ms;
  };
}
