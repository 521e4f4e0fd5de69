import { Value } from '@sinclair/typebox/value';
import type { ConfigIssue } from './config-error.js';
import { ConfigError } from './config-error.js';
import { PortTypeMismatch, type NodeDefinition } from './definition.js';
import { NodeKinds } from './node-kinds.js';
import type { ParsedPipeline } from './pipeline-file.js';
import { ANY, compatible, describe, type PortType } from './port-types.js';
import type { NodeConfig, QueueConfig } from './schema.js';

export type Section = 'sources' | 'stages' | 'sinks';

/** One node ready to run: its definition, validated parameters and execution policy. */
export interface GraphNode {
  readonly name: string;
  readonly section: Section;
  readonly definition: NodeDefinition;
  /** Parameters with defaults applied, as the definition's schema says. */
  readonly params: unknown;
  readonly queue: QueueConfig;
  readonly deadlineMs: number | undefined;
  readonly priority: number;
  readonly outputTypes: Readonly<Record<string, PortType>>;
}

export interface Edge {
  readonly from: { readonly node: string; readonly port: string };
  readonly to: { readonly node: string; readonly port: string };
  /** The queue in front of the receiving node for this edge (the node's, unless the flow sets one). */
  readonly queue: QueueConfig;
}

/** A pipeline that passed every check: nodes in topological order and the edges between them. */
export interface PipelineGraph {
  readonly name: string;
  readonly file: string;
  readonly baseDir: string;
  readonly nodes: readonly GraphNode[];
  readonly edges: readonly Edge[];
}

const DEFAULT_QUEUE: QueueConfig = { size: 4, full: 'drop_oldest' };
const ROLE_OF: Record<Section, NodeDefinition['role']> = { sources: 'source', stages: 'stage', sinks: 'sink' };

/**
 * Checks a parsed pipeline completely before anything starts and reports every problem at once
 * (ConfigError EAI_CFG_INVALID): unknown node kinds and parameters, flows naming missing nodes or
 * ports, stages nothing feeds, nodes whose output goes nowhere, cycles, port type mismatches,
 * and what each kind's own `check` finds (missing recordings, models no device can run).
 */
