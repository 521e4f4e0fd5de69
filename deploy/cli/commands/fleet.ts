import http from 'node:http';
import { resolve as pathResolve } from 'node:path';
import { Command, Option } from 'commander';
import { AiosError, UsageError } from '../../../drivers/errors.js';
import type { CommandRecord } from '../../controller/commands.js';
import type { DeviceSummary } from '../../controller/devices.js';
import type { TargetStatus } from '../../controller/deployments.js';
import type { IssuedToken } from '../../controller/enrolment.js';
import type { RolloutStatus } from '../../controller/rollouts.js';
import { duration } from '../args.js';
import { formatBytes, table } from '../format.js';

interface ApiOptions {
  api: string;
  json?: boolean;
}

/**
 * `aios fleet`: the operator's view of a fleet, through the controller's API (loopback by
 * default: run it on the controller host, or point --api at a proxy in front of it).
 */
export function fleetCommand(): Command {
  const fleet = new Command('fleet').description("see and manage the fleet through the controller's API (docs/fleet.md)");
  const api = (): Option => new Option('--api <url>', "the controller's operator API").default(process.env['AIOS_CONTROLLER_API'] ?? 'http://127.0.0.1:8080');

  fleet
    .command('devices')
    .description('every enrolled device: online state, versions, health')
    .addOption(api())
    .option('--json', 'print the devices as JSON')
    .action(async (options: ApiOptions) => {
      const { devices } = (await call(options.api, 'GET', '/v1/devices')) as { devices: DeviceSummary[] };
      if (options.json === true) return void process.stdout.write(`${JSON.stringify(devices, null, 2)}\n`);
      process.stdout.write(renderDevices(devices));
    });

  fleet
    .command('show')
    .description('one device: its summary, recent events and commands')
    .argument('<device>', 'device id')
    .addOption(api())
    .option('--json', 'print as JSON')
    .action(async (device: string, options: ApiOptions) => {
      const answer = (await call(options.api, 'GET', `/v1/devices/${encodeURIComponent(device)}`)) as { device: DeviceSummary; events: { timeUnixMs: number; severity: string; code: string; message: string }[]; commands: CommandRecord[] };
      if (options.json === true) return void process.stdout.write(`${JSON.stringify(answer, null, 2)}\n`);
      const d = answer.device;
      const lines = [
        `${d.deviceId}  ${d.state}${d.lastSeenUnixMs === undefined ? '' : `, last seen ${new Date(d.lastSeenUnixMs).toISOString()}`}`,
        ...(d.revoked === undefined ? [] : [`REVOKED at ${new Date(d.revoked.atUnixMs).toISOString()} (${d.revoked.reason}): its certificates no longer connect`]),
        `runtime ${d.runtimeVersion ?? '?'}; labels ${Object.entries(d.labels).map(([k, v]) => `${k}=${v}`).join(' ') || '-'}`,
        `accelerators ${d.accelerators.join(', ') || '-'}`,
        `models ${d.models.map((m) => `${m.model} ${m.active}${m.previous === '' ? '' : ` (previous ${m.previous})`}`).join(', ') || '-'}`,
        `pipelines ${d.pipelines.map((p) => `${p.name} ${p.state.toLowerCase()}`).join(', ') || '-'}`,
        `telemetry #${d.telemetrySequence ?? '-'}, ${d.telemetryDropped} dropped by the device's spool`,
        `attestation ${attested(d)}${d.attestedUnixMs === undefined ? '' : ` at ${new Date(d.attestedUnixMs).toISOString()}`}${d.attestationReason === undefined ? '' : `: ${d.attestationReason}`}`,
        '',
        'commands:',
        answer.commands.length === 0 ? '  none' : table(['seq', 'action', 'status', 'code', 'at'], answer.commands.map((c) => [String(c.sequence), c.action, c.status, c.code ?? '', new Date(c.updatedUnixMs).toISOString()])),
        'events:',
        answer.events.length === 0 ? '  none' : table(['at', 'severity', 'code', 'message'], answer.events.map((e) => [new Date(e.timeUnixMs).toISOString(), e.severity.toLowerCase(), e.code, e.message.slice(0, 80)])),
      ];
      process.stdout.write(`${lines.join('\n')}\n`);
    });

  fleet
    .command('token')
    .description('make a one-time enrolment token for a device image (shown once; bind it to the device id when you know it)')
    .option('--device <id>', 'only this device may enrol with it (needed to re-enrol a replaced device)')
    .addOption(new Option('--valid <duration>', 'how long it can be used (e.g. 30m, 7d)').default(7 * 86_400_000, '7d').argParser(days('--valid')))
    .addOption(new Option('--label <key=value>', 'a label the device gets (repeat)').argParser((v: string, prev: string[]) => [...prev, v]).default([]))
    .addOption(api())
    .option('--json', 'print { token, id, expiresUnixMs } as JSON')
    .action(async (options: ApiOptions & { device?: string; valid: number; label: string[] }) => {
      const labels = labelsOf(options.label);
      const issued = (await call(options.api, 'POST', '/v1/tokens', { validForMs: options.valid, labels, ...(options.device === undefined ? {} : { deviceId: options.device }) })) as IssuedToken;
      if (options.json === true) return void process.stdout.write(`${JSON.stringify(issued, null, 2)}\n`);
      process.stdout.write(`${issued.token}\n`);
      process.stderr.write(`token ${issued.id}${issued.deviceId === undefined ? '' : ` for ${issued.deviceId}`}, valid until ${new Date(issued.expiresUnixMs).toISOString()}; it is shown only now: put it in the device image (agent.yaml token:), mode 0600\n`);
    });

  fleet
    .command('deploy')
    .description('roll a model bundle out to the devices that match, in stages (canary, then percentages, then all); stops and rolls back when a stage fails')
    .argument('<bundle>', 'a signed model bundle on this host (the controller reads it from here)')
    .addOption(new Option('--label <key=value>', 'only devices with this label (repeat: all must match)').argParser((v: string, prev: string[]) => [...prev, v]).default([]))
    .option('--accelerator <kind>', 'only devices with this accelerator (cuda, edgetpu, jetson, fpga, ...)')
    .addOption(new Option('--device <id>', 'only these devices (repeat)').argParser((v: string, prev: string[]) => [...prev, v]).default([]))
    .addOption(new Option('--stages <list>', "stages: a count (canary) or a percentage each, e.g. '1,50%,100%'").default('1,50%,100%'))
    .addOption(new Option('--health-window <duration>', 'how long each device watches the new version before it commits').default(30_000, '30s').argParser(duration('--health-window')))
    .addOption(new Option('--max-error-rate <share>', 'largest share of failed runs in the window (0 allows none)').default(0.01).argParser(share('--max-error-rate')))
    .addOption(new Option('--max-p99 <duration>', 'largest p99 latency of the switched stages (default: not checked)').argParser(duration('--max-p99')))
    .addOption(new Option('--error-threshold <share>', 'share of a stage that may fail before the rollout stops').default(0).argParser(share('--error-threshold')))
    .addOption(new Option('--success-threshold <share>', 'share of a stage that must commit before the next starts').default(1).argParser(share('--success-threshold')))
    .option('--no-rollback', 'when a stage fails, stop without rolling back the devices already committed')
    .option('--watch', 'show the rollout live until it ends')
    .option('--stage-timeout <duration>', 'devices not done this long after their stage started count as failed (offline ones included); default: wait', duration('--stage-timeout'))
    .option('--require-attestation', 'deploy only to devices whose latest attestation is trusted; the others wait in their stage')
    .option('--release-key <identity>', 'the age identity file the bundle is encrypted to (on this host): each device gets the key only after a fresh trusted attestation (docs/attestation.md)')
    .addOption(api())
    .option('--json', 'print the rollout as JSON')
    .addHelpText('after', `
Examples:
  aios fleet deploy face-1.3.0.bundle --label site=madrid --watch
  aios fleet deploy detector.bundle --accelerator jetson --stages 2,25%,100% --health-window 2m --max-p99 40ms`)
    .action(async (bundle: string, options: ApiOptions & { label: string[]; accelerator?: string; device: string[]; stages: string; healthWindow: number; maxErrorRate: number; maxP99?: number; errorThreshold: number; successThreshold: number; rollback: boolean; watch?: boolean; releaseKey?: string; requireAttestation?: boolean; stageTimeout?: number }) => {
      const labels = labelsOf(options.label);
      const body = {
        bundle: pathResolve(bundle),
        ...(options.releaseKey === undefined ? {} : { releaseKey: pathResolve(options.releaseKey) }),
        ...(options.requireAttestation === true ? { requireAttestation: true } : {}),
        ...(options.stageTimeout === undefined ? {} : { stageTimeoutS: options.stageTimeout / 1000 }),
        target: { ...(Object.keys(labels).length === 0 ? {} : { labels }), ...(options.accelerator === undefined ? {} : { accelerator: options.accelerator }), ...(options.device.length === 0 ? {} : { devices: options.device }) },
        stages: stagesOf(options.stages),
        health: { windowS: Math.ceil(options.healthWindow / 1000), maxErrorRate: options.maxErrorRate, maxLatencyP99Ms: options.maxP99 ?? 0 },
        successThreshold: options.successThreshold,
        errorThreshold: options.errorThreshold,
        rollbackOnFailure: options.rollback,
      };
      const { rollout } = (await call(options.api, 'POST', '/v1/rollouts', body)) as { rollout: RolloutStatus };
      if (options.watch === true) return watchRollout(options.api, rollout.id, options.json === true);
      if (options.json === true) return void process.stdout.write(`${JSON.stringify(rollout, null, 2)}\n`);
      process.stdout.write(`${renderRollout(rollout)}follow it with: aios fleet rollouts ${rollout.id} --watch\n`);
    });

  fleet
    .command('rollouts')
    .description('rollouts with their stages and devices (one rollout with its id)')
    .argument('[id]', 'a rollout id')
    .option('--watch', 'redraw until the rollout ends (with an id)')
    .addOption(api())
    .option('--json', 'print as JSON')
    .action(async (id: string | undefined, options: ApiOptions & { watch?: boolean }) => {
      if (id !== undefined && options.watch === true) return watchRollout(options.api, id, options.json === true);
      if (id !== undefined) {
        const answer = (await call(options.api, 'GET', `/v1/rollouts/${encodeURIComponent(id)}`)) as { rollout: RolloutStatus; targets: TargetStatus[] };
        if (options.json === true) return void process.stdout.write(`${JSON.stringify(answer, null, 2)}\n`);
        return void process.stdout.write(`${renderRollout(answer.rollout)}${renderTargets(answer.targets)}`);
      }
      const { rollouts } = (await call(options.api, 'GET', '/v1/rollouts')) as { rollouts: RolloutStatus[] };
      if (options.json === true) return void process.stdout.write(`${JSON.stringify(rollouts, null, 2)}\n`);
      if (rollouts.length === 0) return void process.stdout.write('no rollouts yet (aios fleet deploy <bundle>)\n');
      process.stdout.write(`${table(['rollout', 'model', 'state', 'stage', 'committed', 'failed', 'reason'], rollouts.map((r) => [r.id, `${r.model} ${r.version}`, r.state, `${r.stage + 1}/${r.stages.length} ${r.stages[r.stage]?.name ?? ''}`, String(r.stages.reduce((n, s) => n + s.committed, 0)), String(r.stages.reduce((n, s) => n + s.failed, 0)), r.reason ?? '']))}\n`);
    });

  fleet
    .command('revoke')
    .description("revoke a device (stolen, scrapped, key leaked): its certificates stop connecting, it gets no commands, what it still sends is ignored; enrolling it again with a token made for it brings it back")
    .argument('<device>', 'device id')
    .addOption(new Option('--reason <reason>', 'recorded in the CRL').choices(['keyCompromise', 'cessationOfOperation', 'unspecified']).default('unspecified'))
    .addOption(api())
    .option('--json', 'print the revocation as JSON')
    .action(async (device: string, options: ApiOptions & { reason: string }) => {
      const { revoked } = (await call(options.api, 'POST', `/v1/devices/${encodeURIComponent(device)}/revoke`, { reason: options.reason })) as { revoked: { deviceId: string; revokedUnixMs: number; reason: string; certificates: number } };
      if (options.json === true) return void process.stdout.write(`${JSON.stringify(revoked, null, 2)}\n`);
      process.stdout.write(`${revoked.deviceId} revoked (${revoked.reason}) at ${new Date(revoked.revokedUnixMs).toISOString()}: ${revoked.certificates} certificate${revoked.certificates === 1 ? '' : 's'} in the controller's crl.pem; an external broker refuses them once it re-reads it (Mosquitto: SIGHUP)\n`);
    });

  for (const [verb, description] of [
    ['pause', 'pause a rollout: devices already deploying finish, no new stage starts'],
    ['resume', 'resume a paused rollout'],
    ['rollback', 'stop a rollout and send every device it committed back to its previous version'],
  ] as const) {
    fleet
      .command(verb)
      .description(description)
      .argument('<id>', 'the rollout id')
      .addOption(api())
      .option('--reason <text>', 'why (rollback), recorded and shown')
      .option('--json', 'print the rollout as JSON')
      .action(async (id: string, options: ApiOptions & { reason?: string }) => {
        const { rollout } = (await call(options.api, 'POST', `/v1/rollouts/${encodeURIComponent(id)}/${verb}`, options.reason === undefined ? {} : { reason: options.reason })) as { rollout: RolloutStatus };
        if (options.json === true) return void process.stdout.write(`${JSON.stringify(rollout, null, 2)}\n`);
        process.stdout.write(renderRollout(rollout));
      });
  }

  return fleet;
}

