import { mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { isTempOf, writeFileAtomic } from '../atomic-write.js';
import type { PublicKey } from '../keys.js';
import { canonicalize } from './canonical-json.js';
import {
  isExpired,
  rolePolicy,
  parseRoot,
  TrustError,
  verifyRoleSignatures,
  verifyRoot,
  verifyRotation,
  type RoleName,
  type RoleSignature,
  type RoleVerification,
  type Root,
} from './root.js';

/**
 * What a device remembers about trust, in one directory: the trusted root, and the highest
 * version of each kind of signed metadata it has accepted. Everything in it only moves forward:
 * roots by signed successor versions, metadata versions never down (anti-rollback), and a root
 * past its expiry stops verifying anything until its successor arrives (anti-freeze).
 *
 * The directory holds one file, `state.json` (STATE_FILE), replaced atomically on every change:
 * written to a temporary file beside it, fsynced, renamed over, and the directory fsynced, so a
 * crash or power cut leaves either the old state or the new one. Docs: docs/trust.md.
 *
 * Concurrency: calls on one store may overlap; changes are applied one at a time, in call order.
 * Each change first re-reads `state.json`, so a second process (the CLI rotating the root while
 * the agent runs) is seen, but two processes changing the state at the same instant are not
 * locked against each other: one process (the agent) should own the directory.
 */

export const STATE_FILE = 'state.json';
const STATE_FORMAT = 'aios-trust-state/1';
/** Leftover temporary files older than this are from a crashed write, not one in progress. */
const STALE_TEMP_MS = 60_000;

/** Roles that sign metadata the store keeps versions of. */
export type MetadataRole = Exclude<RoleName, 'root'>;

export interface TrustStoreOptions {
  /** The device clock, for expiry. Default: `() => new Date()`. */
  readonly now?: () => Date;
}

export interface AcceptOptions {
  /** Accept a version equal to the highest seen (re-applying the same metadata). Default false. */
  readonly allowEqual?: boolean;
  /**
   * The role that signs this kind of metadata. When the trust root revokes a key of that role,
   * the kind's highest version is forgotten (TUF's fast-forward recovery): a stolen key may have
   * signed a huge version that would otherwise block every legitimate one after it.
   */
  readonly role?: MetadataRole;
}

/** The outcome of `updateRoot`/`updateRoots`. */
export interface RootUpdate {
  readonly from: number;
  readonly to: number;
  /** False when the offered root was the trusted one already. */
  readonly changed: boolean;
  /** The now trusted root is past its expiry: verification keeps failing until its successor comes. */
  readonly expired: boolean;
  /** Metadata kinds whose highest version was forgotten because a key of their role was revoked. */
  readonly reset: readonly string[];
}

interface State {
  readonly format: typeof STATE_FORMAT;
  readonly root: Root;
  readonly versions: Readonly<Record<string, number>>;
  readonly kindRoles: Readonly<Record<string, MetadataRole>>;
}

export class TrustStore {
  readonly dir: string;
  private state: State;
  private readonly now: () => Date;
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(dir: string, state: State, options: TrustStoreOptions) {
    this.dir = dir;
    this.state = state;
    this.now = options.now ?? (() => new Date());
  }

  /**
   * Trust on first use: makes `dir` (if needed) and trusts `rootJson`, the root the installer
   * shipped, if it is signed by a threshold of its own root keys. Any version may be the first.
   * An expired root is taken too (verification will ask for its successor), so a device imaged
   * from an old installer can still be brought up to date. Throws `EAI_TRUST_ALREADY_INITIALISED`
   * if `dir` already holds a state.
   */
  static async init(dir: string, rootJson: string | Uint8Array | Root, options: TrustStoreOptions = {}): Promise<TrustStore> {
    const root = parseRoot(rootJson, 'the initial trust root');
    verifyRoot(root, root.signed, `the initial trust root v${root.signed.version}`);
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
    } catch (cause) {
      throw new TrustError('EAI_TRUST_STATE_WRITE', `cannot make the trust directory ${dir} (${(cause as Error).message}). Fix: choose a writable path on persistent storage.`, { cause, details: { dir } });
    }
    const file = path.join(dir, STATE_FILE);
    if (await exists(file)) {
      throw new TrustError('EAI_TRUST_ALREADY_INITIALISED', `${file} already holds a trust state; a device is initialised once. Fix: move to a newer root with \`aios trust rotate --file N.root.json\`; to start over, delete ${file} (this forgets every version seen, so older metadata would be accepted again).`, { details: { dir } });
    }
    const state: State = { format: STATE_FORMAT, root, versions: {}, kindRoles: {} };
    await writeState(dir, state);
    return new TrustStore(dir, state, options);
  }

  /** Opens the state `init` wrote. Throws `EAI_TRUST_NOT_INITIALISED` or `EAI_TRUST_STATE_CORRUPT`. */
  static async open(dir: string, options: TrustStoreOptions = {}): Promise<TrustStore> {
    const state = await readState(dir);
    await removeStaleTemps(dir);
    return new TrustStore(dir, state, options);
  }

  /** The trusted root. */
  get root(): Root {
    return this.state.root;
  }

  /** The highest accepted version of each metadata kind (a copy). */
  get versions(): Readonly<Record<string, number>> {
    return { ...this.state.versions };
  }

  /** The highest accepted version of `kind`, or undefined if none was accepted (or it was reset). */
  highest(kind: string): number | undefined {
    return Object.hasOwn(this.state.versions, kind) ? this.state.versions[kind] : undefined;
  }

  /** Whether the trusted root is expired at `now` (default: the store's clock). */
  isExpired(now: Date = this.now()): boolean {
    return isExpired(this.state.root.signed, now);
  }

  /** Re-reads `state.json` (another process may have changed it). */
  async reload(): Promise<void> {
    await this.serial(async () => {
      this.state = await this.fresh();
    });
  }

  /**
   * Checks `signatures` over `message` against `role` in the trusted root, and returns which keys
   * signed. Throws `EAI_TRUST_ROOT_EXPIRED` when the root is past its expiry at `now` (before
   * looking at signatures), else as `verifyRoleSignatures`: `EAI_TRUST_SIGNATURE_INVALID`,
   * `EAI_TRUST_UNKNOWN_KEY`, `EAI_TRUST_THRESHOLD`. Signatures by keys outside the role are
   * ignored (listed in `rejected`) as long as enough role keys signed. Synchronous; uses the
   * state as of the last completed change.
   */
  verifyRole(role: RoleName, message: Uint8Array, signatures: readonly RoleSignature[], now: Date = this.now()): RoleVerification {
    this.refuseExpired(now);
    return verifyRoleSignatures(this.state.root.signed, role, message, signatures);
  }

  private refuseExpired(now: Date): void {
    const signed = this.state.root.signed;
    if (isExpired(signed, now)) {
      throw new TrustError(
        'EAI_TRUST_ROOT_EXPIRED',
        `the trusted root v${signed.version} expired at ${signed.expires} (device clock: ${now.toISOString()}), so nothing it lists can be trusted until its successor arrives. Fix: if the clock is wrong, set it; otherwise install the next root(s), signed by this root's keys: \`aios trust rotate --file ${signed.version + 1}.root.json\` (from the fleet controller, or by USB when the device has been offline).`,
        { details: { rootVersion: signed.version, expires: signed.expires, now: now.toISOString() } },
      );
    }
  }

  /**
   * Who may sign `role` metadata now: the trusted root's keys and threshold for it, as bundle and
   * channel verifiers take them. Throws `EAI_TRUST_ROOT_EXPIRED` when the root is past its expiry.
   */
  policy(role: MetadataRole, now: Date = this.now()): { readonly keys: PublicKey[]; readonly threshold: number } {
    this.refuseExpired(now);
    return rolePolicy(this.state.root.signed, role);
  }

  /**
   * Moves to the next trust root (TUF's root rotation). `rootJson` must be version N+1 of the
   * trusted root N and signed by a threshold of root N's root keys and a threshold of its own;
   * keys root N+1 drops count for nothing from then on. Works when root N is expired: that is
   * the recovery path for a device offline past expiry. The same root again is a no-op
   * (`changed: false`); an older one, or another root with the trusted version, is
   * `EAI_TRUST_ROLLBACK`; a gap is `EAI_TRUST_VERSION_SKIP`.
   */
  async updateRoot(rootJson: string | Uint8Array | Root): Promise<RootUpdate> {
    return this.serial(async () => {
      const state = await this.fresh();
      this.state = state;
      const next = parseRoot(rootJson, 'the new trust root');
      const trusted = state.root.signed;
      if (next.signed.version === trusted.version && canonicalize(next.signed) === canonicalize(trusted)) {
        return { from: trusted.version, to: trusted.version, changed: false, expired: isExpired(trusted, this.now()), reset: [] };
      }
      if (next.signed.version === trusted.version) {
        throw new TrustError('EAI_TRUST_ROLLBACK', `the offered trust root v${next.signed.version} differs from the trusted root of the same version; a version is trusted once and never replaced. Fix: apply v${trusted.version + 1}.`, { details: { trusted: trusted.version, offered: next.signed.version } });
      }
      verifyRotation(trusted, next);
      // Fast-forward recovery: a role that lost a key may have been signing with a stolen one.
      const reset: string[] = [];
      const versions = { ...state.versions };
      for (const [kind, role] of Object.entries(state.kindRoles)) {
        const revoked = trusted.roles[role].keyids.some((k) => !next.signed.roles[role].keyids.includes(k));
        if (revoked && Object.hasOwn(versions, kind)) {
          delete versions[kind];
          reset.push(kind);
        }
      }
      const updated: State = { ...state, root: next, versions };
      await writeState(this.dir, updated);
      this.state = updated;
      return { from: trusted.version, to: next.signed.version, changed: true, expired: isExpired(next.signed, this.now()), reset };
    });
  }

  /**
   * Walks a chain of roots (1.root.json, 2.root.json, …, in any order): sorts them by version,
   * skips those not newer than the trusted one, and applies the rest one by one with
   * `updateRoot`, each step saved, so a bad link keeps the progress made before it.
   */
  async updateRoots(roots: Iterable<string | Uint8Array | Root>): Promise<RootUpdate> {
    const parsed = [...roots].map((r, i) => parseRoot(r, `root #${i + 1} of the chain`)).sort((a, b) => a.signed.version - b.signed.version);
    const from = this.state.root.signed.version;
    const reset: string[] = [];
    let last: RootUpdate | undefined;
    for (const root of parsed) {
      if (root.signed.version <= this.state.root.signed.version) continue;
      last = await this.updateRoot(root);
      reset.push(...last.reset);
    }
    const to = this.state.root.signed.version;
    return { from, to, changed: to !== from, expired: last?.expired ?? this.isExpired(), reset: [...new Set(reset)] };
  }

  /**
   * Records that metadata of `kind` (for example `bundle:detector` or `deploy-seq`) at `version`
   * was verified and is being applied. Throws `EAI_TRUST_ROLLBACK` if `version` is below the
   * highest seen, or equal to it without `allowEqual`. Call it after `verifyRole` succeeded and
   * before acting on the metadata. Saved before it resolves.
   */
  async accept(kind: string, version: number, options: AcceptOptions = {}): Promise<void> {
    if (typeof kind !== 'string' || kind.length === 0 || kind.length > 256) {
      throw new TrustError('EAI_TRUST_ACCEPT_INVALID', `a metadata kind is a non-empty string of at most 256 characters, such as 'bundle:detector', got ${JSON.stringify(kind)}.`, { details: { kind } });
    }
    if (!Number.isSafeInteger(version) || version < 0) {
      throw new TrustError('EAI_TRUST_ACCEPT_INVALID', `the version of ${kind} must be an integer ≥ 0, got ${String(version)}.`, { details: { kind, version } });
    }
    if (options.role !== undefined && options.role !== 'models' && options.role !== 'deploy') {
      throw new TrustError('EAI_TRUST_ACCEPT_INVALID', `the role of ${kind} must be 'models' or 'deploy', got ${JSON.stringify(options.role)}.`, { details: { kind, role: options.role } });
    }
    await this.serial(async () => {
      const state = await this.fresh();
      this.state = state;
      const bound = Object.hasOwn(state.kindRoles, kind) ? state.kindRoles[kind] : undefined;
      if (options.role !== undefined && bound !== undefined && bound !== options.role) {
        throw new TrustError('EAI_TRUST_ACCEPT_INVALID', `${kind} is signed by the ${bound} role on this device, not ${options.role}; a kind keeps the role it was first accepted with.`, { details: { kind, role: options.role, bound } });
      }
      const highest = Object.hasOwn(state.versions, kind) ? state.versions[kind] : undefined;
      if (highest !== undefined && (version < highest || (version === highest && options.allowEqual !== true))) {
        throw new TrustError(
          'EAI_TRUST_ROLLBACK',
          `${kind} version ${version} is ${version < highest ? 'older than' : 'the same as'} version ${highest}, which this device already accepted; metadata never goes back. Fix: publish ${kind} with a version above ${highest}${version === highest ? ' (or re-apply it deliberately with allowEqual)' : ''}.`,
          { details: { kind, version, highest } },
        );
      }
      const role = options.role ?? bound;
      if (version === highest && role === bound) return;
      const updated: State = {
        ...state,
        versions: { ...state.versions, [kind]: version },
        kindRoles: role === undefined ? state.kindRoles : { ...state.kindRoles, [kind]: role },
      };
      await writeState(this.dir, updated);
      this.state = updated;
    });
  }

  /** The state on disk, refusing one older than what this process already trusted. */
  private async fresh(): Promise<State> {
    const disk = await readState(this.dir);
    if (disk.root.signed.version < this.state.root.signed.version) {
      throw new TrustError('EAI_TRUST_STATE_CORRUPT', `${path.join(this.dir, STATE_FILE)} holds trust root v${disk.root.signed.version} but this process already trusted v${this.state.root.signed.version}: the file was replaced by an older copy. Fix: restore the newer state, or re-apply the newer roots with \`aios trust rotate\`.`, { details: { dir: this.dir, onDisk: disk.root.signed.version, inMemory: this.state.root.signed.version } });
    }
    return disk;
  }

  private serial<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task, task);
    this.queue = run.catch(() => undefined);
    return run;
  }
}

