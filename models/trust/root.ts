import { createHash } from 'node:crypto';
import { AiosError } from '../../drivers/errors.js';
import { publicKeyFromRaw, rawPublicKey, signBytes, verifyBytes, type PublicKey, type SigningKey } from '../keys.js';
import { canonicalBytes } from './canonical-json.js';

/**
 * The trust root (`root.json`): which Ed25519 keys may sign what, and how many of them must.
 * Modelled on TUF's root role (theupdateframework.github.io/specification, "root.json"), with
 * aios' roles in place of TUF's targets/snapshot/timestamp:
 *
 * - `root`   signs trust roots: the next version, and this one;
 * - `models` signs model bundles;
 * - `deploy` signs fleet commands.
 *
 * Signatures are Ed25519 over the RFC 8785 canonical JSON of `signed` (see canonical-json.ts),
 * written as 128 lowercase hex digits; a key id is the hex SHA-256 of the raw public key
 * (models/keys.ts). This file holds the format, its validation, authoring and signature checks;
 * device state (rotation, rollback, expiry) is trust-store.ts. Docs: docs/trust.md.
 */

/** A trust root that cannot be used: malformed, invalid, not signed as required, out of order or expired. */
export class TrustError extends AiosError {}

export const ROLE_NAMES = ['root', 'models', 'deploy'] as const;
export type RoleName = (typeof ROLE_NAMES)[number];

/** The `spec_version` aios writes. Roots of another major version are refused. */
export const ROOT_SPEC_VERSION = '1.0';

export interface RootKey {
  readonly keytype: 'ed25519';
  readonly scheme: 'ed25519';
  /** `public`: the raw 32-byte public key, 64 lowercase hex digits. */
  readonly keyval: { readonly public: string };
}

export interface RoleKeys {
  readonly keyids: readonly string[];
  /** How many distinct keys of `keyids` must sign; 1 ≤ threshold ≤ keyids.length. */
  readonly threshold: number;
}

export interface RootSigned {
  readonly _type: 'root';
  readonly spec_version: string;
  readonly version: number;
  /** RFC 3339; `createRoot` writes `YYYY-MM-DDTHH:MM:SSZ`. */
  readonly expires: string;
  readonly keys: Readonly<Record<string, RootKey>>;
  readonly roles: Readonly<Record<RoleName, RoleKeys>>;
}

/** `sig`: the Ed25519 signature over `canonicalBytes(signed)`, 128 lowercase hex digits. */
export interface RootSignature {
  readonly keyid: string;
  readonly sig: string;
}

/** A trust root as `root.json` holds it. Values `parseRoot` returns are deeply frozen. */
export interface Root {
  readonly signed: RootSigned;
  readonly signatures: readonly RootSignature[];
}

/**
 * A signature handed to a verifier: raw bytes, or a string of 128 hex digits (as root.json writes
 * them) or 86/88 base64 or base64url characters (as DSSE envelopes write them).
 */
export interface RoleSignature {
  readonly keyid: string;
  readonly sig: Uint8Array | string;
}

/**
 * Why a signature did not count: its key is not in the root (`unknown-key`, which is also what a
 * revoked key is), is in the root but not in this role (`not-in-role`), the signature does not
 * verify (`bad-signature`) or cannot be decoded (`malformed`), or the key already counted (`duplicate`).
 */
export type SignatureRejection = 'unknown-key' | 'not-in-role' | 'bad-signature' | 'malformed' | 'duplicate';

export interface RoleVerification {
  readonly role: RoleName;
  readonly rootVersion: number;
  readonly threshold: number;
  /** The distinct keys of the role whose signatures verified, in the order they came. */
  readonly keyids: readonly string[];
  readonly rejected: readonly { readonly keyid: string; readonly reason: SignatureRejection }[];
}

const HEX64 = /^[0-9a-f]{64}$/u;
const HEX128 = /^[0-9a-f]{128}$/u;

// ---------------------------------------------------------------------------------------------
// Parsing and validation

/**
 * Hex SHA-256 of the root's canonical signed part: the same for every copy of one root version
 * however its file is formatted. What a device measures as its `trust-root` and a verifier allows.
 */
export function rootDigest(root: Root): string {
  return createHash('sha256').update(canonicalBytes(root.signed)).digest('hex');
}

