import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../deploy/agent/agent.js';
import { parseAgentConfig, type AgentConfig } from '../../deploy/agent/config.js';
import { Controller } from '../../deploy/controller/controller.js';
import { signCommand } from '../../deploy/fleet/command.js';
import { issueCertificate } from '../../deploy/fleet/pki/certificate.js';
import { deviceTopic } from '../../deploy/fleet/topics.js';
import { aios } from '../../deploy/proto/gen/aios.js';
import { generateSigningKey, type SigningKey } from '../../models/keys.js';
import { createRoot, signRoot } from '../../models/trust/root.js';
import { TrustStore } from '../../models/trust/trust-store.js';
import { SYSROOTS } from '../support/sysroots.js';
import { runCli } from '../support/cli.js';
import { until } from '../support/wait.js';

// The fleet end to end on one machine: a controller with its embedded broker, and a real agent
// (enrolment over HTTPS with a one-time token, mutual TLS, birth and status, telemetry through
// its spool from a fixture of a real Jetson, signed commands with acks), all on loopback.

const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-fleet-e2e-'));
const rootKey = generateSigningKey();
const [ops1, ops2] = [generateSigningKey(), generateSigningKey()] as [SigningKey, SigningKey];
const pub = (k: SigningKey): { keyid: string; publicKey: SigningKey['publicKey'] } => ({ keyid: k.keyid, publicKey: k.publicKey });
const root = signRoot(createRoot({ version: 1, expires: new Date(Date.now() + 365 * 86_400_000), roles: { root: { keys: [pub(rootKey)], threshold: 1 }, models: { keys: [pub(ops1)], threshold: 1 }, deploy: { keys: [pub(ops1), pub(ops2)], threshold: 2 } } }), [rootKey]);

let controller: Controller;
const agents: Agent[] = [];

beforeAll(async () => {
  controller = await Controller.start({ fleet: 'warehouse', state: path.join(tmp, 'controller'), deployKeys: [ops1, ops2], controllers: ['aios-controller', 'aios-controller-2'], hostnames: ['localhost', '127.0.0.1'], brokerHost: '127.0.0.1', brokerPort: 0, enrolHost: '127.0.0.1', enrolPort: 0, apiPort: 0 });
});
afterAll(async () => {
  for (const a of agents) await a.stop();
  await controller.stop();
  rmSync(tmp, { recursive: true, force: true });
});

/** A provisioned device image: trust root installed, fleet CA, a token, a pipeline. */
async function provision(device: string, extra: Record<string, unknown> = {}): Promise<AgentConfig> {
  const dir = path.join(tmp, device);
  mkdirSync(dir, { recursive: true });
  await TrustStore.init(path.join(dir, 'trust'), root);
  writeFileSync(path.join(dir, 'fleet-ca.pem'), controller.ca.certificatePem);
  const { token } = (await controller.enrolment.issueToken({ validForMs: 600_000, deviceId: device, labels: { site: 'madrid' } }));
  writeFileSync(path.join(dir, 'token'), `${token}\n`, { mode: 0o600 });
  writeFileSync(
    path.join(dir, 'pipeline.yaml'),
    ['name: front-camera', 'sources:', '  camera: { use: synthetic, params: { pattern: color-bars, rate: 50, width: 64, height: 48, format: rgb24 } }', 'stages:', '  small: { use: image.resize, params: { width: 32, height: 24 } }', 'sinks:', '  out: { use: callback }', 'flows: [camera -> small, small -> out]', ''].join('\n'),
  );
  return parseAgentConfig(
    {
      fleet: 'warehouse',
      device,
      broker: controller.urls.broker,
      controller: controller.urls.enrol,
      ca: 'fleet-ca.pem',
      token: 'token',
      state: 'state',
      trust: 'trust',
      models: 'models',
      labels: { kind: 'amr' },
      telemetry: { interval: '200ms', spool: '1MiB' },
      pipelines: ['pipeline.yaml'],
      ...extra,
    },
    path.join(dir, 'agent.yaml'),
  );
}

