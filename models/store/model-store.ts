/**
 * The device's A/B model store: every installed model keeps an active and a previous version, each
 * in its own slot folder, and a small state file says which is which. Docs: docs/store.md.
 *
 *     <root>/                                    0700
 *       <model>/                                 0700
 *         state.json                             { active: {version, slot}, previous: … | null }
 *         .lock                                  while a process changes this model
 *         slots/                                 0700
 *           <version>@<8 hex>/                   one slot (slot.ts): slot.json + files/
 *           .staging.<pid-start-boot>.<slot id>/ an install in progress (or a crashed one)
 *           .trash.<pid-start-boot>.<slot id>/   a slot being deleted
 *
 * Crash safety comes from one rule: a slot is complete and durable (every file and folder fsynced,
 * renamed into `slots/`, `slots/` fsynced) before `state.json` may name it, and `state.json` is
 * only ever replaced whole by rename(2) (models/atomic-write.ts). The rename of `state.json` is
 * the switch: before it the old version is active, after it the new one, and no moment in between
 * names a half-written slot. GC deletes only slots that the durable state names neither active nor
 * previous, and renames each to `.trash…` before deleting it, so a half-deleted slot never looks
 * like a complete one.
 *
 * Readers take no lock: `active`/`acquire` read `state.json` once and return the slot's absolute
 * path, which stays valid at least until two more switches of that model (it is kept as previous
 * after the next one). `acquire` also holds it in this process so GC here skips it until
 * `release`. Another process's GC does not know this process's leases.
 *
 * Writers (install, activate, rollback, gc) of one model run one at a time: in this process by a
 * queue per model, across processes by the model's lock file (lock.ts, O_EXCL with stale-lock
 * detection). An install writes its slot before it takes the lock, so a long download does not
 * hold up a rollback; only the switch and the GC run under it.
 *
 * Plaintext model bytes are written to disk, mode 0600 in 0700 folders, rather than held only in
 * memory: engines map model files (shared, evictable pages, where a buffer is a heap copy per
 * load), multi-file models name their parts by path, and a rollback must not need the network or
 * a key. docs/store.md weighs this against plaintext at rest.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { nodeFileSystem, syncDir, type FileSystem } from '../atomic-write.js';
import { ioError, StoreError } from './errors.js';
import { collect, discard, LOCK_FILE, SLOTS_DIR, stagingName, type GcRemoval } from './gc.js';
import { acquireLock } from './lock.js';
import { checkName, DIR_MODE, describeProblems, FILE_MODE, inspectSlot, parseSlotRecord, serializeSlotRecord, SLOT_FILES, SLOT_RECORD, slotRecordOf, type SlotContent, type SlotFile, type SlotRecord } from './slot.js';
import { afterInstall, readState, writeState, type State } from './state.js';

export { LOCK_FILE, SLOTS_DIR, type GcRemoval } from './gc.js';
export { SLOT_FILES, SLOT_RECORD, type SlotContent, type SlotFile, type SlotProblem } from './slot.js';
export { STATE_FILE } from './state.js';
export type { FileSystem } from '../atomic-write.js';

/**
 * Fills a new slot. `slotDir` does not exist yet and its parent does (a staging folder private
 * to this install): the writer creates `slotDir` (or renames a folder of its own to it) and puts
 * the model files under it, and resolves once every file is written and verified. It must reject
 * if the content does not verify; the store then removes everything and installs nothing. The
 * writer need not fsync or set modes: the store does both while it checks what was written.
 *
 * The bundle verifier plugs in with one line (models/bundle/bundle.ts, `extractBundle` refuses a
 * folder that exists and stages beside it, which this contract allows):
 *
 *     (dir) => extractBundle(source, policy, dir, { decrypt }).then(slotContentOf)
 *
 * where `slotContentOf(v)` is `{ manifestDigest: sha256hex(v.payload), entry: p.entry,
 * model: p.name, version: p.version, files: p.files.map(({ path, size, sha256 }) => ({ path,
 * size, sha256 })) }` with `p = v.statement.predicate`. That holds when `decrypt` opens every
 * encrypted file; a file left encrypted is on disk as `<path>.age` with `p.files[i].encrypted`'s
 * size and digest, and must be reported so.
 */
export type SlotWriter = (slotDir: string) => Promise<SlotContent>;

