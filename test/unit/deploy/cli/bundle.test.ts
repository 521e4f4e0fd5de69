import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { runCli as aios } from '../../../support/cli.js';
import { findBinary } from '../../../support/wait.js';

// The walk-through of docs/bundles.md, command by command: keys, a trust root, a device that
// trusts it, an encrypted bundle verified and unpacked on that device and refused elsewhere.

const repo = path.resolve(import.meta.dirname, '../../../..');
const MODEL = path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx');
const AGE = findBinary('age');
const TAR = findBinary('tar');
let dir: string;
const at = (name: string): string => path.join(dir, name);

const METADATA = `name: blazeface-front
version: 1.2.0
branch: main
format: onnx
entry: face.onnx
inputs: [{ name: "input:0", dtype: float32, shape: [1, 128, 128, 3] }]
outputs: [{ name: "Identity:0", dtype: float32, shape: [1, 512, 1] }]
targets: [cpu, cuda, jetson]
minRuntimeVersion: 0.1.0
author: perception-team@example.com
notes: front camera face detector
metrics: { wider-face.ap: 0.89 }
`;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'aios-bundle-cli-'));
  for (const name of ['root-1', 'release-1', 'release-2', 'ops-1']) expect((await aios('keys', 'generate', '--out', at('keys'), '--name', name)).code).toBe(0);
  for (const name of ['robot-7', 'robot-8']) expect((await aios('keys', 'generate', '--type', 'age', '--out', at('keys'), '--name', name)).code).toBe(0);
  expect((await aios('trust', 'init', '--out', at('root.json'), '--root', at('keys/root-1.pub'), '--models', at('keys/release-1.pub'), '--deploy', at('keys/ops-1.pub'), '--sign', at('keys/root-1.pem'))).code).toBe(0);
  expect((await aios('trust', 'install', '--dir', at('robot-7/trust'), at('root.json'))).code).toBe(0);
  await writeFile(at('face.yaml'), METADATA);
});
afterEach(() => vi.restoreAllMocks());

