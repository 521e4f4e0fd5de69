import { spawn, spawnSync } from 'node:child_process';
import { appendFile, chmod, mkdir, mkdtemp, readFile, rm, stat, symlink, truncate, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AiosError } from '../../../../drivers/errors.js';
import { StoreError } from '../../../../models/store/errors.js';
import { identityOf, ownerToken, thisProcess } from '../../../../models/store/lock.js';
import { LOCK_FILE, ModelStore, STATE_FILE, type Slot } from '../../../../models/store/model-store.js';
import { contentOf, errno, modelFiles, recordingFs, sha256, tree, writerOf } from './helpers.js';

let root: string;
beforeEach(async () => {
  root = path.join(await mkdtemp(path.join(tmpdir(), 'aios-store-')), 'store');
});
afterEach(async () => {
  await rm(path.dirname(root), { recursive: true, force: true });
});

const T0 = new Date('2026-03-01T12:00:00Z');
const open = (options: Parameters<typeof ModelStore.open>[1] = {}): Promise<ModelStore> => ModelStore.open(root, { now: () => T0, ...options });
const install = (store: ModelStore, version: string, model = 'detector'): Promise<Slot> => store.install(model, version, writerOf(modelFiles(version)));
const versions = async (store: ModelStore, model = 'detector'): Promise<[string | undefined, string | undefined, string[]]> => {
  const entry = (await store.list()).find((e) => e.model === model);
  return [entry?.active?.version, entry?.previous?.version, (entry?.inactive ?? []).map((s) => s.version)];
};
const mode = async (p: string): Promise<string> => ((await stat(p)).mode & 0o777).toString(8);