/** One installed version of a model. `dir` is absolute and stays valid as described above. */
export interface Slot {
  readonly model: string;
  readonly version: string;
  /** The slot folder's name, `<version>@<8 hex>`. */
  readonly id: string;
  /** The folder holding the model files (`…/slots/<id>/files`). */
  readonly dir: string;
  readonly manifestDigest: string;
  readonly entry?: string;
  readonly installedAt: string;
  readonly files: readonly SlotFile[];
  /** Sum of the files' sizes. */
  readonly bytes: number;
}

/** A model as `list` reports it. */
export interface ModelEntry {
  readonly model: string;
  readonly active?: Slot;
  readonly previous?: Slot;
  /** Complete slots that are neither: left by a crash before a switch, or held by a lease. GC removes them. */
  readonly inactive: readonly Slot[];
  /** Bytes of all complete slots. */
  readonly bytes: number;
}

/** The outcome of a successful `check`. */
export interface CheckReport {
  readonly model: string;
  readonly version: string;
  readonly slot: string;
  readonly files: number;
  readonly bytes: number;
}

/** A slot held for reading; GC in this process skips it until `release`. */
export interface SlotLease {
  readonly slot: Slot;
  /** Idempotent. */
  release(): void;
}

export interface ModelStoreOptions {
  /** Default node:fs/promises. Tests inject failures or record the calls. */
  readonly fs?: FileSystem;
  /** For `installedAt`. Default `() => new Date()`. */
  readonly now?: () => Date;
  /** How long a change waits for another process's lock on the same model. Default 30 s. */
  readonly lockTimeoutMs?: number;
  /** Run `gc()` in `open` (default true): clears what a crash left. */
  readonly gc?: boolean;
}

/** Options of the calls that switch to a slot or hand one out. */
export interface VerifyOptions {
  /** Re-hash the slot's files before using it (default true); a damaged slot is refused with EAI_STORE_SLOT_DAMAGED. */
  readonly verify?: boolean;
}

export class ModelStore {
  readonly root: string;
  private readonly fs: FileSystem;
  private readonly now: () => Date;
  private readonly lockTimeoutMs: number;
  private readonly queues = new Map<string, Promise<unknown>>();
  private readonly leases = new Map<string, number>();

  private constructor(root: string, options: ModelStoreOptions) {
    this.root = root;
    this.fs = options.fs ?? nodeFileSystem;
    this.now = options.now ?? (() => new Date());
    this.lockTimeoutMs = options.lockTimeoutMs ?? 30_000;
  }

  /**
   * Opens (making it, mode 0700, if needed) the store at `root` and, unless `gc: false`, removes
   * what interrupted installs and deletions left (skipping a model another process holds locked
   * past `lockTimeoutMs`). A root readable by others is narrowed to 0700. Opening does not hash
   * anything: `acquire` checks a slot when the runtime takes it, `check` on demand.
   */
  static async open(root: string, options: ModelStoreOptions = {}): Promise<ModelStore> {
    const store = new ModelStore(path.resolve(root), options);
    await store.makeRoot();
    if (options.gc === false) return store;
    for (const model of await store.modelNames()) {
      // A model another process is changing right now is left to it: that process collects after its switch.
      await store.gc(model).catch((error: unknown) => {
        if (!(error instanceof StoreError && error.code === 'EAI_STORE_LOCKED')) throw error;
      });
    }
    return store;
  }

