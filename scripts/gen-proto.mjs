#!/usr/bin/env node
// Generates the protobuf code the fleet protocol uses: every deploy/proto/aios/**/*.proto into one
// static ES module, deploy/proto/gen/aios.js, with its types beside it in aios.d.ts (protobufjs-cli:
// pbjs -t static-module -w es6, then pbts). The output is git-ignored and rebuilt by `make build`
// and `make test`; it is skipped when it is newer than every .proto, this script and the installed
// protobufjs-cli. tsc does not copy .js files: a build must copy aios.js to dist/deploy/proto/gen/.
//
// usage: node scripts/gen-proto.mjs [--force]
// Also usable as a vitest globalSetup (its default export generates).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, renameSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const protoRoot = path.join(root, 'deploy/proto');
const outDir = path.join(protoRoot, 'gen');
const outJs = path.join(outDir, 'aios.js');
const outDts = path.join(outDir, 'aios.d.ts');
const cli = path.join(root, 'node_modules/protobufjs-cli');

/** Generates deploy/proto/gen/aios.{js,d.ts} unless they are up to date (or `force`). */
export function generate({ force = false, quiet = false } = {}) {
  const protos = [...walk(path.join(protoRoot, 'aios'))].sort();
  if (protos.length === 0) throw new Error(`gen-proto: no .proto files under ${path.relative(root, protoRoot)}/aios`);
  if (!existsSync(path.join(cli, 'bin/pbjs'))) {
    throw new Error('gen-proto: protobufjs-cli is not installed; run `npm ci` (it is a devDependency)');
  }
  const inputs = [...protos, fileURLToPath(import.meta.url), path.join(cli, 'package.json')];
  if (!force && upToDate([outJs, outDts], inputs)) return false;

  mkdirSync(outDir, { recursive: true });
  // Written under temporary names and renamed, so an interrupted run never leaves a .js without
  // its .d.ts (or half a file) that a later up-to-date check would accept.
  const tmpJs = `${outJs}.tmp-${process.pid}.js`;
  const tmpDts = `${outDts}.tmp-${process.pid}.d.ts`;
  run('pbjs', [
    '-t', 'static-module',
    '-w', 'es6',
    // Keeps the .proto's // comments as the generated code's doc comments (editor hovers).
    '--alt-comment',
    // Node's ESM resolver needs the file extension: protobufjs has no "exports" map.
    '--dependency', 'protobufjs/minimal.js',
    '-p', protoRoot,
    '-o', tmpJs,
    ...protos,
  ]);
  run('pbts', ['-o', tmpDts, tmpJs]);
  renameSync(tmpDts, outDts);
  renameSync(tmpJs, outJs);
  if (!quiet) console.log(`gen-proto: ${protos.length} .proto file(s) -> ${path.relative(root, outJs)}, ${path.relative(root, outDts)}`);
  return true;
}

/** vitest globalSetup hook. */
export default function setup() {
  generate({ quiet: true });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  try {
    generate({ force: process.argv.includes('--force') });
  } catch (error) {
    console.error(error instanceof Error ? error.message : String(error));
    process.exit(1);
  }
}

function run(tool, args) {
  const result = spawnSync(process.execPath, [path.join(cli, 'bin', tool), ...args], { cwd: root, encoding: 'utf8' });
  if (result.status !== 0) {
    throw new Error(`gen-proto: ${tool} failed (exit ${result.status ?? result.signal}):\n${result.stderr || result.stdout}`);
  }
}

function upToDate(outputs, inputs) {
  if (!outputs.every((f) => existsSync(f))) return false;
  const oldestOut = Math.min(...outputs.map((f) => statSync(f).mtimeMs));
  return inputs.every((f) => statSync(f).mtimeMs <= oldestOut);
}

function* walk(dir) {
  let names = [];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) yield* walk(p);
    else if (name.endsWith('.proto')) yield p;
  }
}