describe('ModelStore: install, switch, roll back', () => {
  it('installs into a private slot, switches to it and lays out the documented tree', async () => {
    const store = await open();
    const slot = await install(store, '1.0.0');
    expect(slot).toMatchObject({ model: 'detector', version: '1.0.0', entry: 'model.onnx', installedAt: T0.toISOString(), bytes: 4096 + 2048 + Buffer.byteLength('person\ncar\n# 1.0.0\n') });
    expect(slot.id).toMatch(/^1\.0\.0@[0-9a-f]{8}$/u);
    expect(slot.dir).toBe(path.join(root, 'detector', 'slots', slot.id, 'files'));
    for (const [p, data] of Object.entries(modelFiles('1.0.0'))) {
      expect(await readFile(path.join(slot.dir, p))).toEqual(data);
      expect(await mode(path.join(slot.dir, p))).toBe('600');
    }
    expect(await tree(root)).toEqual([
      'detector/',
      'detector/slots/',
      `detector/slots/${slot.id}/`,
      `detector/slots/${slot.id}/files/`,
      `detector/slots/${slot.id}/files/labels.txt`,
      `detector/slots/${slot.id}/files/model.onnx`,
      `detector/slots/${slot.id}/files/weights/`,
      `detector/slots/${slot.id}/files/weights/shard-1.bin`,
      `detector/slots/${slot.id}/slot.json`,
      'detector/state.json',
    ]);
    for (const dir of ['', 'detector', 'detector/slots', `detector/slots/${slot.id}`, `detector/slots/${slot.id}/files`, `detector/slots/${slot.id}/files/weights`]) expect(await mode(path.join(root, dir))).toBe('700');
    expect(await mode(path.join(root, 'detector', STATE_FILE))).toBe('600');
    const state = JSON.parse(await readFile(path.join(root, 'detector', STATE_FILE), 'utf8')) as unknown;
    expect(state).toEqual({ format: 'aios-model-store/1', model: 'detector', active: { version: '1.0.0', slot: slot.id }, previous: null, changed: T0.toISOString() });
    const record = JSON.parse(await readFile(path.join(root, 'detector', 'slots', slot.id, 'slot.json'), 'utf8')) as { files: unknown[] };
    expect(record).toMatchObject({ format: 'aios-model-slot/1', model: 'detector', version: '1.0.0', manifestDigest: contentOf(modelFiles('1.0.0')).manifestDigest, entry: 'model.onnx' });
    expect(record.files).toEqual(contentOf(modelFiles('1.0.0')).files);
    expect(await store.active('detector')).toEqual(slot);
  });

  it('keeps the active and the previous version and removes the one before', async () => {
    const store = await open();
    const v1 = await install(store, '1.0.0');
    await install(store, '1.1.0');
    expect(await versions(store)).toEqual(['1.1.0', '1.0.0', []]);
    await install(store, '1.2.0');
    expect(await versions(store)).toEqual(['1.2.0', '1.1.0', []]);
    await expect(stat(path.dirname(v1.dir))).rejects.toMatchObject({ code: 'ENOENT' });
    const [entry] = await store.list();
    expect(entry?.bytes).toBe((entry?.active?.bytes ?? 0) + (entry?.previous?.bytes ?? 0));
    expect((await tree(path.join(root, 'detector', 'slots'))).filter((n) => !n.includes('/'))).toHaveLength(0);
  });

  it('rolls back to the previous version and forward again, and says when there is nothing to go back to', async () => {
    const store = await open();
    await install(store, '1.0.0');
    await expect(store.rollback('detector')).rejects.toMatchObject({ code: 'EAI_STORE_NO_PREVIOUS' });
    await install(store, '2.0.0');
    const back = await store.rollback('detector');
    expect(back.version).toBe('1.0.0');
    expect(await versions(store)).toEqual(['1.0.0', '2.0.0', []]);
    expect((await store.active('detector'))?.dir).toBe(back.dir);
    await store.rollback('detector');
    expect(await versions(store)).toEqual(['2.0.0', '1.0.0', []]);
    await expect(store.rollback('tracker')).rejects.toMatchObject({ code: 'EAI_STORE_NOT_INSTALLED' });
  });

  it('activates a version still present, does nothing for the active one, and refuses one that is gone', async () => {
    const store = await open();
    await install(store, '1.0.0');
    const v2 = await install(store, '2.0.0');
    expect((await store.activate('detector', '2.0.0')).id).toBe(v2.id);
    expect(await versions(store)).toEqual(['2.0.0', '1.0.0', []]);
    expect((await store.activate('detector', '1.0.0')).version).toBe('1.0.0');
    expect(await versions(store)).toEqual(['1.0.0', '2.0.0', []]);
    const error = await store.activate('detector', '0.9.0').catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'EAI_STORE_NOT_INSTALLED', details: { present: ['1.0.0', '2.0.0'] } });
    expect((error as Error).message).toContain('present: 1.0.0, 2.0.0');
  });

  it('reinstalling the active version replaces its slot (a repair) and keeps the previous one', async () => {
    const store = await open();
    await install(store, '1.0.0');
    const first = await install(store, '2.0.0');
    const again = await install(store, '2.0.0');
    expect(again.id).not.toBe(first.id);
    expect(await versions(store)).toEqual(['2.0.0', '1.0.0', []]);
    // Installing the previous version again makes it active and keeps the other as previous.
    await install(store, '1.0.0');
    expect(await versions(store)).toEqual(['1.0.0', '2.0.0', []]);
  });

  it('keeps models apart and lists them by name', async () => {
    const store = await open();
    await install(store, '1.0.0', 'detector');
    await install(store, '0.3.0', 'tracker');
    await install(store, '0.4.0', 'tracker');
    const list = await store.list();
    expect(list.map((e) => [e.model, e.active?.version, e.previous?.version])).toEqual([
      ['detector', '1.0.0', undefined],
      ['tracker', '0.4.0', '0.3.0'],
    ]);
  });
});

