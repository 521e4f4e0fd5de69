import { createRequire } from 'node:module';
import path from 'node:path';
import type * as KoffiModule from 'koffi';
import { DeviceUnavailableError } from '../../errors.js';
import type { SysRoot } from '../../hal/sysroot.js';
import { bindTflite, type TfliteApi } from './c-api.js';

/** The TFLite C library's file name on Linux. */
export const TFLITE_LIBRARY = 'libtensorflowlite_c.so';

/** The npm package that ships prebuilt TFLite 2.9 C libraries (optional dependency of aios). */
export const TFLITE_NODE_PACKAGE = 'tfjs-tflite-node@0.0.2';

/** Where one attempt looked and why it failed; all of them end up in the user's message. */
export interface LibraryAttempt {
  readonly source: string;
  readonly path?: string;
  readonly error: string;
}

/**
 * A library file to try: where the choice came from (`options.libraryPath`, `AIOS_TFLITE_LIB`,
 * `system`, `tfjs-tflite-node`) and the host path, or why there is none from that source.
 */
export interface LibraryCandidate {
  readonly source: string;
  readonly path?: string;
  readonly missing?: string;
}

/**
 * The places to look for libtensorflowlite_c, in order: an explicit path, `AIOS_TFLITE_LIB`, a
 * system copy found the way the dynamic loader would (Jetson and Raspberry Pi images often carry
 * one, built for the board), then the copy tfjs-tflite-node ships for linux x64/arm64.
 */
export async function tfliteCandidates(explicit: string | undefined, sys: SysRoot): Promise<LibraryCandidate[]> {
  return [...(await libraryCandidates(TFLITE_LIBRARY, { source: 'options.libraryPath', path: explicit }, 'AIOS_TFLITE_LIB', sys)), bundledLibrary()];
}

/**
 * The usual places for a native library, in order: an explicit path, an environment variable,
 * then the machine's loader folders (found, or recorded as missing so the error can say so).
 */
export async function libraryCandidates(library: string, explicit: { source: string; path: string | undefined }, envVar: string, sys: SysRoot): Promise<LibraryCandidate[]> {
  const candidates: LibraryCandidate[] = [];
  if (explicit.path !== undefined) candidates.push({ source: explicit.source, path: explicit.path });
  const fromEnv = process.env[envVar];
  if (fromEnv !== undefined && fromEnv !== '') candidates.push({ source: envVar, path: fromEnv });
  const system = await sys.findLibrary(library);
  candidates.push(system === undefined ? { source: 'system', missing: `${library} is not in the dynamic loader's folders` } : { source: 'system', path: sys.resolve(system) });
  return candidates;
}

/**
 * Binds the first candidate that loads; otherwise returns every attempt and a one-line summary
 * ("system (/usr/lib/...): wrong ELF class; ...") for the caller's error.
 */
export function bindFirst<T>(candidates: readonly LibraryCandidate[], bind: (path: string) => T): { value: T } | { attempts: LibraryAttempt[]; tried: string } {
  const attempts: LibraryAttempt[] = [];
  for (const candidate of candidates) {
    if (candidate.path === undefined) {
      attempts.push({ source: candidate.source, error: candidate.missing ?? 'not found' });
      continue;
    }
    try {
      return { value: bind(candidate.path) };
    } catch (error) {
      attempts.push({ source: candidate.source, path: candidate.path, error: firstLine(error) });
    }
  }
  return { attempts, tried: attempts.map((a) => `${a.source}${a.path === undefined ? '' : ` (${a.path})`}: ${a.error}`).join('; ') };
}

/**
 * Loads the first candidate that binds. Throws DeviceUnavailableError EAI_HAL_ENGINE_UNAVAILABLE
 * listing every place tried when none does, with the install that fixes it.
 */
export function loadTflite(koffi: typeof KoffiModule, candidates: readonly LibraryCandidate[]): TfliteApi {
  const bound = bindFirst(candidates, (file) => bindTflite(koffi, file));
  if ('value' in bound) return bound.value;
  const { attempts, tried } = bound;
  throw new DeviceUnavailableError(
    'EAI_HAL_ENGINE_UNAVAILABLE',
    `The TFLite C library (${TFLITE_LIBRARY}) could not be loaded. Tried ${tried}`,
    `npm install ${TFLITE_NODE_PACKAGE} (ships TFLite 2.9 for linux x64 and arm64), or install a system ${TFLITE_LIBRARY} built for this machine, or point AIOS_TFLITE_LIB at one`,
    { details: { engine: 'tflite', attempts } },
  );
}

/** koffi's and dlopen's messages run to several lines; the first says what went wrong. */
export function firstLine(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.split('\n')[0] ?? message;
}

const BUNDLED_DIRS: Readonly<Record<string, string>> = {
  'linux-x64': 'linux_amd64',
  'linux-arm64': 'linux_arm64',
};

/** tfjs-tflite-node's own copy, found through module resolution so hoisting does not matter. */
function bundledLibrary(): LibraryCandidate {
  let pkg: string;
  try {
    pkg = createRequire(import.meta.url).resolve('tfjs-tflite-node/package.json');
  } catch {
    return { source: 'tfjs-tflite-node', missing: `${TFLITE_NODE_PACKAGE} is not installed (it is an optional dependency)` };
  }
  const dir = BUNDLED_DIRS[`${process.platform}-${process.arch}`];
  if (dir === undefined) return { source: 'tfjs-tflite-node', missing: `it ships no library for ${process.platform}/${process.arch}` };
  return { source: 'tfjs-tflite-node', path: path.join(path.dirname(pkg), 'cc_deps', dir, TFLITE_LIBRARY) };
}
