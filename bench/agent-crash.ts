/**
 * The agent killed with SIGKILL at random moments while it deploys a model, many times (issue 7:
 * 1000 in bench/, 50 in the test suite's test/integration/agent-crash.test.ts, which checks the
 * same things). A controller (embedded broker) runs here; the agent runs as a child process from
 * dist/ and is killed 0.3–2.8 s after each start (its start-up alone takes about half a second, so
 * kills land in start-up, download, install, activation and health window alike). After every kill the model store must hold a
 * complete, verified version or none; the deployment is re-targeted to a fresh bundle each time
 * it commits, so every kill falls during some deployment. Reports kills, commits, violations
 * (must be 0), chunks sent against one download per run (resume efficiency), the longest run of
 * kills during which no deployment ended (a deployment the controller never hears the end of
 * shows up here: it grows to the end of the run), and the time.
 *
 * Run: npx tsc -p tsconfig.json && node dist/bench/agent-crash.js [--kills 1000] [--mb 4] [--json]
 * (1000 kills take about half an hour.)
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Controller } from '../deploy/controller/controller.js';
import { packBundle } from '../models/bundle/bundle.js';
import { generateSigningKey, type SigningKey } from '../models/keys.js';
import { ModelStore } from '../models/store/model-store.js';
import { createRoot, signRoot } from '../models/trust/root.js';
import { TrustStore } from '../models/trust/trust-store.js';

const args = process.argv.slice(2);
const option = (name: string, fallback: number): number => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) : fallback);
const KILLS = option('--kills', 1000);
const MB = option('--mb', 4);
const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.resolve(here, '..');
const repo = path.resolve(dist, '..');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-bench-agent-crash-'));
const pub = (k: SigningKey): { keyid: string; publicKey: SigningKey['publicKey'] } => ({ keyid: k.keyid, publicKey: k.publicKey });
const rootKey = generateSigningKey();
const release = generateSigningKey();
const ops = generateSigningKey();
const root = signRoot(createRoot({ version: 1, expires: new Date(Date.now() + 86_400_000), roles: { root: { keys: [pub(rootKey)], threshold: 1 }, models: { keys: [pub(release)], threshold: 1 }, deploy: { keys: [pub(ops)], threshold: 1 } } }), [rootKey]);

const controller = await Controller.start({ fleet: 'bench', state: path.join(tmp, 'controller'), deployKeys: [ops], hostnames: ['127.0.0.1'], brokerHost: '127.0.0.1', brokerPort: 0, enrolHost: '127.0.0.1', enrolPort: 0, apiPort: 0 });
const dir = path.join(tmp, 'robot-1');
mkdirSync(dir, { recursive: true });
await TrustStore.init(path.join(dir, 'trust'), root);
writeFileSync(path.join(dir, 'fleet-ca.pem'), controller.ca.certificatePem);
writeFileSync(path.join(dir, 'token'), (await controller.enrolment.issueToken({ validForMs: 86_400_000, deviceId: 'robot-1' })).token);
writeFileSync(path.join(dir, 'agent.yaml'), `fleet: bench\ndevice: robot-1\nbroker: ${controller.urls.broker}\ncontroller: ${controller.urls.enrol}\nca: fleet-ca.pem\ntoken: token\nstate: state\ntrust: trust\nmodels: models\ntelemetry: { interval: 1s, spool: 1MiB }\nota: { window: 4 }\n`);
const env = { ...process.env, AGENT_MODULE: path.join(dist, 'deploy/agent/agent.js'), CONFIG_MODULE: path.join(dist, 'deploy/agent/config.js'), AGENT_CONFIG: path.join(dir, 'agent.yaml'), AGENT_SYSROOT: path.join(repo, 'test/fixtures/sysroots/x86-server') };
const child = (): ReturnType<typeof spawn> => spawn(process.execPath, [path.join(repo, 'test/fixtures/fleet/agent-child.mjs')], { env, stdio: 'ignore' });

let version = 0;
let deploymentId = '';
let bundleBytes = 0;
const chunkSize = 16 * 1024;
async function nextDeployment(): Promise<void> {
  version++;
  const padding = path.join(tmp, 'weights.bin');
  writeFileSync(padding, Buffer.alloc(MB * 1024 * 1024, version));
  const file = path.join(tmp, `face-${version}.bundle`);
  const out = createWriteStream(file);
  await packBundle({ metadata: { name: 'face', version: `${version}.0.0`, format: 'onnx', entry: 'face.onnx', inputs: [], outputs: [], targets: ['cpu'], minRuntimeVersion: '0.1.0', author: 'bench' }, files: [{ path: 'face.onnx', source: path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx') }, { path: 'weights.bin', source: padding }], keys: [release] }, out);
  if (!out.closed) await once(out, 'close');
  const d = await controller.deployments.create(file, { chunkSize, health: { windowS: 1, maxErrorRate: 0 } });
  deploymentId = d.id;
  bundleBytes = d.bundleSize;
  await controller.deployments.target(d.id, ['robot-1']);
}

const started = performance.now();
let kills = 0;
let commits = 0;
let violations = 0;
let runs = 0;
let downloads = 0;
let sinceLastEnd = 0;
let longestStall = 0;
const first = child();
while ((await controller.registry.get('robot-1'))?.state !== 'online') await new Promise((r) => setTimeout(r, 100));
first.kill('SIGKILL');
await once(first, 'exit');
await nextDeployment();
downloads++;
while (kills < KILLS) {
  const c = child();
  const exited = once(c, 'exit');
  runs++;
  await new Promise((r) => setTimeout(r, 300 + Math.random() * 2500));
  c.kill('SIGKILL');
  await exited;
  kills++;
  const store = await ModelStore.open(path.join(dir, 'models'), { gc: false });
  if ((await store.active('face')) !== undefined) {
    try {
      await store.check('face');
    } catch (error) {
      violations++;
      process.stderr.write(`kill ${kills}: the active model does not check: ${String(error)}\n`);
    }
  }
  const phase = (await controller.deployments.targets(deploymentId))[0]?.phase;
  sinceLastEnd++;
  longestStall = Math.max(longestStall, sinceLastEnd);
  if (phase === 'COMMITTED' || phase === 'ROLLED_BACK' || phase === 'FAILED') {
    sinceLastEnd = 0;
    if (phase === 'COMMITTED') commits++;
    await nextDeployment();
    downloads++;
  }
  if (!args.includes('--json') && kills % 50 === 0) process.stdout.write(`${kills} kills, ${commits} deployments committed, ${violations} violations\n`);
}
const seconds = (performance.now() - started) / 1000;
const chunksPerBundle = Math.ceil(bundleBytes / chunkSize);
const result = {
  kills,
  runs,
  deploymentsCommitted: commits,
  deploymentsStarted: downloads,
  violations,
  bundleMiB: Math.round((bundleBytes / 2 ** 20) * 10) / 10,
  chunksPerBundle,
  chunksSent: controller.bundleStats().chunksSent,
  // 1.0 would be every chunk of every started deployment sent exactly once.
  chunksSentPerNeeded: Math.round((controller.bundleStats().chunksSent / (chunksPerBundle * downloads)) * 100) / 100,
  // Kills in a row during which the current deployment did not end (each run lasts 0.3-2.8 s).
  longestKillsWithoutAnEnd: longestStall,
  seconds: Math.round(seconds),
};
await controller.stop();
rmSync(tmp, { recursive: true, force: true });
if (args.includes('--json')) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
else process.stdout.write(`agent SIGKILLed ${result.kills} times during OTA deployments of a ${result.bundleMiB} MiB bundle (${chunksPerBundle} chunks): ${result.violations} times the store held an unverified model (must be 0); ${commits} deployments committed of ${downloads} started; ${result.chunksSent} chunks sent, ${result.chunksSentPerNeeded}x what the started deployments needed; at most ${longestStall} kills in a row before a deployment ended; ${result.seconds} s\n`);