describe('ModelStore: what the writer hands over', () => {
  const files = modelFiles('1.0.0');

  it('passes a writer error on unchanged, installs nothing and leaves no staging folder', async () => {
    const store = await open();
    await install(store, '1.0.0');
    const refused = new AiosError('EAI_BUNDLE_DIGEST_MISMATCH', 'model.onnx does not match the manifest');
    await expect(store.install('detector', '2.0.0', async (dir) => {
      await mkdir(dir);
      await writeFile(path.join(dir, 'model.onnx'), 'half');
      throw refused;
    })).rejects.toBe(refused);
    expect(await versions(store)).toEqual(['1.0.0', undefined, []]);
    expect((await tree(path.join(root, 'detector', 'slots'))).filter((n) => n.startsWith('.'))).toEqual([]);
  });

  it.each([
    ['a digest that is not the bytes on disk', (c: ReturnType<typeof contentOf>) => ({ ...c, files: c.files.map((f, i) => (i === 0 ? { ...f, sha256: sha256('other') } : f)) }), /model\.onnx: sha256/u],
    ['a size that is not the file', (c: ReturnType<typeof contentOf>) => ({ ...c, files: c.files.map((f, i) => (i === 1 ? { ...f, size: f.size + 1 } : f)) }), /labels\.txt: size \(expected 20, found 19\)/u],
    ['a file it did not write', (c: ReturnType<typeof contentOf>) => ({ ...c, files: [...c.files, { path: 'extra.bin', size: 0, sha256: sha256('') }] }), /extra\.bin: missing/u],
    ['a file it wrote but did not report', (c: ReturnType<typeof contentOf>) => ({ ...c, files: c.files.slice(0, 2) }), /weights\/shard-1\.bin: extra/u],
  ])('refuses %s (EAI_STORE_CONTENT_MISMATCH)', async (_what, report, message) => {
    const store = await open();
    await install(store, '1.0.0');
    const error = await store.install('detector', '2.0.0', writerOf(modelFiles('2.0.0'), report)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StoreError);
    expect(error).toMatchObject({ code: 'EAI_STORE_CONTENT_MISMATCH' });
    expect((error as Error).message).toMatch(message);
    expect(await versions(store)).toEqual(['1.0.0', undefined, []]);
    expect((await tree(path.join(root, 'detector', 'slots'))).filter((n) => n.startsWith('.'))).toEqual([]);
  });

  it.each([
    ['another model', { model: 'tracker' }],
    ['another version', { version: '9.9.9' }],
    ['a manifest digest that is not SHA-256 hex', { manifestDigest: 'sha256:abc' }],
    ['an entry that is not one of the files', { entry: 'missing.onnx' }],
    ['no files', { files: [] }],
  ])('refuses a report naming %s', async (_what, extra) => {
    const store = await open();
    await expect(store.install('detector', '1.0.0', writerOf(files, (c) => ({ ...c, ...extra })))).rejects.toMatchObject({ code: 'EAI_STORE_CONTENT_MISMATCH' });
    expect(await store.list()).toEqual([{ model: 'detector', inactive: [], bytes: 0 }]);
  });

  it.each(['../escape.bin', '/etc/passwd', 'weights/../../x', 'C:/x.bin', 'a\\b.bin', '', './model.onnx', 'a//b', 'nul\u0000.bin'])('refuses the path %j (EAI_STORE_PATH_INVALID)', async (bad) => {
    const store = await open();
    const error = await store.install('detector', '1.0.0', writerOf(files, (c) => ({ ...c, files: [...c.files, { path: bad, size: 1, sha256: sha256('x') }] }))).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'EAI_STORE_PATH_INVALID', details: { path: bad } });
    expect(await store.active('detector')).toBeUndefined();
  });

  it('never follows a link the writer left in the slot', async () => {
    const store = await open();
    const outside = path.join(path.dirname(root), 'secret.bin');
    await writeFile(outside, 'outside the store');
    const error = await store
      .install('detector', '1.0.0', async (dir) => {
        await writerOf(files)(dir);
        await symlink(outside, path.join(dir, 'link.bin'));
        return contentOf({ ...files, 'link.bin': Buffer.from('outside the store') });
      })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'EAI_STORE_CONTENT_MISMATCH', details: { problems: [{ path: 'link.bin', problem: 'not-a-file' }] } });
    expect(await mode(outside)).not.toBe('600'); // not chmodded through the link
  });

  it('refuses a slot folder that is a link to another folder, and changes nothing there', async () => {
    const store = await open();
    const elsewhere = path.join(path.dirname(root), 'elsewhere');
    await mkdir(elsewhere, { mode: 0o755 });
    await writerOf(files)(path.join(elsewhere, 'm'));
    const error = await store
      .install('detector', '1.0.0', async (dir) => {
        await symlink(path.join(elsewhere, 'm'), dir);
        return contentOf(files);
      })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'EAI_STORE_CONTENT_MISMATCH', details: { problems: expect.arrayContaining([{ path: '.', problem: 'not-a-file' }]) } });
    expect(await mode(path.join(elsewhere, 'm'))).toBe('755');
    expect(await mode(path.join(elsewhere, 'm', 'model.onnx'))).toBe('644');
  });

  it.each([
    ['model', '../detector'],
    ['model', '.hidden'],
    ['model', 'a/b'],
    ['version', '1.0.0@deadbeef'],
    ['version', ''],
  ])('refuses the %s name %j (EAI_STORE_NAME_INVALID)', async (kind, name) => {
    const store = await open();
    const call = kind === 'model' ? store.install(name, '1.0.0', writerOf(files)) : store.install('detector', name, writerOf(files));
    await expect(call).rejects.toMatchObject({ code: 'EAI_STORE_NAME_INVALID', details: { kind, name } });
  });
});

