import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CommandJournal } from '../../../../deploy/agent/command-journal.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-journal-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('CommandJournal', () => {
  it('keeps what was begun and not ended, oldest first, across a new instance; drops what it cannot read', async () => {
    const journal = new CommandJournal(tmp);
    expect(await journal.unfinished()).toEqual([]);
    await journal.begin({ sequence: 12, action: 'setConfig', startedUnixMs: 2 });
    await journal.begin({ sequence: 9, action: 'stopPipeline', startedUnixMs: 1 });
    await journal.begin({ sequence: 13, action: 'deploy', startedUnixMs: 3 });
    await journal.end(13);
    await journal.end(99); // never begun: nothing to do
    writeFileSync(path.join(tmp, 'commands', '14.json'), '{"sequence":"fourteen"}');
    writeFileSync(path.join(tmp, 'commands', '15.json'), '{');
    const after = new CommandJournal(tmp); // the next start
    expect(await after.unfinished()).toEqual([
      { sequence: 9, action: 'stopPipeline', startedUnixMs: 1 },
      { sequence: 12, action: 'setConfig', startedUnixMs: 2 },
    ]);
    expect(readdirSync(path.join(tmp, 'commands')).sort()).toEqual(['12.json', '9.json']);
  });

  it('a state folder without a journal has nothing unfinished', async () => {
    const dir = path.join(tmp, 'fresh');
    mkdirSync(dir);
    expect(await new CommandJournal(dir).unfinished()).toEqual([]);
  });
});
