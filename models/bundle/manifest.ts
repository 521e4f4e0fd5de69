/**
 * The bundle manifest: an in-toto Statement v1 whose predicate (type https://aios.dev/model/v1)
 * describes the model and every file in the bundle. One TypeBox schema gives the type and the
 * validator; `parseManifest` adds the checks a schema cannot express (the subject list matches
 * the files, paths are safe and unique, the entry file exists). docs/bundles.md has an example.
 *
 * Sizes and digests live in `predicate.files` (the one place the verifier reads them from); the
 * in-toto `subject` repeats each file's name and plaintext SHA-256 so that generic in-toto
 * tooling can match the files, and must agree with `predicate.files` exactly.
 */
import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { DEVICE_KINDS, MODEL_FORMATS } from '../../drivers/hal/types.js';
import { DTYPES } from '../../drivers/tensor/tensor.js';
import { BundleError } from './errors.js';

export const STATEMENT_TYPE = 'https://in-toto.io/Statement/v1';
export const MODEL_PREDICATE_TYPE = 'https://aios.dev/model/v1';
/** The first entry of every bundle. */
export const ENVELOPE_ENTRY = 'envelope.dsse.json';
/** Where model files live inside the tar; encrypted ones carry `.age` after their path. */
export const FILES_PREFIX = 'files/';
export const ENCRYPTED_SUFFIX = '.age';
/** The longest file path (relative to files/): leaves room for the prefix and `.age` in ustar's 255 bytes. */
export const MAX_PATH_BYTES = 240;

// semver.org's regular expression.
const SEMVER = '^(0|[1-9]\\d*)\\.(0|[1-9]\\d*)\\.(0|[1-9]\\d*)(?:-((?:0|[1-9]\\d*|\\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\\.(?:0|[1-9]\\d*|\\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\\+([0-9a-zA-Z-]+(?:\\.[0-9a-zA-Z-]+)*))?$';
const RFC3339 = '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d{1,9})?(Z|[+-]\\d{2}:\\d{2})$';

const Sha256 = Type.String({ pattern: '^[0-9a-f]{64}$' });
const Size = Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER });
const SemVer = Type.String({ pattern: SEMVER, maxLength: 256 });
const Timestamp = Type.String({ pattern: RFC3339 });
const Name = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' });

export const TensorSpecSchema = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 256 }),
    dtype: Type.Union(DTYPES.map((d) => Type.Literal(d))),
    shape: Type.Array(Type.Union([Type.Integer({ minimum: 0, maximum: 2 ** 31 }), Type.Null()]), { maxItems: 32 }),
    dimNames: Type.Optional(Type.Array(Type.Union([Type.String({ maxLength: 128 }), Type.Null()]), { maxItems: 32 })),
  },
  { additionalProperties: false },
);

export const BundleFileSchema = Type.Object(
  {
    /** Relative to files/, '/'-separated (see `checkPath`). */
    path: Type.String({ minLength: 1, maxLength: MAX_PATH_BYTES }),
    /** Plaintext bytes. */
    size: Size,
    /** Hex SHA-256 of the plaintext: the in-toto subject digest. */
    sha256: Sha256,
    /** Present when the file is stored age-encrypted (`files/<path>.age`): what is stored. */
    encrypted: Type.Optional(Type.Object({ recipients: Type.Integer({ minimum: 1, maximum: 10_000 }), size: Size, sha256: Sha256 }, { additionalProperties: false })),
  },
  { additionalProperties: false },
);

