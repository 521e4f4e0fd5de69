import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSigningKey, privateKeyPem, publicKeyPem } from '../../../../models/keys.js';
import { verifyChannelRecord, type ChannelRecord } from '../../../../models/registry/channel-record.js';
import { runCli } from '../../../support/cli.js';
import { FACE, FACE_LICENSE, faceMetadata, makeBundle, patchInitializer, pub, tempDir } from '../../models/registry/fixtures.js';

const key = generateSigningKey();
const { dir: tmp, cleanup } = tempDir('aios-cli-model-');
const reg = path.join(tmp, 'registry');
const keyFile = path.join(tmp, 'release.pem');
const pubFile = path.join(tmp, 'release.pub');
let v1: string;
let v2: string;
let changed: string;

beforeAll(async () => {
  writeFileSync(keyFile, privateKeyPem(key.privateKey));
  writeFileSync(pubFile, publicKeyPem(key.publicKey));
  const face2 = path.join(tmp, 'face2.onnx');
  changed = await patchInitializer(FACE, face2, 20, 3);
  v1 = await makeBundle(tmp, key, faceMetadata('1.0.0'));
  v2 = await makeBundle(tmp, key, faceMetadata('1.1.0', { parentVersion: '1.0.0', notes: 'fine-tuned', metrics: { 'wider.ap': 0.83 } }), [{ path: 'face.onnx', source: face2 }, { path: 'LICENSE', source: FACE_LICENSE }]);
});
afterAll(cleanup);

describe('aios model', () => {
  it('push, list, log, diff, channel, rollback, export', async () => {
    let r = await runCli('model', 'push', v1, '--registry', reg, '--signer', pubFile);
    expect(r).toMatchObject({ code: 0 });
    expect(r.stdout).toContain('pushed blazeface-front 1.0.0');
    r = await runCli('model', 'push', v2, '--registry', reg, '--signer', pubFile, '--json');
    expect(JSON.parse(r.stdout)).toMatchObject({ status: 'added', sharedBlobs: 1, version: { version: '1.1.0', parent: '1.0.0' } });
    r = await runCli('model', 'push', v1, '--registry', reg, '--signer', pubFile);
    expect(r.stdout).toContain('already in the registry');

    r = await runCli('model', 'list', '--registry', reg);
    expect(r.stdout).toMatch(/blazeface-front\s+2\s+1\.1\.0/u);
    r = await runCli('model', 'log', 'blazeface-front', '--registry', reg, '--json');
    expect((JSON.parse(r.stdout) as { version: string }[]).map((v) => v.version)).toEqual(['1.1.0', '1.0.0']);
    r = await runCli('model', 'log', 'blazeface-front', '--registry', reg);
    expect(r.stdout).toContain('parent  1.0.0');

    r = await runCli('model', 'diff', 'blazeface-front', '1.0.0', '1.1.0', '--registry', reg);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('metrics.wider.ap: 0.81 -> 0.83');
    expect(r.stdout).toMatch(new RegExp(`changed\\s+${changed.replace(/[.*+?^${}()|[\]\\]/gu, '\\$&')}\\s`, 'u'));
    expect(r.stdout).toContain('71 -> 71, 70 unchanged');

    r = await runCli('model', 'channel', 'blazeface-front', 'stable', '1.0.0', '--key', keyFile, '--registry', reg);
    expect(r.stdout).toContain('metadata version 1, new channel');
    await runCli('model', 'channel', 'blazeface-front', 'stable', '1.1.0', '--key', keyFile, '--registry', reg);
    r = await runCli('model', 'rollback', 'blazeface-front', 'stable', '--key', keyFile, '--registry', reg, '--json');
    const change = JSON.parse(r.stdout) as { version: string; metadataVersion: number; from: string; record: Parameters<typeof verifyChannelRecord>[0] };
    expect(change).toMatchObject({ version: '1.0.0', metadataVersion: 3, from: '1.1.0' });
    const record: ChannelRecord = await verifyChannelRecord(change.record, { keys: [pub(key)], threshold: 1 });
    expect(record.metadataVersion).toBe(3);
    r = await runCli('model', 'channel', 'blazeface-front', '--registry', reg);
    expect(r.stdout).toMatch(/stable\s+1\.0\.0\s+3/u);

    const out = path.join(tmp, 'out.bundle');
    r = await runCli('model', 'export', 'blazeface-front', '1.1.0', '--out', out, '--registry', reg);
    expect(r.code).toBe(0);
    expect(readFileSync(out).equals(readFileSync(v2))).toBe(true);
  });

  it('reports errors with their codes', async () => {
    let r = await runCli('model', 'push', v1, '--registry', reg);
    expect(r).toMatchObject({ code: 2, stderr: expect.stringContaining('EAI_CLI_USAGE') });
    const other = generateSigningKey();
    const otherPub = path.join(tmp, 'other.pub');
    writeFileSync(otherPub, publicKeyPem(other.publicKey));
    r = await runCli('model', 'push', v1, '--registry', path.join(tmp, 'reg2'), '--signer', otherPub);
    expect(r.stderr).toContain('EAI_BUNDLE_SIGNATURE_UNKNOWN_KEY');
    r = await runCli('model', 'rollback', 'blazeface-front', 'stable', '--registry', reg);
    expect(r.stderr).toContain('EAI_CLI_USAGE');
    r = await runCli('model', 'log', 'nope', '--registry', reg);
    expect(r).toMatchObject({ code: 1, stderr: expect.stringContaining('EAI_REGISTRY_MODEL_UNKNOWN') });
  });
});
