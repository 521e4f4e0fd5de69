/**
 * Garbage collection of one model's folder: slots the state names neither active nor previous,
 * and what interrupted installs and deletions left. The names it recognises:
 *
 *     slots/.staging.<pid-start-boot>.<slot id>/   an install; removed once its process is gone
 *     slots/.trash.<pid-start-boot>.<slot id>/     a deletion; likewise
 *     slots/<version>@<8 hex>/                     a complete slot; removed unless kept
 *     state.json.<pid>.<hex>.tmp, .lock.stale.…    dead under the lock (state is only written under it)
 *     .lock.<pid>.<hex>.tmp                        a lock being taken; removed once its process is gone
 *
 * Callers hold the model's lock and pass what to keep (the state's two slots, and leased ones).
 */
import path from 'node:path';
import { isTempOf, syncDir, type FileSystem } from '../atomic-write.js';
import { ioError } from './errors.js';
import { isRunning, ownerToken, parseOwnerToken, thisProcess } from './lock.js';
import { STATE_FILE } from './state.js';

export const SLOTS_DIR = 'slots';
export const LOCK_FILE = '.lock';
const STAGING = '.staging.';
const TRASH = '.trash.';

/** Something `gc` removed. */
export interface GcRemoval {
  readonly model: string;
  /** The name inside the model's folder (`slots/…`, a temporary state file, a stale lock). */
  readonly name: string;
  readonly kind: 'slot' | 'staging' | 'trash' | 'temp';
}

/** The staging folder name for a new slot `id`, owned by this process. */
export function stagingName(id: string): string {
  return `${STAGING}${ownerToken(thisProcess())}.${id}`;
}

/** Removes from `<modelDir>` everything `keep` does not name (slot folder names) and no live process owns. */
export async function collect(fs: FileSystem, modelDir: string, model: string, keep: (slot: string) => boolean): Promise<GcRemoval[]> {
  const slotsDir = path.join(modelDir, SLOTS_DIR);
  const removed: GcRemoval[] = [];
  const names = await fs.readdir(slotsDir).catch((e: unknown) => Promise.reject(ioError(`list ${slotsDir}`, e)));
  let renamed = false;
  for (const name of names.sort()) {
    if (keep(name)) continue;
    const leftover = name.startsWith(STAGING) ? 'staging' : name.startsWith(TRASH) ? 'trash' : undefined;
    if (leftover !== undefined) {
      const owner = parseOwnerToken(name.slice(leftover === 'staging' ? STAGING.length : TRASH.length).split('.')[0] ?? '');
      if (owner !== undefined && isRunning(owner)) continue; // an install or deletion still in progress
      await fs.rm(path.join(slotsDir, name), { recursive: true, force: true }).catch((e: unknown) => Promise.reject(ioError(`remove ${name}`, e)));
      removed.push({ model, name: `${SLOTS_DIR}/${name}`, kind: leftover });
      continue;
    }
    await discard(fs, slotsDir, name);
    renamed = true;
    removed.push({ model, name: `${SLOTS_DIR}/${name}`, kind: 'slot' });
  }
  for (const name of await fs.readdir(modelDir).catch(() => [] as string[])) {
    const deadLockTemp = isTempOf(name, LOCK_FILE) && !isRunning({ pid: Number(name.split('.')[2]), start: '', boot: '' });
    if (isTempOf(name, STATE_FILE) || name.startsWith(`${LOCK_FILE}.stale.`) || deadLockTemp) {
      await fs.rm(path.join(modelDir, name), { force: true }).catch(() => undefined);
      removed.push({ model, name, kind: 'temp' });
    }
  }
  // Not needed for safety (a deletion that comes back is garbage again), but GC should stick.
  if (renamed) await syncDir(slotsDir, fs).catch(() => undefined);
  return removed;
}

/**
 * Deletes the slot `id`: renamed to `.trash…` first (atomic), then removed, so a half-deleted
 * slot is never taken for a complete one. A slot already gone is fine.
 */
export async function discard(fs: FileSystem, slotsDir: string, id: string): Promise<void> {
  const trash = path.join(slotsDir, `${TRASH}${ownerToken(thisProcess())}.${id}`);
  try {
    await fs.rename(path.join(slotsDir, id), trash);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw ioError(`set the slot ${path.join(slotsDir, id)} aside for deletion`, error, { slot: id });
  }
  await fs.rm(trash, { recursive: true, force: true }).catch((e: unknown) => Promise.reject(ioError(`delete ${trash}`, e)));
}
