import { execFile } from 'node:child_process';
import { constants, promises as fs } from 'node:fs';
import path from 'node:path';
import { ProbeError } from '../errors.js';

/** What a command printed, as a probe sees it. */
export interface CommandOutput {
  readonly stdout: string;
  readonly exitCode: number;
}

/**
 * A read-only view of a machine's files, rooted at `/` in production and at a fixture folder in
 * tests. Probes read everything through it so that a test can stand in for a Jetson, an Alveo host
 * or a Raspberry Pi with a Coral stick.
 *
 * Commands (nvidia-smi, xbutil) run for real only on the live root. A fixture root answers them
 * from `<root>/.commands.json`, a map from the command line (`"nvidia-smi --query-gpu=..."`) to
 * the output captured on the real machine, so tests replay what the tool actually printed.
 */
export class SysRoot {
  readonly root: string;
  private recorded: Promise<Record<string, CommandOutput | string>> | undefined;

  private constructor(root: string) {
    this.root = root;
  }

  /** Opens a system root; fails with EAI_SYSROOT_NOT_FOUND when the folder is missing. */
  static async open(root = '/'): Promise<SysRoot> {
    const resolved = path.resolve(root);
    let stat;
    try {
      stat = await fs.stat(resolved);
    } catch (cause) {
      throw new ProbeError('EAI_SYSROOT_NOT_FOUND', `System root '${root}' does not exist. Pass --sysroot a folder that holds a machine's /proc, /sys and /etc (or leave it out to probe this machine).`, { cause, details: { root } });
    }
    if (!stat.isDirectory()) {
      throw new ProbeError('EAI_SYSROOT_NOT_FOUND', `System root '${root}' is not a folder. Pass --sysroot a folder that holds a machine's /proc, /sys and /etc.`, { details: { root } });
    }
    return new SysRoot(resolved);
  }

  get isLive(): boolean {
    return this.root === '/';
  }

  /** Absolute host path of `p` (a path as seen on the probed machine, e.g. '/proc/cpuinfo'). */
  resolve(p: string): string {
    return path.join(this.root, p);
  }

  /** File contents as text, or undefined when the file is missing or unreadable. */
  async readText(p: string): Promise<string | undefined> {
    try {
      return await fs.readFile(this.resolve(p), 'utf8');
    } catch {
      return undefined;
    }
  }

  /** First line of a sysfs attribute, trimmed; device-tree strings lose their trailing NULs. */
  async readAttr(p: string): Promise<string | undefined> {
    const text = await this.readText(p);
    if (text === undefined) return undefined;
    return text.replace(/\0+$/u, '').split('\n')[0]?.trim();
  }

  /** Entries of a folder, sorted; empty when it is missing. */
  async list(p: string): Promise<string[]> {
    try {
      return (await fs.readdir(this.resolve(p))).sort();
    } catch {
      return [];
    }
  }

  async exists(p: string): Promise<boolean> {
    try {
      await fs.access(this.resolve(p), constants.F_OK);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Target of a symlink as written (sysfs `driver` links, `/sys/class/*` entries), or undefined.
   * Returned as the machine sees it; callers usually want only `path.basename` of it.
   */
  async readLink(p: string): Promise<string | undefined> {
    try {
      return await fs.readlink(this.resolve(p));
    } catch {
      return undefined;
    }
  }

  /**
   * Runs a read-only query tool such as `nvidia-smi`; undefined when it is not installed (or, on a
   * fixture root, was not recorded). Never throws for a failing tool: its exit code is returned.
   */
  async command(file: string, args: readonly string[] = [], timeoutMs = 5000): Promise<CommandOutput | undefined> {
    if (!this.isLive) {
      this.recorded ??= this.readText('/.commands.json').then((t) => (t === undefined ? {} : (JSON.parse(t) as Record<string, CommandOutput | string>)));
      const entry = (await this.recorded)[[file, ...args].join(' ')];
      if (entry === undefined) return undefined;
      return typeof entry === 'string' ? { stdout: entry, exitCode: 0 } : entry;
    }
    return new Promise((resolve) => {
      execFile(file, [...args], { timeout: timeoutMs, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 }, (error, stdout) => {
        if (error && (error as NodeJS.ErrnoException).code === 'ENOENT') return resolve(undefined);
        const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
        resolve({ stdout, exitCode: code });
      });
    });
  }

  /**
   * Whether a shared library can be found the way the dynamic loader would: in the standard
   * library folders and those named in /etc/ld.so.conf.d. Used to say "libedgetpu.so.1 not found"
   * without loading anything.
   */
  async findLibrary(name: string): Promise<string | undefined> {
    for (const dir of await this.libraryDirs()) {
      const candidate = path.posix.join(dir, name);
      if (await this.exists(candidate)) return candidate;
    }
    return undefined;
  }

  private async libraryDirs(): Promise<string[]> {
    const dirs = ['/lib', '/usr/lib', '/lib64', '/usr/lib64', '/usr/local/lib'];
    for (const triplet of ['x86_64-linux-gnu', 'aarch64-linux-gnu', 'arm-linux-gnueabihf']) {
      dirs.push(`/lib/${triplet}`, `/usr/lib/${triplet}`);
    }
    for (const conf of await this.list('/etc/ld.so.conf.d')) {
      const text = await this.readText(`/etc/ld.so.conf.d/${conf}`);
      for (const line of text?.split('\n') ?? []) {
        const entry = line.trim();
        if (entry.startsWith('/')) dirs.push(entry);
      }
    }
    if (this.isLive) {
      for (const entry of (process.env['LD_LIBRARY_PATH'] ?? '').split(':')) if (entry.startsWith('/')) dirs.push(entry);
    }
    return [...new Set(dirs)];
  }
}