function renderRollout(r: RolloutStatus): string {
  const lines = [`${r.id}  ${r.model} ${r.version}  ${r.state}${r.reason === undefined ? '' : `: ${r.reason}`}`];
  r.stages.forEach((s, i) => {
    const total = s.devices.length;
    const done = s.committed + s.failed;
    const width = 20;
    const bar = total === 0 ? ''.padEnd(width, '.') : `${'#'.repeat(Math.round((s.committed / total) * width))}${'x'.repeat(Math.round((s.failed / total) * width))}`.padEnd(width, '.');
    lines.push(`  ${i === r.stage && r.state === 'running' ? '>' : ' '} ${s.name.padEnd(10)} [${bar}] ${done}/${total}  ${s.committed} committed, ${s.failed} failed, ${s.pending} in progress${s.started ? '' : ' (waiting)'}`);
  });
  return `${lines.join('\n')}\n`;
}

function renderTargets(targets: readonly TargetStatus[]): string {
  if (targets.length === 0) return '';
  return `${table(['device', 'phase', 'downloaded', 'code', 'reason'], targets.map((t) => [t.deviceId, t.phase.toLowerCase(), formatBytes(t.bytesDone), t.code ?? '', (t.reason ?? '').slice(0, 60)]))}\n`;
}

/** Redraws the rollout (on a terminal) or prints each change (otherwise) until it leaves 'running'/'paused'. */
async function watchRollout(api: string, id: string, json: boolean): Promise<void> {
  const tty = process.stdout.isTTY === true && !json;
  let last = '';
  for (;;) {
    const answer = (await call(api, 'GET', `/v1/rollouts/${encodeURIComponent(id)}`)) as { rollout: RolloutStatus; targets: TargetStatus[] };
    const text = json ? `${JSON.stringify(answer.rollout)}\n` : `${renderRollout(answer.rollout)}${renderTargets(answer.targets)}`;
    if (text !== last) process.stdout.write(tty ? `\x1b[2J\x1b[H${text}` : text);
    last = text;
    if (answer.rollout.state !== 'running' && answer.rollout.state !== 'paused') return;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function labelsOf(list: readonly string[]): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const l of list) {
    const at = l.indexOf('=');
    if (at <= 0) throw new UsageError('EAI_CLI_USAGE', `--label '${l}' must be key=value.`);
    labels[l.slice(0, at)] = l.slice(at + 1);
  }
  return labels;
}

