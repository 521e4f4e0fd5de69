import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { NodeDefinition } from './definition.js';

/**
 * The node kinds a pipeline may `use`: built-ins registered by the composition root, plus user
 * modules named by path (`use: ./stages/lane-filter.js`), loaded on demand. A name is unique per
 * role, so `mcap` can be both a source (replay) and a sink (recording). An instance, so tests
 * and embedding applications each have their own.
 */
export class NodeKinds {
  private readonly kinds = new Map<string, NodeDefinition>();

  register(...definitions: readonly NodeDefinition[]): this {
    for (const d of definitions) {
      const key = `${d.role}:${d.use}`;
      if (this.kinds.has(key)) throw new Error(`A ${d.role} kind '${d.use}' is already registered.`);
      this.kinds.set(key, d);
    }
    return this;
  }

  /** The kind named `use` for `role`; without a role, the first of any role (for error messages). */
  get(use: string, role?: NodeDefinition['role']): NodeDefinition | undefined {
    if (role !== undefined) return this.kinds.get(`${role}:${use}`);
    return [...this.kinds.values()].find((d) => d.use === use);
  }

  list(role?: NodeDefinition['role']): NodeDefinition[] {
    return [...this.kinds.values()].filter((k) => role === undefined || k.role === role);
  }

  /** Whether `use` names a module file rather than a registered kind. */
  static isModule(use: string): boolean {
    return use.startsWith('./') || use.startsWith('../') || path.isAbsolute(use);
  }

  /**
   * Loads a user node module: its default export, or its only export that looks like a node
   * definition. Throws an Error saying what the module must export.
   */
  static async loadModule(use: string, baseDir: string): Promise<NodeDefinition> {
    const file = path.resolve(baseDir, use);
    const mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
    const candidates = [mod['default'], ...Object.values(mod)].filter(isDefinition);
    const first = candidates[0];
    if (first === undefined) throw new Error(`${use} exports no node definition: export default defineNode({ use, role, params, inputs, outputs, ... }) (see docs/user-stages.md)`);
    return first;
  }
}

function isDefinition(value: unknown): value is NodeDefinition {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return typeof v['use'] === 'string' && (v['role'] === 'source' || v['role'] === 'stage' || v['role'] === 'sink') && Array.isArray(v['inputs']) && Array.isArray(v['outputs']);
}