export async function buildGraph(parsed: ParsedPipeline, kinds: NodeKinds): Promise<PipelineGraph> {
  const issues: ConfigIssue[] = [...parsed.issues];
  const issue = (keyPath: readonly (string | number)[], message: string): void => {
    issues.push({ file: parsed.file, ...parsed.locate(keyPath), path: keyPath.join('.'), message });
  };
  const config = parsed.config;
  if (config === undefined || parsed.issues.length > 0) throw new ConfigError('EAI_CFG_INVALID', issues);

  // Nodes: kinds and parameters.
  const entries: { name: string; section: Section; entry: NodeConfig }[] = [];
  const seen = new Map<string, Section>();
  for (const section of ['sources', 'stages', 'sinks'] as const) {
    for (const [name, entry] of Object.entries(config[section] ?? {})) {
      const earlier = seen.get(name);
      if (earlier !== undefined) issue([section, name], `the name '${name}' is already used in ${earlier}; node names are shared by sources, stages and sinks`);
      else seen.set(name, section);
      entries.push({ name, section, entry });
    }
  }
  const nodes = new Map<string, Omit<GraphNode, 'outputTypes'>>();
  for (const { name, section, entry } of entries) {
    const definition = await resolveKind(entry.use, section, kinds, parsed.baseDir, (message) => issue([section, name, 'use'], message));
    if (definition === undefined) continue;
    const params = Value.Default(definition.params, structuredClone(entry.params ?? {})) as Record<string, unknown>;
    const paramIssues = [...Value.Errors(definition.params, params)];
    for (const e of paramIssues) {
      const keyPath = e.path.split('/').slice(1);
      const key = keyPath[keyPath.length - 1];
      const known = Object.keys((definition.params as { properties?: Record<string, unknown> }).properties ?? {});
      const message = e.message === 'Unexpected property' ? `unknown param '${key}' for ${definition.use}; its params are: ${known.join(', ') || 'none'}` : e.message.startsWith('Expected required property') ? `missing param '${key}' for ${definition.use}` : `${e.message.charAt(0).toLowerCase()}${e.message.slice(1)} (found ${JSON.stringify(e.value)})`;
      issue([section, name, 'params', ...keyPath], message);
    }
    if (paramIssues.length > 0) continue;
    const deadlineMs = entry.deadline === undefined ? undefined : parseDuration(entry.deadline);
    nodes.set(name, { name, section, definition, params, queue: { ...DEFAULT_QUEUE, ...entry.queue }, deadlineMs, priority: entry.priority ?? config.priority ?? 1 });
  }

  // Flows.
  const edges: Edge[] = [];
  config.flows.forEach((flow, index) => {
    const text = typeof flow === 'string' ? flow : `${flow.from} -> ${flow.to}`;
    const [fromText, toText] = text.split('->').map((s) => s.trim());
    const from = endpoint(fromText ?? '', 'from', [...seen.keys()], nodes, (m) => issue(['flows', index], m));
    const to = endpoint(toText ?? '', 'to', [...seen.keys()], nodes, (m) => issue(['flows', index], m));
    if (from === undefined || to === undefined) return;
    const receiver = nodes.get(to.node);
    const queue = typeof flow === 'object' && flow.queue !== undefined ? { ...DEFAULT_QUEUE, ...flow.queue } : (receiver?.queue ?? DEFAULT_QUEUE);
    if (edges.some((e) => e.from.node === from.node && e.from.port === from.port && e.to.node === to.node && e.to.port === to.port)) {
      issue(['flows', index], `duplicate flow ${from.node}.${from.port} -> ${to.node}.${to.port}`);
      return;
    }
    edges.push({ from, to, queue });
  });

  // Every stage and sink input is fed; every source and stage output goes somewhere.
  for (const node of nodes.values()) {
    const fed = edges.filter((e) => e.to.node === node.name);
    const feeds = edges.filter((e) => e.from.node === node.name);
    if (node.section !== 'sources' && fed.length === 0) issue([node.section, node.name], `nothing flows into ${node.name}: add a flow '<node>.<port> -> ${node.name}${node.definition.inputs.length > 1 ? '.<port>' : ''}'`);
    if (node.section !== 'sinks' && feeds.length === 0) issue([node.section, node.name], `${node.name}'s output goes nowhere: add a flow '${node.name} -> <stage or sink>' or remove it`);
  }

  // Cycles, then types in topological order.
  const order = topologicalOrder([...nodes.keys()], edges);
  if (order.cycle !== undefined) {
    const index = config.flows.findIndex((f) => (typeof f === 'string' ? f : `${f.from} -> ${f.to}`).split('->')[0]?.trim().split('.')[0] === order.cycle?.[0]);
    issue(['flows', Math.max(0, index)], `the flows form a cycle: ${order.cycle.join(' -> ')}; pipelines must be acyclic`);
  }
  const outputTypes = new Map<string, Readonly<Record<string, PortType>>>();
  if (order.cycle === undefined) {
    for (const name of order.order) {
      const node = nodes.get(name);
      if (node === undefined) continue;
      const inputs: Record<string, PortType> = {};
      for (const e of edges.filter((x) => x.to.node === name)) {
        const t = outputTypes.get(e.from.node)?.[e.from.port] ?? ANY;
        const already = inputs[e.to.port];
        // A sink records whatever reaches it; a stage port fed by two flows must get one type.
        if (already !== undefined && node.section === 'stages' && !compatible(t, already).ok && !compatible(already, t).ok) {
          issue(flowPath(config.flows, e), `${e.to.node}.${e.to.port} receives ${describe(already)} and ${describe(t)} from different flows`);
        }
        inputs[e.to.port] ??= t;
      }
      try {
        outputTypes.set(name, (await node.definition.types?.(node.params as never, inputs)) ?? Object.fromEntries(node.definition.outputs.map((p) => [p, ANY])));
      } catch (error) {
        // By shape as well as class: a user module may bring its own copy of PortTypeMismatch.
        if (error instanceof PortTypeMismatch || (error instanceof Error && error.name === 'PortTypeMismatch' && typeof (error as { port?: unknown }).port === 'string')) {
          const port = (error as PortTypeMismatch).port;
          const e = edges.find((x) => x.to.node === name && x.to.port === port) ?? edges.find((x) => x.to.node === name);
          issue(e === undefined ? [node.section, name] : flowPath(config.flows, e), `${e === undefined ? '' : `${e.from.node}.${e.from.port} -> ${name}.${port}: `}${error.message}`);
        } else {
          issue([node.section, name], `cannot work out ${name}'s output types: ${error instanceof Error ? error.message : String(error)}`);
        }
        outputTypes.set(name, Object.fromEntries(node.definition.outputs.map((p) => [p, ANY])));
      }
      for (const problem of (await node.definition.check?.(node.params as never, { baseDir: parsed.baseDir, inputs })) ?? []) {
        issue([node.section, name, ...problem.path], problem.message);
      }
    }
  }

  if (issues.length > 0) throw new ConfigError('EAI_CFG_INVALID', issues.sort((a, b) => a.line - b.line || a.column - b.column));
  const ordered = (order.cycle === undefined ? order.order : [...nodes.keys()]).map((n) => nodes.get(n)).filter((n): n is Omit<GraphNode, 'outputTypes'> => n !== undefined);
  return { name: config.name, file: parsed.file, baseDir: parsed.baseDir, nodes: ordered.map((n) => ({ ...n, outputTypes: outputTypes.get(n.name) ?? {} })), edges };
}

