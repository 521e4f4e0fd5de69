import { spawnSync } from 'node:child_process';
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { createWriteStream, mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { Agent } from '../../deploy/agent/agent.js';
import { parseAgentConfig } from '../../deploy/agent/config.js';
import { CERT_FILE, KEY_FILE } from '../../deploy/agent/enrol.js';
import { Controller, prepareControllerState } from '../../deploy/controller/controller.js';
import { createCsr } from '../../deploy/fleet/pki/csr.js';
import { deviceTopic } from '../../deploy/fleet/topics.js';
import { aios } from '../../deploy/proto/gen/aios.js';
import { packBundle } from '../../models/bundle/bundle.js';
import { generateSigningKey } from '../../models/keys.js';
import { createRoot, signRoot } from '../../models/trust/root.js';
import { TrustStore } from '../../models/trust/trust-store.js';
import { runCli } from '../support/cli.js';
import { startFleetMosquitto } from '../support/fleet-mosquitto.js';
import { SYSROOTS } from '../support/sysroots.js';
import { findBinary, freePort, until } from '../support/wait.js';

// Revoking a device (`aios fleet revoke`): its certificates stop connecting — the embedded broker
// drops it at once and refuses it after; Mosquitto refuses it at the handshake once it re-reads
// the controller's crl.pem — it gets no commands, no chunks, no place in a rollout, no renewal,
// and what it still sends is ignored. A new enrolment with a token made for it brings it back.

const MOSQUITTO = findBinary('mosquitto');
const OPENSSL = findBinary('openssl');
const repo = fileURLToPath(new URL('../../', import.meta.url));
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-revoke-'));
const rootKey = generateSigningKey();
const ops = generateSigningKey();
const pub = (k: typeof rootKey): { keyid: string; publicKey: typeof rootKey.publicKey } => ({ keyid: k.keyid, publicKey: k.publicKey });
const root = signRoot(createRoot({ version: 1, expires: new Date(Date.now() + 86_400_000), roles: { root: { keys: [pub(rootKey)], threshold: 1 }, models: { keys: [pub(rootKey)], threshold: 1 }, deploy: { keys: [pub(ops)], threshold: 1 } } }), [rootKey]);
const running: { stop(): Promise<void> | void }[] = [];

afterAll(async () => {
  for (const r of running.reverse()) await r.stop();
  rmSync(tmp, { recursive: true, force: true });
});

interface Device {
  readonly dir: string;
  readonly lines: Record<string, unknown>[];
  start(): Promise<Agent>;
}

async function device(controller: Controller, fleetDir: string, id: string, broker = controller.urls.broker): Promise<Device> {
  const dir = path.join(fleetDir, id);
  mkdirSync(dir, { recursive: true });
  await TrustStore.init(path.join(dir, 'trust'), root);
  writeFileSync(path.join(dir, 'ca.pem'), controller.ca.certificatePem);
  writeFileSync(path.join(dir, 'token'), (await controller.enrolment.issueToken({ validForMs: 600_000, deviceId: id })).token);
  const config = parseAgentConfig({ fleet: controller.fleet, device: id, broker, controller: controller.urls.enrol, ca: 'ca.pem', token: 'token', state: 'state', trust: 'trust', models: 'models', telemetry: { interval: '200ms', spool: '1MiB' } }, path.join(dir, 'agent.yaml'));
  const lines: Record<string, unknown>[] = [];
  return {
    dir,
    lines,
    async start() {
      const agent = await Agent.start(config, { sysroot: path.join(SYSROOTS, 'x86-server'), log: (l) => lines.push({ ...l, t: Date.now() }) });
      running.push(agent);
      return agent;
    },
  };
}

function renew(controller: Controller, dir: string, id: string): Promise<{ status: number; code?: string }> {
  const csr = createCsr({ privateKey: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey, commonName: id });
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify({ csr }));
    const req = https.request(new URL('/v1/renew', controller.urls.enrol), { method: 'POST', ca: controller.ca.certificatePem, cert: readFileSync(path.join(dir, 'state', CERT_FILE)), key: readFileSync(path.join(dir, 'state', KEY_FILE)), headers: { 'content-type': 'application/json', 'content-length': data.length } }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, code: (JSON.parse(Buffer.concat(parts).toString()) as { error?: { code?: string } }).error?.code }));
    });
    req.on('error', reject);
    req.end(data);
  });
}

