/**
 * The error families every layer shares. Each error carries a stable `code` (documented in
 * docs/errors.md, checked by a test), a message that says what was expected, what was found and
 * what to do next, and optional structured `details` for `--json` output and logs.
 *
 * `instanceof` is answered by a brand on the prototype chain rather than by identity, so an error
 * thrown by one copy of the package is still recognised by another copy (two versions of aios in
 * one node_modules tree is normal in a monorepo).
 */
const BRAND = Symbol.for('aios.error');

export type ErrorDetails = Readonly<Record<string, unknown>>;

export interface AiosErrorOptions {
  readonly cause?: unknown;
  readonly details?: ErrorDetails;
}

export class AiosError extends Error {
  readonly code: string;
  readonly details: ErrorDetails;

  constructor(code: string, message: string, options: AiosErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options.details ?? {};
    this.name = new.target.name;
  }

  /** Plain data for `--json` output: never includes the stack. */
  toJSON(): { code: string; name: string; message: string; details: ErrorDetails } {
    return { code: this.code, name: this.name, message: this.message, details: this.details };
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    if (typeof value !== 'object' || value === null) return false;
    // Subclasses: match on the family name stamped by the constructor, so copies match too.
    const brand = (value as Record<symbol, unknown>)[BRAND];
    if (brand !== true) return false;
    if (this === AiosError) return true;
    for (let p: unknown = Object.getPrototypeOf(value); p !== null && p !== undefined; p = Object.getPrototypeOf(p)) {
      const ctor = (p as { constructor?: { name?: string } }).constructor;
      if (ctor === this || ctor?.name === this.name) return true;
    }
    return false;
  }
}
Object.defineProperty(AiosError.prototype, BRAND, { value: true });

/** Malformed or unsupported tensor data: a bad .npy header, a dtype we do not handle, a size mismatch. */
export class TensorError extends AiosError {}

/** A system root that cannot be read, or a probe that could not make sense of what it found. */
export class ProbeError extends AiosError {}

/**
 * A device that exists but cannot run work now: its runtime library is missing, its driver is not
 * loaded. Carries the reason and the fix the user should apply.
 */
export class DeviceUnavailableError extends AiosError {
  readonly reason: string;
  readonly fix: string;

  constructor(code: string, reason: string, fix: string, options: AiosErrorOptions = {}) {
    super(code, `${reason}. Fix: ${fix}`, options);
    this.reason = reason;
    this.fix = fix;
  }
}

/** No (device, engine) pair can run a model; `details.candidates` lists every refusal. */
export class PlacementError extends AiosError {}

/** A model file that is missing, corrupt, of an unknown format, or fed inputs it does not accept. */
export class ModelError extends AiosError {}

/** A bad command-line argument or option value. */
export class UsageError extends AiosError {}
