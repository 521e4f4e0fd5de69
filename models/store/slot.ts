/**
 * One slot of the model store: a folder holding one installed version of a model, as
 *
 *     slots/<version>@<8 hex>/
 *       slot.json      the slot record (SlotRecord): model, version, manifest digest, every file
 *       files/…        the model files, exactly those the record lists
 *
 * This file owns the record's format, the rules for names and file paths, and `inspectSlot`,
 * which compares a slot's folder with its record (sizes, SHA-256, file types, modes) and, when
 * sealing a new slot, makes every file and folder private and durable.
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import { syncDir, type FileSystem } from '../atomic-write.js';
import { ioError, StoreError } from './errors.js';

/** The record's file name inside a slot folder. */
export const SLOT_RECORD = 'slot.json';
/** The folder inside a slot that holds the model files (what a writer fills). */
export const SLOT_FILES = 'files';
export const SLOT_FORMAT = 'aios-model-slot/1';
/** Modes of everything in the store: plaintext model bytes are for the store's owner only. */
export const FILE_MODE = 0o600;
export const DIR_MODE = 0o700;

/** A model file in a slot: its path relative to the slot's `files/`, '/'-separated. */
export interface SlotFile {
  readonly path: string;
  readonly size: number;
  /** Lower-case hex SHA-256 of the bytes on disk. */
  readonly sha256: string;
}

/** What `slot.json` holds. Written once, before the slot is renamed into place, never changed. */
export interface SlotRecord {
  readonly format: typeof SLOT_FORMAT;
  readonly model: string;
  readonly version: string;
  /** Hex SHA-256 of the signed manifest the files came from (the DSSE payload). */
  readonly manifestDigest: string;
  /** The file an engine loads, if the writer said. */
  readonly entry?: string;
  /** RFC 3339. */
  readonly installedAt: string;
  readonly files: readonly SlotFile[];
}

/**
 * What a slot writer reports about the files it wrote (model-store.ts, SlotWriter). `files` must
 * list exactly the regular files under the slot folder, with the size and SHA-256 of the bytes
 * on disk (plaintext, for a decrypted file); the store checks every one by reading it back.
 */
export interface SlotContent {
  /** Hex SHA-256 of the signed manifest the files were verified against (the DSSE payload bytes). */
  readonly manifestDigest: string;
  readonly files: readonly SlotFile[];
  /** The file an engine loads (the manifest's `entry`); must be one of `files`. */
  readonly entry?: string;
  /** The model and version the manifest names; when given, they must equal install's arguments. */
  readonly model?: string;
  readonly version?: string;
}

