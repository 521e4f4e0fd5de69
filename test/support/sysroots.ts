import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SysRoot } from '../../drivers/hal/sysroot.js';

/** Folder of the recorded machines under test/fixtures/sysroots. */
export const SYSROOTS = fileURLToPath(new URL('../fixtures/sysroots/', import.meta.url));

/** Opens one recorded machine by folder name (`jetson-orin-nx-jp6`). */
export function fixtureRoot(name: string): Promise<SysRoot> {
  return SysRoot.open(path.join(SYSROOTS, name));
}

/** Files of a throwaway machine: a string is a file's content, `{ link }` a symlink's target. */
export type RootEntries = Readonly<Record<string, string | { readonly link: string }>>;

const made: string[] = [];
process.once('exit', () => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

/**
 * A throwaway system root holding just `entries` (paths relative to the root, with or without a
 * leading slash), removed when the test process exits.
 */
export function tempRoot(entries: RootEntries, prefix = 'aios-root-'): Promise<SysRoot> {
  const root = mkdtempSync(path.join(tmpdir(), prefix));
  made.push(root);
  for (const [file, value] of Object.entries(entries)) {
    const full = path.join(root, file);
    mkdirSync(path.dirname(full), { recursive: true });
    if (typeof value === 'string') writeFileSync(full, value);
    else symlinkSync(value.link, full);
  }
  return SysRoot.open(root);
}