/** '1,50%,100%' → a canary of 1, half, all. */
function stagesOf(text: string): { name: string; count?: number; percent?: number }[] {
  const parts = text.split(',').map((p) => p.trim()).filter((p) => p !== '');
  if (parts.length === 0) throw new UsageError('EAI_CLI_USAGE', "--stages needs at least one stage, e.g. '1,50%,100%'.");
  return parts.map((p, i) => {
    const name = i === 0 && !p.endsWith('%') ? 'canary' : i === parts.length - 1 ? 'all' : `stage-${i + 1}`;
    if (p.endsWith('%')) {
      const percent = Number(p.slice(0, -1));
      if (!(percent > 0 && percent <= 100)) throw new UsageError('EAI_CLI_USAGE', `--stages: '${p}' is not a percentage in (0, 100].`);
      return { name, percent };
    }
    const count = Number(p);
    if (!Number.isInteger(count) || count < 1) throw new UsageError('EAI_CLI_USAGE', `--stages: '${p}' is neither a device count nor a percentage.`);
    return { name, count };
  });
}

function share(option: string): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!(n >= 0 && n <= 1)) throw new UsageError('EAI_CLI_USAGE', `${option} must be a share between 0 and 1 (0.05 is 5 %), got '${value}'.`);
    return n;
  };
}

