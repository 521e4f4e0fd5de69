import { copyFileSync, createWriteStream, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../deploy/agent/agent.js';
import { parseAgentConfig } from '../../deploy/agent/config.js';
import { Controller, prepareControllerState, type ControllerOptions } from '../../deploy/controller/controller.js';
import { packBundle } from '../../models/bundle/bundle.js';
import { generateSigningKey, type SigningKey } from '../../models/keys.js';
import { createRoot, signRoot } from '../../models/trust/root.js';
import { TrustStore } from '../../models/trust/trust-store.js';
import { startFleetMosquitto } from '../support/fleet-mosquitto.js';
import { postgresMissing, startPostgres, type Postgres } from '../support/postgres.js';
import { SYSROOTS } from '../support/sysroots.js';
import { findBinary, until, type Mosquitto } from '../support/wait.js';

// Two controller replicas of one fleet behind one Mosquitto, sharing a PostgreSQL store: both see
// every device, each handles a share of the devices' messages (MQTT shared subscriptions), both
// serve bundle chunks (the second copies the bundle out of the store), commands from both to one
// device get distinct sequence numbers and arrive in order, and when the replica driving a
// rollout stops, the other finishes it.

const MOSQUITTO = findBinary('mosquitto');
const noPostgres = postgresMissing();
const skip = MOSQUITTO === undefined || noPostgres !== undefined;
if (skip) console.warn(`controller replica tests skipped: ${MOSQUITTO === undefined ? 'the mosquitto binary is not installed' : noPostgres} (make test installs both as root).`);

const repo = fileURLToPath(new URL('../../', import.meta.url));
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-replicas-'));
const FLEET = 'warehouse';
const rootKey = generateSigningKey();
const [release, ops] = [generateSigningKey(), generateSigningKey()] as [SigningKey, SigningKey];
const pub = (k: SigningKey): { keyid: string; publicKey: SigningKey['publicKey'] } => ({ keyid: k.keyid, publicKey: k.publicKey });
const root = signRoot(createRoot({ version: 1, expires: new Date(Date.now() + 365 * 86_400_000), roles: { root: { keys: [pub(rootKey)], threshold: 1 }, models: { keys: [pub(release)], threshold: 1 }, deploy: { keys: [pub(ops)], threshold: 1 } } }), [rootKey]);
const DEVICES = [
  ['robot-jetson', 'jetson-orin-nx-jp6'],
  ['robot-pi', 'rpi5-coral-usb'],
  ['robot-x86', 'x86-server'],
] as const;

let postgres: Postgres | undefined;
let broker: (Mosquitto & { readonly tlsUrl: string }) | undefined;
let a: Controller | undefined;
let b: Controller | undefined;
let optionsA: ControllerOptions;
const agents: Agent[] = [];

beforeAll(async () => {
  if (skip) return;
  postgres = await startPostgres();
  const store = await postgres.database();
  // One `aios controller init`, then its folder copied to the second replica's host.
  const stateA = path.join(tmp, 'controller-a');
  const stateB = path.join(tmp, 'controller-b');
  const prepared = await prepareControllerState(stateA, FLEET, ['127.0.0.1']);
  mkdirSync(stateB, { recursive: true, mode: 0o700 });
  for (const f of ['ca.pem', 'ca.key', 'server.pem', 'server.key']) copyFileSync(path.join(stateA, f), path.join(stateB, f));
  broker = await startFleetMosquitto(MOSQUITTO as string, tmp, { fleet: FLEET, caPem: prepared.ca.certificatePem, certPem: readFileSync(path.join(stateA, 'server.pem'), 'utf8'), keyPem: readFileSync(path.join(stateA, 'server.key'), 'utf8'), controllers: ['aios-controller', 'aios-controller-2'] });
  const common = { fleet: FLEET, deployKeys: [ops], broker: broker.tlsUrl, store, hostnames: ['127.0.0.1'], enrolHost: '127.0.0.1', enrolPort: 0, apiPort: 0 };
  optionsA = { ...common, state: stateA };
  a = await Controller.start(optionsA);
  b = await Controller.start({ ...common, state: stateB, name: 'aios-controller-2' });
  for (const [device, sysroot] of DEVICES) {
    const dir = path.join(tmp, device);
    mkdirSync(dir, { recursive: true });
    await TrustStore.init(path.join(dir, 'trust'), root);
    writeFileSync(path.join(dir, 'fleet-ca.pem'), a.ca.certificatePem);
    // Tokens from either replica: they share the store.
    writeFileSync(path.join(dir, 'token'), (await (device === 'robot-pi' ? b : a).enrolment.issueToken({ validForMs: 600_000, deviceId: device })).token);
    writeFileSync(
      path.join(dir, 'faces.yaml'),
      'name: faces\nsources:\n  camera: { use: synthetic, params: { pattern: color-bars, rate: 10, width: 160, height: 120, format: rgb24 } }\nstages:\n  resize: { use: image.resize, params: { width: 128, height: 128 } }\n  normalize: { use: image.normalize, params: { scale: 0.00784313725490196, offset: -1 } }\n  detect: { use: infer, params: { model: "store:face", devices: [cpu], threads: 1 } }\nsinks:\n  out: { use: callback }\nflows: [camera -> resize, resize -> normalize, normalize -> detect, detect -> out]\n',
    );
    const config = parseAgentConfig({ fleet: FLEET, device, broker: broker.tlsUrl, controller: (device === 'robot-x86' ? b : a).urls.enrol, ca: 'fleet-ca.pem', token: 'token', state: 'state', trust: 'trust', models: 'models', telemetry: { interval: '200ms', spool: '1MiB' }, pipelines: ['faces.yaml'] }, path.join(dir, 'agent.yaml'));
    agents.push(await Agent.start(config, { sysroot: path.join(SYSROOTS, sysroot) }));
  }
}, 120_000);

afterAll(async () => {
  for (const agent of agents) await agent.stop();
  await a?.stop();
  await b?.stop();
  await broker?.stop();
  await postgres?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

async function bundle(version: string): Promise<string> {
  const file = path.join(tmp, `face-${version}.bundle`);
  const out = createWriteStream(file);
  await packBundle({ metadata: { name: 'face', version, format: 'onnx', entry: 'face.onnx', inputs: [], outputs: [], targets: ['cpu'], minRuntimeVersion: '0.1.0', author: 'tests@aios.dev' }, files: [{ path: 'face.onnx', source: path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx') }], keys: [release] }, out);
  if (!out.closed) await once(out, 'close');
  return file;
}

describe('controller replicas on PostgreSQL behind one Mosquitto', () => {
  it.skipIf(skip)('both replicas see every device; each handles a share of the messages, none twice', async () => {
    const A = a as Controller;
    const B = b as Controller;
    await until(async () => (await A.registry.list()).filter((d) => d.state === 'online' && d.telemetrySequence !== undefined).length === 3, 30_000);
    const t0 = A.registry.counts.telemetry + B.registry.counts.telemetry;
    await until(() => A.registry.counts.telemetry > 5 && B.registry.counts.telemetry > 5, 20_000);
    const fromB = await B.registry.list();
    expect(fromB.map((d) => [d.deviceId, d.state])).toEqual([
      ['robot-jetson', 'online'],
      ['robot-pi', 'online'],
      ['robot-x86', 'online'],
    ]);
    expect(fromB.find((d) => d.deviceId === 'robot-jetson')?.accelerators.some((x) => !x.startsWith('cpu'))).toBe(true);
    // Shared subscriptions: the two counts add up to what the devices sent since, not twice that.
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const received = A.registry.counts.telemetry + B.registry.counts.telemetry - t0;
    const after = await A.registry.list();
    const sent = after.reduce((n, d) => n + (d.telemetrySequence ?? 0), 0) - fromB.reduce((n, d) => n + (d.telemetrySequence ?? 0), 0);
    expect(received).toBeGreaterThan(0);
    expect(received).toBeLessThan(sent * 1.5 + 10);
  }, 60_000);

  it.skipIf(skip)('a rollout started on one replica is served by both, and finished by the other when the first stops', async () => {
    const A = a as Controller;
    const B = b as Controller;
    // Registered through B: the bundle goes into the store, and A copies it out when asked for chunks.
    const deployment = await B.deployments.create(await bundle('1.0.0'), { chunkSize: 16 * 1024, health: { windowS: 1, maxErrorRate: 0.5 } });
    const rollout = await B.rollouts.start({ deploymentId: deployment.id, target: {}, stages: [{ name: 'canary', count: 1 }, { name: 'all', percent: 100 }] });
    const canary = rollout.stages[0]?.devices[0] as string;
    // Whichever replica leads (A started first and took the lead): it stops once the canary committed.
    await until(async () => (await B.deployments.targets(deployment.id)).some((t) => t.deviceId === canary && t.phase === 'COMMITTED'), 60_000);
    const servedBeforeStop = A.bundleStats().chunksSent + B.bundleStats().chunksSent;
    expect(A.bundleStats().chunksSent).toBeGreaterThan(0);
    expect(B.bundleStats().chunksSent).toBeGreaterThan(0);
    expect(servedBeforeStop).toBeGreaterThanOrEqual(Math.ceil(deployment.bundleSize / deployment.chunkSize));
    await A.stop();
    a = undefined;
    await until(async () => (await B.rollouts.status(rollout.id)).state !== 'running', 90_000);
    const finished = await B.rollouts.status(rollout.id);
    expect(finished.state).toBe('completed');
    const devices = await B.registry.list();
    expect(devices.map((d) => d.models[0]?.active)).toEqual(['1.0.0', '1.0.0', '1.0.0']);
    // And A, started again, takes its place beside B on the same store.
    a = await Controller.start(optionsA);
    expect((await a.rollouts.status(rollout.id)).state).toBe('completed');
  }, 150_000);

  it.skipIf(skip)('commands to one device from both replicas at once: distinct sequences, all carried out', async () => {
    const A = a as Controller;
    const B = b as Controller;
    // The pipeline runs since the rollout installed its model: startPipeline is a no-op that succeeds.
    const sends = Array.from({ length: 10 }, (_, i) => (i % 2 === 0 ? A : B).commands.send('robot-x86', { startPipeline: { name: 'faces' } }));
    const records = await Promise.all(sends);
    const sequences = records.map((r) => r.sequence).sort((x, y) => x - y);
    expect(new Set(sequences).size).toBe(10);
    expect(sequences.at(-1)! - sequences[0]!).toBe(9);
    // Every one reaches the device in order (none refused as replayed), whichever replica gets the ack.
    const done = await Promise.all(records.map((r) => A.commands.until('robot-x86', r.sequence, ['done', 'rejected', 'failed'], 20_000)));
    expect(done.filter((r) => r.status !== 'done')).toEqual([]);
  }, 60_000);
});
