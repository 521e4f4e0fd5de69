/**
 * The cross-process lock of one model's state, and the process identities that make leftovers
 * recognisable as dead.
 *
 * A lock is a file holding its owner's identity, created exclusively: the identity is written to
 * a temporary file and link(2)ed to the lock's name, which fails if the name exists (as O_EXCL
 * does) and, unlike `open(…, 'wx')` then write, never shows a lock without its owner. A process
 * that finds it checks whether the owner still runs; a lock whose owner is gone (killed, crashed,
 * or from before a reboot) is stale and is broken. An identity is more than a pid, because pids
 * come back: the kernel's boot id (`/proc/sys/kernel/random/boot_id`) tells a lock from before a
 * power cut, even on a device whose services start with the same pids at every boot, and the
 * process start time (field 22 of `/proc/<pid>/stat`) tells a pid reused in the same boot. Where
 * /proc is missing (macOS) only the pid is checked.
 *
 * Breaking a stale lock renames it to a unique name first and checks it still holds the owner it
 * judged dead, so a lock taken fresh by a third process in between is put back (with link(2),
 * which never replaces) rather than removed. One race remains: two breakers and a fresh taker
 * interleaving in exactly that window can leave two holders. It needs a dead holder and three
 * contenders at the same instant; docs/store.md says what the state can look like then.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { tempName, type FileSystem } from '../atomic-write.js';
import { ioError, StoreError } from './errors.js';

/** Who made a lock, a staging folder or a trash folder. `start` and `boot` are '' where unknown. */
export interface ProcessIdentity {
  readonly pid: number;
  /** Start time of the process in clock ticks since boot (Linux), as a decimal string. */
  readonly start: string;
  /** The first 8 hex digits of the kernel's boot id. */
  readonly boot: string;
}

let self: ProcessIdentity | undefined;
let boot: string | undefined;

/** This process's identity (computed once). */
export function thisProcess(): ProcessIdentity {
  self ??= identityOf(process.pid);
  return self;
}

/** The identity of the running process `pid` (its start time and boot as of now). */
export function identityOf(pid: number): ProcessIdentity {
  boot ??= bootId();
  return { pid, start: startTime(pid) ?? '', boot };
}

/** `<pid>-<start>-<boot>`: the identity as it appears in folder names. */
export function ownerToken(owner: ProcessIdentity): string {
  return `${owner.pid}-${owner.start}-${owner.boot}`;
}

/** The inverse of `ownerToken`; undefined for anything else. */
export function parseOwnerToken(token: string): ProcessIdentity | undefined {
  const m = /^([1-9]\d{0,9})-(\d{0,20})-([0-9a-f]{0,8})$/u.exec(token);
  return m === null ? undefined : { pid: Number(m[1]), start: m[2] ?? '', boot: m[3] ?? '' };
}

/**
 * Whether the process that `owner` names still runs: false when it is from another boot, when no
 * process has its pid, or when the process with its pid started at another time.
 */