describe('ModelStore: check, acquire and files changed at rest', () => {
  const damage: [string, (file: string) => Promise<void>, string][] = [
    ['one flipped byte', async (f) => writeFile(f, Buffer.from((await readFile(f)).map((b, i) => (i === 100 ? b ^ 1 : b)))), 'sha256'],
    ['a truncated file', (f) => truncate(f, 10), 'size'],
    ['a deleted file', (f) => rm(f), 'missing'],
    ['a file opened to everyone', (f) => chmod(f, 0o644), 'mode'],
  ];

  it('reports the active slot as intact', async () => {
    const store = await open();
    const slot = await install(store, '1.0.0');
    expect(await store.check('detector')).toEqual({ model: 'detector', version: '1.0.0', slot: slot.id, files: 3, bytes: slot.bytes });
    await expect(store.check('tracker')).rejects.toMatchObject({ code: 'EAI_STORE_NOT_INSTALLED' });
  });

  it.each(damage)('detects %s (EAI_STORE_SLOT_DAMAGED) and refuses to hand the slot out', async (_what, hurt, problem) => {
    const store = await open();
    const slot = await install(store, '1.0.0');
    await hurt(path.join(slot.dir, 'model.onnx'));
    const error = await store.check('detector').catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'EAI_STORE_SLOT_DAMAGED', details: { model: 'detector', version: '1.0.0', problems: [{ path: 'model.onnx', problem }] } });
    expect((error as Error).message).toMatch(/changed since they were installed: model\.onnx/u);
    await expect(store.acquire('detector')).rejects.toMatchObject({ code: 'EAI_STORE_SLOT_DAMAGED' });
    const lease = await store.acquire('detector', { verify: false });
    expect(lease.slot.id).toBe(slot.id);
    lease.release();
  });

  it('detects a file added to a slot', async () => {
    const store = await open();
    const slot = await install(store, '1.0.0');
    await writeFile(path.join(slot.dir, 'weights', 'evil.bin'), 'x', { mode: 0o600 });
    await expect(store.check('detector')).rejects.toMatchObject({ details: { problems: [{ path: 'weights/evil.bin', problem: 'extra' }] } });
  });

  it('checks the previous slot on request and refuses to roll back onto a damaged one', async () => {
    const store = await open();
    const v1 = await install(store, '1.0.0');
    await install(store, '2.0.0');
    expect((await store.check('detector', { version: '1.0.0' })).slot).toBe(v1.id);
    await appendFile(path.join(v1.dir, 'labels.txt'), 'truck\n');
    await expect(store.check('detector', { version: '1.0.0' })).rejects.toMatchObject({ code: 'EAI_STORE_SLOT_DAMAGED' });
    await expect(store.rollback('detector')).rejects.toMatchObject({ code: 'EAI_STORE_SLOT_DAMAGED' });
    await expect(store.activate('detector', '1.0.0')).rejects.toMatchObject({ code: 'EAI_STORE_SLOT_DAMAGED' });
    expect(await versions(store)).toEqual(['2.0.0', '1.0.0', []]);
    await expect(store.check('detector', { version: '3.0.0' })).rejects.toMatchObject({ code: 'EAI_STORE_NOT_INSTALLED' });
  });

  it('a lease keeps a slot through later installs until it is released', async () => {
    const store = await open();
    await install(store, '1.0.0');
    const lease = await store.acquire('detector');
    await install(store, '2.0.0');
    await install(store, '3.0.0');
    expect(await versions(store)).toEqual(['3.0.0', '2.0.0', ['1.0.0']]);
    expect(await readFile(path.join(lease.slot.dir, 'model.onnx'))).toEqual(modelFiles('1.0.0')['model.onnx']);
    lease.release();
    lease.release(); // idempotent
    expect(await store.gc()).toEqual([{ model: 'detector', name: `slots/${lease.slot.id}`, kind: 'slot' }]);
    expect(await versions(store)).toEqual(['3.0.0', '2.0.0', []]);
  });

  it('reports a damaged state file with EAI_STORE_STATE_CORRUPT', async () => {
    const store = await open();
    await install(store, '1.0.0');
    await writeFile(path.join(root, 'detector', STATE_FILE), '{"format":"aios-model-store/1","active":{"version":"1.0.0","slot":"../../etc"}}');
    await expect(store.active('detector')).rejects.toMatchObject({ code: 'EAI_STORE_STATE_CORRUPT' });
    await writeFile(path.join(root, 'detector', STATE_FILE), '{"format');
    await expect(store.list()).rejects.toMatchObject({ code: 'EAI_STORE_STATE_CORRUPT' });
  });
});

