import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { findFfmpeg } from '../../../../drivers/sensors/ffmpeg.js';

/** Whether the real ffmpeg is here; tests that decode skip (saying why) when it is not. */
export const FFMPEG = findFfmpeg();
if (FFMPEG === undefined) console.warn('ffmpeg is not installed (apt-get install -y ffmpeg): skipping tests that decode real media');

/** Pids of this process's direct children whose command name is `name` (Linux /proc). */
export function childPids(name: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/u.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // exited while we looked
    }
    // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
    const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (ppid === process.pid && comm === name) pids.push(Number(entry));
  }
  return pids;
}

/** Whether `pid` still has a process-table entry (a zombie counts: it has not been reaped). */
export function exists(pid: number): boolean {
  return existsSync(`/proc/${pid}`);
}

/** Polls `condition` every 10 ms until it holds; throws after `timeoutMs`. */
export async function waitFor(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > end) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
