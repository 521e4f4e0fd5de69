import { createWriteStream, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../deploy/agent/agent.js';
import { parseAgentConfig, type AgentConfig } from '../../deploy/agent/config.js';
import { Controller } from '../../deploy/controller/controller.js';
import type { TargetStatus } from '../../deploy/controller/deployments.js';
import { X25519Identity } from '../../models/bundle/age/keys.js';
import { createEncryptStream } from '../../models/bundle/age/stream.js';
import { packBundle } from '../../models/bundle/bundle.js';
import type { ModelMetadata } from '../../models/bundle/manifest.js';
import { generateSigningKey, type SigningKey } from '../../models/keys.js';
import { createRoot, signRoot } from '../../models/trust/root.js';
import { TrustStore } from '../../models/trust/trust-store.js';
import { SYSROOTS } from '../support/sysroots.js';
import { until } from '../support/wait.js';

// OTA model deployment end to end: signed (and encrypted) bundles of real models, pulled in
// chunks over MQTT by a real agent, verified, installed into the inactive slot, hot-swapped into
// a running pipeline, watched for a health window, committed; a version the pipeline cannot take
// is rolled back by the device on its own.

const repo = fileURLToPath(new URL('../../', import.meta.url));
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-fleet-ota-'));
const rootKey = generateSigningKey();
const [release, ops1, ops2, rogue] = [generateSigningKey(), generateSigningKey(), generateSigningKey(), generateSigningKey()] as [SigningKey, SigningKey, SigningKey, SigningKey];
const pub = (k: SigningKey): { keyid: string; publicKey: SigningKey['publicKey'] } => ({ keyid: k.keyid, publicKey: k.publicKey });
const root = signRoot(createRoot({ version: 1, expires: new Date(Date.now() + 365 * 86_400_000), roles: { root: { keys: [pub(rootKey)], threshold: 1 }, models: { keys: [pub(release)], threshold: 1 }, deploy: { keys: [pub(ops1), pub(ops2)], threshold: 2 } } }), [rootKey]);
const deviceKey = X25519Identity.generate();

let controller: Controller;
let agent: Agent;

async function bundle(name: string, version: string, source: string, entry: string, options: { encrypt?: boolean; key?: SigningKey } = {}): Promise<string> {
  const file = path.join(tmp, `${name}-${version}.bundle`);
  const metadata: ModelMetadata = { name, version, branch: 'main', format: entry.endsWith('.tflite') ? 'tflite' : 'onnx', entry, inputs: [], outputs: [], targets: ['cpu'], minRuntimeVersion: '0.1.0', author: 'tests@aios.dev' };
  const out = createWriteStream(file);
  await packBundle(
    {
      metadata,
      files: [{ path: entry, source: path.join(repo, source), ...(options.encrypt === true ? { encrypt: true } : {}) }],
      keys: [options.key ?? release],
      ...(options.encrypt === true ? { encryptTo: { recipients: 1, createEncryptStream: () => createEncryptStream([deviceKey.recipient]) } } : {}),
    },
    out,
  );
  if (!out.closed) await once(out, 'close');
  return file;
}

beforeAll(async () => {
  controller = await Controller.start({ fleet: 'warehouse', state: path.join(tmp, 'controller'), deployKeys: [ops1, ops2], hostnames: ['127.0.0.1'], brokerHost: '127.0.0.1', brokerPort: 0, enrolHost: '127.0.0.1', enrolPort: 0, apiPort: 0 });
  const dir = path.join(tmp, 'robot-1');
  mkdirSync(dir, { recursive: true });
  await TrustStore.init(path.join(dir, 'trust'), root);
  writeFileSync(path.join(dir, 'fleet-ca.pem'), controller.ca.certificatePem);
  writeFileSync(path.join(dir, 'token'), (await controller.enrolment.issueToken({ validForMs: 600_000, deviceId: 'robot-1' })).token);
  writeFileSync(path.join(dir, 'device.age.key'), `${deviceKey.encode()}\n`, { mode: 0o600 });
  writeFileSync(
    path.join(dir, 'faces.yaml'),
    [
      'name: faces',
      'sources:',
      '  camera: { use: synthetic, params: { pattern: color-bars, rate: 20, width: 160, height: 120, format: rgb24 } }',
      'stages:',
      '  resize: { use: image.resize, params: { width: 128, height: 128 } }',
      '  normalize: { use: image.normalize, params: { scale: 0.00784313725490196, offset: -1 } }',
      '  detect: { use: infer, params: { model: "store:face", devices: [cpu] } }',
      'sinks:',
      '  out: { use: callback }',
      'flows: [camera -> resize, resize -> normalize, normalize -> detect, detect -> out]',
      '',
    ].join('\n'),
  );
  const config: AgentConfig = parseAgentConfig(
    { fleet: 'warehouse', device: 'robot-1', broker: controller.urls.broker, controller: controller.urls.enrol, ca: 'fleet-ca.pem', token: 'token', state: 'state', trust: 'trust', models: 'models', identity: 'device.age.key', telemetry: { interval: '250ms', spool: '1MiB' }, pipelines: ['faces.yaml'], ota: { window: 4 } },
    path.join(dir, 'agent.yaml'),
  );
  agent = await Agent.start(config, { sysroot: path.join(SYSROOTS, 'x86-server') });
  await until(async () => (await controller.registry.get('robot-1'))?.state === 'online', 15_000);
});
afterAll(async () => {
  await agent?.stop();
  await controller?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

async function settled(deploymentId: string): Promise<TargetStatus> {
  await until(async () => ['COMMITTED', 'ROLLED_BACK', 'FAILED'].includes((await controller.deployments.targets(deploymentId))[0]?.phase ?? ''), 60_000);
  return (await controller.deployments.targets(deploymentId))[0] as TargetStatus;
}

describe('OTA model deployment', () => {
  it('installs a first version: the pipeline that was waiting for the model starts, passes its health window, and the device commits', async () => {
    expect((await controller.registry.get('robot-1'))?.pipelines).toEqual([{ name: 'faces', state: 'WAITING_FOR_MODEL' }]);
    const d = await controller.deployments.create(await bundle('face', '1.0.0', 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx', 'face.onnx'), { health: { windowS: 1, maxErrorRate: 0 }, chunkSize: 64 * 1024 });
    await controller.deployments.target(d.id, ['robot-1']);
    expect(await settled(d.id)).toMatchObject({ phase: 'COMMITTED', bytesDone: d.bundleSize });
    await until(async () => (await controller.registry.get('robot-1'))?.models[0]?.active === '1.0.0', 10_000);
    expect((await controller.registry.get('robot-1'))?.pipelines).toEqual([{ name: 'faces', state: 'RUNNING' }]);
    const phases = (await controller.registry.events('robot-1', 50)).map((e) => (e.detail as { phase?: string } | undefined)?.phase).filter((p) => p !== undefined).reverse();
    expect(phases).toEqual(expect.arrayContaining(['DOWNLOADING', 'VERIFYING', 'ACTIVATING', 'HEALTH_CHECK', 'COMMITTED']));
    expect(phases.indexOf('COMMITTED')).toBeGreaterThan(phases.indexOf('HEALTH_CHECK'));
  });

  it('swaps an encrypted second version (another exporter, same input) into the running pipeline and keeps the first as previous', async () => {
    const d = await controller.deployments.create(await bundle('face', '2.0.0', 'models/zoo/blazeface-short-range-tflite/face_detection_short_range.tflite', 'face.tflite', { encrypt: true }), { health: { windowS: 1, maxErrorRate: 0 } });
    await controller.deployments.target(d.id, ['robot-1']);
    expect((await settled(d.id)).phase).toBe('COMMITTED');
    await until(async () => (await controller.registry.get('robot-1'))?.models[0]?.active === '2.0.0', 10_000);
    expect((await controller.registry.get('robot-1'))?.models[0]).toEqual({ model: 'face', active: '2.0.0', previous: '1.0.0' });
    expect((await controller.registry.get('robot-1'))?.pipelines[0]?.state).toBe('RUNNING');
  });

  it('rolls back by itself a version the running pipeline cannot take, and reports why', async () => {
    const d = await controller.deployments.create(await bundle('face', '3.0.0', 'models/zoo/blazeface-back-256/face_detection_back_256x256_barracuda.onnx', 'face.onnx'), { health: { windowS: 1, maxErrorRate: 0 } });
    await controller.deployments.target(d.id, ['robot-1']);
    expect(await settled(d.id)).toMatchObject({ phase: 'ROLLED_BACK', code: 'EAI_MODEL_SWAP_INCOMPATIBLE' });
    await until(async () => (await controller.registry.get('robot-1'))?.models[0]?.active === '2.0.0', 10_000);
    // The FAILED ack follows the ROLLED_BACK event through the device's spool.
    await until(async () => (await controller.commands.list('robot-1', 1))[0]?.status === 'failed', 10_000);
    expect((await controller.commands.list('robot-1', 1))[0]).toMatchObject({ action: 'deploy', status: 'failed', code: 'EAI_MODEL_SWAP_INCOMPATIBLE' });
    expect((await controller.registry.get('robot-1'))?.pipelines[0]?.state).toBe('RUNNING');
  });

  it('refuses a bundle not signed by the models role: nothing is installed', async () => {
    const d = await controller.deployments.create(await bundle('face', '4.0.0', 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx', 'face.onnx', { key: rogue }), { health: { windowS: 1, maxErrorRate: 0 } });
    await controller.deployments.target(d.id, ['robot-1']);
    expect(await settled(d.id)).toMatchObject({ phase: 'FAILED', code: 'EAI_BUNDLE_SIGNATURE_UNKNOWN_KEY' });
    expect((await controller.registry.get('robot-1'))?.models[0]).toEqual({ model: 'face', active: '2.0.0', previous: '1.0.0' });
  });
});
