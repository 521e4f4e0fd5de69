import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';

/**
 * Transpiles `entry` (a .ts file of this repository) and every module it imports by relative path
 * into `out`, keeping the repository's layout, as plain ESM JavaScript a child `node` can import.
 * Type-checking is not its job (tsc does that); it is a per-file transform like vitest's, in well
 * under a second, and independent of the rest of the tree (unlike a full `tsc` build into dist/).
 * Plain JavaScript modules it reaches (the generated protobuf code) are copied as they are, and so
 * are the `.mjs` worker scripts beside any module (loaded by path at run time). Put `out` inside
 * the repository (e.g. under node_modules/.cache) when the graph imports packages: a child
 * resolves them by walking up from the file. Returns the path of the transpiled entry.
 */
export async function transpileGraph(repo: string, entry: string, out: string): Promise<string> {
  const seen = new Set<string>();
  const queue = [path.resolve(repo, entry)];
  for (let file = queue.pop(); file !== undefined; file = queue.pop()) {
    if (seen.has(file)) continue;
    seen.add(file);
    const source = await readFile(file, 'utf8');
    for (const m of source.matchAll(/(?:from\s+|import\s*\(\s*)['"](\.{1,2}\/[^'"]+)\.js['"]/gu)) {
      if (m[1] === undefined) continue;
      const tsFile = path.resolve(path.dirname(file), `${m[1]}.ts`);
      const jsFile = path.resolve(path.dirname(file), `${m[1]}.js`);
      if (!existsSync(tsFile) && existsSync(jsFile)) {
        const target = path.join(out, path.relative(repo, jsFile));
        await mkdir(path.dirname(target), { recursive: true });
        await copyFile(jsFile, target);
        continue;
      }
      queue.push(tsFile);
    }
    for (const name of await readdir(path.dirname(file))) {
      if (!name.endsWith('.mjs')) continue;
      const target = path.join(out, path.relative(repo, path.join(path.dirname(file), name)));
      await mkdir(path.dirname(target), { recursive: true });
      await copyFile(path.join(path.dirname(file), name), target);
    }
    const { outputText } = ts.transpileModule(source, {
      fileName: file,
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: true, sourceMap: false },
    });
    const target = path.join(out, path.relative(repo, file)).replace(/\.ts$/u, '.js');
    await mkdir(path.dirname(target), { recursive: true });
    await writeFile(target, outputText);
  }
  await writeFile(path.join(out, 'package.json'), '{ "type": "module" }\n');
  return path.join(out, path.relative(repo, entry)).replace(/\.ts$/u, '.js');
}