/**
 * Reads and validates a trust root: JSON text (string or UTF-8 bytes) or an already parsed value.
 * Checks the structure only, and reports every problem at once (`EAI_TRUST_ROOT_INVALID`);
 * signatures are checked by `verifyRoot`. Unknown fields are refused: they would be signed but
 * ignored, and a typo (`treshold`) must not pass silently.
 */
export function parseRoot(input: unknown, source = 'root.json'): Root {
  let value: unknown = input;
  if (typeof input === 'string' || input instanceof Uint8Array) {
    try {
      const text = typeof input === 'string' ? input : new TextDecoder('utf-8', { fatal: true }).decode(input);
      value = JSON.parse(text);
    } catch (cause) {
      throw new TrustError('EAI_TRUST_ROOT_INVALID', `${source} is not UTF-8 JSON (${cause instanceof Error ? cause.message : String(cause)}); expected a root.json written by \`aios trust\` or \`signRoot\`.`, { cause, details: { source } });
    }
  }
  const issues: string[] = [];
  const root = readRoot(value, issues);
  if (root === undefined || issues.length > 0) {
    throw new TrustError('EAI_TRUST_ROOT_INVALID', `${source} is not a valid trust root: ${issues.join('; ')}. Fix these fields (docs/trust.md shows the format) and sign it again.`, { details: { source, issues } });
  }
  return deepFreeze(root);
}

function readRoot(value: unknown, issues: string[]): Root | undefined {
  if (!fields(value, '(top level)', ['signed', 'signatures'], issues)) return undefined;
  const signed = readSigned(value.signed, issues);
  const signatures: RootSignature[] = [];
  if (!Array.isArray(value.signatures)) issues.push('signatures: expected an array');
  else {
    value.signatures.forEach((s: unknown, i: number) => {
      const at = `signatures[${i}]`;
      if (!fields(s, at, ['keyid', 'sig'], issues)) return;
      if (typeof s.keyid !== 'string' || !HEX64.test(s.keyid)) issues.push(`${at}.keyid: expected 64 lowercase hex digits`);
      else if (typeof s.sig !== 'string' || !HEX128.test(s.sig)) issues.push(`${at}.sig: expected an Ed25519 signature as 128 lowercase hex digits`);
      else signatures.push({ keyid: s.keyid, sig: s.sig });
    });
  }
  return signed === undefined ? undefined : { signed, signatures };
}

