import { createWriteStream, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MqttClient } from 'mqtt';
import { afterAll, describe, expect, it } from 'vitest';
import { resumeDeployments, type DeploymentContext, type DeploymentRecord } from '../../../../deploy/agent/deployment.js';
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
});