/** `50ms` / `1.5s` / `2m` / `250us` / a number of ms, to milliseconds. */
export function parseDuration(value: number | string): number {
  if (typeof value === 'number') return value;
  const m = /^([0-9]+(?:\.[0-9]+)?)(us|ms|s|m)$/u.exec(value);
  if (m === null) throw new Error(`not a duration: ${value}`);
  const n = Number(m[1]);
  return m[2] === 'us' ? n / 1000 : m[2] === 'ms' ? n : m[2] === 's' ? n * 1000 : n * 60_000;
}

async function resolveKind(use: string, section: Section, kinds: NodeKinds, baseDir: string, report: (message: string) => void): Promise<NodeDefinition | undefined> {
  const role = ROLE_OF[section];
  let definition: NodeDefinition | undefined;
  if (NodeKinds.isModule(use)) {
    try {
      definition = await NodeKinds.loadModule(use, baseDir);
    } catch (error) {
      report(`cannot load the node module ${use}: ${error instanceof Error ? error.message.split('\n')[0] : String(error)}`);
      return undefined;
    }
  } else {
    definition = kinds.get(use, role) ?? kinds.get(use);
  }
  if (definition === undefined) {
    const known = kinds.list(role).map((k) => k.use);
    const near = closest(use, known);
    report(`unknown ${role} kind '${use}'${near === undefined ? '' : ` (did you mean '${near}'?)`}; known ${role}s: ${known.join(', ')}`);
    return undefined;
  }
  if (definition.role !== role) {
    report(`'${use}' is a ${definition.role}, not a ${role}: move it under ${definition.role === 'source' ? 'sources' : definition.role === 'stage' ? 'stages' : 'sinks'}`);
    return undefined;
  }
  return definition;
}

