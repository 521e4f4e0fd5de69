import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAgentConfig } from '../../../../deploy/agent/config.js';
import { systemdNotifier } from '../../../../deploy/agent/systemd-notify.js';
import { findBinary } from '../../../support/wait.js';

const SYSTEMD_ANALYZE = findBinary('systemd-analyze');

describe('agent.yaml', () => {
  const base = { fleet: 'warehouse', device: 'robot-7', broker: 'mqtts://fleet.example:8883', ca: 'ca.pem' };

  it('reads a complete file, resolving paths against its folder and units in sizes and durations', () => {
    const config = parseAgentConfig({ ...base, controller: 'https://fleet.example:8443', token: 'token', state: 'state', labels: { site: 'madrid', floor: 2 }, telemetry: { interval: '5s', spool: '32MiB' }, pipelines: ['p.yaml'], ota: { window: 4, rate: '2MiB/s' } }, '/etc/aios/agent.yaml');
    expect(config).toMatchObject({ fleet: 'warehouse', device: 'robot-7', ca: '/etc/aios/ca.pem', token: '/etc/aios/token', state: '/etc/aios/state', trust: '/var/lib/aios/trust', labels: { site: 'madrid', floor: '2' }, telemetryIntervalMs: 5000, spoolBytes: 32 * 1024 * 1024, pipelines: ['/etc/aios/p.yaml'], otaWindow: 4, otaBytesPerSecond: 2 * 1024 * 1024 });
    expect(parseAgentConfig(base, 'agent.yaml')).toMatchObject({ telemetryIntervalMs: 10_000, spoolBytes: 64 * 1024 * 1024, otaWindow: 8, state: '/var/lib/aios/agent', ca: path.resolve('ca.pem') });
    expect(parseAgentConfig(base, 'agent.yaml').otaBytesPerSecond).toBeUndefined();
    expect(parseAgentConfig({ ...base, ota: { rate: 65536 } }, 'agent.yaml')).toMatchObject({ otaWindow: 8, otaBytesPerSecond: 65536 });
  });

  it('lists every problem at once with EAI_AGENT_CONFIG', () => {
    let error: { code?: string; message?: string; details?: { problems?: string[] } } = {};
    try {
      parseAgentConfig({ fleet: 'ware/house', device: 'aios-controller', broker: 'mqtt://insecure:1883', controller: 'http://x', telemetry: { interval: 'often', spool: '1KiB', extra: 1 }, pipelines: 'p.yaml', colour: 'blue', ota: { window: 0, rate: 'fast', chunk: 1 } }, 'agent.yaml');
    } catch (e) {
      error = e as typeof error;
    }
    expect(error.code).toBe('EAI_AGENT_CONFIG');
    const problems = error.details?.problems ?? [];
    for (const bit of ["unknown key 'colour'", "fleet 'ware/house'", "device 'aios-controller'", 'must be mqtts://', 'must be https://', "'ca' is required", "'telemetry.interval' often", "'telemetry.spool' 1KiB", "unknown key 'telemetry.extra'", "'pipelines' must be a list", "'ota.window'", "'ota.rate' fast", "unknown key 'ota.chunk'"]) {
      expect(problems.some((p) => p.includes(bit)), `${bit} in ${problems.join(' | ')}`).toBe(true);
    }
    expect(error.message).toMatch(/agent\.yaml has 13 problems/u);
  });
});

describe('systemd', () => {
  it('the notifier does nothing outside systemd, and takes the watchdog interval systemd gives', () => {
    expect(systemdNotifier({}).active).toBe(false);
    expect(systemdNotifier({ WATCHDOG_USEC: '60000000', WATCHDOG_PID: String(process.pid) }).watchdogMs).toBe(60_000);
    expect(systemdNotifier({ WATCHDOG_USEC: '60000000', WATCHDOG_PID: '1' }).watchdogMs).toBeUndefined();
  });

  it.skipIf(SYSTEMD_ANALYZE === undefined)('the agent unit passes systemd-analyze verify (except that aios is not installed at /usr/bin here)', () => {
    const run = spawnSync(SYSTEMD_ANALYZE as string, ['verify', 'deploy/systemd/aios-agent.service'], { encoding: 'utf8' });
    const complaints = `${run.stdout}${run.stderr}`.split('\n').filter((l) => l.trim() !== '' && !l.includes('/usr/bin/aios'));
    expect(complaints).toEqual([]);
  });
});
