import path from 'node:path';
import { ModelError } from '../drivers/errors.js';
import { ModelStore } from '../models/store/model-store.js';

/**
 * Which file a model name stands for in this process: what a pipeline's `infer` stage means by
 * `model: store:<name>`, the active version of `<name>` in the device's model store. The device
 * agent sets each name when it activates a version (OTA) or rolls back, and stages that use the
 * name swap to the new file while they run (hot swap; see the infer stage). Outside the agent
 * (`aios run` on a device) a name nobody set is looked up in the model store at
 * `$AIOS_MODEL_STORE` or /var/lib/aios/models.
 */
export type ModelListener = (file: string, version: string) => Promise<void> | void;

export interface CatalogEntry {
  readonly file: string;
  readonly version: string;
}

export const STORE_PREFIX = 'store:';

export class ModelCatalog {
  static #shared: ModelCatalog | undefined;
  readonly #entries = new Map<string, CatalogEntry>();
  readonly #listeners = new Map<string, Set<ModelListener>>();
  #storeRoot: string;

  constructor(storeRoot = process.env['AIOS_MODEL_STORE'] ?? '/var/lib/aios/models') {
    this.#storeRoot = storeRoot;
  }

  /** The process's catalog, which `infer` stages use. */
  static shared(): ModelCatalog {
    ModelCatalog.#shared ??= new ModelCatalog();
    return ModelCatalog.#shared;
  }

  /** Where names nobody set are looked up. */
  useStore(root: string): void {
    this.#storeRoot = root;
  }

  /** The model name in `store:<name>`, or undefined for a plain path. */
  static storeName(model: string): string | undefined {
    return model.startsWith(STORE_PREFIX) ? model.slice(STORE_PREFIX.length) : undefined;
  }

  /** The file `name` stands for now. Throws ModelError EAI_MODEL_NOT_IN_STORE when nothing provides it. */
  async resolve(name: string): Promise<CatalogEntry> {
    const set = this.#entries.get(name);
    if (set !== undefined) return set;
    let slot;
    try {
      slot = await (await ModelStore.open(this.#storeRoot)).active(name);
    } catch (cause) {
      throw new ModelError('EAI_MODEL_NOT_IN_STORE', `the pipeline asks for model '${name}' from the device's model store, which cannot be read at ${this.#storeRoot} (${(cause as Error).message}). Install it (an OTA deployment, or installBundle), or set AIOS_MODEL_STORE.`, { cause, details: { name, store: this.#storeRoot } });
    }
    if (slot === undefined || slot.entry === undefined) {
      throw new ModelError('EAI_MODEL_NOT_IN_STORE', `the pipeline asks for model '${name}', which has no active version in the model store at ${this.#storeRoot}. Deploy it to this device first (aios fleet deploy), or name a model file instead of store:${name}.`, { details: { name, store: this.#storeRoot } });
    }
    return { file: path.join(slot.dir, slot.entry), version: slot.version };
  }

  /**
   * Points `name` at `file` and waits for every stage using it to swap (or to report that it
   * could not, in which case this rejects with the first failure and the caller should point the
   * name back).
   */
  async set(name: string, file: string, version: string): Promise<void> {
    const before = this.#entries.get(name);
    this.#entries.set(name, { file, version });
    if (before?.file === file) return;
    const failures: unknown[] = [];
    await Promise.all([...(this.#listeners.get(name) ?? [])].map(async (l) => {
      try {
        await l(file, version);
      } catch (error) {
        failures.push(error);
      }
    }));
    if (failures.length > 0) throw failures[0];
  }

  /** Calls `listener` whenever `name` is pointed at another file; returns the unsubscribe function. */
  watch(name: string, listener: ModelListener): () => void {
    let set = this.#listeners.get(name);
    if (set === undefined) this.#listeners.set(name, (set = new Set()));
    set.add(listener);
    return () => void set.delete(listener);
  }

  /** How many stages use `name` now. */
  users(name: string): number {
    return this.#listeners.get(name)?.size ?? 0;
  }
}
