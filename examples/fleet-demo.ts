/**
 * The fleet on one machine: a controller with its embedded broker, and three device agents that
 * look like a Jetson Orin NX, a Raspberry Pi 5 with a Coral USB stick and an x86 server (their
 * hardware comes from captured system roots). Each device enrols with a one-time token and runs
 * the face-detection pipeline on a real video, waiting for its model. The controller appraises
 * each device's attestation when it connects (software attesters here: these devices have no TPM;
 * test/integration/fleet-attestation.test.ts runs the same with a TPM); one device runs a pipeline
 * configuration edited on its disk, and is untrusted. A signed bundle of BlazeFace, encrypted to a
 * release key the controller holds, is rolled out canary first, then to everyone: each trusted
 * device downloads it in chunks, gets the key after a fresh trusted appraisal, verifies and
 * decrypts it, swaps it into its running pipeline, watches it for a health window and commits;
 * the untrusted one downloads it too, and never gets the key. Prints the fleet before and after;
 * then the operator revokes the untrusted device, and the broker cuts it off.
 *
 * Run: make run (or: npx tsc -p tsconfig.json && node dist/examples/fleet-demo.js [--keep DIR])
 * Everything lives in a temporary folder (kept with --keep, to look at the controller's database,
 * the devices' stores and spools), and only loopback ports are used.
 */
import { once } from 'node:events';
import { createWriteStream, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Agent } from '../deploy/agent/agent.js';
import { parseAgentConfig } from '../deploy/agent/config.js';
import { Controller } from '../deploy/controller/controller.js';
import type { DeviceSummary } from '../deploy/controller/devices.js';
import type { RolloutStatus } from '../deploy/controller/rollouts.js';
import { X25519Identity } from '../models/bundle/age/keys.js';
import { createEncryptStream } from '../models/bundle/age/stream.js';
import { packBundle } from '../models/bundle/bundle.js';
import { generateSigningKey, type SigningKey } from '../models/keys.js';
import { createRoot, rootDigest, signRoot } from '../models/trust/root.js';
import { bytesDigest, runtimeDigest } from '../runtime/attest/file-digest.js';
import { TrustStore } from '../models/trust/trust-store.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), path.basename(path.dirname(path.dirname(fileURLToPath(import.meta.url)))) === 'dist' ? '../..' : '..');
const keep = process.argv.includes('--keep') ? process.argv[process.argv.indexOf('--keep') + 1] : undefined;
const work = keep ?? mkdtempSync(path.join(os.tmpdir(), 'aios-fleet-demo-'));
mkdirSync(work, { recursive: true });
const DEVICES = [
  { id: 'jetson-01', sysroot: 'jetson-orin-nx-jp6', labels: { site: 'madrid', kind: 'amr' } },
  { id: 'pi-coral-01', sysroot: 'rpi5-coral-usb', labels: { site: 'madrid', kind: 'door-cam' } },
  { id: 'x86-01', sysroot: 'x86-server', labels: { site: 'madrid', kind: 'edge-server' } },
];

const say = (text: string): void => void process.stdout.write(`${text}\n`);
const pub = (k: SigningKey): { keyid: string; publicKey: SigningKey['publicKey'] } => ({ keyid: k.keyid, publicKey: k.publicKey });

// The keys of a fleet: a root key (offline in real life), a release key that signs models, and
// two operators' deploy keys, both needed to command a device.
const rootKey = generateSigningKey();
const release = generateSigningKey();
const ops = [generateSigningKey(), generateSigningKey()];
const root = signRoot(createRoot({ version: 1, expires: new Date(Date.now() + 365 * 86_400_000), roles: { root: { keys: [pub(rootKey)], threshold: 1 }, models: { keys: [pub(release)], threshold: 1 }, deploy: { keys: ops.map(pub), threshold: 2 } } }), [rootKey]);

