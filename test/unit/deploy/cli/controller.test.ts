import { spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { afterAll, describe, expect, it } from 'vitest';
import { createCrl } from '../../../../deploy/fleet/pki/crl.js';
import { createCertificateAuthority, issueCertificate } from '../../../../deploy/fleet/pki/certificate.js';
import { runCli } from '../../../support/cli.js';
import { findBinary, freePort, startMosquitto } from '../../../support/wait.js';

const MOSQUITTO = findBinary('mosquitto');
const SYSTEMD_ANALYZE = findBinary('systemd-analyze');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'aios-cli-controller-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('aios controller broker-config', () => {
  it('refuses to guess the broker kind and to overwrite', async () => {
    const out = path.join(tmp, 'refuse');
    expect((await runCli('controller', 'broker-config', '--fleet', 'warehouse', '--out', out)).stderr).toMatch(/^error EAI_CLI_USAGE: say which broker/u);
    expect((await runCli('controller', 'broker-config', '--mosquitto', '--fleet', 'warehouse', '--out', out)).code).toBe(0);
    const again = await runCli('controller', 'broker-config', '--mosquitto', '--fleet', 'warehouse', '--out', out);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/already exists; pass --force/u);
    expect((await runCli('controller', 'broker-config', '--mosquitto', '--fleet', 'bad/name', '--out', out, '--force')).stderr).toMatch(/EAI_FLEET_NAME/u);
  });

  it.skipIf(MOSQUITTO === undefined)('writes a configuration Mosquitto runs: a device certificate from the fleet CA connects and writes its own telemetry', async () => {
    const out = path.join(tmp, 'mosquitto');
    const ca = createCertificateAuthority({ commonName: 'fleet CA', validDays: 30 });
    const key = (): { publicKey: import('node:crypto').KeyObject; privateKey: import('node:crypto').KeyObject } => generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const broker = key();
    const robot = key();
    const files = { ca: path.join(tmp, 'ca.pem'), cert: path.join(tmp, 'broker.pem'), key: path.join(tmp, 'broker.key') };
    writeFileSync(files.ca, ca.certificatePem);
    writeFileSync(files.cert, issueCertificate({ ca, subjectPublicKey: broker.publicKey, commonName: 'broker', validDays: 7, usage: 'server', ipAddresses: ['127.0.0.1'] }));
    writeFileSync(files.key, broker.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    // The controller's revocation list, as it writes it into its state folder.
    const crl = path.join(tmp, 'crl.pem');
    writeFileSync(crl, createCrl({ ca, revoked: [], number: 1, nextUpdate: new Date(Date.now() + 86_400_000) }));
    const port = await freePort();
    const result = await runCli('controller', 'broker-config', '--mosquitto', '--fleet', 'warehouse', '--out', out, '--port', String(port), '--bind', '127.0.0.1', '--cafile', files.ca, '--certfile', files.cert, '--keyfile', files.key, '--crlfile', crl, '--persistence', `${path.join(tmp, 'persist')}/`, '--json');
    expect(result.code).toBe(0);
    const written = JSON.parse(result.stdout) as { conf: string; acl: string };
    const conf = readFileSync(written.conf, 'utf8');
    expect(conf).toContain('require_certificate true');
    expect(conf).toContain('use_identity_as_username true');
    expect(conf).toContain(`crlfile ${crl}`);
    const without = await runCli('controller', 'broker-config', '--mosquitto', '--fleet', 'warehouse', '--out', path.join(tmp, 'no-crl'), '--no-crlfile', '--json');
    expect(readFileSync((JSON.parse(without.stdout) as { conf: string }).conf, 'utf8')).not.toContain('crlfile');
    expect(readFileSync(written.acl, 'utf8')).toContain('pattern write aios/warehouse/devices/%u/telemetry');
    const mosquitto = await startMosquitto(MOSQUITTO as string, { dir: tmp, port, config: () => conf });
    try {
      const client = await mqtt.connectAsync(`mqtts://127.0.0.1:${mosquitto.port}`, {
        clientId: 'robot-1',
        protocolVersion: 4,
        reconnectPeriod: 0,
        ca: ca.certificatePem,
        cert: issueCertificate({ ca, subjectPublicKey: robot.publicKey, commonName: 'robot-1', validDays: 7, usage: 'client' }),
        key: robot.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
      });
      await client.publishAsync('aios/warehouse/devices/robot-1/telemetry', 'ok', { qos: 1 });
      await client.endAsync();
    } finally {
      mosquitto.stop();
    }
  });

  it.skipIf(SYSTEMD_ANALYZE === undefined)('the units that reload Mosquitto for a new CRL pass systemd-analyze verify and watch the file broker-config names by default', async () => {
    const run = spawnSync(SYSTEMD_ANALYZE as string, ['verify', 'deploy/systemd/aios-crl-reload.path', 'deploy/systemd/aios-crl-reload.service'], { encoding: 'utf8' });
    expect(`${run.stdout}${run.stderr}`.trim()).toBe('');
    const conf = await runCli('controller', 'broker-config', '--mosquitto', '--fleet', 'warehouse', '--out', path.join(tmp, 'defaults'), '--json');
    const crlfile = /^crlfile (.+)$/mu.exec(readFileSync((JSON.parse(conf.stdout) as { conf: string }).conf, 'utf8'))?.[1];
    expect(readFileSync('deploy/systemd/aios-crl-reload.path', 'utf8')).toContain(`PathChanged=${crlfile}`);
  });
});
