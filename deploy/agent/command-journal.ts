import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../../models/atomic-write.js';

/**
 * The commands the agent is carrying out, on disk (state/commands/<sequence>.json): written
 * after the ACCEPTED ack is spooled, removed after the final one. What a start finds here was cut
 * short by a crash or a power cut, and its final ack never went out; the agent answers it then
 * (FAILED, EAI_AGENT_INTERRUPTED: its effect is unknown, and a restart reloads pipelines from
 * their files), so the controller does not show it as running forever. A deployment keeps its
 * own record and resumes (deployment.ts); its entry carries the Deploy message, so that one cut
 * short before its record was written is begun from here instead of being lost.
 */
export interface JournalEntry {
  readonly sequence: number;
  readonly action: string;
  readonly startedUnixMs: number;
  /** A deploy command's Deploy message (protobuf, base64). */
  readonly deploy?: string;
}

export class CommandJournal {
  readonly #dir: string;

  constructor(state: string) {
    this.#dir = path.join(state, 'commands');
  }

  async begin(entry: JournalEntry): Promise<void> {
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(this.#file(entry.sequence), `${JSON.stringify(entry)}\n`, { mode: 0o600 });
  }

  async end(sequence: number): Promise<void> {
    await rm(this.#file(sequence), { force: true });
  }

  /** Entries left by an earlier run, oldest first (unreadable ones are dropped: nothing can be said of them). */
  async unfinished(): Promise<readonly JournalEntry[]> {
    const names = await readdir(this.#dir).catch(() => [] as string[]);
    const entries: JournalEntry[] = [];
    for (const name of names) {
      const file = path.join(this.#dir, name);
      try {
        const e = JSON.parse(await readFile(file, 'utf8')) as Partial<JournalEntry>;
        if (typeof e.sequence === 'number' && Number.isSafeInteger(e.sequence) && typeof e.action === 'string') entries.push({ sequence: e.sequence, action: e.action, startedUnixMs: Number(e.startedUnixMs ?? 0), ...(typeof e.deploy === 'string' ? { deploy: e.deploy } : {}) });
        else await rm(file, { force: true });
      } catch {
        await rm(file, { force: true });
      }
    }
    return entries.sort((a, b) => a.sequence - b.sequence);
  }

  #file(sequence: number): string {
    return path.join(this.#dir, `${sequence}.json`);
  }
}