async function startAgent(config: AgentConfig): Promise<Agent> {
  const agent = await Agent.start(config, { sysroot: path.join(SYSROOTS, 'jetson-orin-nx-jp6') });
  agents.push(agent);
  return agent;
}

describe('a device agent and the fleet controller', () => {
  it('enrols with its token, comes online with its birth, and reports telemetry from its pipeline and hardware', async () => {
    await startAgent(await provision('robot-1'));
    await until(async () => (await controller.registry.get('robot-1'))?.state === 'online', 15_000);
    await until(async () => ((await controller.registry.get('robot-1'))?.telemetrySequence ?? -1) >= 2, 15_000);
    const device = (await controller.registry.get('robot-1'));
    expect(device).toMatchObject({ deviceId: 'robot-1', state: 'online', labels: { site: 'madrid', kind: 'amr' }, pipelines: [{ name: 'front-camera', state: 'RUNNING' }], lastCommandSequence: 0, telemetryDropped: 0 });
    expect(device?.accelerators.length).toBeGreaterThan(0);
    const birth = (await controller.registry.birth('robot-1'));
    expect(birth?.hardware?.model).toMatch(/Orin/u);
    expect(Number(birth?.trustRootVersion)).toBe(1);
  });

  it('obeys a signed command and acknowledges it; refuses an unknown pipeline with FAILED and a replayed command with REJECTED', async () => {
    const stop = await controller.commands.send('robot-1', { stopPipeline: { name: 'front-camera' } });
    expect(stop.sequence).toBe(1);
    expect((await controller.commands.until('robot-1', 1, ['done', 'failed', 'rejected'], 15_000)).status).toBe('done');
    await until(async () => (await controller.registry.get('robot-1'))?.pipelines[0]?.state === 'STOPPED', 10_000);
    await controller.commands.send('robot-1', { startPipeline: { name: 'front-camera' } });
    expect((await controller.commands.until('robot-1', 2, ['done', 'failed', 'rejected'], 15_000)).status).toBe('done');
    await controller.commands.send('robot-1', { stopPipeline: { name: 'no-such-pipeline' } });
    expect(await controller.commands.until('robot-1', 3, ['done', 'failed', 'rejected'], 15_000)).toMatchObject({ status: 'failed', code: 'EAI_AGENT_PIPELINE_UNKNOWN' });
    // An attacker on the broker replays command 1 (the controller's client stands in: devices cannot publish commands).
    const replay = signCommand({ fleet: 'warehouse', deviceId: 'robot-1', sequence: 1, issuedUnixMs: Date.now(), expiresUnixMs: Date.now() + 60_000, stopPipeline: { name: 'front-camera' } }, [ops1, ops2]);
    const rejected = new Promise<aios.fleet.v1.CommandAck>((resolve) => controller.registry.onAck((_tx, d, ack) => {
      if (d === 'robot-1' && ack.result === aios.fleet.v1.CommandAck.Result.REJECTED) resolve(ack);
    }));
    // Someone with the rights to publish commands (a second controller) replays command 1.
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const replica = await mqtt.connectAsync(controller.urls.broker, {
      clientId: 'aios-controller-2',
      protocolVersion: 4,
      reconnectPeriod: 0,
      ca: controller.ca.certificatePem,
      cert: issueCertificate({ ca: controller.ca, subjectPublicKey: publicKey, commonName: 'aios-controller-2', validDays: 1, usage: 'client' }),
      key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    });
    await replica.publishAsync(deviceTopic('warehouse', 'robot-1', 'commands'), Buffer.from(replay), { qos: 1 });
    await replica.endAsync();
    expect((await rejected).code).toBe('EAI_FLEET_COMMAND_REPLAYED');
    expect((await controller.registry.get('robot-1'))?.pipelines[0]?.state).toBe('RUNNING');
  });

  it("setConfig replaces a pipeline's configuration: validated first, and a bad one changes nothing", async () => {
    const config = (extra: string): string => ['name: front-camera', 'sources:', '  camera: { use: synthetic, params: { pattern: color-bars, rate: 50, width: 64, height: 48, format: rgb24 } }', 'stages:', '  small: { use: image.resize, params: { width: 32, height: 24 } }', extra, 'sinks:', '  out: { use: callback }', `flows: [camera -> small, ${extra === '' ? 'small -> out' : 'small -> tiny, tiny -> out'}]`, ''].join('\n');
    const send = async (body: object): Promise<{ status: string; code?: string }> => {
      const c = await controller.commands.send('robot-1', body);
      return controller.commands.until('robot-1', c.sequence, ['done', 'failed', 'rejected'], 20_000);
    };
    expect(await send({ setConfig: { pipeline: 'front-camera', configYaml: config('  tiny: { use: image.resize, params: { width: 16, height: 12 } }') } })).toMatchObject({ status: 'done' });
    await until(async () => (await controller.registry.get('robot-1'))?.stages.some((st) => st.stage === 'front-camera/tiny') === true, 15_000);
    expect(await send({ setConfig: { pipeline: 'front-camera', configYaml: 'name: [unclosed' } })).toMatchObject({ status: 'failed', code: 'EAI_AGENT_CONFIG' });
    expect(await send({ setConfig: { pipeline: 'front-camera', configYaml: config('  tiny: { use: image.no-such-stage }') } })).toMatchObject({ status: 'failed', code: 'EAI_CFG_INVALID' });
    expect(await send({ setConfig: { pipeline: 'front-camera', configYaml: config('').replace('name: front-camera', 'name: other') } })).toMatchObject({ status: 'failed', code: 'EAI_AGENT_CONFIG' });
    expect((await controller.registry.get('robot-1'))?.pipelines[0]?.state).toBe('RUNNING');
    const seq = (await controller.registry.get('robot-1'))?.telemetrySequence ?? 0;
    await until(async () => ((await controller.registry.get('robot-1'))?.telemetrySequence ?? 0) > seq + 2, 15_000);
    expect((await controller.registry.get('robot-1'))?.stages.map((st) => st.stage)).toContain('front-camera/tiny');
  });

  it('goes offline cleanly on stop, and its queued commands wait for it and run when it returns', async () => {
    const config = await provision('robot-2');
    const agent = await startAgent(config);
    await until(async () => (await controller.registry.get('robot-2'))?.state === 'online', 15_000);
    await agent.stop();
    await until(async () => (await controller.registry.get('robot-2'))?.state === 'offline', 10_000);
    const sent = await controller.commands.send('robot-2', { stopPipeline: { name: 'front-camera' } });
    expect((await controller.commands.get('robot-2', sent.sequence))?.status).toBe('sent');
    await startAgent(config); // second boot: the certificate is on disk, no token needed
    expect((await controller.commands.until('robot-2', sent.sequence, ['done', 'failed', 'rejected'], 15_000)).status).toBe('done');
    await until(async () => (await controller.registry.get('robot-2'))?.state === 'online', 10_000);
  });

  it('a command cut short by a crash is answered FAILED (EAI_AGENT_INTERRUPTED) at the next start; a deployment answers for itself; one never taken is left to the controller', async () => {
    const config = await provision('robot-4');
    const agent = await startAgent(config);
    await until(async () => (await controller.registry.get('robot-4'))?.state === 'online', 15_000);
    // Two commands the device takes (sequences 1 and 2), so that the journal below names taken ones.
    for (const body of [{ stopPipeline: { name: 'front-camera' } }, { startPipeline: { name: 'front-camera' } }]) {
      const c = await controller.commands.send('robot-4', body);
      expect((await controller.commands.until('robot-4', c.sequence, ['done', 'failed', 'rejected'], 15_000)).status).toBe('done');
    }
    await agent.stop();
    // What a run killed in the middle of commands leaves in its journal: a setConfig it took (1),
    // a deploy it took (2; its deployment resumes on its own), one it was still taking (3: its
    // sequence never recorded, so the device did not take it) and a torn entry.
    const journal = path.join(config.state, 'commands');
    mkdirSync(journal, { recursive: true });
    writeFileSync(path.join(journal, '1.json'), JSON.stringify({ sequence: 1, action: 'setConfig', startedUnixMs: Date.now() - 5000 }));
    writeFileSync(path.join(journal, '2.json'), JSON.stringify({ sequence: 2, action: 'deploy', startedUnixMs: Date.now() - 4000 }));
    writeFileSync(path.join(journal, '3.json'), JSON.stringify({ sequence: 3, action: 'stopPipeline', startedUnixMs: Date.now() - 3000 }));
    writeFileSync(path.join(journal, 'garbage.json'), '{');
    const acks: aios.fleet.v1.CommandAck[] = [];
    controller.registry.onAck((_tx, d, ack) => void (d === 'robot-4' ? acks.push(ack) : undefined));
    await startAgent(config);
    await until(() => acks.some((a) => Number(a.sequence) === 1), 15_000);
    expect(acks.find((a) => Number(a.sequence) === 1)).toMatchObject({ result: aios.fleet.v1.CommandAck.Result.FAILED, code: 'EAI_AGENT_INTERRUPTED' });
    expect(acks.find((a) => Number(a.sequence) === 1)?.message).toMatch(/while carrying out setConfig/u);
    await until(() => readdirSync(journal).length === 0, 5000);
    await new Promise((r) => setTimeout(r, 500));
    expect(acks.filter((a) => Number(a.sequence) !== 1)).toEqual([]);
    // The controller had its DONE already: a later FAILED does not undo it.
    expect((await controller.commands.get('robot-4', 1))?.status).toBe('done');
  });

  it('aios fleet: a token from the CLI enrols a device; devices and show report it and its commands', async () => {
    const made = await runCli('fleet', 'token', '--device', 'robot-3', '--valid', '1d', '--label', 'site=lisbon', '--api', controller.urls.api, '--json');
    expect(made.code, made.stderr).toBe(0);
    const { token } = JSON.parse(made.stdout) as { token: string };
    const config = await provision('robot-3');
    writeFileSync(config.token as string, `${token}\n`);
    await startAgent(config);
    await until(async () => (await controller.registry.get('robot-3'))?.state === 'online', 15_000);
    const listed = await runCli('fleet', 'devices', '--api', controller.urls.api, '--json');
    const devices = JSON.parse(listed.stdout) as { deviceId: string; state: string; labels: Record<string, string> }[];
    expect(devices.find((d) => d.deviceId === 'robot-3')).toMatchObject({ state: 'online', labels: { site: 'lisbon', kind: 'amr' } });
    const text = await runCli('fleet', 'devices', '--api', controller.urls.api);
    expect(text.stderr).toBe("");
    expect(text.stdout).toMatch(/robot-3\s+online\s+software:-\s+\S+\s+-\s+front-camera:up/u);
    const shown = await runCli('fleet', 'show', 'robot-1', '--api', controller.urls.api);
    expect(shown.stdout).toMatch(/^robot-1 {2}online/u);
    expect(shown.stdout).toMatch(/3\s+stopPipeline\s+failed\s+EAI_AGENT_PIPELINE_UNKNOWN/u);
    const missing = await runCli('fleet', 'show', 'robot-99', '--api', controller.urls.api);
    expect(missing.stderr).toMatch(/^error EAI_FLEET_DEVICE_UNKNOWN/u);
    const down = await runCli('fleet', 'devices', '--api', 'http://127.0.0.1:1');
    expect(down.stderr).toMatch(/^error EAI_FLEET_API: cannot reach/u);
  });
});