  /**
   * Installs `version` of `model` into a new slot and makes it active; the active version before
   * becomes the previous one (unless it is the same version: then the previous one stays), and
   * whatever was previous is removed. Reinstalling the active version replaces its slot (a repair).
   *
   * `write` fills the slot (see SlotWriter). If it rejects, its error is passed on unchanged and
   * nothing is installed. The store then checks the slot against the writer's report
   * (EAI_STORE_PATH_INVALID, EAI_STORE_CONTENT_MISMATCH), seals it (0600/0700, fsync), and
   * switches. Other failures are EAI_STORE_IO or EAI_STORE_LOCKED, and leave the old version
   * active. A crash at any point leaves the old version active, or the new one complete.
   *
   * Installs of one model may overlap: the writes run side by side, the switches one at a time,
   * so the last to switch is active and the one before it previous. A failure of the GC after the
   * switch does not fail the install (the next `gc` retries).
   */
  async install(model: string, version: string, write: SlotWriter): Promise<Slot> {
    checkName('model', model);
    checkName('version', version);
    const modelDir = await this.makeModelDir(model);
    const slotsDir = path.join(modelDir, SLOTS_DIR);
    const id = `${version}@${randomBytes(4).toString('hex')}`;
    const staging = path.join(slotsDir, stagingName(id));
    let record: SlotRecord;
    try {
      await this.fs.mkdir(staging, { mode: DIR_MODE }).catch((e: unknown) => Promise.reject(ioError(`make the staging folder ${staging}`, e)));
      const content = await write(path.join(staging, SLOT_FILES));
      record = slotRecordOf(model, version, content, this.now());
      const problems = await inspectSlot(this.fs, path.join(staging, SLOT_FILES), record.files, { seal: true });
      if (problems.length > 0) {
        throw new StoreError('EAI_STORE_CONTENT_MISMATCH', `the files written for ${model} ${version} do not match what the writer reported: ${describeProblems(problems)}. Nothing was installed. Fix: the writer must report exactly the files it wrote, with the size and SHA-256 of the bytes on disk.`, { details: { model, version, problems } });
      }
      await this.writeNew(path.join(staging, SLOT_RECORD), serializeSlotRecord(record));
      await syncDir(staging, this.fs).catch((e: unknown) => Promise.reject(ioError(`fsync ${staging}`, e)));
    } catch (error) {
      await this.fs.rm(staging, { recursive: true, force: true }).catch(() => undefined);
      throw error;
    }

    try {
      return await this.commit(model, id, staging, record);
    } finally {
      // Gone after the rename; still there when the lock could not be taken.
      await this.fs.rm(staging, { recursive: true, force: true }).catch(() => undefined);
    }
  }

  /** Install's second half, under the lock: the slot into place, the switch, the GC. */
  private commit(model: string, id: string, staging: string, record: SlotRecord): Promise<Slot> {
    const slotsDir = path.join(this.root, model, SLOTS_DIR);
    const version = record.version;
    return this.serial(model, async () => {
      const target = path.join(slotsDir, id);
      try {
        await this.fs.rename(staging, target);
        await syncDir(slotsDir, this.fs);
      } catch (error) {
        throw ioError(`move the new slot of ${model} ${version} into place`, error, { model, version });
      }
      const before = await readState(this.fs, this.modelDir(model)).catch(async (error: unknown) => {
        await discard(this.fs, slotsDir, id);
        throw error;
      });
      await this.switchTo(model, afterInstall(before, version, id), id);
      await this.collect(model).catch(() => undefined);
      return this.slotOf(record, id);
    });
  }

  /**
   * Makes `version` active; the active one becomes previous. The slot must still be present: the
   * previous version, or one a crash or a lease left. Already active: nothing changes. Throws
   * EAI_STORE_NOT_INSTALLED, or EAI_STORE_SLOT_DAMAGED if `verify` (default) finds it changed.
   */
  async activate(model: string, version: string, options: VerifyOptions = {}): Promise<Slot> {
    checkName('model', model);
    checkName('version', version);
    await this.expectModel(model);
    return this.serial(model, async () => {
      const state = await readState(this.fs, this.modelDir(model));
      if (state.active?.version === version) return this.readSlot(model, state.active.slot);
      const id = state.previous?.version === version ? state.previous.slot : await this.findSlot(model, version);
      if (id === undefined) {
        const have = [state.active?.version, state.previous?.version].filter((v) => v !== undefined);
        throw new StoreError('EAI_STORE_NOT_INSTALLED', `${model} ${version} is not in the store (present: ${have.length > 0 ? have.join(', ') : 'nothing'}). Fix: install it from its bundle.`, { details: { model, version, present: have } });
      }
      const slot = await this.readSlot(model, id);
      if (options.verify !== false) await this.verify(slot);
      await this.switchTo(model, { active: { version, slot: id }, previous: state.active }, id);
      await this.collect(model).catch(() => undefined);
      return slot;
    });
  }

  /**
   * Swaps active and previous: the previous version runs again, and the one that was active is
   * kept as previous (so a second rollback undoes the first). Throws EAI_STORE_NO_PREVIOUS, or
   * EAI_STORE_SLOT_DAMAGED if `verify` (default) finds the previous slot changed.
   */
  async rollback(model: string, options: VerifyOptions = {}): Promise<Slot> {
    checkName('model', model);
    await this.expectModel(model);
    return this.serial(model, async () => {
      const state = await readState(this.fs, this.modelDir(model));
      if (state.previous === null) {
        throw new StoreError('EAI_STORE_NO_PREVIOUS', `${model} has no previous version to roll back to (active: ${state.active?.version ?? 'none'}). Fix: install the version you want from its bundle.`, { details: { model, active: state.active?.version } });
      }
      const slot = await this.readSlot(model, state.previous.slot);
      if (options.verify !== false) await this.verify(slot);
      await this.switchTo(model, { active: state.previous, previous: state.active }, state.previous.slot);
      return slot;
    });
  }

