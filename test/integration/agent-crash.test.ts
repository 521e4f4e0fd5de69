import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Controller } from '../../deploy/controller/controller.js';
import { packBundle } from '../../models/bundle/bundle.js';
import { generateSigningKey, type SigningKey } from '../../models/keys.js';
import { ModelStore } from '../../models/store/model-store.js';
import { createRoot, signRoot } from '../../models/trust/root.js';
import { TrustStore } from '../../models/trust/trust-store.js';
import { SYSROOTS } from '../support/sysroots.js';
import { transpileGraph } from '../support/transpile.js';
import { freePort, until } from '../support/wait.js';

// The device agent killed with SIGKILL at random moments while it deploys a model, again and
// again: after every kill the model store holds a complete, verified version (or none yet), and
// each restart resumes the download from the chunks it already has, until the deployment commits.
// The agent's download is capped at 1 MiB/s (ota.rate) so that the 12 MB bundle takes several
// runs and most kills land in the download, whatever this machine's speed; the rest land in
// start-up, install and the health window. Half the kills come at a random instant after the
// spawn, half at a random instant after the agent said it started.
// Iterations: AIOS_CRASH_ITERATIONS (default 50); bench/ has no separate loop, run this with 1000.

const ITERATIONS = Number(process.env['AIOS_CRASH_ITERATIONS'] ?? 50);
const WINDOW = 4;
const repo = fileURLToPath(new URL('../../', import.meta.url));
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-agent-crash-'));
const build = path.join(repo, 'node_modules/.cache/aios-agent-crash', String(process.pid));
const rootKey = generateSigningKey();
const [release, ops1] = [generateSigningKey(), generateSigningKey()] as [SigningKey, SigningKey];
const pub = (k: SigningKey): { keyid: string; publicKey: SigningKey['publicKey'] } => ({ keyid: k.keyid, publicKey: k.publicKey });
const root = signRoot(createRoot({ version: 1, expires: new Date(Date.now() + 365 * 86_400_000), roles: { root: { keys: [pub(rootKey)], threshold: 1 }, models: { keys: [pub(release)], threshold: 1 }, deploy: { keys: [pub(ops1)], threshold: 1 } } }), [rootKey]);
const dir = path.join(tmp, 'robot-1');

let controller: Controller;
let env: Record<string, string>;

beforeAll(async () => {
  const agentModule = await transpileGraph(repo, 'deploy/agent/agent.ts', build);
  const configModule = await transpileGraph(repo, 'deploy/agent/config.ts', build);
  controller = await Controller.start({ fleet: 'warehouse', state: path.join(tmp, 'controller'), deployKeys: [ops1], hostnames: ['127.0.0.1'], brokerHost: '127.0.0.1', brokerPort: await freePort(), enrolHost: '127.0.0.1', enrolPort: 0, apiPort: 0 });
  mkdirSync(dir, { recursive: true });
  await TrustStore.init(path.join(dir, 'trust'), root);
  writeFileSync(path.join(dir, 'fleet-ca.pem'), controller.ca.certificatePem);
  writeFileSync(path.join(dir, 'token'), (await controller.enrolment.issueToken({ validForMs: 3_600_000, deviceId: 'robot-1' })).token);
  writeFileSync(
    path.join(dir, 'agent.yaml'),
    `fleet: warehouse\ndevice: robot-1\nbroker: ${controller.urls.broker}\ncontroller: ${controller.urls.enrol}\nca: fleet-ca.pem\ntoken: token\nstate: state\ntrust: trust\nmodels: models\ntelemetry: { interval: 1s, spool: 1MiB }\nota: { window: ${WINDOW}, rate: 1MiB/s }\n`,
  );
  env = { AGENT_MODULE: pathToFileURL(agentModule).href, CONFIG_MODULE: pathToFileURL(configModule).href, AGENT_CONFIG: path.join(dir, 'agent.yaml'), AGENT_SYSROOT: path.join(SYSROOTS, 'x86-server') };
}, 120_000);
afterAll(async () => {
  await controller?.stop();
  rmSync(tmp, { recursive: true, force: true });
  await rm(build, { recursive: true, force: true });
});

