import { generateKeyPairSync } from 'node:crypto';
import { chmodSync, createWriteStream, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../deploy/agent/agent.js';
import { parseAgentConfig, type AgentConfig } from '../../deploy/agent/config.js';
import { Controller } from '../../deploy/controller/controller.js';
import { aios } from '../../deploy/proto/gen/aios.js';
import { packBundle } from '../../models/bundle/bundle.js';
import { ModelStore, type Slot } from '../../models/store/model-store.js';
import { X25519Identity } from '../../models/bundle/age/keys.js';
import { createEncryptStream } from '../../models/bundle/age/stream.js';
import { generateSigningKey, type SigningKey } from '../../models/keys.js';
import { createRoot, rootDigest, signRoot } from '../../models/trust/root.js';
import { TrustStore } from '../../models/trust/trust-store.js';
import { measureRuntime } from '../../runtime/attest/attester.js';
import { encodeEvidence } from '../../runtime/attest/evidence.js';
import { fileDigest, runtimeDigest } from '../../runtime/attest/file-digest.js';
import { SoftwareAttester } from '../../runtime/attest/software-attester.js';
import { createCsr } from '../../deploy/fleet/pki/csr.js';
import { startSwtpm, swtpmMissing, type Swtpm } from '../support/swtpm.js';
import { SYSROOTS } from '../support/sysroots.js';
import { freePort, until } from '../support/wait.js';

// Remote attestation across the fleet: a device with a (software) TPM and one without enrol,
// are challenged when they connect, and come out trusted (tpm2 and software); a model deployed by
// the controller keeps the TPM device trusted; a pipeline configuration edited on the device's
// disk makes its next appraisal untrusted, naming the file; evidence that is not evidence is
// untrusted, never a crash.

const missing = swtpmMissing();
if (missing !== undefined) console.warn(`fleet attestation tests skipped: ${missing}`);
const skip = missing !== undefined;

const repo = fileURLToPath(new URL('../../', import.meta.url));
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-fleet-attest-'));
const rootKey = generateSigningKey();
const [release, ops] = [generateSigningKey(), generateSigningKey()] as [SigningKey, SigningKey];
const pub = (k: SigningKey): { keyid: string; publicKey: SigningKey['publicKey'] } => ({ keyid: k.keyid, publicKey: k.publicKey });
const root = signRoot(createRoot({ version: 1, expires: new Date(Date.now() + 365 * 86_400_000), roles: { root: { keys: [pub(rootKey)], threshold: 1 }, models: { keys: [pub(release)], threshold: 1 }, deploy: { keys: [pub(ops)], threshold: 1 } } }), [rootKey]);
const PIPELINE = 'name: faces\nsources:\n  camera: { use: synthetic, params: { pattern: color-bars, rate: 10, width: 160, height: 120, format: rgb24 } }\nstages:\n  resize: { use: image.resize, params: { width: 128, height: 128 } }\n  normalize: { use: image.normalize, params: { scale: 0.00784313725490196, offset: -1 } }\n  detect: { use: infer, params: { model: "store:face", devices: [cpu], threads: 1 } }\nsinks:\n  out: { use: callback }\nflows: [camera -> resize, resize -> normalize, normalize -> detect, detect -> out]\n';

let swtpm: Swtpm;
let controller: Controller;
const agents = new Map<string, Agent>();
const configs = new Map<string, AgentConfig>();

beforeAll(async () => {
  if (skip) return;
  swtpm = await startSwtpm({ ekCertificate: true });
  const pipelineFile = path.join(tmp, 'faces.yaml');
  writeFileSync(pipelineFile, PIPELINE);
  controller = await Controller.start({
    fleet: 'warehouse',
    state: path.join(tmp, 'controller'),
    deployKeys: [ops],
    hostnames: ['127.0.0.1'],
    brokerHost: '127.0.0.1',
    brokerPort: await freePort(),
    enrolHost: '127.0.0.1',
    enrolPort: 0,
    apiPort: 0,
    ekRoots: [readFileSync(path.join(swtpm.dir, 'localca', 'issuercert.pem'), 'utf8')],
    attestation: { policy: { allowedRuntimeDigests: [(await runtimeDigest()).sha256], allowedTrustRootDigests: [rootDigest(root)], allowedPipelineConfigs: [await fileDigest(pipelineFile)] } },
  });
  for (const [device, sysroot, tpm] of [['robot-tpm', 'jetson-orin-nx-jp6', swtpm.tcti], ['robot-plain', 'x86-server', undefined]] as const) {
    const dir = path.join(tmp, device);
    mkdirSync(dir, { recursive: true });
    await TrustStore.init(path.join(dir, 'trust'), root);
    writeFileSync(path.join(dir, 'fleet-ca.pem'), controller.ca.certificatePem);
    writeFileSync(path.join(dir, 'token'), (await controller.enrolment.issueToken({ validForMs: 600_000, deviceId: device })).token);
    writeFileSync(path.join(dir, 'faces.yaml'), PIPELINE);
    const config = parseAgentConfig({ fleet: 'warehouse', device, broker: controller.urls.broker, controller: controller.urls.enrol, ca: 'fleet-ca.pem', token: 'token', state: 'state', trust: 'trust', models: 'models', telemetry: { interval: '500ms', spool: '1MiB' }, pipelines: ['faces.yaml'], ...(tpm === undefined ? {} : { attestation: { tpm } }) }, path.join(dir, 'agent.yaml'));
    configs.set(device, config);
    agents.set(device, await Agent.start(config, { sysroot: path.join(SYSROOTS, sysroot) }));
  }
}, 120_000);

afterAll(async () => {
  for (const a of agents.values()) await a.stop();
  await controller?.stop();
  await swtpm?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

const release2 = X25519Identity.generate();

/** A face model bundle signed by the release key; encrypted to `to` when given. */
async function bundle(version: string, to?: X25519Identity): Promise<string> {
  const file = path.join(tmp, `face-${version}.bundle`);
  const out = createWriteStream(file);
  await packBundle(
    {
      metadata: { name: 'face', version, format: 'onnx', entry: 'face.onnx', inputs: [], outputs: [], targets: ['cpu'], minRuntimeVersion: '0.1.0', author: 'tests@aios.dev' },
      files: [{ path: 'face.onnx', source: path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx') }],
      keys: [release],
      ...(to === undefined ? {} : { encryptTo: { recipients: 1, createEncryptStream: () => createEncryptStream([to.recipient]) } }),
    },
    out,
  );
  if (!out.closed) await once(out, 'close');
  return file;
}

const status = async (device: string): Promise<string | undefined> => (await controller.registry.get(device))?.attestationStatus;

async function appraise(device: string): Promise<{ status: string; reasons: readonly { code: string; message: string }[] }> {
  const attestations = controller.attestations!;
  const result = new Promise<{ status: string; reasons: readonly { code: string; message: string }[] }>((resolve) => {
    const listener = (d: string, r: { status: string; reasons: readonly { code: string; message: string }[] }): void => {
      if (d !== device) return;
      attestations.off('result', listener);
      resolve(r);
    };
    attestations.on('result', listener);
  });
  await attestations.challenge(device);
  return result;
}

describe('fleet attestation', () => {
  it.skipIf(skip)('devices are appraised when they connect: the TPM one as tpm2, the other as software, both trusted', async () => {
    await until(async () => (await status('robot-tpm')) !== undefined && (await status('robot-plain')) !== undefined, 30_000);
    const tpm = await controller.registry.get('robot-tpm');
    const plain = await controller.registry.get('robot-plain');
    expect([tpm?.attestation, tpm?.attestationStatus, tpm?.attestationReason]).toEqual(['tpm2', 'trusted', undefined]);
    expect([plain?.attestation, plain?.attestationStatus]).toEqual(['software', 'trusted']);
    const latest = await controller.attestations?.latest('robot-tpm');
    expect(latest?.result.claims['aios.evidence-kind']).toBe('tpm2');
    expect(latest?.result.claims.measurements?.map((m) => m.type)).toEqual(['runtime', 'trust-root', 'pipeline-config']);
  }, 60_000);

  it.skipIf(skip)('a model the controller deployed keeps the device trusted; garbage on the attestation topic is untrusted, not a crash', async () => {
    const d = await controller.deployments.create(await bundle('1.0.0'), { health: { windowS: 1, maxErrorRate: 0.5 } });
    await controller.deployments.target(d.id, ['robot-tpm']);
    await until(async () => (await controller.deployments.targets(d.id))[0]?.phase === 'COMMITTED', 60_000);
    const after = await appraise('robot-tpm');
    expect(after.reasons).toEqual([]);
    expect(after.status).toBe('trusted');
    const garbage = await controller.attestations!.receive('robot-plain', aios.fleet.v1.AttestationEvidence.encode({ format: 'aios-evidence/1', evidence: Buffer.from('{"format":"aios-evidence/1","kind":"tpm2"}') }).finish());
    expect(garbage.status).toBe('untrusted');
    expect(garbage.reasons[0]?.code).toBe('EAI_ATTEST_MALFORMED');
    // One after another, each awaited: every one is appraised (none left waiting for a next message).
    for (let i = 0; i < 3; i++) expect((await controller.attestations!.receive('robot-plain', Buffer.from([0xff, i]))).reasons[0]?.code).toBe('EAI_ATTEST_MALFORMED');
  }, 90_000);

  it.skipIf(skip)('key release: an encrypted model is decrypted by trusted devices only after the controller releases its key (a TPM credential; sealed to the device key without a TPM)', async () => {
    const d = await controller.deployments.create(await bundle('2.0.0', release2), { health: { windowS: 1, maxErrorRate: 0.5 }, releaseKey: release2 });
    expect(d.keyRelease).toBe(true);
    await controller.deployments.target(d.id, ['robot-tpm', 'robot-plain']);
    await until(async () => (await controller.deployments.targets(d.id)).every((t) => t.phase === 'COMMITTED'), 60_000);
    const released = async (device: string): Promise<number> => (await controller.commands.list(device)).filter((c) => c.action === 'releaseKey').length;
    expect(await released('robot-tpm')).toBe(1);
    expect(await released('robot-plain')).toBe(1);
    await until(async () => (await controller.registry.get('robot-plain'))?.models[0]?.active === '2.0.0', 10_000);
  }, 120_000);

  it.skipIf(skip)('a pipeline configuration edited on the device makes its next appraisal untrusted, naming the file', async () => {
    const config = configs.get('robot-tpm') as AgentConfig;
    await agents.get('robot-tpm')?.stop();
    writeFileSync(config.pipelines[0] as string, PIPELINE.replace('rate: 10', 'rate: 30'));
    agents.set('robot-tpm', await Agent.start(config, { sysroot: path.join(SYSROOTS, 'jetson-orin-nx-jp6') }));
    await until(async () => (await controller.registry.get('robot-tpm'))?.state === 'online', 20_000);
    const result = await appraise('robot-tpm');
    expect(result.status).toBe('untrusted');
    expect(result.reasons.map((r) => r.code)).toContain('EAI_ATTEST_NOT_ALLOWED');
    expect(result.reasons.find((r) => r.code === 'EAI_ATTEST_NOT_ALLOWED')?.message).toMatch(/pipeline-config.*faces\.yaml/u);
    expect((await controller.registry.get('robot-tpm'))?.attestationStatus).toBe('untrusted');
  }, 90_000);

  it.skipIf(skip)('no attestation, no model: the untrusted device downloads an encrypted version but is never sent its key', async () => {
    const key = X25519Identity.generate();
    const d = await controller.deployments.create(await bundle('3.0.0', key), { health: { windowS: 1, maxErrorRate: 0.5 }, releaseKey: key });
    await controller.deployments.target(d.id, ['robot-tpm']);
    await until(async () => (await controller.deployments.targets(d.id))[0]?.phase === 'AWAITING_KEY', 60_000);
    // It was appraised afresh for the key, and is still untrusted: the key stays with the controller.
    await until(async () => ((await controller.attestations?.latest('robot-tpm'))?.verifiedUnixMs ?? 0) > Date.now() - 5000, 20_000);
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect((await controller.deployments.targets(d.id))[0]?.phase).toBe('AWAITING_KEY');
    expect((await controller.commands.list('robot-tpm')).filter((c) => c.action === 'releaseKey')).toHaveLength(1); // v2's only
    expect((await controller.registry.get('robot-tpm'))?.models.find((m) => m.model === 'face')?.active).toBe('2.0.0');
  }, 90_000);

  it.skipIf(skip)('a rollout that requires attestation deploys to trusted devices only; the untrusted one waits in its stage, never targeted', async () => {
    const d = await controller.deployments.create(await bundle('4.0.0'), { health: { windowS: 1, maxErrorRate: 0.5 } });
    const r = await controller.rollouts.start({ deploymentId: d.id, target: { devices: ['robot-plain', 'robot-tpm'] }, stages: [{ name: 'all', percent: 100 }], successThreshold: 0.5, requireAttestation: true });
    await until(async () => (await controller.rollouts.status(r.id)).state !== 'running', 60_000);
    expect((await controller.rollouts.status(r.id)).state).toBe('completed');
    expect((await controller.deployments.targets(d.id)).map((t) => [t.deviceId, t.phase])).toEqual([['robot-plain', 'COMMITTED']]);
  }, 90_000);

  it.skipIf(skip)('a model swapped on disk after activation makes the next appraisal untrusted', async () => {
    expect((await appraise('robot-plain')).status).toBe('trusted');
    const store = await ModelStore.open(configs.get('robot-plain')?.models as string);
    const slot = (await store.active('face')) as Slot;
    const file = path.join(slot.dir, slot.entry as string);
    chmodSync(file, 0o644);
    writeFileSync(file, readFileSync(path.join(repo, 'models/zoo/blazeface-back-256/face_detection_back_256x256_barracuda.onnx')));
    const result = await appraise('robot-plain');
    expect(result.status).toBe('untrusted');
    expect(result.reasons.find((r) => r.code === 'EAI_ATTEST_NOT_ALLOWED')?.message).toMatch(/model-bundle "face@[\d.]+ \(files differ\)"/u);
  }, 60_000);

  it.skipIf(skip)('the same evidence twice at once: the first answer spends the nonce, the copy is stale', async () => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const { token } = await controller.enrolment.issueToken({ validForMs: 60_000, deviceId: 'robot-replay' });
    await controller.enrolment.enrol(createCsr({ privateKey, commonName: 'robot-replay', challengePassword: token }));
    const attester = await SoftwareAttester.open({ stateDir: path.join(tmp, 'robot-replay'), privateKey, bootId: 'test' });
    await measureRuntime(attester);
    await attester.measure('trust-root', 'root.json v1', rootDigest(root));
    const nonce = await controller.attestations!.challenge('robot-replay');
    const payload = aios.fleet.v1.AttestationEvidence.encode({ commandSequence: 1, format: 'aios-evidence/1', evidence: Buffer.from(encodeEvidence(await attester.evidence(nonce))) }).finish();
    const results = await Promise.all([controller.attestations!.receive('robot-replay', payload), controller.attestations!.receive('robot-replay', payload)]);
    expect(results.map((r) => r.status).sort()).toEqual(['stale', 'trusted']);
    expect(results.find((r) => r.status === 'stale')?.reasons[0]?.code).toBe('EAI_ATTEST_NONCE_REUSED');
    expect((await controller.attestations!.receive('robot-replay', payload)).status).toBe('stale');
  }, 60_000);
});