describe('ModelStore: garbage collection', () => {
  it('removes what crashes left and keeps what the state names and what a live process is writing', async () => {
    const store = await open();
    await install(store, '1.0.0');
    const v2 = await install(store, '2.0.0');
    const slots = path.join(root, 'detector', 'slots');
    const dead = ownerToken({ pid: deadPid(), start: '1', boot: thisProcess().boot });
    const live = ownerToken(thisProcess());
    const copy = async (name: string): Promise<void> => {
      await mkdir(path.join(slots, name, 'files'), { recursive: true });
      await writeFile(path.join(slots, name, 'files', 'model.onnx'), 'partial');
    };
    await copy(`.staging.${dead}.3.0.0@00000001`);
    await copy(`.trash.${dead}.0.9.0@00000002`);
    await copy(`.staging.${live}.3.0.0@00000003`);
    await copy(`.staging.${ownerToken({ pid: process.pid, start: thisProcess().start, boot: 'ffffffff' })}.3.0.0@00000004`);
    await copy('0.5.0@00000005'); // a complete-looking slot nothing names
    await writeFile(path.join(root, 'detector', `${STATE_FILE}.123.0123456789ab.tmp`), '{"for');
    await writeFile(path.join(root, 'detector', `${LOCK_FILE}.stale.123.0123456789ab`), '{}');
    const removed = await store.gc('detector');
    expect(removed.map((r) => `${r.kind} ${r.name}`).sort()).toEqual([
      'slot slots/0.5.0@00000005',
      `staging slots/.staging.${dead}.3.0.0@00000001`,
      `staging slots/.staging.${process.pid}-${thisProcess().start}-ffffffff.3.0.0@00000004`,
      `temp ${LOCK_FILE}.stale.123.0123456789ab`,
      `temp ${STATE_FILE}.123.0123456789ab.tmp`,
      `trash slots/.trash.${dead}.0.9.0@00000002`,
    ].sort());
    const [v1] = (await store.list()).map((e) => e.previous?.id);
    expect((await tree(slots)).filter((n) => !n.slice(0, -1).includes('/'))).toEqual([`.staging.${live}.3.0.0@00000003/`, `${v1}/`, `${v2.id}/`]);
    expect(await versions(store)).toEqual(['2.0.0', '1.0.0', []]);
    // Opening the store collects too.
    await rm(path.join(slots, `.staging.${live}.3.0.0@00000003`), { recursive: true });
    await copy('0.6.0@00000006');
    await open();
    expect((await tree(slots)).filter((n) => !n.slice(0, -1).includes('/'))).toHaveLength(2);
  });

  it('makes a new root private and narrows an existing one', async () => {
    await open();
    expect(await mode(root)).toBe('700');
    await chmod(root, 0o755);
    await open();
    expect(await mode(root)).toBe('700');
    await rm(root, { recursive: true });
    await writeFile(root, 'not a folder');
    await expect(open()).rejects.toMatchObject({ code: 'EAI_STORE_IO' });
  });
});