function renderDevices(devices: readonly DeviceSummary[]): string {
  if (devices.length === 0) return 'no devices enrolled yet (aios fleet token, then provision a device: docs/fleet.md)\n';
  return `${table(
    ['device', 'state', 'attested', 'runtime', 'models', 'pipelines', 'cpu', 'memory', 'temp', 'accelerators'],
    devices.map((d) => [
      d.deviceId,
      d.revoked === undefined ? d.state : 'revoked',
      attested(d),
      d.runtimeVersion ?? '-',
      d.models.map((m) => `${m.model}@${m.active}`).join(' ') || '-',
      d.pipelines.map((p) => `${p.name}:${p.state === 'RUNNING' ? 'up' : p.state.toLowerCase()}`).join(' ') || '-',
      typeof d.cpuPercent === 'number' ? `${d.cpuPercent.toFixed(0)}%` : '-',
      typeof d.memoryUsedBytes === 'number' ? formatBytes(d.memoryUsedBytes) : '-',
      typeof d.temperatureC === 'number' ? `${d.temperatureC.toFixed(0)}°C` : '-',
      d.accelerators.join(' '),
    ]),
  )}\n`;
}

/** "tpm2:trusted", "software:untrusted", "tpm2:-": the kind of key behind it and the latest appraisal. */
function attested(d: DeviceSummary): string {
  return `${d.attestation === undefined ? '' : `${d.attestation}:`}${d.attestationStatus ?? '-'}`;
}