describe('aios bundle, from keys to a device', () => {
  it('packs an encrypted, signed bundle that the device verifies and unpacks', async () => {
    const robot7 = (await readFile(at('keys/robot-7.age.pub'), 'utf8')).trim();
    expect(robot7).toMatch(/^age1[0-9a-z]{58}$/u);
    expect((await stat(at('keys/robot-7.age.key'))).mode & 0o777).toBe(0o600);
    const packed = await aios('bundle', 'pack', '--metadata', at('face.yaml'), '--file', `face.onnx=${MODEL}`, '--key', at('keys/release-1.pem'), '--to', robot7, '--out', at('face.bundle'));
    expect(packed.stderr).toBe('');
    expect(packed.stdout).toMatch(/^wrote .*face\.bundle: blazeface-front 1\.2\.0, 1 file\(s\), encrypted to 1 device\(s\), signed by [0-9a-f]{12}/u);

    const inspected = await aios('bundle', 'inspect', at('face.bundle'));
    expect(inspected.stdout).toMatch(/^NOT VERIFIED/u);

    const verified = await aios('bundle', 'verify', at('face.bundle'), '--trust', at('robot-7/trust'), '--identity', at('keys/robot-7.age.key'), '--json');
    expect(verified.code).toBe(0);
    expect(JSON.parse(verified.stdout)).toMatchObject({ statement: { predicate: { name: 'blazeface-front', version: '1.2.0', metrics: { 'wider-face.ap': 0.89 } } } });

    expect((await aios('bundle', 'extract', at('face.bundle'), at('robot-7/models/face-1.2.0'), '--trust', at('robot-7/trust'), '--identity', at('keys/robot-7.age.key'))).code).toBe(0);
    const model = at('robot-7/models/face-1.2.0/face.onnx');
    expect((await readFile(model)).equals(await readFile(MODEL))).toBe(true);
    expect((await stat(model)).mode & 0o777).toBe(0o600);
  });

  it('is refused on a device it was not encrypted to, and against keys the trust root does not list', async () => {
    const other = await aios('bundle', 'verify', at('face.bundle'), '--trust', at('robot-7/trust'), '--identity', at('keys/robot-8.age.key'));
    expect(other.stderr).toMatch(/^error EAI_AGE_NO_MATCH: .*not encrypted to this device/u);
    const wrongSigner = await aios('bundle', 'verify', at('face.bundle'), '--signer', at('keys/ops-1.pub'));
    expect(wrongSigner.stderr).toMatch(/^error EAI_BUNDLE_SIGNATURE_UNKNOWN_KEY/u);
  });

  it('is refused once the signing key is revoked by a root rotation, and while the trusted root is expired', async () => {
    // Rotate robot-7's trust to a root without release-1 in the models role (release-2 replaces it).
    expect((await aios('trust', 'add-key', at('root.json'), '--role', 'models', '--key', at('keys/release-2.pub'), '--out', at('2.root.json'))).code).toBe(0);
    expect((await aios('trust', 'remove-key', at('2.root.json'), '--role', 'models', '--key', at('keys/release-1.pub'), '--out', at('3.root.json'))).code).toBe(0);
    for (const v of ['2', '3']) await aios('trust', 'sign', at(`${v}.root.json`), '--key', at('keys/root-1.pem'));
    await aios('trust', 'install', '--dir', at('robot-9/trust'), at('root.json'));
    expect((await aios('bundle', 'verify', at('face.bundle'), '--trust', at('robot-9/trust'))).code).toBe(0);
    expect((await aios('trust', 'rotate', '--dir', at('robot-9/trust'), at('2.root.json'), at('3.root.json'))).stdout).toBe('root v1 -> v3\n');
    expect((await aios('bundle', 'verify', at('face.bundle'), '--trust', at('robot-9/trust'))).stderr).toMatch(/^error EAI_BUNDLE_SIGNATURE_UNKNOWN_KEY/u);

    // A device whose root expired (offline too long) trusts nothing until the successor arrives.
    await aios('trust', 'init', '--out', at('old-root.json'), '--root', at('keys/root-1.pub'), '--models', at('keys/release-1.pub'), '--deploy', at('keys/ops-1.pub'), '--expires', '2020-01-01T00:00:00Z', '--sign', at('keys/root-1.pem'));
    await aios('trust', 'install', '--dir', at('robot-10/trust'), at('old-root.json'));
    expect((await aios('bundle', 'verify', at('face.bundle'), '--trust', at('robot-10/trust'))).stderr).toMatch(/^error EAI_TRUST_ROOT_EXPIRED/u);
    expect((await aios('bundle', 'verify', at('face.bundle'), '--root', at('old-root.json'))).stderr).toMatch(/^error EAI_TRUST_ROOT_EXPIRED/u);
  });

  it('takes a second signature for a two-of-two policy', async () => {
    expect((await aios('bundle', 'pack', '--metadata', at('face.yaml'), '--file', `face.onnx=${MODEL}`, '--key', at('keys/release-1.pem'), '--out', at('plain.bundle'))).stderr).toBe('');
    // The entry the metadata names must be one of the files.
    expect((await aios('bundle', 'pack', '--metadata', at('face.yaml'), '--file', MODEL, '--key', at('keys/release-1.pem'), '--out', at('bad.bundle'))).stderr).toMatch(/^error EAI_BUNDLE_MANIFEST_INVALID/u);
    expect((await aios('bundle', 'verify', at('missing.bundle'), '--trust', at('robot-7/trust'))).stderr).toMatch(/^error EAI_CLI_USAGE: no bundle at .*missing\.bundle/u);
    const needsTwo = ['--signer', at('keys/release-1.pub'), '--signer', at('keys/release-2.pub'), '--threshold', '2'];
    expect((await aios('bundle', 'verify', at('plain.bundle'), ...needsTwo)).stderr).toMatch(/^error EAI_BUNDLE_SIGNATURE_THRESHOLD/u);
    expect((await aios('bundle', 'sign', at('plain.bundle'), '--key', at('keys/release-2.pem'))).stdout).toMatch(/^signed .*; signers now/u);
    expect((await aios('bundle', 'verify', at('plain.bundle'), ...needsTwo)).code).toBe(0);
    // Encrypting a plain bundle re-signs it with the keys given.
    const robot8 = (await readFile(at('keys/robot-8.age.pub'), 'utf8')).trim();
    expect((await aios('bundle', 'encrypt', at('plain.bundle'), '--signer', at('keys/release-1.pub'), '--to', robot8, '--key', at('keys/release-1.pem'), '--out', at('for-robot-8.bundle'))).code).toBe(0);
    expect((await aios('bundle', 'verify', at('for-robot-8.bundle'), '--trust', at('robot-7/trust'), '--identity', at('keys/robot-8.age.key'))).code).toBe(0);
  });

  it.skipIf(AGE === undefined || TAR === undefined)("holds a model file the age CLI decrypts with the device's key file", async () => {
    const ciphertext = execFileSync(TAR as string, ['-xOf', at('face.bundle'), 'files/face.onnx.age'], { maxBuffer: 64 * 1024 * 1024 });
    const plain = execFileSync(AGE as string, ['-d', '-i', at('keys/robot-7.age.key')], { input: ciphertext, maxBuffer: 64 * 1024 * 1024 });
    expect(plain.equals(await readFile(MODEL))).toBe(true);
  });
});