async function readState(dir: string): Promise<State> {
  const file = path.join(dir, STATE_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new TrustError('EAI_TRUST_NOT_INITIALISED', `${file} does not exist: this device has no trust root yet. Fix: \`aios trust init --file root.json\` with the root.json the installer or the fleet operator provides.`, { cause, details: { dir } });
    }
    throw new TrustError('EAI_TRUST_STATE_CORRUPT', `cannot read ${file} (${(cause as Error).message}). Fix: check the permissions of ${dir}.`, { cause, details: { dir } });
  }
  const corrupt = (what: string, cause?: unknown): TrustError =>
    new TrustError('EAI_TRUST_STATE_CORRUPT', `${file} is damaged: ${what}. Fix: restore it from a backup, or delete it and run \`aios trust init\` again (which forgets every version seen).`, { cause, details: { dir } });
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (cause) {
    throw corrupt(`not JSON (${(cause as Error).message})`, cause);
  }
  const value = raw as Partial<Record<keyof State, unknown>>;
  if (typeof raw !== 'object' || raw === null || value.format !== STATE_FORMAT) throw corrupt(`expected format '${STATE_FORMAT}', got ${JSON.stringify(value?.format)}`);
  let root: Root;
  try {
    root = parseRoot(value.root, 'the trusted root in state.json');
    // Cheap, and catches a file edited by hand: the stored root must still carry its own signatures.
    verifyRoot(root);
  } catch (cause) {
    throw corrupt(`its trusted root does not check out (${(cause as Error).message})`, cause);
  }
  const versions = record(value.versions, (v): v is number => Number.isSafeInteger(v) && (v as number) >= 0);
  const kindRoles = record(value.kindRoles, (v): v is MetadataRole => v === 'models' || v === 'deploy');
  if (versions === undefined) throw corrupt('versions must map each kind to an integer ≥ 0');
  if (kindRoles === undefined) throw corrupt("kindRoles must map each kind to 'models' or 'deploy'");
  return { format: STATE_FORMAT, root, versions, kindRoles };
}