function endpoint(text: string, side: 'from' | 'to', names: readonly string[], nodes: ReadonlyMap<string, Omit<GraphNode, 'outputTypes'>>, report: (message: string) => void): { node: string; port: string } | undefined {
  const dot = text.indexOf('.');
  const name = dot < 0 ? text : text.slice(0, dot);
  const node = nodes.get(name);
  if (node === undefined) {
    // A node that exists but failed its own checks was already reported; do not pile on.
    if (!names.includes(name)) {
      const near = closest(name, names);
      report(`flow ${side} unknown node '${name}'${near === undefined ? '' : ` (did you mean '${near}'?)`}; nodes: ${names.join(', ')}`);
    }
    return undefined;
  }
  const ports = side === 'from' ? node.definition.outputs : node.definition.inputs;
  if (ports.length === 0) {
    report(`${name} is a ${node.definition.role}: it has no ${side === 'from' ? 'outputs' : 'inputs'}, so a flow cannot ${side === 'from' ? 'start' : 'end'} there`);
    return undefined;
  }
  if (dot < 0) {
    if (ports.length > 1) {
      report(`${name} has several ${side === 'from' ? 'outputs' : 'inputs'} (${ports.join(', ')}): name one, e.g. '${name}.${ports[0]}'`);
      return undefined;
    }
    return { node: name, port: ports[0] as string };
  }
  const port = text.slice(dot + 1);
  if (!ports.includes(port)) {
    report(`${name} (${node.definition.use}) has no ${side === 'from' ? 'output' : 'input'} '${port}'; its ${side === 'from' ? 'outputs' : 'inputs'}: ${ports.join(', ')}`);
    return undefined;
  }
  return { node: name, port };
}

function flowPath(flows: readonly unknown[], edge: Edge): (string | number)[] {
  const index = flows.findIndex((f) => {
    const text = typeof f === 'string' ? f : `${(f as { from: string }).from} -> ${(f as { to: string }).to}`;
    const [a, b] = text.split('->').map((s) => s.trim());
    return (a === `${edge.from.node}.${edge.from.port}` || a === edge.from.node) && (b === `${edge.to.node}.${edge.to.port}` || b === edge.to.node);
  });
  return ['flows', Math.max(0, index)];
}

/** Kahn's algorithm; on a cycle, one cycle's node names (first repeated at the end). */
function topologicalOrder(names: readonly string[], edges: readonly Edge[]): { order: string[]; cycle?: string[] } {
  const indegree = new Map(names.map((n) => [n, 0]));
  for (const e of edges) indegree.set(e.to.node, (indegree.get(e.to.node) ?? 0) + 1);
  const ready = names.filter((n) => indegree.get(n) === 0);
  const order: string[] = [];
  while (ready.length > 0) {
    const n = ready.shift() as string;
    order.push(n);
    for (const e of edges.filter((x) => x.from.node === n)) {
      const d = (indegree.get(e.to.node) ?? 0) - 1;
      indegree.set(e.to.node, d);
      if (d === 0) ready.push(e.to.node);
    }
  }
  if (order.length === names.length) return { order };
  // Nodes left over are on a cycle or downstream of one; peel off those with no way back into
  // the rest, then walk forward from any node left until one repeats.
  const left = new Set(names.filter((n) => !order.includes(n)));
  for (let changed = true; changed; ) {
    changed = false;
    for (const n of left) {
      if (!edges.some((e) => e.from.node === n && left.has(e.to.node))) {
        left.delete(n);
        changed = true;
      }
    }
  }
  let at = [...left][0] as string;
  const path: string[] = [];
  while (!path.includes(at)) {
    path.push(at);
    at = edges.find((e) => e.from.node === at && left.has(e.to.node))?.to.node ?? at;
  }
  return { order, cycle: [...path.slice(path.indexOf(at)), at] };
}

/** The known name within edit distance 2, if any: typos get a suggestion. */
function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: { name: string; d: number } | undefined;
  for (const c of candidates) {
    const d = editDistance(word, c);
    if (d <= 2 && (best === undefined || d < best.d)) best = { name: c, d };
  }
  return best?.name;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0] as number;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j] as number;
      row[j] = Math.min((row[j] as number) + 1, (row[j - 1] as number) + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length] as number;
}
