/**
 * A model's state file, `<root>/<model>/state.json`: which slot is active and which is previous.
 * It is the only thing that says which version runs, and it is only ever replaced whole
 * (models/atomic-write.ts), so the rename that replaces it is the switch between versions.
 *
 *     { "format": "aios-model-store/1", "model": "detector",
 *       "active":   { "version": "2.0.0", "slot": "2.0.0@9f3c01aa" },
 *       "previous": { "version": "1.4.1", "slot": "1.4.1@5e2d7b10" },
 *       "changed": "2026-03-01T12:00:00.000Z" }
 *
 * One file for both pointers, rather than two symlinks: both change in one rename, so active and
 * previous can never disagree after a crash.
 */
import path from 'node:path';
import { writeFileAtomic, type FileSystem } from '../atomic-write.js';
import { ioError, StoreError } from './errors.js';
import { checkName, FILE_MODE } from './slot.js';

export const STATE_FILE = 'state.json';
export const STATE_FORMAT = 'aios-model-store/1';

/** A slot as the state names it. */
export interface Pointer {
  readonly version: string;
  /** The slot folder's name, `<version>@<8 hex>`. */
  readonly slot: string;
}

export interface State {
  readonly active: Pointer | null;
  readonly previous: Pointer | null;
}

/** The state of a model with no state file yet. */
export const EMPTY_STATE: State = { active: null, previous: null };

/**
 * The state after installing `version` into slot `id`: it becomes active; the active one becomes
 * previous, unless it is the same version (a reinstall, which keeps the previous one); the same
 * version is never both.
 */
export function afterInstall(before: State, version: string, id: string): State {
  const previous = before.active !== null && before.active.version !== version ? before.active : before.previous?.version === version ? null : before.previous;
  return { active: { version, slot: id }, previous };
}

/** Reads `<modelDir>/state.json`; EMPTY_STATE if there is none. Throws EAI_STORE_STATE_CORRUPT or EAI_STORE_IO. */
export async function readState(fs: FileSystem, modelDir: string): Promise<State> {
  const file = path.join(modelDir, STATE_FILE);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return EMPTY_STATE;
    throw ioError(`read ${file}`, error, { file });
  }
  const corrupt = (what: string): StoreError =>
    new StoreError(
      'EAI_STORE_STATE_CORRUPT',
      `${file} is damaged: ${what}. The slots are intact. Fix: write it again from \`ls ${path.join(modelDir, 'slots')}\` as {"format":"${STATE_FORMAT}","active":{"version":"…","slot":"…"},"previous":null}, or remove ${modelDir} and install the model again.`,
      { details: { file } },
    );
  let v: { format?: unknown; active?: unknown; previous?: unknown };
  try {
    v = JSON.parse(text) as typeof v;
  } catch (error) {
    throw corrupt(`not JSON (${(error as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || v.format !== STATE_FORMAT) throw corrupt(`expected format '${STATE_FORMAT}'`);
  const pointer = (p: unknown, which: string): Pointer | null => {
    if (p === null || p === undefined) return null;
    const { version, slot } = p as Partial<Pointer>;
    if (typeof version !== 'string' || typeof slot !== 'string' || !slot.startsWith(`${version}@`) || !/^[0-9a-f]{8}$/u.test(slot.slice(version.length + 1))) {
      throw corrupt(`${which} must be {version, slot: '<version>@<8 hex>'}`);
    }
    checkName('version', version);
    return { version, slot };
  };
  return { active: pointer(v.active, 'active'), previous: pointer(v.previous, 'previous') };
}

/**
 * The switch: replaces `<modelDir>/state.json` with `next` (temporary file, fsync, rename, fsync
 * of the folder). Resolves once the new state is durable. Throws EAI_STORE_IO; the state on disk
 * is then the old one, except when only the folder's fsync failed (the caller re-reads it).
 */
export async function writeState(fs: FileSystem, modelDir: string, model: string, next: State, changed: Date): Promise<void> {
  const file = path.join(modelDir, STATE_FILE);
  const text = `${JSON.stringify({ format: STATE_FORMAT, model, active: next.active, previous: next.previous, changed: changed.toISOString() }, null, 2)}\n`;
  try {
    await writeFileAtomic(file, text, { fs, mode: FILE_MODE });
  } catch (error) {
    throw ioError(`switch ${model} to ${next.active?.version ?? 'nothing'} (writing ${file})`, error, { model, file });
  }
}
