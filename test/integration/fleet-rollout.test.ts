import { generateKeyPairSync } from 'node:crypto';
import { createWriteStream, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../deploy/agent/agent.js';
import { parseAgentConfig } from '../../deploy/agent/config.js';
import { Controller, type ControllerOptions } from '../../deploy/controller/controller.js';
import { createCsr } from '../../deploy/fleet/pki/csr.js';
import type { RolloutStatus } from '../../deploy/controller/rollouts.js';
import { packBundle } from '../../models/bundle/bundle.js';
import { generateSigningKey, type SigningKey } from '../../models/keys.js';
import { createRoot, signRoot } from '../../models/trust/root.js';
import { TrustStore } from '../../models/trust/trust-store.js';
import { SYSROOTS } from '../support/sysroots.js';
import { runCli } from '../support/cli.js';
import { freePort, until } from '../support/wait.js';

// Staged rollouts across three devices that look like a Jetson, a Pi with a Coral and an x86 box:
// a canary first, the rest only after it committed; a version that breaks the canary stops the
// rollout before anyone else gets it; pause and resume; an operator's rollback of a finished
// rollout; and a controller restarted in the middle of a rollout, which carries on.

const repo = fileURLToPath(new URL('../../', import.meta.url));
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-rollout-'));
const rootKey = generateSigningKey();
const [release, ops1, ops2] = [generateSigningKey(), generateSigningKey(), generateSigningKey()] as [SigningKey, SigningKey, SigningKey];
const pub = (k: SigningKey): { keyid: string; publicKey: SigningKey['publicKey'] } => ({ keyid: k.keyid, publicKey: k.publicKey });
const root = signRoot(createRoot({ version: 1, expires: new Date(Date.now() + 365 * 86_400_000), roles: { root: { keys: [pub(rootKey)], threshold: 1 }, models: { keys: [pub(release)], threshold: 1 }, deploy: { keys: [pub(ops1), pub(ops2)], threshold: 2 } } }), [rootKey]);
const DEVICES = [
  ['robot-jetson', 'jetson-orin-nx-jp6'],
  ['robot-pi', 'rpi5-coral-usb'],
  ['robot-x86', 'x86-server'],
] as const;

let controller: Controller;
let options: ControllerOptions;
const agents: Agent[] = [];

async function bundle(version: string, source: string, entry: string): Promise<string> {
  const file = path.join(tmp, `face-${version}.bundle`);
  const out = createWriteStream(file);
  await packBundle({ metadata: { name: 'face', version, format: entry.endsWith('.tflite') ? 'tflite' : 'onnx', entry, inputs: [], outputs: [], targets: ['cpu'], minRuntimeVersion: '0.1.0', author: 'tests@aios.dev' }, files: [{ path: entry, source: path.join(repo, source) }], keys: [release] }, out);
  if (!out.closed) await once(out, 'close');
  return file;
}
const V1 = (): Promise<string> => bundle('1.0.0', 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx', 'face.onnx');
const V2 = (): Promise<string> => bundle('2.0.0', 'models/zoo/blazeface-short-range-tflite/face_detection_short_range.tflite', 'face.tflite');
const BAD = (): Promise<string> => bundle('9.0.0', 'models/zoo/blazeface-back-256/face_detection_back_256x256_barracuda.onnx', 'face.onnx');

beforeAll(async () => {
  options = { fleet: 'warehouse', state: path.join(tmp, 'controller'), deployKeys: [ops1, ops2], hostnames: ['127.0.0.1'], brokerHost: '127.0.0.1', brokerPort: await freePort(), enrolHost: '127.0.0.1', enrolPort: 0, apiPort: 0 };
  controller = await Controller.start(options);
  for (const [device, sysroot] of DEVICES) {
    const dir = path.join(tmp, device);
    mkdirSync(dir, { recursive: true });
    await TrustStore.init(path.join(dir, 'trust'), root);
    writeFileSync(path.join(dir, 'fleet-ca.pem'), controller.ca.certificatePem);
    writeFileSync(path.join(dir, 'token'), (await controller.enrolment.issueToken({ validForMs: 600_000, deviceId: device, labels: { site: 'madrid' } })).token);
    writeFileSync(
      path.join(dir, 'faces.yaml'),
      'name: faces\nsources:\n  camera: { use: synthetic, params: { pattern: color-bars, rate: 10, width: 160, height: 120, format: rgb24 } }\nstages:\n  resize: { use: image.resize, params: { width: 128, height: 128 } }\n  normalize: { use: image.normalize, params: { scale: 0.00784313725490196, offset: -1 } }\n  detect: { use: infer, params: { model: "store:face", devices: [cpu], threads: 1 } }\nsinks:\n  out: { use: callback }\nflows: [camera -> resize, resize -> normalize, normalize -> detect, detect -> out]\n',
    );
    const config = parseAgentConfig({ fleet: 'warehouse', device, broker: controller.urls.broker, controller: controller.urls.enrol, ca: 'fleet-ca.pem', token: 'token', state: 'state', trust: 'trust', models: 'models', telemetry: { interval: '500ms', spool: '1MiB' }, pipelines: ['faces.yaml'] }, path.join(dir, 'agent.yaml'));
    agents.push(await Agent.start(config, { sysroot: path.join(SYSROOTS, sysroot) }));
  }
  await until(async () => (await controller.registry.list()).filter((d) => d.state === 'online').length === 3, 20_000);
});
afterAll(async () => {
  for (const a of agents) await a.stop();
  await controller.stop();
  rmSync(tmp, { recursive: true, force: true });
});

async function finished(id: string): Promise<RolloutStatus> {
  await until(async () => !['running'].includes((await controller.rollouts.status(id)).state), 90_000);
  return (await controller.rollouts.status(id));
}

const active = async (device: string): Promise<string | undefined> => (await controller.registry.get(device))?.models[0]?.active;
const everyActive = async (version: string): Promise<boolean> => (await Promise.all(DEVICES.map(([dev]) => active(dev)))).every((v) => v === version);

describe('staged rollouts', () => {
  it('goes canary first, then everyone, each device committing after its health window', async () => {
    const d = await controller.deployments.create(await V1(), { health: { windowS: 1, maxErrorRate: 0 } });
    const started = await controller.rollouts.start({ deploymentId: d.id, target: { labels: { site: 'madrid' } }, stages: [{ name: 'canary', count: 1 }, { name: 'all', percent: 100 }] });
    expect(started.stages.map((s) => s.devices.length)).toEqual([1, 2]);
    // While the canary works, nobody else has been sent the deployment.
    expect((await controller.deployments.targets(d.id)).map((t) => t.deviceId)).toEqual([started.stages[0]?.devices[0]]);
    const done = await finished(started.id);
    expect(done.state).toBe('completed');
    expect(done.stages.map((s) => [s.committed, s.failed])).toEqual([[1, 0], [2, 0]]);
    const targets = (await controller.deployments.targets(d.id));
    const canary = targets.find((t) => t.deviceId === started.stages[0]?.devices[0]);
    for (const t of targets) if (t !== canary) expect(t.sequence).toBeGreaterThan(0);
    await until(async () => (await everyActive('1.0.0')), 10_000);
  });

  it('stops when the canary fails: no other device is sent the broken version', async () => {
    const d = await controller.deployments.create(await BAD(), { health: { windowS: 1, maxErrorRate: 0 } });
    const r = await controller.rollouts.start({ deploymentId: d.id, target: {}, stages: [{ name: 'canary', count: 1 }, { name: 'all', percent: 100 }] });
    const done = await finished(r.id);
    expect(done.state).toBe('rolled-back');
    expect(done.reason).toMatch(/stage 'canary': 1 of 1 devices failed \(robot-\w+: EAI_MODEL_SWAP_INCOMPATIBLE\)/u);
    expect((await controller.deployments.targets(d.id))).toHaveLength(1);
    expect((await everyActive('1.0.0'))).toBe(true);
  });

  it('pauses between stages, carries on after a controller restart, resumes, and rolls everyone back on request', async () => {
    const d = await controller.deployments.create(await V2(), { health: { windowS: 1, maxErrorRate: 0 } });
    const r = await controller.rollouts.start({ deploymentId: d.id, target: {}, stages: [{ name: 'canary', count: 1 }, { name: 'all', percent: 100 }] });
    (await controller.rollouts.pause(r.id));
    await until(async () => (await controller.deployments.targets(d.id))[0]?.phase === 'COMMITTED', 60_000);
    expect((await controller.deployments.targets(d.id))).toHaveLength(1); // paused: stage 2 waits
    // The controller goes down and comes back on the same state and ports; agents reconnect.
    await controller.stop();
    controller = await Controller.start(options);
    expect((await controller.rollouts.status(r.id))).toMatchObject({ state: 'paused', stage: 0 });
    await until(async () => (await controller.registry.list()).filter((dev) => dev.state === 'online').length === 3, 30_000);
    await controller.rollouts.resume(r.id);
    expect((await finished(r.id)).state).toBe('completed');
    await until(async () => (await everyActive('2.0.0')), 15_000);
    await controller.rollouts.rollback(r.id, 'operator: detections look wrong');
    await until(async () => (await everyActive('1.0.0')), 30_000);
    expect((await controller.rollouts.status(r.id))).toMatchObject({ state: 'rolled-back', reason: 'operator: detections look wrong' });
  });

  it('aios fleet deploy | rollouts | pause: the same from the command line, with a live view that ends with the rollout', async () => {
    const bad = await runCli('fleet', 'deploy', await V2(), '--stages', '1,x', '--api', controller.urls.api);
    expect(bad.stderr).toMatch(/^error EAI_CLI_USAGE: --stages: 'x'/u);
    const started = await runCli('fleet', 'deploy', await V2(), '--label', 'site=madrid', '--stages', '1,100%', '--health-window', '1s', '--max-error-rate', '0', '--api', controller.urls.api, '--json');
    expect(started.code, started.stderr).toBe(0);
    const rollout = JSON.parse(started.stdout) as RolloutStatus;
    expect(rollout.stages.map((st) => st.name)).toEqual(['canary', 'all']);
    const watched = await runCli('fleet', 'rollouts', rollout.id, '--watch', '--api', controller.urls.api);
    expect(watched.stdout).toMatch(new RegExp(`${rollout.id} {2}face 2\\.0\\.0 {2}completed`, 'u'));
    expect(watched.stdout).toMatch(/all +\[#{20}\] 2\/2 {2}2 committed, 0 failed/u);
    const list = await runCli('fleet', 'rollouts', '--api', controller.urls.api);
    expect(list.stdout).toMatch(new RegExp(`${rollout.id}\\s+face 2\\.0\\.0\\s+completed`, 'u'));
    const paused = await runCli('fleet', 'pause', rollout.id, '--api', controller.urls.api);
    expect(paused.stderr).toMatch(/^error EAI_FLEET_ROLLOUT_STATE/u);
    await until(async () => (await everyActive('2.0.0')), 15_000);
  });

  it('a stage timeout counts a device that never answers as failed: the rollout stops instead of waiting for it forever', async () => {
    // A device enrolled but never started (a robot in a drawer): its Deploy waits at the broker.
    const { token } = await controller.enrolment.issueToken({ validForMs: 60_000, deviceId: 'robot-ghost', labels: { site: 'madrid' } });
    await controller.enrolment.enrol(createCsr({ privateKey: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey, commonName: 'robot-ghost', challengePassword: token }));
    const d = await controller.deployments.create(await V1(), { health: { windowS: 1, maxErrorRate: 0.5 } });
    const r = await controller.rollouts.start({ deploymentId: d.id, target: { devices: ['robot-ghost', 'robot-x86'] }, stages: [{ name: 'all', percent: 100 }], stageTimeoutS: 3, rollbackOnFailure: false });
    const done = await finished(r.id);
    expect(done.state).toBe('stopped');
    expect(done.reason).toMatch(/stage 'all': 1 of 2 devices failed \(1 not done within the stage timeout of 3 s\)/u);
    await expect(controller.rollouts.start({ deploymentId: d.id, target: {}, stages: [], stageTimeoutS: -1 })).rejects.toMatchObject({ code: 'EAI_FLEET_ROLLOUT_INVALID' });
  });
});
