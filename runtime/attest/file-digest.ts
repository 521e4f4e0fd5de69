import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AttestError } from './errors.js';

/**
 * Digests of what is on disk: one file (a pipeline config, a user stage), and the runtime itself.
 *
 * The runtime's digest is the SHA-256 of a `sha256sum`-style listing of its files — one line
 * `<hex sha256>  <relative path>\n` per regular file, paths in byte order — so anyone can
 * reproduce it from the installed package with coreutils:
 *
 *   cd <package root> && find package.json dist -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum
 *
 * Symbolic links and other non-regular files are skipped (as `find -type f` does); file modes and
 * times are not covered. Paths are relative to the package root with `/` separators.
 */

/** Lowercase hex SHA-256 of a file, read as a stream (a bundle manifest or a big config never sits whole in memory). */
export async function fileDigest(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Lowercase hex SHA-256 of bytes. */
export function bytesDigest(bytes: Uint8Array | string): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export interface RuntimeDigest {
  /** Lowercase hex SHA-256 of the listing: what the runtime measures and a policy allows. */
  readonly sha256: string;
  /** The package root the paths are relative to. */
  readonly root: string;
  /** The `sha256sum` listing that was hashed, for a person comparing two installs with diff. */
  readonly listing: string;
  readonly files: number;
}

export interface RuntimeDigestOptions {
  /** The package root; default: the root of the aios package this file belongs to. */
  readonly root?: string;
  /**
   * Files and folders under the root to include. Default: `package.json` and `dist` when this
   * code runs from the built package (dist/), else `package.json`, `index.ts` and the four layer
   * folders of the source tree, those of them that exist.
   */
  readonly include?: readonly string[];
}

/** The digest of the installed aios files (see the file comment). Throws `EAI_ATTEST_ARGUMENT` when an included path is missing. */
export async function runtimeDigest(options: RuntimeDigestOptions = {}): Promise<RuntimeDigest> {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const root = path.resolve(options.root ?? packageRoot(here));
  const built = here.split(path.sep).includes('dist');
  // By default, those of the package's parts that are there (a copy may lack index.ts, say): a
  // missing part changes the digest like any other difference, so nothing is waved through.
  const include = options.include ?? (built ? ['package.json', 'dist'] : ['package.json', 'index.ts', 'drivers', 'models', 'runtime', 'deploy'].filter((item, i) => i === 0 || existsSync(path.join(root, item))));
  const files: string[] = [];
  for (const item of include) {
    const full = path.join(root, item);
    if (!existsSync(full)) throw new AttestError('EAI_ATTEST_ARGUMENT', `${full} does not exist: the runtime digest covers ${include.join(', ')} under ${root}`, { details: { root, item } });
    await collect(full, root, files);
  }
  // Byte order of the UTF-8 paths, as `LC_ALL=C sort` orders them (JS string order is UTF-16's).
  const sorted = files.map((f) => Buffer.from(f, 'utf8')).sort(Buffer.compare).map((b) => b.toString('utf8'));
  const lines: string[] = [];
  for (const rel of sorted) lines.push(`${await fileDigest(path.join(root, rel))}  ${rel}\n`);
  const listing = lines.join('');
  return { sha256: bytesDigest(listing), root, listing, files: sorted.length };
}

async function collect(full: string, root: string, out: string[]): Promise<void> {
  const st = await lstat(full);
  if (st.isDirectory()) {
    for (const name of await readdir(full)) await collect(path.join(full, name), root, out);
  } else if (st.isFile()) {
    out.push(path.relative(root, full).split(path.sep).join('/'));
  }
}

/** The nearest folder above `from` holding aios's package.json (the source tree and dist/ sit at different depths). */
function packageRoot(from: string): string {
  let dir = from;
  for (let i = 0; i < 8; i++) {
    if (existsSync(path.join(dir, 'package.json')) && !dir.split(path.sep).includes('dist')) return dir;
    dir = path.dirname(dir);
  }
  throw new AttestError('EAI_ATTEST_ARGUMENT', `no package.json above ${from}: pass runtimeDigest({ root }) with the aios package folder`);
}