say(`aios fleet demo in ${work}`);
// The fleet's pipeline, as released: the configuration devices are expected to run.
const PIPELINE = [
  'name: face-detection',
  'sources:',
  `  camera: { use: video, params: { url: ${JSON.stringify(path.join(repo, 'test/fixtures/video/face-zoom.mp4'))}, width: 384, height: 240, realtime: true, loop: true, fps: 5 } }`,
  'stages:',
  '  square: { use: image.crop, params: { center: true, width: 240, height: 240 } }',
  '  resize: { use: image.resize, params: { width: 128, height: 128 } }',
  '  normalize: { use: image.normalize, params: { scale: 0.00784313725490196, offset: -1 } }',
  '  detect: { use: infer, params: { model: "store:face", devices: [cpu], threads: 1 }, queue: { size: 2, full: drop_oldest } }',
  '  faces: { use: decode.blazeface, params: { anchors: front-128, imageWidth: 240, imageHeight: 240 } }',
  'sinks:',
  '  out: { use: callback }',
  'flows: [camera.frames -> square, square -> resize, resize -> normalize, normalize -> detect, detect -> faces, faces -> out]',
  '',
].join('\n');
const controller = await Controller.start({
  fleet: 'demo',
  state: path.join(work, 'controller'),
  deployKeys: ops,
  hostnames: ['127.0.0.1'],
  brokerHost: '127.0.0.1',
  brokerPort: 0,
  enrolHost: '127.0.0.1',
  enrolPort: 0,
  apiHost: '127.0.0.1',
  apiPort: 0,
  // The reference values devices are appraised against: this aios build, this trust root, this pipeline.
  attestation: { policy: { allowedRuntimeDigests: [(await runtimeDigest()).sha256], allowedTrustRootDigests: [rootDigest(root)], allowedPipelineConfigs: [bytesDigest(PIPELINE)] } },
});
say(`controller: fleet CA made, embedded broker ${controller.urls.broker}, enrolment ${controller.urls.enrol}, operator API ${controller.urls.api}`);

