import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { generateSigningKey } from '../../../../models/keys.js';
import { createRoot, rootDigest, signRoot } from '../../../../models/trust/root.js';
import { runtimeDigest } from '../../../../runtime/attest/file-digest.js';
import { runCli } from '../../../support/cli.js';

const repo = fileURLToPath(new URL('../../../../', import.meta.url));
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-attest-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('aios attest digest', () => {
  it('prints the digests a device measures: this install, a trust root (canonical), a pipeline file', async () => {
    const key = generateSigningKey();
    const pub = { keyid: key.keyid, publicKey: key.publicKey };
    const root = signRoot(createRoot({ version: 1, expires: new Date(Date.now() + 86_400_000), roles: { root: { keys: [pub], threshold: 1 }, models: { keys: [pub], threshold: 1 }, deploy: { keys: [pub], threshold: 1 } } }), [key]);
    // Formatted differently from how aios writes it: the digest is of the canonical signed part.
    writeFileSync(path.join(tmp, 'root.json'), JSON.stringify(root, null, 7));
    const pipeline = path.join(repo, 'examples/pipelines/face-detection.yaml');
    const out = await runCli('attest', 'digest', '--json');
    expect(out.stderr).toBe('');
    expect(JSON.parse(out.stdout)).toEqual([{ type: 'runtime', file: (await runtimeDigest()).root, sha256: (await runtimeDigest()).sha256 }]);
    const files = await runCli('attest', 'digest', path.join(tmp, 'root.json'), pipeline);
    expect(files.stdout.split('\n').filter((l) => l !== '')).toEqual([
      `${rootDigest(root)}  trust-root      ${path.join(tmp, 'root.json')}`,
      `${createHash('sha256').update(readFileSync(pipeline)).digest('hex')}  pipeline-config ${pipeline}`,
    ]);
    const missing = await runCli('attest', 'digest', path.join(tmp, 'nope.yaml'));
    expect(missing.stderr).toMatch(/^error EAI_CLI_USAGE: cannot read/u);
  });
});