  /**
   * Removes, for `model` or every model, each slot that is neither active nor previous (nor leased
   * in this process), staging and trash folders whose process is gone, temporary state files and
   * set-aside locks. Never touches what the state names. Returns what it removed.
   */
  async gc(model?: string): Promise<GcRemoval[]> {
    if (model !== undefined) checkName('model', model);
    const models = model === undefined ? await this.modelNames() : [model];
    const removed: GcRemoval[] = [];
    for (const m of models) {
      if (!(await this.exists(path.join(this.root, m, SLOTS_DIR)))) continue;
      removed.push(...(await this.serial(m, () => this.collect(m))));
    }
    return removed;
  }

  /** Every model in the store, by name, with its slots. Takes no lock. */
  async list(): Promise<ModelEntry[]> {
    const entries: ModelEntry[] = [];
    for (const model of await this.modelNames()) {
      const state = await readState(this.fs, this.modelDir(model));
      const slots: Slot[] = [];
      for (const name of await this.slotNames(model)) {
        const slot = await this.readSlot(model, name).catch((error: unknown) => {
          if (name === state.active?.slot || name === state.previous?.slot) throw error;
          return undefined; // garbage with a damaged record: GC removes it
        });
        if (slot !== undefined) slots.push(slot);
      }
      const find = (p: State['active']): Slot | undefined => (p === null ? undefined : slots.find((s) => s.id === p.slot));
      const active = find(state.active);
      const previous = find(state.previous);
      entries.push({
        model,
        ...(active === undefined ? {} : { active }),
        ...(previous === undefined ? {} : { previous }),
        inactive: slots.filter((s) => s !== active && s !== previous),
        bytes: slots.reduce((sum, s) => sum + s.bytes, 0),
      });
    }
    return entries;
  }

  /** The active slot of `model`, or undefined if none. Reads the state once; takes no lock, leases nothing. */
  async active(model: string): Promise<Slot | undefined> {
    checkName('model', model);
    return this.resolveActive(model, () => undefined);
  }

  /**
   * The active slot of `model`, held against GC in this process until `release`, and (unless
   * `verify: false`) checked like `check`. Throws EAI_STORE_NOT_INSTALLED or EAI_STORE_SLOT_DAMAGED.
   */
  async acquire(model: string, options: VerifyOptions = {}): Promise<SlotLease> {
    checkName('model', model);
    let key: string | undefined;
    const release = (): void => {
      if (key === undefined) return;
      const n = (this.leases.get(key) ?? 1) - 1;
      if (n <= 0) this.leases.delete(key);
      else this.leases.set(key, n);
      key = undefined;
    };
    try {
      const slot = await this.resolveActive(model, (id) => {
        release();
        key = `${model}/${id}`;
        this.leases.set(key, (this.leases.get(key) ?? 0) + 1);
      });
      if (slot === undefined) throw notInstalled(model);
      if (options.verify !== false) await this.verify(slot);
      return { slot, release };
    } catch (error) {
      release();
      throw error;
    }
  }

  /**
   * Re-hashes the files of `model`'s active slot (or of `options.version`'s) and compares them with
   * the sizes and SHA-256 recorded at install: detects bit rot and changes at rest. Throws
   * EAI_STORE_SLOT_DAMAGED listing every difference (details.problems), EAI_STORE_NOT_INSTALLED.
   */
  async check(model: string, options: { readonly version?: string } = {}): Promise<CheckReport> {
    checkName('model', model);
    let slot: Slot | undefined;
    if (options.version === undefined) {
      slot = await this.active(model);
      if (slot === undefined) throw notInstalled(model);
    } else {
      checkName('version', options.version);
      const state = await readState(this.fs, this.modelDir(model));
      const id = [state.active, state.previous].find((p) => p?.version === options.version)?.slot ?? (await this.findSlot(model, options.version));
      if (id === undefined) throw notInstalled(model, options.version);
      slot = await this.readSlot(model, id);
    }
    await this.verify(slot);
    return { model, version: slot.version, slot: slot.id, files: slot.files.length, bytes: slot.bytes };
  }

  // ---- helpers -------------------------------------------------------------------------------

