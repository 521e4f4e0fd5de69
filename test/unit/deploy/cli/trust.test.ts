import { mkdtemp, readFile, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { parseRoot } from '../../../../models/trust/root.js';
import { runCli as aios } from '../../../support/cli.js';

let dir: string;
const at = (name: string): string => path.join(dir, name);
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'aios-trust-cli-'));
});
afterEach(() => vi.restoreAllMocks());

describe('aios keys and aios trust', () => {
  it('generates keys, writes and signs a root, rotates a device to its successor, and shows it', async () => {
    for (const name of ['root-1', 'root-2', 'release-1', 'ops-1']) {
      const r = await aios('keys', 'generate', '--out', at('keys'), '--name', name, '--json');
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ keyid: expect.stringMatching(/^[0-9a-f]{64}$/u) });
    }
    expect((await stat(at('keys/root-1.pem'))).mode & 0o777).toBe(0o600);
    expect((await aios('keys', 'generate', '--out', at('keys'), '--name', 'root-1')).stderr).toMatch(/^error EAI_CLI_USAGE: .*already exists/u);

    const init = await aios('trust', 'init', '--out', at('root.json'), '--root', at('keys/root-1.pub'), '--models', at('keys/release-1.pub'), '--deploy', at('keys/ops-1.pub'), '--expires', '30d', '--sign', at('keys/root-1.pem'));
    expect(init.code).toBe(0);
    expect(init.stdout).toMatch(/trust root v1, expires .*, 1 signature\(s\)/u);
    const v1 = parseRoot(await readFile(at('root.json')));
    expect(v1.signed.roles.models.keyids).toHaveLength(1);

    expect((await aios('trust', 'add-key', at('root.json'), '--role', 'root', '--key', at('keys/root-2.pub'))).stdout).toContain('2.root.json (v2, unsigned)');
    // Signed by the new key alone it is not a valid successor: the old root's threshold is missing.
    await aios('trust', 'sign', at('2.root.json'), '--key', at('keys/root-2.pem'));
    expect((await aios('trust', 'install', '--dir', at('device'), at('root.json'))).stdout).toContain('trusting root v1');
    const refused = await aios('trust', 'rotate', '--dir', at('device'), at('2.root.json'));
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/^error EAI_TRUST_(THRESHOLD|UNKNOWN_KEY)/u);
    await aios('trust', 'sign', at('2.root.json'), '--key', at('keys/root-1.pem'));
    expect((await aios('trust', 'rotate', '--dir', at('device'), at('2.root.json'))).stdout).toBe('root v1 -> v2\n');
    expect((await aios('trust', 'rotate', '--dir', at('device'), at('root.json'), at('2.root.json'))).stdout).toBe('already at root v2\n');

    const shown = await aios('trust', 'show', '--dir', at('device'), '--json');
    const report = JSON.parse(shown.stdout) as { root: { signed: { version: number } }; expired: boolean; signedBy: Record<string, string[]> };
    expect(report.root.signed.version).toBe(2);
    expect(report.expired).toBe(false);
    expect(report.signedBy['root']).toHaveLength(2);
  });

  it('says what to fix for a missing role key, a bad role or threshold, and a bad expiry', async () => {
    expect((await aios('trust', 'init', '--out', at('x.json'))).stderr).toMatch(/^error EAI_CLI_USAGE: no --root key given/u);
    expect((await aios('trust', 'init', '--out', at('x.json'), '--threshold', 'admins=2')).stderr).toMatch(/^error EAI_CLI_USAGE: --threshold 'admins=2'/u);
    expect((await aios('trust', 'init', '--out', at('x.json'), '--expires', 'soon')).stderr).toMatch(/^error EAI_CLI_USAGE: (--expires 'soon'|no --root key)/u);
    expect((await aios('keys', 'generate', '--bogus')).stderr).toMatch(/^error EAI_CLI_USAGE: unknown option '--bogus'/u);
  });
});
