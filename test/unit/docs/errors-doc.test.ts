import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const repo = path.resolve(import.meta.dirname, '../../..');

function* sources(dir: string): Generator<string> {
  for (const name of readdirSync(dir)) {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) yield* sources(p);
    else if (p.endsWith('.ts')) yield p;
  }
}

/** Every stable error code the code base can raise: string literals of the form 'EAI_…'. */
function codesInSource(): Map<string, string> {
  const codes = new Map<string, string>();
  for (const layer of ['drivers', 'runtime', 'models', 'deploy']) {
    let files: string[] = [];
    try {
      files = [...sources(path.join(repo, layer))];
    } catch {
      continue;
    }
    for (const file of files) {
      for (const m of readFileSync(file, 'utf8').matchAll(/['"`](EAI_[A-Z0-9_]+)['"`]/gu)) {
        if (m[1] !== undefined && !codes.has(m[1])) codes.set(m[1], path.relative(repo, file));
      }
    }
  }
  return codes;
}

describe('docs/errors.md', () => {
  const doc = readFileSync(path.join(repo, 'docs/errors.md'), 'utf8');
  const documented = new Set([...doc.matchAll(/`(EAI_[A-Z0-9_]+)`/gu)].map((m) => m[1]));

  it('documents every error code the code can raise', () => {
    const missing = [...codesInSource()].filter(([code]) => !documented.has(code)).map(([code, file]) => `${code} (${file})`);
    expect(missing).toEqual([]);
  });

  it('documents no code that no longer exists', () => {
    const codes = codesInSource();
    expect([...documented].filter((c) => c !== undefined && !codes.has(c))).toEqual([]);
  });
});