/** `duration` plus days ('7d'), for token lifetimes. */
function days(option: string): (value: string) => number {
  const base = duration(option);
  return (value) => {
    const m = /^([0-9]+)d$/u.exec(value);
    return m === null ? base(value) : Number(m[1]) * 86_400_000;
  };
}

/**
 * One API call. A refused connection is retried for a few seconds: a controller started a moment
 * ago (`aios controller start &` in a script) is still opening its port.
 */
async function call(base: string, method: 'GET' | 'POST', path: string, body?: unknown): Promise<unknown> {
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      return await callOnce(base, method, path, body);
    } catch (error) {
      const refused = (error as { cause?: { code?: string } }).cause?.code === 'ECONNREFUSED';
      if (!refused || Date.now() > deadline) throw error;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

async function callOnce(base: string, method: 'GET' | 'POST', path: string, body?: unknown): Promise<unknown> {
  let url: URL;
  try {
    url = new URL(path, base);
  } catch {
    throw new UsageError('EAI_CLI_USAGE', `--api '${base}' is not a URL (e.g. http://127.0.0.1:8080).`);
  }
  const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const request = http.request(url, { method, headers: data === undefined ? {} : { 'content-type': 'application/json', 'content-length': data.length }, timeout: 15_000 }, (response) => {
      const parts: Buffer[] = [];
      response.on('data', (c: Buffer) => parts.push(c));
      response.on('end', () => {
        let json: { error?: { code?: string; message?: string } } & Record<string, unknown>;
        try {
          json = JSON.parse(Buffer.concat(parts).toString('utf8')) as typeof json;
        } catch {
          return reject(new AiosError('EAI_FLEET_API', `${url.origin} answered HTTP ${response.statusCode} without JSON; is --api the controller's operator API?`));
        }
        if ((response.statusCode ?? 500) >= 400) return reject(new AiosError(json.error?.code ?? 'EAI_FLEET_API', json.error?.message ?? `HTTP ${response.statusCode}`));
        resolve(json);
      });
    });
    request.on('timeout', () => request.destroy(new Error('no answer within 15 s')));
    request.on('error', (error) => reject(new AiosError('EAI_FLEET_API', `cannot reach the controller's API at ${url.origin} (${error.message}); is \`aios controller start\` running there? (--api, or AIOS_CONTROLLER_API)`, { cause: error })));
    request.end(data);
  });
}
