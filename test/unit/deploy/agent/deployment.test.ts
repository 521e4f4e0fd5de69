import { createWriteStream, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MqttClient } from 'mqtt';
import { afterAll, describe, expect, it } from 'vitest';
import { beginDeployment, resumeDeployments, type DeploymentContext, type DeploymentRecord } from '../../../../deploy/agent/deployment.js';
import { aios } from '../../../../deploy/proto/gen/aios.js';
import { packBundle } from '../../../../models/bundle/bundle.js';
import { fileSource } from '../../../../models/bundle/tar.js';
import { generateSigningKey } from '../../../../models/keys.js';
import { installBundle } from '../../../../models/store/install-bundle.js';
import { ModelStore } from '../../../../models/store/model-store.js';
import { createRoot, signRoot } from '../../../../models/trust/root.js';
import { TrustStore } from '../../../../models/trust/trust-store.js';
import { ModelCatalog } from '../../../../runtime/model-catalog.js';

const repo = fileURLToPath(new URL('../../../../', import.meta.url));
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-deployment-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('a deployment interrupted by a restart', () => {
  it('during its health window, with a version before it: rolled back, reported, and the command answered', async () => {
    const release = generateSigningKey();
    const rootKey = generateSigningKey();
    const pub = (k: typeof release): { keyid: string; publicKey: typeof release.publicKey } => ({ keyid: k.keyid, publicKey: k.publicKey });
    const trust = await TrustStore.init(path.join(tmp, 'trust'), signRoot(createRoot({ version: 1, expires: new Date(Date.now() + 86_400_000), roles: { root: { keys: [pub(rootKey)], threshold: 1 }, models: { keys: [pub(release)], threshold: 1 }, deploy: { keys: [pub(release)], threshold: 1 } } }), [rootKey]));
    const store = await ModelStore.open(path.join(tmp, 'models'));
    for (const version of ['1.0.0', '2.0.0']) {
      const file = path.join(tmp, `face-${version}.bundle`);
      const out = createWriteStream(file);
      await packBundle({ metadata: { name: 'face', version, format: 'onnx', entry: 'face.onnx', inputs: [], outputs: [], targets: ['cpu'], minRuntimeVersion: '0.1.0', author: 't' }, files: [{ path: 'face.onnx', source: path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx') }], keys: [release] }, out);
      if (!out.closed) await once(out, 'close');
      await installBundle(store, () => fileSource(file), trust.policy('models'));
    }
    expect((await store.active('face'))?.version).toBe('2.0.0');
    // What the agent had written just before it was killed in the health window of 2.0.0.
    const state = path.join(tmp, 'agent');
    mkdirSync(path.join(state, 'deployments'), { recursive: true });
    const record: DeploymentRecord = { format: 'aios-deployment/1', deploymentId: 'face-2', sequence: 7, model: 'face', version: '2.0.0', previous: '1.0.0', phase: 'health-check', deploy: Buffer.from(aios.fleet.v1.Deploy.encode({ deploymentId: 'face-2', model: 'face', version: '2.0.0' }).finish()).toString('base64') };
    writeFileSync(path.join(state, 'deployments', 'face-2.json'), JSON.stringify(record));
    const events: aios.fleet.v1.IDeploymentProgress[] = [];
    const finished: { sequence: number; ok: boolean; code?: string }[] = [];
    const ctx: DeploymentContext = {
      client: {} as MqttClient, // not used: nothing is downloaded when resuming a health window
      fleet: 'f',
      deviceId: 'robot-1',
      state,
      store,
      trust,
      catalog: new ModelCatalog(path.join(tmp, 'models')),
      window: 4,
      pipelines: () => [],
      progress: async (p) => void events.push(p),
      log: () => undefined,
    };
    const outcomes = await resumeDeployments(ctx, async (r, outcome) => void finished.push({ sequence: r.sequence, ok: outcome.ok, ...(outcome.ok ? {} : { code: (outcome.error as { code?: string }).code }) }));
    expect(outcomes).toEqual([{ deploymentId: 'face-2', outcome: 'rolled back' }]);
    expect((await store.active('face'))?.version).toBe('1.0.0');
    expect(events.at(-1)).toMatchObject({ phase: aios.fleet.v1.DeploymentProgress.Phase.ROLLED_BACK, code: 'EAI_OTA_INTERRUPTED' });
    expect(finished).toEqual([{ sequence: 7, ok: false, code: 'EAI_OTA_INTERRUPTED' }]);
    // Done once: a second start finds it finished.
    expect(await resumeDeployments(ctx)).toEqual([]);
  });

  it('finished but killed before its outcome was spooled: reported again, once; what finished deployments left is tidied', async () => {
    const state = path.join(tmp, 'agent-unreported');
    const deployments = path.join(state, 'deployments');
    const downloads = path.join(state, 'downloads');
    mkdirSync(deployments, { recursive: true });
    mkdirSync(downloads, { recursive: true });
    const sha = (n: number): string => n.toString(16).padStart(64, '0');
    const write = (r: Omit<DeploymentRecord, 'format' | 'deploy'>, bundle: number): void =>
      writeFileSync(path.join(deployments, `${r.deploymentId}.json`), JSON.stringify({ format: 'aios-deployment/1', ...r, deploy: Buffer.from(aios.fleet.v1.Deploy.encode({ deploymentId: r.deploymentId, model: r.model, version: r.version, bundleSha256: sha(bundle) }).finish()).toString('base64') }));
    // Twenty old, reported deployments; then one rolled back whose event never reached the spool;
    // then a failed download of another model (its .part is what a new deployment resumes).
    for (let i = 1; i <= 20; i++) write({ deploymentId: `face-${i}`, sequence: i, model: 'face', version: `${i}.0.0`, phase: 'committed', reported: true }, i);
    write({ deploymentId: 'face-21', sequence: 21, model: 'face', version: '21.0.0', previous: '20.0.0', phase: 'rolled-back', code: 'EAI_OTA_UNHEALTHY', reason: 'p99 over the limit' }, 21);
    write({ deploymentId: 'lidar-1', sequence: 22, model: 'lidar', version: '1.0.0', phase: 'failed', code: 'EAI_OTA_TIMEOUT', reason: 'no chunk', reported: true }, 22);
    for (const name of [`${sha(21)}.bundle`, `${sha(5)}.bundle`, `${sha(5)}.part`, `${sha(22)}.part`, `${sha(22)}.progress`, `${sha(99)}.part`, 'notes.txt']) writeFileSync(path.join(downloads, name), 'x');
    const events: aios.fleet.v1.IDeploymentProgress[] = [];
    const finished: { sequence: number; ok: boolean; code?: string }[] = [];
    const ctx = { state, progress: async (p: aios.fleet.v1.IDeploymentProgress) => void events.push(p), log: () => undefined } as unknown as DeploymentContext;
    const outcomes = await resumeDeployments(ctx, async (r, outcome) => void finished.push({ sequence: r.sequence, ok: outcome.ok, ...(outcome.ok ? {} : { code: (outcome.error as { code?: string }).code }) }));
    expect(outcomes).toEqual([{ deploymentId: 'face-21', outcome: 'rolled-back, reported again' }]);
    expect(events).toMatchObject([{ deploymentId: 'face-21', phase: aios.fleet.v1.DeploymentProgress.Phase.ROLLED_BACK, code: 'EAI_OTA_UNHEALTHY', reason: 'p99 over the limit' }]);
    expect(finished).toEqual([{ sequence: 21, ok: false, code: 'EAI_OTA_UNHEALTHY' }]);
    // Once: the next start has nothing to say.
    expect(await resumeDeployments(ctx)).toEqual([]);
    expect(events).toHaveLength(1);
    // The newest 16 finished records stay; the failed download's partial files stay; the rest goes.
    expect(readdirSync(deployments).sort()).toEqual([...Array.from({ length: 14 }, (_, i) => `face-${i + 7}.json`), 'face-21.json', 'lidar-1.json'].sort());
    expect(readdirSync(downloads).sort()).toEqual([`${sha(22)}.part`, `${sha(22)}.progress`, 'notes.txt'].sort());
  });

  it('a deploy command accepted by a run killed before its record existed: begun from the journal, once, and not over a newer record', async () => {
    const state = path.join(tmp, 'agent-journal');
    const store = await ModelStore.open(path.join(tmp, 'models-journal'));
    const ctx = { state, store } as unknown as DeploymentContext;
    const deploy = aios.fleet.v1.Deploy.create({ deploymentId: 'face-9', model: 'face', version: '9.0.0', bundleSha256: 'ab'.repeat(32) });
    const file = path.join(state, 'deployments', 'face-9.json');
    await beginDeployment(ctx, deploy, 30);
    const first = JSON.parse(readFileSync(file, 'utf8')) as DeploymentRecord;
    expect(first).toMatchObject({ deploymentId: 'face-9', sequence: 30, phase: 'downloading', model: 'face', version: '9.0.0' });
    expect(aios.fleet.v1.Deploy.decode(Buffer.from(first.deploy, 'base64')).bundleSha256).toBe('ab'.repeat(32));
    // Already begun (the run got that far): left as it is.
    writeFileSync(file, JSON.stringify({ ...first, phase: 'installing' }));
    await beginDeployment(ctx, deploy, 30);
    expect((JSON.parse(readFileSync(file, 'utf8')) as DeploymentRecord).phase).toBe('installing');
    // A record of an earlier command for the same deployment (sent again after it ended): replaced.
    writeFileSync(file, JSON.stringify({ ...first, sequence: 12, phase: 'rolled-back', reported: true }));
    await beginDeployment(ctx, deploy, 31);
    expect(JSON.parse(readFileSync(file, 'utf8'))).toMatchObject({ sequence: 31, phase: 'downloading' });
  });
});
