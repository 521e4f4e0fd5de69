import { AiosError } from '../../drivers/errors.js';

/** One problem in a pipeline file, located as precisely as the file allows. */
export interface ConfigIssue {
  readonly file: string;
  /** 1-based; 0 when the problem has no place in the file (a pipeline built from an object). */
  readonly line: number;
  readonly column: number;
  /** Key path inside the file, e.g. `stages.detect.params.model`. */
  readonly path: string;
  readonly message: string;
}

/**
 * A pipeline file that cannot run, with every problem found (not just the first): the message
 * lists them one per line as `file:line:column: key.path: what is wrong`, the way compilers do,
 * so editors can jump to each.
 */
export class ConfigError extends AiosError {
  readonly issues: readonly ConfigIssue[];

  constructor(code: string, issues: readonly ConfigIssue[]) {
    super(code, `${issues.length} problem${issues.length === 1 ? '' : 's'} in ${[...new Set(issues.map((i) => i.file))].join(', ')}:\n${issues.map(formatIssue).join('\n')}`, { details: { issues } });
    this.issues = issues;
  }
}

export function formatIssue(issue: ConfigIssue): string {
  const where = issue.line > 0 ? `${issue.file}:${issue.line}:${issue.column}` : issue.file;
  return `${where}: ${issue.path === '' ? '' : `${issue.path}: `}${issue.message}`;
}
