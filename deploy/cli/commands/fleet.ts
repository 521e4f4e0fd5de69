import http from 'node:http';
import { Command, Option } from 'commander';
import { AiosError, UsageError } from '../../../drivers/errors.js';
import type { CommandRecord } from '../../controller/commands.js';
import type { DeviceSummary } from '../../controller/devices.js';
import type { IssuedToken } from '../../controller/enrolment.js';
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
        `runtime ${d.runtimeVersion ?? '?'}; labels ${Object.entries(d.labels).map(([k, v]) => `${k}=${v}`).join(' ') || '-'}`,
        `accelerators ${d.accelerators.join(', ') || '-'}`,
        `models ${d.models.map((m) => `${m.model} ${m.active}${m.previous === '' ? '' : ` (previous ${m.previous})`}`).join(', ') || '-'}`,
        `pipelines ${d.pipelines.map((p) => `${p.name} ${p.state.toLowerCase()}`).join(', ') || '-'}`,
        `telemetry #${d.telemetrySequence ?? '-'}, ${d.telemetryDropped} dropped by the device's spool`,
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
      const labels: Record<string, string> = {};
      for (const l of options.label) {
        const at = l.indexOf('=');
        if (at <= 0) throw new UsageError('EAI_CLI_USAGE', `--label '${l}' must be key=value.`);
        labels[l.slice(0, at)] = l.slice(at + 1);
      }
      const issued = (await call(options.api, 'POST', '/v1/tokens', { validForMs: options.valid, labels, ...(options.device === undefined ? {} : { deviceId: options.device }) })) as IssuedToken;
      if (options.json === true) return void process.stdout.write(`${JSON.stringify(issued, null, 2)}\n`);
      process.stdout.write(`${issued.token}\n`);
      process.stderr.write(`token ${issued.id}${issued.deviceId === undefined ? '' : ` for ${issued.deviceId}`}, valid until ${new Date(issued.expiresUnixMs).toISOString()}; it is shown only now: put it in the device image (agent.yaml token:), mode 0600\n`);
    });

  return fleet;
}

function renderDevices(devices: readonly DeviceSummary[]): string {
  if (devices.length === 0) return 'no devices enrolled yet (aios fleet token, then provision a device: docs/fleet.md)\n';
  return `${table(
    ['device', 'state', 'runtime', 'models', 'pipelines', 'cpu', 'memory', 'temp', 'accelerators'],
    devices.map((d) => [
      d.deviceId,
      d.state,
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