const agents: Agent[] = [];
// The key the release is encrypted to: only the controller holds it.
const modelKey = X25519Identity.generate();
try {
  for (const d of DEVICES) {
    // What a device image holds before it first boots: the trust root, the fleet CA, a one-time token,
    // its own age key for encrypted models, its pipeline and agent.yaml.
    const dir = path.join(work, d.id);
    mkdirSync(dir, { recursive: true });
    await TrustStore.init(path.join(dir, 'trust'), root);
    writeFileSync(path.join(dir, 'fleet-ca.pem'), controller.ca.certificatePem);
    writeFileSync(path.join(dir, 'token'), (await controller.enrolment.issueToken({ validForMs: 3_600_000, deviceId: d.id, labels: d.labels })).token, { mode: 0o600 });
    // x86-01's copy was edited on its disk (a larger crop): it runs, but not what was released.
    writeFileSync(path.join(dir, 'face-detection.yaml'), d.id === 'x86-01' ? PIPELINE.replace('width: 240, height: 240 } }', 'width: 241, height: 240 } }') : PIPELINE);
    const config = parseAgentConfig(
      { fleet: 'demo', device: d.id, broker: controller.urls.broker, controller: controller.urls.enrol, ca: 'fleet-ca.pem', token: 'token', state: 'state', trust: 'trust', models: 'models', labels: d.labels, telemetry: { interval: '1s', spool: '4MiB' }, pipelines: ['face-detection.yaml'] },
      path.join(dir, 'agent.yaml'),
    );
    agents.push(await Agent.start(config, { sysroot: path.join(repo, 'test/fixtures/sysroots', d.sysroot) }));
  }
  await until(async () => (await controller.registry.list()).filter((d) => d.state === 'online' && d.telemetrySequence !== undefined && d.attestationStatus !== undefined).length === DEVICES.length, 30_000);
  say('\nthe fleet, enrolled, online and appraised (pipelines wait for their model):');
  say(fleetTable((await controller.registry.list())));
  for (const d of await controller.registry.list()) if (d.attestationReason !== undefined) say(`  ${d.deviceId} is ${d.attestationStatus}: ${d.attestationReason}`);

  // A release: BlazeFace, signed by the release key, encrypted to a key the controller releases
  // to each device only after a fresh trusted appraisal.
  const bundleFile = path.join(work, 'face-1.0.0.bundle');
  const out = createWriteStream(bundleFile);
  await packBundle(
    {
      metadata: { name: 'face', version: '1.0.0', branch: 'main', format: 'onnx', entry: 'face.onnx', inputs: [{ name: 'input:0', dtype: 'float32', shape: [1, 128, 128, 3] }], outputs: [], targets: ['cpu', 'cuda', 'jetson'], minRuntimeVersion: '0.1.0', author: 'release@demo' },
      files: [{ path: 'face.onnx', source: path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx'), encrypt: true }],
      keys: [release],
      encryptTo: { recipients: 1, createEncryptStream: () => createEncryptStream([modelKey.recipient]) },
    },
    out,
  );
  if (!out.closed) await once(out, 'close');
  const deployment = await controller.deployments.create(bundleFile, { health: { windowS: 3, maxErrorRate: 0.05 }, chunkSize: 64 * 1024, releaseKey: modelKey });
  // Half of a stage committing is enough to go on: the untrusted device will wait in vain.
  const rollout = await controller.rollouts.start({ deploymentId: deployment.id, target: { labels: { site: 'madrid' } }, stages: [{ name: 'canary', count: 1 }, { name: 'all', percent: 100 }], successThreshold: 0.5 });
  say(`\nrollout ${rollout.id}: face 1.0.0 (${deployment.bundleSize} bytes, its key released only to trusted devices), canary ${rollout.stages[0]?.devices.join(', ')} first`);
  let last = '';
  for (;;) {
    const r = (await controller.rollouts.status(rollout.id));
    const line = progressLine(r);
    if (line !== last) say(line);
    last = line;
    if (r.state !== 'running') break;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  await until(async () => (await controller.registry.list()).filter((d) => d.models[0]?.active === '1.0.0' && d.pipelines[0]?.state === 'RUNNING').length === DEVICES.length - 1, 15_000).catch(() => undefined);
  await new Promise((resolve) => setTimeout(resolve, 2500)); // a telemetry record or two from the running pipelines
  say('\nthe fleet after the rollout:');
  say(fleetTable((await controller.registry.list())));
  for (const t of await controller.deployments.targets(deployment.id)) {
    const released = (await controller.commands.list(t.deviceId)).some((c) => c.action === 'releaseKey');
    say(`  ${t.deviceId}: ${t.phase.toLowerCase().replace(/_/gu, ' ')}, model key ${released ? 'released' : 'withheld (attestation not trusted)'}`);
  }

  // The operator decides x86-01 was tampered with and revokes it: its certificate goes into the
  // controller's CRL, the broker drops it and refuses it from then on.
  const revoked = await controller.revocations.revoke('x86-01', 'keyCompromise');
  await until(async () => (await controller.registry.get('x86-01'))?.state !== 'online', 10_000).catch(() => undefined);
  say(`
x86-01 revoked (${revoked.reason}): ${revoked.certificates} certificate in ${path.relative(work, controller.revocations.crlFile)}, disconnected, refused from now on`);
  say(fleetTable(await controller.registry.list()));
} finally {
  for (const a of agents) await a.stop();
  await controller.stop();
  if (keep === undefined) rmSync(work, { recursive: true, force: true });
}

function progressLine(r: RolloutStatus): string {
  return `  ${r.state.padEnd(9)} ${r.stages.map((s) => `${s.name} ${s.committed}/${s.devices.length} committed${s.failed > 0 ? `, ${s.failed} failed` : ''}${s.pending > 0 ? `, ${s.pending} deploying` : ''}`).join(' | ')}${r.reason === undefined ? '' : ` (${r.reason})`}`;
}

function fleetTable(devices: readonly DeviceSummary[]): string {
  const rows = [['device', 'state', 'attested', 'hardware', 'model', 'pipeline', 'cpu', 'temp', 'labels']];
  for (const d of devices) {
    rows.push([
      d.deviceId,
      d.revoked === undefined ? d.state : 'revoked',
      `${d.attestationStatus ?? '-'} (${d.attestation ?? '?'})`,
      d.accelerators.join(' '),
      d.models.map((m) => `${m.model} ${m.active}`).join(' ') || '-',
      d.pipelines.map((p) => `${p.name} ${p.state.toLowerCase().replace(/_/gu, ' ')}`).join(' ') || '-',
      d.cpuPercent === undefined ? '-' : `${d.cpuPercent.toFixed(0)}%`,
      d.temperatureC === undefined ? '-' : `${d.temperatureC.toFixed(0)}°C`,
      Object.entries(d.labels).map(([k, v]) => `${k}=${v}`).join(' '),
    ]);
  }
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()).join('\n');
}

async function until(condition: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > end) throw new Error(`the demo waited ${timeoutMs} ms for ${condition.toString()}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