function readSigned(value: unknown, issues: string[]): RootSigned | undefined {
  if (!fields(value, 'signed', ['_type', 'spec_version', 'version', 'expires', 'keys', 'roles'], issues)) return undefined;
  const start = issues.length;
  if (value._type !== 'root') issues.push(`signed._type: expected 'root', got ${JSON.stringify(value._type)}`);
  if (typeof value.spec_version !== 'string' || !/^1\.\d+(\.\d+)?$/u.test(value.spec_version)) {
    issues.push(`signed.spec_version: expected '1.x' (this aios reads format 1), got ${JSON.stringify(value.spec_version)}`);
  }
  if (!Number.isSafeInteger(value.version) || (value.version as number) < 1) issues.push(`signed.version: expected an integer ≥ 1, got ${JSON.stringify(value.version)}`);
  if (typeof value.expires !== 'string' || rfc3339(value.expires) === undefined) {
    issues.push(`signed.expires: expected an RFC 3339 time such as '2030-01-01T00:00:00Z', got ${JSON.stringify(value.expires)}`);
  }
  const keys: Record<string, RootKey> = {};
  if (!isRecord(value.keys)) issues.push('signed.keys: expected an object of key id → key');
  else {
    for (const [id, key] of Object.entries(value.keys)) {
      const at = `signed.keys.${id.slice(0, 64)}`;
      if (!HEX64.test(id)) {
        issues.push(`${at}: a key id is 64 lowercase hex digits`);
        continue;
      }
      if (!fields(key, at, ['keytype', 'scheme', 'keyval'], issues)) continue;
      if (key.keytype !== 'ed25519' || key.scheme !== 'ed25519') {
        issues.push(`${at}: only keytype 'ed25519' with scheme 'ed25519' is supported, got ${JSON.stringify(key.keytype)}/${JSON.stringify(key.scheme)}`);
        continue;
      }
      if (!fields(key.keyval, `${at}.keyval`, ['public'], issues)) continue;
      const pub = key.keyval.public;
      if (typeof pub !== 'string' || !HEX64.test(pub)) {
        issues.push(`${at}.keyval.public: expected the raw Ed25519 public key as 64 lowercase hex digits`);
        continue;
      }
      let actual: string;
      try {
        actual = publicKeyFromRaw(pub).keyid;
      } catch (cause) {
        issues.push(`${at}.keyval.public: not a usable Ed25519 key (${cause instanceof Error ? cause.message : String(cause)})`);
        continue;
      }
      // The id must be the key's own hash: otherwise one key could sit under two ids and count twice.
      if (actual !== id) issues.push(`${at}: the key id is not the SHA-256 of its public key (that is ${actual})`);
      else keys[id] = { keytype: 'ed25519', scheme: 'ed25519', keyval: { public: pub } };
    }
  }
  const roles: Partial<Record<RoleName, RoleKeys>> = {};
  if (!isRecord(value.roles)) issues.push('signed.roles: expected an object with the roles root, models and deploy');
  else {
    const extra = Object.keys(value.roles).filter((k) => !(ROLE_NAMES as readonly string[]).includes(k));
    if (extra.length > 0) issues.push(`signed.roles: unknown role(s) ${extra.map((k) => `'${k}'`).join(', ')} (aios roles are ${ROLE_NAMES.join(', ')})`);
    for (const name of ROLE_NAMES) {
      const at = `signed.roles.${name}`;
      const role = Object.hasOwn(value.roles, name) ? value.roles[name] : undefined;
      if (role === undefined) {
        issues.push(`${at}: missing; a root lists the keys of every role (${ROLE_NAMES.join(', ')})`);
        continue;
      }
      if (!fields(role, at, ['keyids', 'threshold'], issues)) continue;
      if (!Array.isArray(role.keyids) || role.keyids.length === 0) {
        issues.push(`${at}.keyids: expected a non-empty array of key ids`);
        continue;
      }
      const keyids: string[] = [];
      for (const id of role.keyids as unknown[]) {
        if (typeof id !== 'string' || !Object.hasOwn(keys, id)) issues.push(`${at}.keyids: ${JSON.stringify(id)} is not a key listed in signed.keys`);
        else if (keyids.includes(id)) issues.push(`${at}.keyids: ${id} is listed twice`);
        else keyids.push(id);
      }
      const t = role.threshold;
      if (!Number.isSafeInteger(t) || (t as number) < 1 || (t as number) > role.keyids.length) {
        issues.push(`${at}.threshold: expected an integer from 1 to the number of keyids (${role.keyids.length}), got ${JSON.stringify(t)}`);
      } else {
        roles[name] = { keyids, threshold: t as number };
      }
    }
  }
  if (issues.length > start) return undefined;
  return {
    _type: 'root',
    spec_version: value.spec_version as string,
    version: value.version as number,
    expires: value.expires as string,
    keys,
    roles: roles as Record<RoleName, RoleKeys>,
  };
}

/**
 * Whether `value` is a plain object; adds an issue naming any field beyond `allowed`. Missing
 * fields are reported by the checks of each field ("expected …, got undefined").
 */
