import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Value } from '@sinclair/typebox/value';
import { LineCounter, parseDocument, isMap, isSeq, type Document, type Node } from 'yaml';
import type { ConfigIssue } from './config-error.js';
import { PipelineFile, type PipelineConfig } from './schema.js';

/**
 * A pipeline file read and checked against the file schema, keeping the YAML positions so every
 * later problem can be reported at its file:line:column.
 */
export interface ParsedPipeline {
  readonly file: string;
  readonly baseDir: string;
  /** The document as plain data (undefined when it is not even a mapping). */
  readonly config: PipelineConfig | undefined;
  /** Structural problems: YAML syntax, unknown or missing top-level keys, wrong types. */
  readonly issues: ConfigIssue[];
  /** Where a key path is in the file (the closest enclosing node when the exact one is missing). */
  locate(keyPath: readonly (string | number)[]): { line: number; column: number };
}

/** Reads and parses a pipeline file. A missing or unreadable file is one issue at line 0. */
export async function readPipelineFile(file: string): Promise<ParsedPipeline> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (error) {
    const issue: ConfigIssue = { file, line: 0, column: 0, path: '', message: `cannot read the pipeline file: ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'it does not exist' : String(error)}` };
    return { file, baseDir: path.dirname(path.resolve(file)), config: undefined, issues: [issue], locate: () => ({ line: 0, column: 0 }) };
  }
  return parsePipelineText(text, file);
}

/** Parses pipeline YAML (or JSON, which is YAML) held in memory; `file` names it in messages. */
export function parsePipelineText(text: string, file: string): ParsedPipeline {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const locate = (keyPath: readonly (string | number)[]): { line: number; column: number } => position(doc, lineCounter, keyPath);
  const issues: ConfigIssue[] = [];
  for (const error of doc.errors) {
    const at = lineCounter.linePos(error.pos[0]);
    issues.push({ file, line: at.line, column: at.col, path: '', message: `YAML: ${error.message.split('\n')[0] ?? error.message}` });
  }
  const data: unknown = issues.length === 0 ? doc.toJS() : undefined;
  const baseDir = path.dirname(path.resolve(file));
  if (issues.length > 0) return { file, baseDir, config: undefined, issues, locate };
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    issues.push({ file, line: 1, column: 1, path: '', message: 'a pipeline file is a mapping with name, sources, stages, sinks and flows' });
    return { file, baseDir, config: undefined, issues, locate };
  }
  issues.push(...structuralIssues(data, file, locate));
  return { file, baseDir, config: data as PipelineConfig, issues, locate };
}

/** A pipeline given as an object (Pipeline.fromConfig): the same checks, without positions. */
export function parsePipelineObject(config: unknown, name = '<config>', baseDir = process.cwd()): ParsedPipeline {
  const locate = (): { line: number; column: number } => ({ line: 0, column: 0 });
  const issues = typeof config === 'object' && config !== null ? structuralIssues(config, name, locate) : [{ file: name, line: 0, column: 0, path: '', message: 'a pipeline is an object with name, sources, stages, sinks and flows' }];
  return { file: name, baseDir, config: config as PipelineConfig, issues, locate };
}

function structuralIssues(data: unknown, file: string, locate: ParsedPipeline['locate']): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const seen = new Set<string>();
  for (const error of Value.Errors(PipelineFile, data)) {
    const keyPath = error.path.split('/').slice(1).map(unescapePointer).map((k) => (/^\d+$/u.test(k) ? Number(k) : k));
    // A union (flows) reports one error per branch; the first is enough.
    const key = `${error.path}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const at = locate(keyPath);
    issues.push({ file, ...at, path: keyPath.join('.'), message: explain(error.message, keyPath, error.value) });
  }
  return issues;
}

function explain(message: string, keyPath: readonly (string | number)[], value: unknown): string {
  if (message === 'Unexpected property') {
    const key = keyPath[keyPath.length - 1];
    if (keyPath.length === 1) return `unknown key '${key}': a pipeline file has name, description, sources, stages, sinks and flows`;
    if (keyPath.length === 3) return `unknown key '${key}': a node has use, params, queue, deadline, priority and description`;
    return `unknown key '${key}'`;
  }
  if (message.startsWith('Expected required property')) return `missing required key '${keyPath[keyPath.length - 1]}'`;
  if (keyPath[0] === 'flows' && typeof value === 'string') return `'${value}' is not a flow: write 'from.port -> to.port' (ports may be left out when the node has one)`;
  return `${message.charAt(0).toLowerCase()}${message.slice(1)}${value === undefined ? '' : ` (found ${JSON.stringify(value)})`}`;
}

function unescapePointer(segment: string): string {
  return segment.replace(/~1/gu, '/').replace(/~0/gu, '~');
}

/** Line and column of the node at `keyPath`, or of the closest ancestor that exists. */
function position(doc: Document, lines: LineCounter, keyPath: readonly (string | number)[]): { line: number; column: number } {
  let node: Node | null | undefined = doc.contents;
  let at = node?.range?.[0] ?? 0;
  for (const key of keyPath) {
    if (isMap(node)) {
      const pair = node.items.find((p) => (p.key as { value?: unknown } | null)?.value === key);
      if (pair === undefined) break;
      // Point at the key itself: that is what the user typed and what an editor should select.
      at = (pair.key as Node | null)?.range?.[0] ?? at;
      node = pair.value as Node | null;
    } else if (isSeq(node) && typeof key === 'number') {
      const item = node.items[key] as Node | undefined;
      if (item === undefined) break;
      at = item.range?.[0] ?? at;
      node = item;
    } else {
      break;
    }
  }
  const pos = lines.linePos(at);
  return { line: pos.line, column: pos.col };
}