  private slotOf(record: SlotRecord, id: string): Slot {
    return {
      model: record.model,
      version: record.version,
      id,
      dir: path.join(this.root, record.model, SLOTS_DIR, id, SLOT_FILES),
      manifestDigest: record.manifestDigest,
      ...(record.entry === undefined ? {} : { entry: record.entry }),
      installedAt: record.installedAt,
      files: record.files,
      bytes: record.files.reduce((sum, f) => sum + f.size, 0),
    };
  }

  private async verify(slot: Slot): Promise<void> {
    const problems = await inspectSlot(this.fs, slot.dir, slot.files, { seal: false });
    if (problems.length === 0) return;
    throw new StoreError(
      'EAI_STORE_SLOT_DAMAGED',
      `the files of ${slot.model} ${slot.version} (${slot.dir}) changed since they were installed: ${describeProblems(problems)}. The storage is failing or someone changed them. Fix: do not run this slot; roll back or install the version again from its bundle, and check the storage (dmesg, smartctl).`,
      { details: { model: slot.model, version: slot.version, slot: slot.id, problems } },
    );
  }

  /** Reads the state, then the active slot's record; if GC removed that slot in between, reads again. */
  private async resolveActive(model: string, hold: (id: string) => void): Promise<Slot | undefined> {
    for (let attempt = 0; ; attempt += 1) {
      const state = await readState(this.fs, this.modelDir(model));
      if (state.active === null) return undefined;
      hold(state.active.slot);
      try {
        return await this.readSlot(model, state.active.slot);
      } catch (error) {
        // Two switches and a GC by another process between our two reads; try the fresh state.
        if (attempt >= 2 || !(error instanceof StoreError) || error.details.missing !== true) throw error;
      }
    }
  }

  private async readSlot(model: string, id: string): Promise<Slot> {
    const file = path.join(this.root, model, SLOTS_DIR, id, SLOT_RECORD);
    let text: string;
    try {
      text = await this.fs.readFile(file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new StoreError('EAI_STORE_SLOT_DAMAGED', `the slot ${id} of ${model} has no ${SLOT_RECORD} (${file}): it was deleted or damaged outside aios. Fix: roll back or install the version again from its bundle.`, { cause: error, details: { model, slot: id, missing: true } });
      }
      throw ioError(`read ${file}`, error, { file });
    }
    const record = parseSlotRecord(text, file);
    if (record.model !== model || `${record.version}@` !== id.slice(0, record.version.length + 1)) {
      throw new StoreError('EAI_STORE_STATE_CORRUPT', `${file} describes ${record.model} ${record.version}, not the slot ${model}/${id} it is in. Fix: roll back or install the version again.`, { details: { file } });
    }
    return this.slotOf(record, id);
  }

  /** The newest complete slot of `version` that the state does not name, if any. */
  private async findSlot(model: string, version: string): Promise<string | undefined> {
    let best: Slot | undefined;
    for (const name of await this.slotNames(model)) {
      if (!name.startsWith(`${version}@`)) continue;
      const slot = await this.readSlot(model, name).catch(() => undefined);
      if (slot !== undefined && slot.version === version && (best === undefined || slot.installedAt > best.installedAt)) best = slot;
    }
    return best?.id;
  }

  /**
   * The switch (state.ts). If it fails and the state on disk does not name `fresh` (a new slot),
   * that slot is removed again; a failure after the rename (the folder's fsync) leaves it named.
   */
  private async switchTo(model: string, next: State, fresh: string): Promise<void> {
    try {
      await writeState(this.fs, this.modelDir(model), model, next, this.now());
    } catch (error) {
      const now = await readState(this.fs, this.modelDir(model)).catch(() => undefined);
      if (now !== undefined && now.active?.slot !== fresh && now.previous?.slot !== fresh) await discard(this.fs, path.join(this.modelDir(model), SLOTS_DIR), fresh).catch(() => undefined);
      throw error;
    }
  }

  /** GC of one model, under its lock: keeps what the state names and what this process leases. */
  private async collect(model: string): Promise<GcRemoval[]> {
    const state = await readState(this.fs, this.modelDir(model));
    const keep = new Set([state.active?.slot, state.previous?.slot]);
    return collect(this.fs, this.modelDir(model), model, (name) => keep.has(name) || this.leases.has(`${model}/${name}`));
  }

  private modelDir(model: string): string {
    return path.join(this.root, model);
  }