/** openssl's verdict on a device certificate checked against the CA and the controller's CRL. */
function opensslVerify(state: string, certificate: string): string {
  const chain = path.join(tmp, `chain-${Date.now()}.pem`);
  writeFileSync(chain, readFileSync(path.join(state, 'ca.pem'), 'utf8') + readFileSync(path.join(state, 'crl.pem'), 'utf8'));
  const r = spawnSync(OPENSSL as string, ['verify', '-crl_check', '-CAfile', chain, certificate], { encoding: 'utf8' });
  return `${r.stdout}${r.stderr}`;
}

describe('revoking a device', () => {
  it('embedded broker: cut off at once and refused after; no commands, rollouts or renewal; its certificates in a CRL openssl accepts; a new enrolment brings it back', async () => {
    const state = path.join(tmp, 'embedded');
    const controller = await Controller.start({ fleet: 'warehouse', state, deployKeys: [ops], hostnames: ['127.0.0.1'], brokerHost: '127.0.0.1', brokerPort: await freePort(), enrolHost: '127.0.0.1', enrolPort: 0, apiPort: 0 });
    running.push(controller);
    const a = await device(controller, tmp, 'robot-a');
    const b = await device(controller, tmp, 'robot-b');
    await a.start();
    await b.start();
    await until(async () => (await controller.registry.list()).filter((d) => d.state === 'online' && (d.telemetrySequence ?? 0) > 0).length === 2, 30_000);
    const certA = path.join(a.dir, 'state', CERT_FILE);
    const serialA = new X509Certificate(readFileSync(certA)).serialNumber;

    const revokedAt = Date.now();
    const revoked = await runCli('fleet', 'revoke', 'robot-a', '--reason', 'keyCompromise', '--api', controller.urls.api);
    expect(revoked.stdout).toMatch(/^robot-a revoked \(keyCompromise\) at .*: 1 certificate in the controller's crl.pem/u);
    expect((await runCli('fleet', 'revoke', 'robot-a', '--reason', 'lost', '--api', controller.urls.api)).stderr).toMatch(/Allowed choices are keyCompromise, cessationOfOperation, unspecified/u);
    // The embedded broker dropped it, and every reconnect is refused.
    await until(() => a.lines.some((l) => l['msg'] === 'disconnected' && (l['t'] as number) >= revokedAt - 50), 10_000);
    await new Promise((r) => setTimeout(r, 2500));
    expect(a.lines.filter((l) => l['msg'] === 'connected' && (l['t'] as number) > revokedAt)).toEqual([]);
    expect(a.lines.some((l) => l['msg'] === 'connection problem' && (l['t'] as number) > revokedAt)).toBe(true);
    expect(controller.revocations.certificateRevoked(serialA)).toBe(true);
    // The other device is untouched.
    const seqB = (await controller.registry.get('robot-b'))?.telemetrySequence ?? 0;
    await until(async () => ((await controller.registry.get('robot-b'))?.telemetrySequence ?? 0) > seqB + 2, 10_000);

    expect((await controller.registry.get('robot-a'))?.revoked).toMatchObject({ reason: 'keyCompromise' });
    expect((await runCli('fleet', 'devices', '--api', controller.urls.api)).stdout).toMatch(/robot-a\s+revoked/u);
    await expect(controller.commands.send('robot-a', { startPipeline: { name: 'x' } })).rejects.toMatchObject({ code: 'EAI_FLEET_DEVICE_REVOKED' });
    const bundle = path.join(tmp, 'face.bundle');
    const out = createWriteStream(bundle);
    await packBundle({ metadata: { name: 'face', version: '1.0.0', format: 'onnx', entry: 'face.onnx', inputs: [], outputs: [], targets: ['cpu'], minRuntimeVersion: '0.1.0', author: 'tests@aios.dev' }, files: [{ path: 'face.onnx', source: path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx') }], keys: [rootKey] }, out);
    if (!out.closed) await once(out, 'close');
    const deployment = await controller.deployments.create(bundle, {});
    await expect(controller.rollouts.start({ deploymentId: deployment.id, target: { devices: ['robot-a'] }, stages: [] })).rejects.toMatchObject({ code: 'EAI_FLEET_ROLLOUT_INVALID' });
    expect(await renew(controller, a.dir, 'robot-a')).toEqual({ status: 403, code: 'EAI_FLEET_RENEW' });
    // A message from it arriving by another way (an external broker keeps its connection): ignored.
    const dropped = controller.registry.counts.dropped;
    controller.registry.ingest(deviceTopic('warehouse', 'robot-a', 'telemetry'), aios.fleet.v1.Telemetry.encode({ sequence: 1_000_000 }).finish());
    await controller.registry.settled();
    expect(controller.registry.counts.dropped).toBe(dropped + 1);
    expect((await controller.registry.get('robot-a'))?.telemetrySequence).toBeLessThan(1_000_000);
    expect(await controller.revocations.revoke('robot-nobody').catch((e: { code?: string }) => e.code)).toBe('EAI_FLEET_DEVICE_UNKNOWN');
    expect(await controller.revocations.revoke('robot-a', 'stolen' as 'unspecified').catch((e: { code?: string }) => e.code)).toBe('EAI_FLEET_REVOKE_REASON');

    if (OPENSSL === undefined) console.warn('openssl checks of the CRL skipped: openssl is not installed');
    else {
      const crl = spawnSync(OPENSSL, ['crl', '-in', path.join(state, 'crl.pem'), '-CAfile', path.join(state, 'ca.pem'), '-noout', '-text'], { encoding: 'utf8' });
      expect(crl.stderr).toMatch(/verify OK/u);
      expect(crl.stdout).toContain(`Serial Number: ${serialA}`);
      expect(crl.stdout).toMatch(/Key Compromise/u);
      expect(opensslVerify(state, certA)).toMatch(/certificate revoked/u);
      expect(opensslVerify(state, path.join(b.dir, 'state', CERT_FILE))).toMatch(/: OK/u);
    }

    // Brought back: a token made for it, a new enrolment (the old certificate stays revoked).
    writeFileSync(path.join(a.dir, 'token'), (await controller.enrolment.issueToken({ validForMs: 600_000, deviceId: 'robot-a' })).token);
    unlinkSync(certA);
    await a.start();
    await until(async () => (await controller.registry.get('robot-a'))?.revoked === undefined && (await controller.registry.get('robot-a'))?.state === 'online', 20_000);
    expect(new X509Certificate(readFileSync(certA)).serialNumber).not.toBe(serialA);
    expect(controller.revocations.certificateRevoked(serialA)).toBe(true);
    expect((await controller.commands.send('robot-a', { startPipeline: { name: 'x' } })).status).toBe('sent');
  }, 90_000);

  it.skipIf(MOSQUITTO === undefined)('Mosquitto with the controller\'s crl.pem: after a reload the revoked device is refused at the handshake, the others connect', async () => {
    const state = path.join(tmp, 'mosquitto');
    const prepared = await prepareControllerState(state, 'depot', ['127.0.0.1']);
    // The controller writes crl.pem when it starts; the broker needs it before that.
    const first = await Controller.start({ fleet: 'depot', state, deployKeys: [ops], hostnames: ['127.0.0.1'], brokerHost: '127.0.0.1', brokerPort: await freePort(), enrolHost: '127.0.0.1', enrolPort: 0, apiPort: 0 });
    await first.stop();
    const broker = await startFleetMosquitto(MOSQUITTO as string, tmp, { fleet: 'depot', caPem: prepared.ca.certificatePem, certPem: readFileSync(path.join(state, 'server.pem'), 'utf8'), keyPem: readFileSync(path.join(state, 'server.key'), 'utf8'), crlfile: path.join(state, 'crl.pem') });
    running.push({ stop: () => broker.stop() });
    const controller = await Controller.start({ fleet: 'depot', state, deployKeys: [ops], broker: broker.tlsUrl, hostnames: ['127.0.0.1'], enrolHost: '127.0.0.1', enrolPort: 0, apiPort: 0 });
    running.push(controller);
    const fleetDir = path.join(tmp, 'depot');
    const c = await device(controller, fleetDir, 'robot-c', broker.tlsUrl);
    const d = await device(controller, fleetDir, 'robot-d', broker.tlsUrl);
    const agentC = await c.start();
    await d.start();
    await until(async () => (await controller.registry.list()).filter((x) => x.state === 'online').length === 2, 30_000);
    await controller.revocations.revoke('robot-c', 'cessationOfOperation');
    broker.reload();
    await new Promise((r) => setTimeout(r, 500));
    // Mosquitto keeps the open connection; what comes over it is dropped by the controller.
    const dropped = controller.registry.counts.dropped;
    await until(() => controller.registry.counts.dropped > dropped + 2, 10_000);
    // Restarted, the device cannot get back in.
    await agentC.stop();
    const restartedAt = Date.now();
    await c.start();
    await new Promise((r) => setTimeout(r, 3000));
    expect(c.lines.filter((l) => l['msg'] === 'connected' && (l['t'] as number) > restartedAt)).toEqual([]);
    expect(c.lines.some((l) => l['msg'] === 'connection problem' && (l['t'] as number) > restartedAt)).toBe(true);
    // robot-d, reconnecting through the same broker, is fine.
    const seqD = (await controller.registry.get('robot-d'))?.telemetrySequence ?? 0;
    await until(async () => ((await controller.registry.get('robot-d'))?.telemetrySequence ?? 0) > seqD + 2, 10_000);
  }, 90_000);
});