function fields(value: unknown, at: string, allowed: readonly string[], issues: string[]): value is Record<string, unknown> {
  if (!isRecord(value)) {
    issues.push(`${at}: expected an object`);
    return false;
  }
  const extra = Object.keys(value).filter((k) => !allowed.includes(k));
  if (extra.length > 0) issues.push(`${at}: unknown field${extra.length > 1 ? 's' : ''} ${extra.map((k) => `'${k}'`).join(', ')} (expected ${allowed.join(', ')})`);
  return true;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Milliseconds since the epoch of an RFC 3339 date-time, or undefined when it is not one. Checked
 * field by field: `Date.parse` would accept '2030-02-30' and roll it over to March.
 */
export function rfc3339(text: string): number | undefined {
  const m = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(?:[Zz]|([+-])(\d{2}):(\d{2}))$/u.exec(text);
  if (m === null) return undefined;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  const days = new Date(Date.UTC(year, month, 0)).getUTCDate();
  if (month < 1 || month > 12 || day < 1 || day > days || hour > 23 || minute > 59 || second > 59) return undefined;
  const offHours = m[9] === undefined ? 0 : Number(m[9]);
  const offMinutes = m[10] === undefined ? 0 : Number(m[10]);
  if (offHours > 23 || offMinutes > 59) return undefined;
  const offset = (m[8] === '-' ? -1 : 1) * (offHours * 60 + offMinutes) * 60_000;
  const fraction = m[7] === undefined ? 0 : Math.floor(Number(`0${m[7]}`) * 1000);
  return Date.UTC(year, month - 1, day, hour, minute, second, fraction) - offset;
}

/** When the root expires. */
export function expiresAt(signed: RootSigned): Date {
  return new Date(rfc3339(signed.expires) ?? Number.NaN);
}

/** Expired at `now` when `now` ≥ `expires`, as TUF counts it. */
export function isExpired(signed: RootSigned, now: Date): boolean {
  return !(now.getTime() < expiresAt(signed).getTime());
}

/** The bytes every root signature covers: the RFC 8785 canonical JSON of `signed`, UTF-8. */
export function rootSigningBytes(signed: RootSigned): Buffer {
  return canonicalBytes(signed);
}

/** root.json text as aios writes it: two-space indented, newline at the end (signatures do not depend on it). */
export function serializeRoot(root: Root): string {
  return `${JSON.stringify(root, null, 2)}\n`;
}

// ---------------------------------------------------------------------------------------------
// Signature checks

/**
 * Counts the signatures over `message` made by distinct keys of `role` in `root`. Never throws:
 * each signature that does not count is listed with its reason. A key counts once however many
 * times it signs (python-tuf GHSA-r7vq-6425-j94w was counting duplicates).
 */
export function checkRoleSignatures(root: RootSigned, role: RoleName, message: Uint8Array, signatures: readonly RoleSignature[]): RoleVerification {
  const spec = root.roles[role];
  const keyids: string[] = [];
  const rejected: { keyid: string; reason: SignatureRejection }[] = [];
  for (const { keyid, sig } of signatures) {
    const reject = (reason: SignatureRejection): void => void rejected.push({ keyid, reason });
    if (keyids.includes(keyid)) reject('duplicate');
    else if (typeof keyid !== 'string' || !Object.hasOwn(root.keys, keyid)) reject('unknown-key');
    else if (!spec.keyids.includes(keyid)) reject('not-in-role');
    else {
      const bytes = signatureBytes(sig);
      const key = root.keys[keyid] as RootKey;
      if (bytes === undefined) reject('malformed');
      else if (!verifyBytes(publicKeyFromRaw(key.keyval.public), message, bytes)) reject('bad-signature');
      else keyids.push(keyid);
    }
  }
  return { role, rootVersion: root.version, threshold: spec.threshold, keyids, rejected };
}

/**
 * `checkRoleSignatures`, throwing when fewer than the role's threshold of keys signed. The code
 * says what to do first: `EAI_TRUST_SIGNATURE_INVALID` when a signature by a role key does not
 * verify (the bytes changed), `EAI_TRUST_UNKNOWN_KEY` when keys the root does not list for the
 * role signed (revoked, or from a newer root), `EAI_TRUST_THRESHOLD` otherwise (too few signed).
 * `what` names the signed thing in the message.
 */
export function verifyRoleSignatures(root: RootSigned, role: RoleName, message: Uint8Array, signatures: readonly RoleSignature[], what = `the ${role} metadata`): RoleVerification {
  const result = checkRoleSignatures(root, role, message, signatures);
  if (result.keyids.length >= result.threshold) return result;
  const reasons = new Set(result.rejected.map((r) => r.reason));
  const [code, fix] =
    reasons.has('bad-signature') || reasons.has('malformed')
      ? ['EAI_TRUST_SIGNATURE_INVALID', 'a signature that does not verify means the signed bytes were changed after signing (tampering or corruption) or were never what the key signed: fetch the file again from its source, or sign it again']
      : reasons.has('unknown-key') || reasons.has('not-in-role')
        ? ['EAI_TRUST_UNKNOWN_KEY', role === 'root'
          ? `a root must be signed by the root keys of the trusted root v${root.version} (and, for a rotation, by its own): sign it with those keys`
          : `the signing key was revoked, or belongs to a newer trust root: apply the newer root first (\`aios trust rotate --file N.root.json\`), or sign with a key of the ${role} role`]
        : ['EAI_TRUST_THRESHOLD', `collect signatures from ${result.threshold - result.keyids.length} more of the ${role} role's keys`];
  const notCounted = result.rejected.map((r) => `${String(r.keyid).slice(0, 12)}… ${r.reason}`).join(', ');
  throw new TrustError(
    code,
    `${what} is not trusted: it needs signatures from ${result.threshold} distinct ${role} key(s) of trust root v${root.version} and has ${result.keyids.length}${notCounted === '' ? '' : ` (not counted: ${notCounted})`}. Fix: ${fix}.`,
    { details: { role, rootVersion: root.version, threshold: result.threshold, keyids: result.keyids, rejected: result.rejected, roleKeyids: root.roles[role].keyids } },
  );
}

/** Checks `root` is signed by a threshold of `trusted`'s root keys (itself by default: the self-signature). */
export function verifyRoot(root: Root, trusted: RootSigned = root.signed, what = `trust root v${root.signed.version}`): RoleVerification {
  return verifyRoleSignatures(trusted, 'root', rootSigningBytes(root.signed), root.signatures, what);
}

/**
 * Checks that `next` may replace `trusted` (TUF client workflow, "update the root role"): it is
 * version N+1 exactly, and signed by a threshold of the trusted root's root keys AND a threshold
 * of its own. Expiry is not checked here, on purpose: an expired root can still hand trust on to
 * its successor, which is how a device offline past expiry recovers (docs/trust.md).
 */
export function verifyRotation(trusted: RootSigned, next: Root): { readonly byTrusted: RoleVerification; readonly bySelf: RoleVerification } {
  const n = next.signed.version;
  if (n <= trusted.version) {
    throw new TrustError('EAI_TRUST_ROLLBACK', `trust root v${n} is not newer than the trusted root v${trusted.version}; roots never go back. Fix: apply v${trusted.version + 1} or later.`, { details: { trusted: trusted.version, offered: n } });
  }
  if (n !== trusted.version + 1) {
    throw new TrustError('EAI_TRUST_VERSION_SKIP', `trust root v${n} cannot follow the trusted root v${trusted.version} directly: each root is checked against the one before it. Fix: apply ${Array.from({ length: Math.min(n - trusted.version - 1, 5) }, (_, i) => `${trusted.version + 1 + i}.root.json`).join(', ')}${n - trusted.version - 1 > 5 ? ', …' : ''} first, in order.`, { details: { trusted: trusted.version, offered: n } });
  }
  const byTrusted = verifyRoot(next, trusted, `trust root v${n} (checked against the trusted root v${trusted.version})`);
  const bySelf = verifyRoot(next, next.signed, `trust root v${n} (checked against its own root keys)`);
  return { byTrusted, bySelf };
}

function signatureBytes(sig: Uint8Array | string): Uint8Array | undefined {
  if (sig instanceof Uint8Array) return sig;
  if (typeof sig !== 'string') return undefined;
  if (HEX128.test(sig)) return Buffer.from(sig, 'hex');
  if (/^[A-Za-z0-9+/]{86}==$/u.test(sig)) return Buffer.from(sig, 'base64');
  if (/^[A-Za-z0-9_-]{86}$/u.test(sig)) return Buffer.from(sig, 'base64url');
  return undefined;
}

/**
 * The keys and threshold of `role` in a root, as the bundle and channel verifiers take them
 * (`SignaturePolicy`). Checks nothing about the root itself: use `TrustStore.policy` on a
 * device, which refuses an expired root first.
 */
export function rolePolicy(signed: RootSigned, role: RoleName): { readonly keys: PublicKey[]; readonly threshold: number } {
  const spec = signed.roles[role];
  return { keys: spec.keyids.map((id) => publicKeyFromRaw((signed.keys[id] as RootKey).keyval.public)), threshold: spec.threshold };
}

// ---------------------------------------------------------------------------------------------
// Authoring. Each function returns a new root; any change to `signed` drops the signatures.

export interface RoleSpec {
  readonly keys: readonly PublicKey[];
  readonly threshold: number;
}

export interface CreateRootOptions {
  readonly roles: Readonly<Record<RoleName, RoleSpec>>;
  readonly expires: Date | string;
  /** Default 1. A fleet's first root may start at any version. */
  readonly version?: number;
}

/** An unsigned root; sign it with `signRoot`. Throws `EAI_TRUST_ROOT_INVALID` listing every problem. */
export function createRoot(options: CreateRootOptions): Root {
  const keys: Record<string, RootKey> = {};
  const roles: Record<string, { keyids: string[]; threshold: number }> = {};
  for (const name of ROLE_NAMES) {
    const spec = options.roles[name];
    for (const key of spec?.keys ?? []) keys[key.keyid] = rootKey(key);
    roles[name] = { keyids: [...new Set((spec?.keys ?? []).map((k) => k.keyid))], threshold: spec?.threshold ?? 0 };
  }
  return parseRoot({ signed: { _type: 'root', spec_version: ROOT_SPEC_VERSION, version: options.version ?? 1, expires: formatExpires(options.expires), keys, roles }, signatures: [] }, 'the new trust root');
}

/**
 * Adds each key's signature over `root.signed`, replacing an earlier signature by the same key
 * and keeping the others (several holders can sign in turn). Any key may sign: a rotation is
 * signed by the previous root's keys too, which may no longer be listed.
 */
export function signRoot(root: Root, keys: readonly SigningKey[]): Root {
  const message = rootSigningBytes(root.signed);
  const fresh = keys.map((k) => ({ keyid: k.keyid, sig: signBytes(k, message).toString('hex') }));
  const ids = new Set(fresh.map((s) => s.keyid));
  const signatures = [...root.signatures.filter((s) => !ids.has(s.keyid)), ...new Map(fresh.map((s) => [s.keyid, s])).values()];
  return deepFreeze({ signed: root.signed, signatures });
}

/** Adds `key` to `role` (and to `keys` if new). */
export function addKey(root: Root, role: RoleName, key: PublicKey): Root {
  const keyids = root.signed.roles[role].keyids.includes(key.keyid) ? root.signed.roles[role].keyids : [...root.signed.roles[role].keyids, key.keyid];
  return edit(root, { keys: { ...root.signed.keys, [key.keyid]: rootKey(key) }, roles: { ...root.signed.roles, [role]: { ...root.signed.roles[role], keyids } } });
}

/**
 * Removes a key from `role`, and from `keys` when no other role lists it. Refuses to leave the
 * role with fewer keys than its threshold: lower the threshold first (`setThreshold`).
 */
export function removeKey(root: Root, role: RoleName, key: PublicKey | string): Root {
  const id = typeof key === 'string' ? key : key.keyid;
  const spec = root.signed.roles[role];
  if (!spec.keyids.includes(id)) throw new TrustError('EAI_TRUST_ROOT_INVALID', `key ${id} is not a ${role} key of trust root v${root.signed.version}; its ${role} keys are ${spec.keyids.join(', ')}.`, { details: { role, keyid: id } });
  const keyids = spec.keyids.filter((k) => k !== id);
  if (keyids.length < spec.threshold) {
    throw new TrustError('EAI_TRUST_ROOT_INVALID', `removing key ${id.slice(0, 12)}… would leave the ${role} role ${keyids.length} key(s), below its threshold of ${spec.threshold}. Fix: add the replacement key first, or lower the threshold with setThreshold.`, { details: { role, keyid: id, threshold: spec.threshold } });
  }
  const roles = { ...root.signed.roles, [role]: { ...spec, keyids } };
  const keys = Object.fromEntries(Object.entries(root.signed.keys).filter(([k]) => k !== id || ROLE_NAMES.some((r) => roles[r].keyids.includes(k))));
  return edit(root, { keys, roles });
}

/** Sets how many distinct keys of `role` must sign. */
export function setThreshold(root: Root, role: RoleName, threshold: number): Root {
  return edit(root, { roles: { ...root.signed.roles, [role]: { ...root.signed.roles[role], threshold } } });
}

/** The next version (N+1), optionally with a new expiry: the start of every rotation. */
export function bumpVersion(root: Root, options: { readonly expires?: Date | string } = {}): Root {
  return edit(root, { version: root.signed.version + 1, ...(options.expires === undefined ? {} : { expires: formatExpires(options.expires) }) });
}

function edit(root: Root, change: Partial<RootSigned>): Root {
  return parseRoot({ signed: { ...root.signed, ...change }, signatures: [] }, `trust root v${change.version ?? root.signed.version}`);
}

function rootKey(key: PublicKey): RootKey {
  return { keytype: 'ed25519', scheme: 'ed25519', keyval: { public: rawPublicKey(key.publicKey).toString('hex') } };
}

function formatExpires(expires: Date | string): string {
  if (typeof expires === 'string') return expires;
  if (Number.isNaN(expires.getTime())) throw new TrustError('EAI_TRUST_ROOT_INVALID', 'the expiry is an invalid Date; pass a Date or an RFC 3339 string such as 2030-01-01T00:00:00Z.');
  return expires.toISOString().replace(/\.\d{3}Z$/u, 'Z');
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