  /** Runs `task` after the model's earlier changes in this process, holding the model's lock file. */
  private serial<T>(model: string, task: () => Promise<T>): Promise<T> {
    const run = async (): Promise<T> => {
      const lock = await acquireLock(path.join(this.root, model, LOCK_FILE), { fs: this.fs, timeoutMs: this.lockTimeoutMs, what: `the model ${model}` });
      try {
        return await task();
      } finally {
        await lock.release().catch(() => undefined);
      }
    };
    const previous = this.queues.get(model) ?? Promise.resolve();
    const next = previous.then(run, run);
    const tail = next.catch(() => undefined);
    this.queues.set(model, tail);
    void tail.then(() => {
      if (this.queues.get(model) === tail) this.queues.delete(model);
    });
    return next;
  }

  private async writeNew(file: string, text: string): Promise<void> {
    try {
      const handle = await this.fs.open(file, 'wx', FILE_MODE);
      try {
        await handle.writeFile(text);
        await handle.sync();
      } finally {
        await handle.close();
      }
    } catch (error) {
      throw ioError(`write ${file}`, error, { file });
    }
  }

  private async makeRoot(): Promise<void> {
    await mkdirs(this.fs, this.root).catch((e: unknown) => Promise.reject(ioError(`make the store root ${this.root}`, e, { root: this.root })));
    const info = await this.fs.lstat(this.root).catch((e: unknown) => Promise.reject(ioError(`open the store root ${this.root}`, e)));
    if (!info.isDirectory()) throw ioError(`open the store root ${this.root}`, Object.assign(new Error('not a directory'), { code: 'ENOTDIR' }), { root: this.root });
    if ((info.mode & 0o077) !== 0) await this.fs.chmod(this.root, DIR_MODE).catch((e: unknown) => Promise.reject(ioError(`make the store root ${this.root} private (0700)`, e)));
  }

  /** Makes `<root>/<model>/slots`, fsyncing each parent whose entries changed. */
  private async makeModelDir(model: string): Promise<string> {
    const modelDir = path.join(this.root, model);
    for (const [dir, parent] of [
      [modelDir, this.root],
      [path.join(modelDir, SLOTS_DIR), modelDir],
    ] as const) {
      try {
        await this.fs.mkdir(dir, { mode: DIR_MODE });
        await syncDir(parent, this.fs);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw ioError(`make ${dir}`, error, { dir });
      }
    }
    return modelDir;
  }

  private async modelNames(): Promise<string[]> {
    const names = await this.fs.readdir(this.root).catch((e: unknown) => Promise.reject(ioError(`list the store root ${this.root}`, e)));
    const models: string[] = [];
    for (const name of names.sort()) {
      if (!/^[A-Za-z0-9]/u.test(name)) continue;
      const info = await this.fs.lstat(path.join(this.root, name)).catch(() => undefined);
      if (info?.isDirectory() === true) models.push(name);
    }
    return models;
  }

  /** Names of the complete slots of `model` (not staging or trash). */
  private async slotNames(model: string): Promise<string[]> {
    const names = await this.fs.readdir(path.join(this.root, model, SLOTS_DIR)).catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return [] as string[];
      throw ioError(`list the slots of ${model}`, error, { model });
    });
    return names.filter((n) => !n.startsWith('.')).sort();
  }

  private async expectModel(model: string): Promise<void> {
    if (!(await this.exists(path.join(this.root, model, SLOTS_DIR)))) throw notInstalled(model);
  }

  private async exists(p: string): Promise<boolean> {
    return this.fs.lstat(p).then(
      () => true,
      () => false,
    );
  }
}

/** `mkdir -p` with DIR_MODE for every level it makes. */
async function mkdirs(fs: FileSystem, dir: string): Promise<void> {
  try {
    await fs.mkdir(dir, { mode: DIR_MODE });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return;
    if (code !== 'ENOENT' || path.dirname(dir) === dir) throw error;
    await mkdirs(fs, path.dirname(dir));
    await fs.mkdir(dir, { mode: DIR_MODE }).catch((e: NodeJS.ErrnoException) => (e.code === 'EEXIST' ? undefined : Promise.reject(e)));
  }
}

function notInstalled(model: string, version?: string): StoreError {
  return new StoreError('EAI_STORE_NOT_INSTALLED', version === undefined ? `${model} has no active version in the store. Fix: install it from its bundle.` : `${model} ${version} is not in the store. Fix: install it from its bundle.`, { details: { model, version } });
}
