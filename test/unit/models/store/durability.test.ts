/**
 * The order of fsyncs and renames, read from a log of every file-system call. The crash tests
 * (power-loss.test.ts) kill a process, which keeps the page cache; this checks the part they
 * cannot see: that each thing is made durable before anything that depends on it is published.
 * On ext4/xfs that order is what turns "atomic for other processes" into "atomic across a power
 * cut".
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isTempOf, tempName, writeFileAtomic } from '../../../../models/atomic-write.js';
import { ModelStore, STATE_FILE } from '../../../../models/store/model-store.js';
import { errno, modelFiles, recordingFs, tree, writerOf, type FsCall } from './helpers.js';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'aios-store-order-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Index of the first call matching, after `from`; fails the test if there is none. */
function at(log: readonly FsCall[], what: string, match: (c: FsCall) => boolean, from = 0): number {
  const i = log.findIndex((c, n) => n >= from && match(c));
  expect(i, `no ${what} in the call log`).toBeGreaterThanOrEqual(0);
  return i;
}
const synced = (p: string) => (c: FsCall): boolean => c.op === 'handle.sync' && c.file === p;
const renamed = (from: (p: string) => boolean) => (c: FsCall): boolean => c.op === 'rename' && from(String(c.args[0]));

describe('model store: durability order', () => {
  it('an install makes every file and folder of the slot durable before the slot is renamed into place, and the slot before the switch', async () => {
    const fs = recordingFs();
    const store = await ModelStore.open(root, { fs });
    await store.install('detector', '1.0.0', writerOf(modelFiles('1.0.0')));
    await store.install('detector', '1.1.0', writerOf(modelFiles('1.1.0')));
    fs.log.length = 0;
    const slot = await store.install('detector', '2.0.0', writerOf(modelFiles('2.0.0')));
    const { log } = fs;
    const modelDir = path.join(root, 'detector');
    const slotsDir = path.join(modelDir, 'slots');

    const intoPlace = at(log, 'rename of the staging folder', (c) => c.op === 'rename' && String(c.args[1]) === path.join(slotsDir, slot.id));
    const staging = String(log[intoPlace]?.args[0]);
    expect(path.basename(staging)).toMatch(/^\.staging\./u);
    // Every model file, every folder inside the slot and the slot record: fsynced before the rename.
    for (const p of Object.keys(modelFiles('2.0.0'))) expect(at(log, `fsync of ${p}`, synced(path.join(staging, 'files', p)))).toBeLessThan(intoPlace);
    for (const dir of ['files/weights', 'files', '']) expect(at(log, `fsync of ${dir || 'the slot folder'}`, synced(path.join(staging, dir)))).toBeLessThan(intoPlace);
    const record = at(log, 'fsync of slot.json', synced(path.join(staging, 'slot.json')));
    // The folder's fsync comes after the last entry made in it (slot.json).
    expect(record).toBeLessThan(at(log, 'fsync of the slot folder', synced(staging), record));
    // Children before parents.
    expect(at(log, '', synced(path.join(staging, 'files/weights')))).toBeLessThan(at(log, '', synced(path.join(staging, 'files'))));

    // The rename into place is made durable (slots/ fsynced) before the state file names the slot.
    const slotsSync = at(log, 'fsync of slots/', synced(slotsDir), intoPlace);
    const temp = at(log, 'the temporary state file', (c) => c.op === 'open' && isTempOf(path.basename(String(c.args[0])), STATE_FILE));
    expect(slotsSync).toBeLessThan(temp);
    const tempPath = String(log[temp]?.args[0]);
    const tempSync = at(log, 'fsync of the temporary state', synced(tempPath));
    const switchAt = at(log, 'the switch', renamed((p) => p === tempPath));
    expect(String(log[switchAt]?.args[1])).toBe(path.join(modelDir, STATE_FILE));
    expect(tempSync).toBeLessThan(switchAt);
    const modelSync = at(log, 'fsync of the model folder', synced(modelDir), switchAt);

    // GC only after the switch is durable, and only by renaming to trash first.
    const gcRename = at(log, 'the GC rename', renamed((p) => path.basename(p).startsWith('1.0.0@')));
    expect(gcRename).toBeGreaterThan(modelSync);
    expect(path.basename(String(log[gcRename]?.args[1]))).toMatch(/^\.trash\./u);
    expect(log.findIndex((c) => c.op === 'rm' && String(c.args[0]).includes('1.0.0@') && !String(c.args[0]).includes('.trash.'))).toBe(-1);

    // The lock is held from before the rename into place until after the GC.
    const lockTaken = at(log, 'the lock', (c) => c.op === 'link' && String(c.args[1]) === path.join(modelDir, '.lock'));
    const lockFreed = at(log, 'the unlock', (c) => c.op === 'rm' && String(c.args[0]) === path.join(modelDir, '.lock'));
    expect(lockTaken).toBeLessThan(intoPlace);
    expect(lockFreed).toBeGreaterThan(gcRename);
  });

  it('a rollback writes only the state file, fsynced before its rename and its folder after', async () => {
    const fs = recordingFs();
    const store = await ModelStore.open(root, { fs });
    await store.install('detector', '1.0.0', writerOf(modelFiles('1.0.0')));
    await store.install('detector', '1.1.0', writerOf(modelFiles('1.1.0')));
    fs.log.length = 0;
    await store.rollback('detector');
    const { log } = fs;
    const writes = log.filter((c) => (c.op === 'open' && c.args[1] === 'wx') || c.op === 'rename' || c.op === 'mkdir' || c.op === 'chmod' || (c.op === 'rm' && !String(c.args[0]).includes('.lock')));
    expect(writes.map((c) => `${c.op} ${path.basename(String(c.args[0])).replace(/\.\d+\.[0-9a-f]{12}\.tmp$/u, '.TMP')}`)).toEqual([
      'open .lock.TMP',
      'open state.json.TMP',
      'rename state.json.TMP',
    ]);
    const switchAt = at(log, 'the switch', (c) => c.op === 'rename');
    expect(at(log, 'fsync of the new state', synced(String(log[switchAt]?.args[0])))).toBeLessThan(switchAt);
    expect(at(log, 'fsync of the model folder', synced(path.join(root, 'detector')), switchAt)).toBeGreaterThan(switchAt);
  });
});

