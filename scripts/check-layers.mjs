#!/usr/bin/env node
// Keeps the layer arrows pointing down (DESIGN.md): deploy -> runtime -> models -> drivers.
// A file may import its own layer and the layers below it, never one above. Prints every
// offending import with file and line, and exits 1 if there is any.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';

const LAYERS = ['drivers', 'models', 'runtime', 'deploy'];
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const problems = [];

for (const layer of LAYERS) {
  for (const file of walk(path.join(root, layer))) {
    const lines = readFileSync(file, 'utf8').split('\n');
    lines.forEach((line, i) => {
      const m = /(?:from\s+|import\s*\(\s*)['"](\.{1,2}\/[^'"]+)['"]/u.exec(line);
      if (!m) return;
      const target = path.relative(root, path.resolve(path.dirname(file), m[1])).split(path.sep)[0];
      const rank = LAYERS.indexOf(target);
      if (rank > LAYERS.indexOf(layer)) problems.push(`${path.relative(root, file)}:${i + 1}: ${layer}/ imports ${target}/ (${m[1]}); ${layer}/ may only use ${LAYERS.slice(0, LAYERS.indexOf(layer) + 1).join(', ')}`);
      if (rank === -1 && target !== layer) problems.push(`${path.relative(root, file)}:${i + 1}: imports '${m[1]}' outside the layer folders`);
    });
  }
}
if (problems.length > 0) {
  console.error(`layer check failed:\n${problems.join('\n')}`);
  process.exit(1);
}
console.log('layer check: ok');

function* walk(dir) {
  let entries = [];
  try { entries = readdirSync(dir); } catch { return; }
  for (const name of entries) {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) yield* walk(p);
    else if (p.endsWith('.ts')) yield p;
  }
}
