import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../deploy/agent/agent.js';
import { parseAgentConfig } from '../../deploy/agent/config.js';
import { CERT_FILE, ensureEnrolled, KEY_FILE } from '../../deploy/agent/enrol.js';
import { Controller } from '../../deploy/controller/controller.js';
import { createCsr } from '../../deploy/fleet/pki/csr.js';
import { generateSigningKey } from '../../models/keys.js';
import { createRoot, signRoot } from '../../models/trust/root.js';
import { TrustStore } from '../../models/trust/trust-store.js';
import { SYSROOTS } from '../support/sysroots.js';
import { freePort, until } from '../support/wait.js';

// A device renews its certificate before it expires without a new token: over TLS with the
// certificate itself, which must be the one the controller last issued to it. An old (replaced)
// certificate, none at all, or another device's cannot renew.

const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-renew-'));
let controller: Controller;

beforeAll(async () => {
  controller = await Controller.start({ fleet: 'warehouse', state: path.join(tmp, 'controller'), deployKeys: [generateSigningKey()], hostnames: ['127.0.0.1'], brokerHost: '127.0.0.1', brokerPort: await freePort(), enrolHost: '127.0.0.1', enrolPort: 0, apiPort: 0 });
});
afterAll(async () => {
  await controller.stop();
  rmSync(tmp, { recursive: true, force: true });
});

async function device(id: string): Promise<{ dir: string; options: Parameters<typeof ensureEnrolled>[0] }> {
  const dir = path.join(tmp, id);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'ca.pem'), controller.ca.certificatePem);
  writeFileSync(path.join(dir, 'token'), (await controller.enrolment.issueToken({ validForMs: 60_000, deviceId: id })).token);
  return { dir, options: { device: id, state: path.join(dir, 'state'), ca: path.join(dir, 'ca.pem'), controller: controller.urls.enrol, token: path.join(dir, 'token') } };
}

function renew(body: unknown, client?: { cert: string; key: string }): Promise<{ status: number; code?: string }> {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const req = https.request(new URL('/v1/renew', controller.urls.enrol), { method: 'POST', ca: controller.ca.certificatePem, ...(client ?? {}), headers: { 'content-type': 'application/json', 'content-length': data.length } }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, code: (JSON.parse(Buffer.concat(parts).toString()) as { error?: { code?: string } }).error?.code }));
    });
    req.on('error', reject);
    req.end(data);
  });
}

describe('certificate renewal', () => {
  it('renews before expiry with the current certificate, no token; an old certificate, none, or another device’s cannot', async () => {
    const a = await device('robot-a');
    const first = await ensureEnrolled(a.options);
    // The token is gone (single use): renewal must not need it.
    unlinkSync(path.join(a.dir, 'token'));
    const lines: Record<string, unknown>[] = [];
    const renewed = await ensureEnrolled({ ...a.options, token: path.join(a.dir, 'token'), renewBeforeMs: 400 * 86_400_000, log: (l) => lines.push(l) });
    expect(lines.map((l) => l['msg'])).toEqual(['certificate renewed']);
    expect(renewed.certificatePem).not.toBe(first.certificatePem);
    expect(readFileSync(path.join(a.options.state, CERT_FILE), 'utf8')).toBe(renewed.certificatePem);
    expect(renewed.keyPem).toBe(first.keyPem);

    const csr = createCsr({ privateKey: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey, commonName: 'robot-a' });
    // The first certificate was replaced by the renewal: it renews nothing any more.
    expect(await renew({ csr }, { cert: first.certificatePem, key: first.keyPem })).toEqual({ status: 403, code: 'EAI_FLEET_RENEW' });
    expect(await renew({ csr })).toEqual({ status: 401, code: 'EAI_FLEET_RENEW' });
    const b = await device('robot-b');
    const other = await ensureEnrolled(b.options);
    expect(await renew({ csr }, { cert: other.certificatePem, key: other.keyPem })).toEqual({ status: 403, code: 'EAI_FLEET_RENEW' });
    // The current one renews, with a new key too (rotation).
    expect((await renew({ csr }, { cert: renewed.certificatePem, key: renewed.keyPem })).status).toBe(200);
    expect(readFileSync(path.join(a.options.state, KEY_FILE), 'utf8')).toBe(first.keyPem);
  });

  it('an agent whose renewal fails keeps its still-valid certificate and says so', async () => {
    const c = await device('robot-c');
    const first = await ensureEnrolled(c.options);
    const lines: Record<string, unknown>[] = [];
    const kept = await ensureEnrolled({ ...c.options, controller: 'https://127.0.0.1:9', renewBeforeMs: 400 * 86_400_000, log: (l) => lines.push(l) });
    expect(kept.certificatePem).toBe(first.certificatePem);
    expect(String(lines[0]?.['msg'])).toMatch(/renewal failed; the current one serves/u);
  });

  it('a running agent renews on its timer, reconnects, and its telemetry goes on', async () => {
    const d = await device('robot-d');
    const rootKey = generateSigningKey();
    const pub = { keyid: rootKey.keyid, publicKey: rootKey.publicKey };
    await TrustStore.init(path.join(d.dir, 'trust'), signRoot(createRoot({ version: 1, expires: new Date(Date.now() + 86_400_000), roles: { root: { keys: [pub], threshold: 1 }, models: { keys: [pub], threshold: 1 }, deploy: { keys: [pub], threshold: 1 } } }), [rootKey]));
    const config = parseAgentConfig({ fleet: 'warehouse', device: 'robot-d', broker: controller.urls.broker, controller: controller.urls.enrol, ca: 'ca.pem', token: 'token', state: 'state', trust: 'trust', models: 'models', telemetry: { interval: '200ms', spool: '1MiB' } }, path.join(d.dir, 'agent.yaml'));
    const lines: Record<string, unknown>[] = [];
    // Every certificate counts as due (400 days before expiry), checked every 1.5 s: the timer renews.
    const agent = await Agent.start(config, { sysroot: path.join(SYSROOTS, 'x86-server'), log: (l) => lines.push(l), renewal: { everyMs: 1500, beforeMs: 400 * 86_400_000 } });
    try {
      const enrolled = readFileSync(path.join(d.options.state, CERT_FILE), 'utf8');
      await until(async () => ((await controller.registry.get('robot-d'))?.telemetrySequence ?? 0) > 0, 20_000);
      await until(() => lines.some((l) => l['msg'] === 'certificate renewed'), 20_000);
      const renewedAt = lines.findIndex((l) => l['msg'] === 'certificate renewed');
      expect(readFileSync(path.join(d.options.state, CERT_FILE), 'utf8')).not.toBe(enrolled);
      // The connection was dropped and made again, with the new certificate in the client's options.
      await until(() => lines.slice(renewedAt).some((l) => l['msg'] === 'connected'), 20_000);
      const before = (await controller.registry.get('robot-d'))?.telemetrySequence ?? 0;
      await until(async () => ((await controller.registry.get('robot-d'))?.telemetrySequence ?? 0) > before + 2, 20_000);
      expect((await controller.registry.get('robot-d'))?.state).toBe('online');
      // The enrolled certificate was replaced: it renews nothing any more.
      const csr = createCsr({ privateKey: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey, commonName: 'robot-d' });
      expect(await renew({ csr }, { cert: enrolled, key: readFileSync(path.join(d.options.state, KEY_FILE), 'utf8') })).toEqual({ status: 403, code: 'EAI_FLEET_RENEW' });
    } finally {
      await agent.stop();
    }
  }, 60_000);
});