export const ModelPredicateSchema = Type.Object(
  {
    name: Name,
    version: SemVer,
    parentVersion: Type.Optional(SemVer),
    branch: Type.Optional(Name),
    format: Type.Union(MODEL_FORMATS.map((f) => Type.Literal(f))),
    /** The file an engine loads (for TF.js formats the model.json; its folder holds the shards). */
    entry: Type.String({ minLength: 1, maxLength: MAX_PATH_BYTES }),
    inputs: Type.Array(TensorSpecSchema, { maxItems: 1024 }),
    outputs: Type.Array(TensorSpecSchema, { maxItems: 1024 }),
    labels: Type.Optional(Type.Array(Type.String({ maxLength: 1024 }), { maxItems: 100_000 })),
    targets: Type.Array(Type.Union(DEVICE_KINDS.map((k) => Type.Literal(k))), { uniqueItems: true }),
    minRuntimeVersion: SemVer,
    created: Timestamp,
    /** After this instant verifiers refuse the bundle (EAI_BUNDLE_EXPIRED). Optional: most models do not expire. */
    expires: Type.Optional(Timestamp),
    author: Type.String({ minLength: 1, maxLength: 256 }),
    notes: Type.Optional(Type.String({ maxLength: 65_536 })),
    metrics: Type.Optional(Type.Record(Type.String({ maxLength: 128 }), Type.Number())),
    files: Type.Array(BundleFileSchema, { minItems: 1, maxItems: 10_000 }),
  },
  { additionalProperties: false },
);

export const ModelStatementSchema = Type.Object(
  {
    _type: Type.Literal(STATEMENT_TYPE),
    subject: Type.Array(Type.Object({ name: Type.String(), digest: Type.Object({ sha256: Sha256 }, { additionalProperties: false }) }, { additionalProperties: false }), { minItems: 1 }),
    predicateType: Type.Literal(MODEL_PREDICATE_TYPE),
    predicate: ModelPredicateSchema,
  },
  { additionalProperties: false },
);

export type BundleFile = Static<typeof BundleFileSchema>;
export type ModelPredicate = Static<typeof ModelPredicateSchema>;
export type ModelStatement = Static<typeof ModelStatementSchema>;
/** What a packer gives: the predicate without the files (computed) and with `created` optional (now). */
export type ModelMetadata = Omit<ModelPredicate, 'files' | 'created'> & { readonly created?: string };

/** The tar entry name of a file: `files/<path>`, plus `.age` when it is stored encrypted. */
export function entryName(file: Pick<BundleFile, 'path' | 'encrypted'>): string {
  return `${FILES_PREFIX}${file.path}${file.encrypted === undefined ? '' : ENCRYPTED_SUFFIX}`;
}

/**
 * Refuses an unsafe name (a manifest path or a tar entry name): absolute paths
 * (EAI_BUNDLE_PATH_ABSOLUTE), '..' components (EAI_BUNDLE_PATH_TRAVERSAL), and empty or '.'
 * components, backslashes, control characters or anything outside [A-Za-z0-9._+@=,~-]
 * (EAI_BUNDLE_PATH_INVALID), so a path means the same on every file system.
 */
export function checkPath(name: string, where: string, offset?: number): void {
  const details = offset === undefined ? { name } : { name, offset };
  const shown = JSON.stringify(name.slice(0, 300));
  if (name.startsWith('/') || name.startsWith('\\') || /^[A-Za-z]:/u.test(name)) {
    throw new BundleError('EAI_BUNDLE_PATH_ABSOLUTE', `${where} ${shown} is an absolute path; bundle paths are relative. The bundle is malicious or broken: do not use it.`, { details });
  }
  const parts = name.split(/[/\\]/u);
  if (parts.includes('..')) {
    throw new BundleError('EAI_BUNDLE_PATH_TRAVERSAL', `${where} ${shown} climbs out of its folder with '..'. The bundle is malicious or broken: do not use it.`, { details });
  }
  if (Buffer.byteLength(name) > MAX_PATH_BYTES + FILES_PREFIX.length + ENCRYPTED_SUFFIX.length || parts.some((p) => p === '' || p === '.' || !/^[A-Za-z0-9._+@=,~-]+$/u.test(p))) {
    throw new BundleError('EAI_BUNDLE_PATH_INVALID', `${where} ${shown} is not a plain relative path ('/'-separated parts of A-Z a-z 0-9 . _ + @ = , ~ -, no empty or '.' parts, at most ${MAX_PATH_BYTES} bytes); rename the file.`, { details });
  }
}