describe('ModelStore: concurrent changes', () => {
  it('overlapping installs of one model all succeed and leave a consistent A/B pair', async () => {
    const store = await open();
    await install(store, '1.0.0');
    const results = await Promise.all(['2.0.0', '2.1.0', '2.2.0', '2.3.0'].map((v) => install(store, v)));
    const [active, previous, inactive] = await versions(store);
    expect(inactive).toEqual([]);
    expect(results.map((r) => r.version)).toContain(active);
    expect(results.map((r) => r.version)).toContain(previous);
    expect(active).not.toBe(previous);
    await store.check('detector');
    await store.check('detector', { version: previous ?? '' });
    expect((await tree(path.join(root, 'detector', 'slots'))).filter((n) => !n.slice(0, -1).includes('/'))).toHaveLength(2);
  });

  it('a rollback during a slow install runs at once and the install then switches on top of it', async () => {
    const store = await open();
    await install(store, '1.0.0');
    await install(store, '2.0.0');
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const slow = store.install('detector', '3.0.0', async (dir) => {
      await gate;
      return writerOf(modelFiles('3.0.0'))(dir);
    });
    expect((await store.rollback('detector')).version).toBe('1.0.0');
    release();
    await slow;
    expect(await versions(store)).toEqual(['3.0.0', '1.0.0', []]);
  });

  it('waits for a lock held by a running process, then fails with EAI_STORE_LOCKED and keeps the old state', async () => {
    const store = await open({ lockTimeoutMs: 150 });
    await install(store, '1.0.0');
    const holder = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)'], { stdio: 'ignore' });
    try {
      await waitFor(() => identityOf(holder.pid ?? 0).start !== '');
      await writeFile(path.join(root, 'detector', LOCK_FILE), JSON.stringify(identityOf(holder.pid ?? 0)));
      const started = Date.now();
      const error = await install(store, '2.0.0').catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'EAI_STORE_LOCKED', details: { owner: { pid: holder.pid } } });
      expect(Date.now() - started).toBeGreaterThanOrEqual(150);
      expect(await versions(store)).toEqual(['1.0.0', undefined, []]);
      expect((await tree(path.join(root, 'detector', 'slots'))).filter((n) => n.startsWith('.'))).toEqual([]);
    } finally {
      holder.kill('SIGKILL');
    }
  });

  it.each([
    ['a process that exited', (): object => ({ pid: deadPid(), start: '1', boot: thisProcess().boot })],
    ['another boot (same pid)', (): object => ({ ...thisProcess(), boot: 'ffffffff' })],
    ['a reused pid (another start time)', (): object => ({ ...thisProcess(), start: '1' })],
  ])('breaks a stale lock left by %s', async (_what, owner) => {
    const store = await open({ lockTimeoutMs: 2000 });
    await install(store, '1.0.0');
    await writeFile(path.join(root, 'detector', LOCK_FILE), JSON.stringify(owner()));
    await install(store, '2.0.0');
    expect(await versions(store)).toEqual(['2.0.0', '1.0.0', []]);
    await expect(stat(path.join(root, 'detector', LOCK_FILE))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('waits on an unreadable lock while it is fresh and breaks it once old', async () => {
    const store = await open({ lockTimeoutMs: 100 });
    await install(store, '1.0.0');
    const lock = path.join(root, 'detector', LOCK_FILE);
    await writeFile(lock, '');
    await expect(install(store, '2.0.0')).rejects.toMatchObject({ code: 'EAI_STORE_LOCKED' });
    const old = new Date(Date.now() - 60_000);
    await utimes(lock, old, old);
    await install(store, '2.0.0');
    expect(await versions(store)).toEqual(['2.0.0', '1.0.0', []]);
  });
});

describe('ModelStore: a full disk and failing storage', () => {
  /** The real file system, failing the calls `match` picks with `code` while `fault.armed`. */
  const failing = (match: (op: string, target: string) => boolean, code = 'ENOSPC'): { fs: ReturnType<typeof recordingFs>; fault: { armed: boolean } } => {
    const fault = { armed: false };
    const fs = recordingFs((call) => (fault.armed && match(call.op, String(call.file ?? call.args[0] ?? '')) ? errno(code) : undefined));
    return { fs, fault };
  };

  it.each([
    ['the new state file', (op: string, t: string) => op === 'handle.writeFile' && t.includes(`${STATE_FILE}.`)],
    ['the slot record', (op: string, t: string) => op === 'handle.writeFile' && t.endsWith('slot.json')],
    ['the rename into place', (op: string, t: string) => op === 'rename' && t.includes('.staging.')],
  ])('ENOSPC while writing %s leaves the old version active and nothing behind', async (_what, match) => {
    const { fs, fault } = failing(match);
    const store = await open({ fs });
    await install(store, '1.0.0');
    fault.armed = true;
    const error = await install(store, '2.0.0').catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'EAI_STORE_IO', details: { errno: 'ENOSPC' } });
    expect((error as Error).message).toMatch(/the models that were active stay active\. Fix: the disk is full/u);
    fault.armed = false;
    expect(await versions(store)).toEqual(['1.0.0', undefined, []]);
    expect(await store.check('detector')).toMatchObject({ version: '1.0.0' });
    const left = await tree(path.join(root, 'detector'));
    expect(left.filter((n) => n.includes('.staging.') || n.includes('.trash.') || n.endsWith('.tmp') || n.includes('2.0.0'))).toEqual([]);
  });

  it('a writer that runs out of space mid-file fails the install and the old version stays', async () => {
    const store = await open();
    await install(store, '1.0.0');
    const error = await store
      .install('detector', '2.0.0', async (dir) => {
        await mkdir(dir);
        await writeFile(path.join(dir, 'model.onnx'), Buffer.alloc(1000));
        throw errno('ENOSPC');
      })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ENOSPC' });
    expect(await versions(store)).toEqual(['1.0.0', undefined, []]);
  });

  it('EIO on the fsync of a new slot fails the install before the switch', async () => {
    const { fs, fault } = failing((op, t) => op === 'handle.sync' && t.endsWith('model.onnx'), 'EIO');
    const store = await open({ fs });
    await install(store, '1.0.0');
    fault.armed = true;
    await expect(install(store, '2.0.0')).rejects.toMatchObject({ code: 'EAI_STORE_IO', details: { errno: 'EIO' } });
    fault.armed = false;
    expect(await versions(store)).toEqual(['1.0.0', undefined, []]);
  });

  it('EIO on the folder fsync after the state rename reports the error but keeps the switched slot', async () => {
    const { fs, fault } = failing((op, t) => op === 'handle.sync' && t === path.join(root, 'detector'), 'EIO');
    const store = await open({ fs });
    await install(store, '1.0.0');
    fault.armed = true;
    await expect(install(store, '2.0.0')).rejects.toMatchObject({ code: 'EAI_STORE_IO', details: { errno: 'EIO' } });
    fault.armed = false;
    // The rename happened: the new state names the new slot, so its slot must not have been deleted.
    expect(await versions(store)).toEqual(['2.0.0', '1.0.0', []]);
    expect((await store.check('detector')).version).toBe('2.0.0');
  });
});

/** A pid no process has: one that just exited. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', '0']);
  return child.pid ?? 999_999;
}

async function waitFor(ok: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !ok(); i += 1) await new Promise((r) => setTimeout(r, 10));
}