/** One way a slot folder differs from its record. */
export interface SlotProblem {
  /** Relative to the slot's files/. */
  readonly path: string;
  readonly problem: 'missing' | 'extra' | 'not-a-file' | 'size' | 'sha256' | 'mode';
  readonly expected?: string | number;
  readonly found?: string | number;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/u;
const SHA256 = /^[0-9a-f]{64}$/u;
const PART = /^[A-Za-z0-9._+@=,~-]+$/u;
const MAX_PATH = 4096;

/**
 * Refuses a model or version name that cannot be a folder name everywhere: 1 to 128 of
 * A-Z a-z 0-9 . _ + -, starting with a letter or digit (so never '.', '..' or a hidden name).
 * Semantic versions (`1.2.0-rc.1+build.5`) fit.
 */
export function checkName(kind: 'model' | 'version', name: string): void {
  if (typeof name !== 'string' || !NAME.test(name)) {
    throw new StoreError('EAI_STORE_NAME_INVALID', `a ${kind} name is 1 to 128 of A-Z a-z 0-9 . _ + - starting with a letter or digit, got ${JSON.stringify(typeof name === 'string' ? name.slice(0, 200) : name)}. Fix: use the ${kind} of the bundle manifest.`, { details: { kind, name } });
  }
}

/**
 * Refuses a file path a writer reported unless it is plainly inside the slot: not absolute, no
 * '..', no empty or '.' parts, no backslashes or control characters; parts of
 * A-Z a-z 0-9 . _ + @ = , ~ - (the bundle format's rule).
 */
export function checkFilePath(name: string): void {
  const bad = (reason: string): StoreError =>
    new StoreError('EAI_STORE_PATH_INVALID', `the slot writer reported the file ${JSON.stringify(String(name).slice(0, 300))}, which ${reason}; nothing was installed. Fix: report paths relative to the slot folder, '/'-separated; a bundle with such a path is malicious or broken.`, { details: { path: name, reason } });
  if (typeof name !== 'string' || name.length === 0) throw bad('is empty');
  if (name.startsWith('/') || name.startsWith('\\') || /^[A-Za-z]:/u.test(name)) throw bad('is absolute');
  const parts = name.split(/[/\\]/u);
  if (parts.includes('..')) throw bad("climbs out of the slot with '..'");
  if (name.includes('\\')) throw bad('contains a backslash');
  if (Buffer.byteLength(name) > MAX_PATH || parts.some((p) => p === '' || p === '.' || !PART.test(p))) {
    throw bad(`is not a plain relative path ('/'-separated parts of A-Z a-z 0-9 . _ + @ = , ~ -, no empty or '.' parts, at most ${MAX_PATH} bytes)`);
  }
}

/** Whether `value` is a lower-case hex SHA-256. */
export function isSha256(value: unknown): value is string {
  return typeof value === 'string' && SHA256.test(value);
}

/**
 * The record of a new slot from a writer's report, checked: EAI_STORE_PATH_INVALID for a path
 * that is not plainly inside the slot, EAI_STORE_CONTENT_MISMATCH for anything else wrong (another
 * model or version, no files, a file listed twice, a bad size or digest, an entry not listed).
 */
export function slotRecordOf(model: string, version: string, content: SlotContent, installedAt: Date): SlotRecord {
  const mismatch = (what: string): StoreError =>
    new StoreError('EAI_STORE_CONTENT_MISMATCH', `the writer's report for ${model} ${version} is wrong: ${what}. Nothing was installed. Fix: report the manifest's model, version and digest, and exactly the files written.`, { details: { model, version } });
  if (typeof content !== 'object' || content === null || !Array.isArray(content.files)) throw mismatch('it must be an object with a files list');
  if (content.model !== undefined && content.model !== model) throw mismatch(`the manifest names the model ${JSON.stringify(content.model)}`);
  if (content.version !== undefined && content.version !== version) throw mismatch(`the manifest names the version ${JSON.stringify(content.version)}`);
  if (!isSha256(content.manifestDigest)) throw mismatch('manifestDigest must be a lower-case hex SHA-256');
  if (content.files.length === 0) throw mismatch('it lists no files');
  const paths = new Set<string>();
  const files = content.files.map((f: SlotFile | null): SlotFile => {
    if (typeof f !== 'object' || f === null) throw mismatch('each file must be {path, size, sha256}');
    checkFilePath(f.path);
    if (paths.has(f.path)) throw mismatch(`${f.path} is listed twice`);
    paths.add(f.path);
    if (!Number.isSafeInteger(f.size) || f.size < 0 || !isSha256(f.sha256)) throw mismatch(`${f.path} needs a size ≥ 0 and a hex SHA-256`);
    return { path: f.path, size: f.size, sha256: f.sha256 };
  });
  if (content.entry !== undefined && !paths.has(content.entry)) throw mismatch(`the entry ${JSON.stringify(content.entry)} is not one of the files`);
  return {
    format: SLOT_FORMAT,
    model,
    version,
    manifestDigest: content.manifestDigest,
    ...(content.entry === undefined ? {} : { entry: content.entry }),
    installedAt: installedAt.toISOString(),
    files,
  };
}

export function serializeSlotRecord(record: SlotRecord): string {
  return `${JSON.stringify(record, null, 2)}\n`;
}

/** Parses a slot.json; throws EAI_STORE_STATE_CORRUPT naming `file` and what is wrong. */
export function parseSlotRecord(text: string, file: string): SlotRecord {
  const corrupt = (what: string): StoreError =>
    new StoreError('EAI_STORE_STATE_CORRUPT', `${file} is damaged: ${what}. Fix: if this slot is active, roll back or install the version again; \`aios\` GC removes a slot that is neither active nor previous.`, { details: { file } });
  let v: Partial<Record<keyof SlotRecord, unknown>>;
  try {
    v = JSON.parse(text) as typeof v;
  } catch (error) {
    throw corrupt(`not JSON (${(error as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || v.format !== SLOT_FORMAT) throw corrupt(`expected format '${SLOT_FORMAT}', got ${JSON.stringify((v as { format?: unknown } | null)?.format)}`);
  if (typeof v.model !== 'string' || !NAME.test(v.model) || typeof v.version !== 'string' || !NAME.test(v.version)) throw corrupt('model and version must be names');
  if (!isSha256(v.manifestDigest)) throw corrupt('manifestDigest must be a hex SHA-256');
  if (typeof v.installedAt !== 'string') throw corrupt('installedAt must be a time');
  if (v.entry !== undefined && typeof v.entry !== 'string') throw corrupt('entry must be a path');
  if (!Array.isArray(v.files) || v.files.length === 0) throw corrupt('files must list at least one file');
  const files: SlotFile[] = [];
  for (const f of v.files as unknown[]) {
    const file = f as Partial<Record<keyof SlotFile, unknown>>;
    if (typeof file?.path !== 'string' || !Number.isSafeInteger(file.size) || (file.size as number) < 0 || !isSha256(file.sha256)) throw corrupt('each file needs a path, a size and a sha256');
    try {
      checkFilePath(file.path);
    } catch {
      throw corrupt(`the file path ${JSON.stringify(file.path)} is not a plain relative path`);
    }
    files.push({ path: file.path, size: file.size as number, sha256: file.sha256 });
  }
  return { format: SLOT_FORMAT, model: v.model, version: v.version, manifestDigest: v.manifestDigest, ...(v.entry === undefined ? {} : { entry: v.entry }), installedAt: v.installedAt, files };
}

export interface InspectOptions {
  /**
   * Sealing a new slot: set every file to FILE_MODE and every folder to DIR_MODE, and fsync each
   * file and then each folder, deepest first. Without it, modes other than those are problems.
   */
  readonly seal: boolean;
}

/**
 * Compares the folder `dir` (a slot's files/) with `files`: every listed file must be a regular
 * file (links are never followed) of the listed size and SHA-256, and nothing else may be there.
 * Reads every byte. Returns every difference, in path order; an empty list means the folder is
 * exactly what the record says. File-system failures other than a missing file reject with
 * EAI_STORE_IO.
 */
export async function inspectSlot(fs: FileSystem, dir: string, files: readonly SlotFile[], options: InspectOptions): Promise<SlotProblem[]> {
  const listed = new Map(files.map((f) => [f.path, f]));
  const problems: SlotProblem[] = [];
  const seen = new Set<string>();
  const buffer = new Uint8Array(1 << 20);

  const visit = async (rel: string): Promise<void> => {
    const abs = rel === '' ? dir : path.join(dir, ...rel.split('/'));
    let names: string[];
    try {
      names = (await fs.readdir(abs)).sort();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(`read the slot folder ${abs}`, error, { dir: abs });
      return; // the listed files under it are reported missing below
    }
    if (options.seal) await fs.chmod(abs, DIR_MODE).catch((e: unknown) => Promise.reject(ioError(`seal ${abs}`, e)));
    else await expectMode(fs, abs, DIR_MODE, rel, problems);
    for (const name of names) {
      const childRel = rel === '' ? name : `${rel}/${name}`;
      const child = path.join(abs, name);
      const info = await fs.lstat(child).catch((e: unknown) => Promise.reject(ioError(`inspect ${child}`, e)));
      if (info.isDirectory()) {
        await visit(childRel);
        continue;
      }
      const want = listed.get(childRel);
      if (want === undefined) {
        problems.push({ path: childRel, problem: 'extra' });
        continue;
      }
      seen.add(childRel);
      if (!info.isFile()) {
        problems.push({ path: childRel, problem: 'not-a-file' });
        continue;
      }
      if (info.size !== want.size) {
        problems.push({ path: childRel, problem: 'size', expected: want.size, found: info.size });
        continue;
      }
      if (options.seal) await fs.chmod(child, FILE_MODE).catch((e: unknown) => Promise.reject(ioError(`seal ${child}`, e)));
      else if ((info.mode & 0o777) !== FILE_MODE) problems.push({ path: childRel, problem: 'mode', expected: octal(FILE_MODE), found: octal(info.mode & 0o777) });
      const digest = await hashFile(fs, child, buffer, options.seal);
      if (digest !== want.sha256) problems.push({ path: childRel, problem: 'sha256', expected: want.sha256, found: digest });
    }
    // After its entries: a folder's fsync makes the names in it durable, children first.
    if (options.seal) await syncDir(abs, fs).catch((e: unknown) => Promise.reject(ioError(`fsync ${abs}`, e)));
  };

  // The folder itself must be a folder, not a link to one: chmod and readdir would follow it.
  const top = await fs.lstat(dir).catch((error: NodeJS.ErrnoException) => (error.code === 'ENOENT' ? undefined : Promise.reject(ioError(`inspect ${dir}`, error))));
  if (top !== undefined && !top.isDirectory()) return [{ path: '.', problem: 'not-a-file' }, ...files.map((f): SlotProblem => ({ path: f.path, problem: 'missing' }))];
  await visit('');
  for (const f of files) if (!seen.has(f.path)) problems.push({ path: f.path, problem: 'missing' });
  return problems.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** One line per problem, at most `max`, for messages. */
export function describeProblems(problems: readonly SlotProblem[], max = 8): string {
  const line = (p: SlotProblem): string =>
    p.expected === undefined ? `${p.path}: ${p.problem}` : `${p.path}: ${p.problem} (expected ${p.expected}, found ${p.found ?? 'nothing'})`;
  const shown = problems.slice(0, max).map(line).join('; ');
  return problems.length > max ? `${shown}; and ${problems.length - max} more` : shown;
}

async function hashFile(fs: FileSystem, file: string, buffer: Uint8Array, sync: boolean): Promise<string> {
  const hash = createHash('sha256');
  let handle;
  try {
    handle = await fs.open(file, 'r');
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) break;
      hash.update(buffer.subarray(0, bytesRead));
    }
    // fsync through a read-only descriptor is allowed and flushes the file's data and inode.
    if (sync) await handle.sync();
  } catch (error) {
    throw ioError(`${sync ? 'hash and fsync' : 'hash'} ${file}`, error, { file });
  } finally {
    await handle?.close();
  }
  return hash.digest('hex');
}

async function expectMode(fs: FileSystem, abs: string, mode: number, rel: string, problems: SlotProblem[]): Promise<void> {
  const info = await fs.lstat(abs).catch((e: unknown) => Promise.reject(ioError(`inspect ${abs}`, e)));
  if ((info.mode & 0o777) !== mode) problems.push({ path: rel === '' ? '.' : `${rel}/`, problem: 'mode', expected: octal(mode), found: octal(info.mode & 0o777) });
}

function octal(mode: number): string {
  return `0${mode.toString(8)}`;
}