function startChild(): ChildProcess {
  return spawn(process.execPath, [path.join(repo, 'test/fixtures/fleet/agent-child.mjs')], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
}

/** Resolves when the child prints "started" (Agent.start returned), or when it exits. */
function started(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    child.stdout?.on('data', (data: Buffer) => (data.toString().includes('started') ? resolve() : undefined));
    child.once('exit', () => resolve());
  });
}

/** The phase the agent last recorded for its deployment (deploy/agent/deployment.ts), or 'none'. */
function recordedPhase(): string {
  const folder = path.join(dir, 'state', 'deployments');
  const file = existsSync(folder) ? readdirSync(folder).find((f) => f.endsWith('.json')) : undefined;
  if (file === undefined) return 'none';
  try {
    return String((JSON.parse(readFileSync(path.join(folder, file), 'utf8')) as { phase?: unknown }).phase);
  } catch {
    return 'unreadable';
  }
}

describe('an agent killed during an OTA deployment', () => {
  it(`always has a verified model or none, and resumes the download until it commits (${ITERATIONS} kills)`, async () => {
    // A 12 MB bundle in 16 KiB chunks, 4 in flight: long enough to be killed in the middle, many times.
    const padding = path.join(tmp, 'weights.bin');
    writeFileSync(padding, Buffer.alloc(12 * 1024 * 1024, 7));
    const bundle = path.join(tmp, 'face.bundle');
    const out = createWriteStream(bundle);
    await packBundle({ metadata: { name: 'face', version: '1.0.0', format: 'onnx', entry: 'face.onnx', inputs: [], outputs: [], targets: ['cpu'], minRuntimeVersion: '0.1.0', author: 'tests@aios.dev' }, files: [{ path: 'face.onnx', source: path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx') }, { path: 'weights.bin', source: padding }], keys: [release] }, out);
    if (!out.closed) await once(out, 'close');
    const d = await controller.deployments.create(bundle, { chunkSize: 16 * 1024, health: { windowS: 1, maxErrorRate: 0 } });
    const chunks = Math.ceil(d.bundleSize / d.chunkSize);
    // First boot: the agent enrols and comes online; then it is given the deployment.
    const first = startChild();
    await until(async () => (await controller.registry.get('robot-1'))?.state === 'online', 60_000);
    await controller.deployments.target(d.id, ['robot-1']);
    await new Promise((r) => setTimeout(r, 300));
    first.kill('SIGKILL');
    await once(first, 'exit');
    const phase = async (): Promise<string> => (await controller.deployments.targets(d.id))[0]?.phase ?? '';
    let kills = 0;
    const killedIn: Record<string, number> = {};
    while (kills < ITERATIONS && (await phase()) !== 'COMMITTED') {
      const child = startChild();
      const exited = once(child, 'exit');
      if (kills % 2 === 1) await started(child);
      await new Promise((r) => setTimeout(r, Math.random() * 1000));
      const at = recordedPhase();
      child.kill('SIGKILL');
      await exited;
      kills++;
      killedIn[at] = (killedIn[at] ?? 0) + 1;
      // Whatever the moment: the store's active version (if any) is complete and verified.
      const store = await ModelStore.open(path.join(dir, 'models'), { gc: false });
      if ((await store.active('face')) !== undefined) await expect(store.check('face')).resolves.toMatchObject({ model: 'face', version: '1.0.0' });
    }
    // A last run, not killed, finishes whatever is left.
    const child = startChild();
    try {
      await until(async () => (await phase()) === 'COMMITTED', 90_000);
    } finally {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }
    const store = await ModelStore.open(path.join(dir, 'models'), { gc: false });
    expect(await store.check('face')).toMatchObject({ version: '1.0.0' });
    // Resumed, not restarted: every chunk written survives a kill (its bytes are in the page cache
    // whether or not the progress record was saved since), so a run loses at most the chunks in
    // flight when it dies: its window.
    const sent = controller.bundleStats().chunksSent;
    console.log(`agent-crash: ${kills} SIGKILLs (by phase: ${JSON.stringify(killedIn)}), ${chunks} chunks in the bundle, ${sent} sent in all`);
    expect(sent).toBeLessThanOrEqual(chunks + WINDOW * (kills + 2));
  }, 600_000);
});