export function isRunning(owner: ProcessIdentity, me: ProcessIdentity = thisProcess()): boolean {
  if (owner.boot !== '' && me.boot !== '' && owner.boot !== me.boot) return false;
  try {
    process.kill(owner.pid, 0);
  } catch (error) {
    // EPERM: it exists but belongs to another user.
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  if (owner.start === '') return true;
  const start = owner.pid === me.pid ? me.start : startTime(owner.pid);
  return start === undefined || start === '' || start === owner.start;
}

export interface LockOptions {
  readonly fs: FileSystem;
  /** How long to wait for a live holder before failing with EAI_STORE_LOCKED. */
  readonly timeoutMs: number;
  /** What the lock is for, for messages: "model 'detector'". */
  readonly what: string;
}

/** A held lock. `release` removes the file if it is still this holder's. */
export interface HeldLock {
  release(): Promise<void>;
}

/**
 * A lock file whose content cannot be read as an owner (a power cut before its data reached the
 * disk, or damage) is stale once its mtime is this far from now, in either direction: a device
 * without a real-time clock may boot with a clock behind the lock's mtime.
 */
const UNREADABLE_STALE_MS = 10_000;

/**
 * Takes the lock `file`, waiting (polling, up to `timeoutMs`) while a running process holds it
 * and breaking it when its holder is gone. Not re-entrant, and a second holder in this same
 * process waits like any other: callers serialise their own calls first.
 */
export async function acquireLock(file: string, options: LockOptions): Promise<HeldLock> {
  const { fs } = options;
  const me = thisProcess();
  const content = `${JSON.stringify({ ...me, since: new Date().toISOString() })}\n`;
  const deadline = Date.now() + options.timeoutMs;
  for (let wait = 5; ; wait = Math.min(wait * 2, 200)) {
    if (await create(fs, file, content)) {
      return {
        release: async () => {
          const now = await fs.readFile(file, 'utf8').catch(() => undefined);
          if (now === content) await fs.rm(file, { force: true });
        },
      };
    }
    const held = await fs.readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return undefined;
      throw ioError(`read the lock ${file}`, error, { file });
    });
    if (held === undefined) continue; // released between our create and our read
    const owner = parseLock(held);
    const stale = owner === undefined ? await olderThan(fs, file, UNREADABLE_STALE_MS) : !isRunning(owner, me);
    if (stale) {
      await breakLock(fs, file, held);
      continue;
    }
    if (Date.now() >= deadline) {
      throw new StoreError(
        'EAI_STORE_LOCKED',
        `${options.what} is locked by process ${owner?.pid ?? '(unknown)'} (${file}), which is still running; waited ${options.timeoutMs} ms. Fix: let that install, activation or GC finish and retry; if no aios process is running, remove ${file}.`,
        { details: { file, owner } },
      );
    }
    await sleep(wait);
  }
}

/**
 * Creates `file` holding `content`, or returns false if it exists. The content is written to a
 * temporary file first and linked to the lock's name (link(2) fails rather than replace), so a
 * lock is never seen empty: a holder killed mid-way leaves a complete lock or none.
 */
async function create(fs: FileSystem, file: string, content: string): Promise<boolean> {
  const temp = tempName(file);
  try {
    // No fsync: a lock only matters while its holder runs; after a power cut it is from another boot.
    const handle = await fs.open(temp, 'wx', 0o600);
    try {
      await handle.writeFile(content);
    } finally {
      await handle.close();
    }
    await fs.link(temp, file);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw ioError(`create the lock ${file}`, error, { file });
  } finally {
    await fs.rm(temp, { force: true }).catch(() => undefined);
  }
}

async function breakLock(fs: FileSystem, file: string, judged: string): Promise<void> {
  const aside = `${file}.stale.${process.pid}.${randomBytes(6).toString('hex')}`;
  try {
    await fs.rename(file, aside);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return; // another breaker was first
    throw ioError(`break the stale lock ${file}`, error, { file });
  }
  const moved = await fs.readFile(aside, 'utf8').catch(() => undefined);
  if (moved !== undefined && moved !== judged) {
    // We moved a lock someone took after we judged the old one stale: put it back, never over a newer one.
    await fs.link(aside, file).catch(() => undefined);
  }
  await fs.rm(aside, { force: true }).catch(() => undefined);
}

function parseLock(text: string): ProcessIdentity | undefined {
  try {
    const v = JSON.parse(text) as Partial<Record<keyof ProcessIdentity, unknown>>;
    if (!Number.isSafeInteger(v.pid) || (v.pid as number) <= 0 || typeof v.start !== 'string' || typeof v.boot !== 'string') return undefined;
    return { pid: v.pid as number, start: v.start, boot: v.boot };
  } catch {
    return undefined;
  }
}

async function olderThan(fs: FileSystem, file: string, ms: number): Promise<boolean> {
  const info = await fs.lstat(file).catch(() => undefined);
  return info !== undefined && Math.abs(Date.now() - info.mtimeMs) > ms;
}

function startTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 2 (comm) may hold spaces and parentheses; fields after the last ')' are plain.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19]; // field 22, starttime
  } catch {
    return undefined;
  }
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').replace(/[^0-9a-f]/gu, '').slice(0, 8);
  } catch {
    return '';
  }
}