/**
 * Parses the verified payload: JSON, the schema (additional properties refused everywhere), then
 * the cross-checks. Throws EAI_BUNDLE_MANIFEST_INVALID listing every problem (or a path code).
 */
export function parseManifest(payload: Uint8Array): ModelStatement {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(payload));
  } catch (cause) {
    throw new BundleError('EAI_BUNDLE_MANIFEST_INVALID', `the manifest is not UTF-8 JSON (${cause instanceof Error ? cause.message : String(cause)}).`, { cause });
  }
  return checkStatement(value);
}

/** Validates a statement given as data (what `parseManifest` does after JSON.parse). */
export function checkStatement(value: unknown): ModelStatement {
  const issues: string[] = [];
  for (const e of Value.Errors(ModelStatementSchema, value)) {
    if (issues.length >= 20) break;
    issues.push(`${e.path || '/'}: ${e.message}`);
  }
  if (issues.length > 0) throw manifestInvalid(issues);
  const statement = value as ModelStatement;
  const p = statement.predicate;
  const entries = new Set<string>();
  const paths = new Set<string>();
  for (const [i, f] of p.files.entries()) {
    checkPath(f.path, `manifest file ${i}`);
    const key = entryName(f).toLowerCase();
    if (entries.has(key) || paths.has(f.path.toLowerCase())) issues.push(`/predicate/files/${i}/path: '${f.path}' is declared twice (names are compared ignoring case, and 'x' encrypted collides with 'x.age')`);
    entries.add(key);
    entries.add(`${FILES_PREFIX}${f.path}`.toLowerCase());
    paths.add(f.path.toLowerCase());
  }
  for (const f of p.files) {
    const lower = f.path.toLowerCase();
    if ([...paths].some((other) => other.startsWith(`${lower}/`))) issues.push(`/predicate/files: '${f.path}' is both a file and a folder of other files`);
  }
  if (statement.subject.length !== p.files.length || statement.subject.some((s, i) => s.name !== p.files[i]?.path || s.digest.sha256 !== p.files[i]?.sha256)) {
    issues.push('/subject: must list exactly predicate.files, in order, each with its path as name and its plaintext sha256');
  }
  if (!p.files.some((f) => f.path === p.entry)) issues.push(`/predicate/entry: '${p.entry}' is not one of the files`);
  for (const [which, specs] of [['inputs', p.inputs], ['outputs', p.outputs]] as const) {
    specs.forEach((t, i) => {
      if (t.dimNames !== undefined && t.dimNames.length !== t.shape.length) issues.push(`/predicate/${which}/${i}/dimNames: ${t.dimNames.length} names for ${t.shape.length} dimensions`);
    });
  }
  const created = Date.parse(p.created);
  if (Number.isNaN(created)) issues.push(`/predicate/created: '${p.created}' is not a real date`);
  if (p.expires !== undefined) {
    const expires = Date.parse(p.expires);
    if (Number.isNaN(expires)) issues.push(`/predicate/expires: '${p.expires}' is not a real date`);
    else if (expires <= created) issues.push('/predicate/expires: must be after created');
  }
  if (issues.length > 0) throw manifestInvalid(issues);
  return statement;
}

/** The statement for `metadata` and the files' measured sizes and digests, validated. */
export function buildStatement(metadata: ModelMetadata, files: readonly BundleFile[]): ModelStatement {
  const predicate = { ...metadata, created: metadata.created ?? new Date().toISOString().replace(/\.\d+Z$/u, 'Z'), files: files.map((f) => ({ ...f })) };
  return checkStatement({
    _type: STATEMENT_TYPE,
    subject: files.map((f) => ({ name: f.path, digest: { sha256: f.sha256 } })),
    predicateType: MODEL_PREDICATE_TYPE,
    predicate,
  });
}

function manifestInvalid(issues: readonly string[]): BundleError {
  return new BundleError('EAI_BUNDLE_MANIFEST_INVALID', `the manifest does not follow the model schema (https://aios.dev/model/v1):\n  ${issues.join('\n  ')}`, { details: { issues } });
}