describe('writeFileAtomic', () => {
  it('replaces a file whole: temp, fsync, rename, fsync of the folder; mode 0600; nothing left over', async () => {
    const fs = recordingFs();
    const file = path.join(root, 'state.json');
    await writeFileAtomic(file, 'old', { fs });
    await writeFileAtomic(file, 'new', { fs });
    expect(await readFile(file, 'utf8')).toBe('new');
    expect(await tree(root)).toEqual(['state.json']);
    const last = fs.log.slice(fs.log.map((c) => c.op === 'open' && c.args[1] === 'wx').lastIndexOf(true));
    expect(last.map((c) => c.op)).toEqual(['open', 'handle.writeFile', 'handle.sync', 'handle.close', 'rename', 'open', 'handle.sync', 'handle.close']);
    expect(last[0]?.args[2]).toBe(0o600);
    expect(last[5]?.args).toEqual([root, 'r', undefined]);
  });

  it('keeps the old content and removes its temporary file when the write fails', async () => {
    const file = path.join(root, 'state.json');
    await writeFileAtomic(file, 'old');
    const fs = recordingFs((c) => (c.op === 'handle.writeFile' ? errno('ENOSPC') : undefined));
    await expect(writeFileAtomic(file, 'new', { fs })).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(await readFile(file, 'utf8')).toBe('old');
    expect(await tree(root)).toEqual(['state.json']);
  });

  it('names its temporary files so a cleaner can tell them', () => {
    const name = path.basename(tempName(path.join(root, 'state.json')));
    expect(name).toMatch(new RegExp(`^state\\.json\\.${process.pid}\\.[0-9a-f]{12}\\.tmp$`, 'u'));
    expect(isTempOf(name, 'state.json')).toBe(true);
    expect(isTempOf(name, 'state')).toBe(false);
    expect(isTempOf('state.json.tmp', 'state.json')).toBe(false);
    expect(isTempOf('state.json.12.0123456789ab.tmp.x', 'state.json')).toBe(false);
  });
});