function record<T>(value: unknown, ok: (v: unknown) => v is T): Record<string, T> | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  const out: Record<string, T> = Object.create(null) as Record<string, T>;
  for (const [k, v] of Object.entries(value)) {
    if (!ok(v)) return undefined;
    out[k] = v;
  }
  return { ...out };
}

/** Write to a temporary file, fsync, rename over, fsync the directory: old or new after any crash. */
async function writeState(dir: string, state: State): Promise<void> {
  const file = path.join(dir, STATE_FILE);
  try {
    await writeFileAtomic(file, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
  } catch (cause) {
    throw new TrustError('EAI_TRUST_STATE_WRITE', `cannot save ${file} (${(cause as Error).message}); if the message is about the folder's fsync the new state is in place but may not survive a power cut, otherwise the previous state is kept. Fix: check that ${dir} is writable and the disk is not full, then retry.`, { cause, details: { dir } });
  }
}

async function removeStaleTemps(dir: string): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const cutoff = Date.now() - STALE_TEMP_MS;
  for (const name of names) {
    if (!isTempOf(name, STATE_FILE)) continue;
    const p = path.join(dir, name);
    const info = await stat(p).catch(() => undefined);
    if (info !== undefined && info.mtimeMs < cutoff) await rm(p, { force: true }).catch(() => undefined);
  }
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}
