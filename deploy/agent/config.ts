import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { parseDuration } from '../../runtime/pipeline/graph.js';
import { FleetError } from '../fleet/errors.js';
import { isTopicLevel } from '../fleet/topics.js';

/**
 * `agent.yaml`: what a device agent needs to join its fleet. Paths are relative to the file.
 *
 * ```yaml
 * fleet: warehouse
 * device: robot-7                      # the certificate's name; required to enrol
 * broker: mqtts://fleet.example:8883
 * controller: https://fleet.example:8443   # enrolment (first boot only)
 * ca: /etc/aios/fleet-ca.pem           # checks the broker and the controller
 * token: /etc/aios/enrolment-token     # one-time, first boot only
 * state: /var/lib/aios/agent           # key, certificate, spool, downloads
 * trust: /var/lib/aios/trust           # the trust store (aios trust install)
 * models: /var/lib/aios/models         # the model store
 * identity: /var/lib/aios/agent/device.age.key   # decrypts models encrypted to this device
 * labels: { site: madrid, kind: amr }
 * telemetry: { interval: 10s, spool: 64MiB }
 * ota: { window: 8, rate: 2MiB/s }     # chunks in flight; the most a download may take of the link
 * pipelines: [ /etc/aios/pipelines/front-camera.yaml ]
 * attestation: { tpm: "device:/dev/tpmrm0" }   # the TPM (a tpm2-tools TCTI); none: software attestation
 * ```
 */
export interface AgentConfig {
  readonly file: string;
  readonly fleet: string;
  readonly device: string;
  readonly broker: string;
  readonly controller?: string;
  readonly ca: string;
  readonly token?: string;
  readonly state: string;
  readonly trust: string;
  readonly models: string;
  readonly identity?: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly telemetryIntervalMs: number;
  readonly spoolBytes: number;
  readonly pipelines: readonly string[];
  /** Chunks of a bundle download in flight (flow control). */
  readonly otaWindow: number;
  /** The most bytes per second a bundle download asks for; absent: no cap. */
  readonly otaBytesPerSecond?: number;
  /** The TPM's TCTI (`device:/dev/tpmrm0`, `swtpm:host=…,port=…`); absent: no TPM, software attestation. */
  readonly tpm?: string;
}

const KEYS = new Set(['fleet', 'device', 'broker', 'controller', 'ca', 'token', 'state', 'trust', 'models', 'identity', 'labels', 'telemetry', 'pipelines', 'ota', 'attestation']);

/** Reads and checks `file`; FleetError `EAI_AGENT_CONFIG` lists every problem at once. */
export async function loadAgentConfig(file: string): Promise<AgentConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (cause) {
    throw new FleetError('EAI_AGENT_CONFIG', `cannot read the agent configuration ${file} (${(cause as Error).message}); pass the path of agent.yaml (--config).`, { cause, details: { file } });
  }
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (cause) {
    throw new FleetError('EAI_AGENT_CONFIG', `${file} is not valid YAML: ${(cause as Error).message}`, { cause, details: { file } });
  }
  return parseAgentConfig(raw, file);
}

export function parseAgentConfig(raw: unknown, file: string): AgentConfig {
  const problems: string[] = [];
  const base = path.dirname(path.resolve(file));
  const o = (typeof raw === 'object' && raw !== null && !Array.isArray(raw) ? raw : {}) as Record<string, unknown>;
  if (o !== raw) problems.push('the file must be a mapping of keys (fleet, device, broker, ...)');
  for (const key of Object.keys(o)) if (!KEYS.has(key)) problems.push(`unknown key '${key}' (known: ${[...KEYS].join(', ')})`);
  const str = (key: string, required: boolean): string | undefined => {
    const v = o[key];
    if (v === undefined || v === null) {
      if (required) problems.push(`'${key}' is required`);
      return undefined;
    }
    if (typeof v !== 'string' || v === '') {
      problems.push(`'${key}' must be a non-empty string`);
      return undefined;
    }
    return v;
  };
  const file_ = (key: string, required: boolean): string | undefined => {
    const v = str(key, required);
    return v === undefined ? undefined : path.resolve(base, v);
  };
  const fleet = str('fleet', true);
  if (fleet !== undefined && !isTopicLevel(fleet)) problems.push(`fleet '${fleet}' cannot be an MQTT topic level (no '/', '+', '#', NUL, leading '$')`);
  const device = str('device', true);
  if (device !== undefined && (!isTopicLevel(device) || device.startsWith('aios-') || device.length > 64)) problems.push(`device '${device}' cannot be a device id (1-64 characters, no '/', '+', '#', NUL, leading '$', not starting 'aios-')`);
  const broker = str('broker', true);
  if (broker !== undefined && !/^mqtts:\/\/[^/]+$/u.test(broker)) problems.push(`broker '${broker}' must be mqtts://host:port (devices always use TLS)`);
  const controller = str('controller', false);
  if (controller !== undefined && !/^https:\/\/[^/]+\/?$/u.test(controller)) problems.push(`controller '${controller}' must be https://host:port (enrolment is over TLS)`);
  const labels: Record<string, string> = {};
  if (o['labels'] !== undefined) {
    if (typeof o['labels'] !== 'object' || o['labels'] === null || Array.isArray(o['labels'])) problems.push("'labels' must be a mapping of names to strings");
    else for (const [k, v] of Object.entries(o['labels'])) typeof v === 'string' || typeof v === 'number' ? (labels[k] = String(v)) : problems.push(`label '${k}' must be a string`);
  }
  let telemetryIntervalMs = 10_000;
  let spoolBytes = 64 * 1024 * 1024;
  const t = o['telemetry'];
  if (t !== undefined) {
    if (typeof t !== 'object' || t === null) problems.push("'telemetry' must be a mapping { interval, spool }");
    else {
      const { interval, spool, ...rest } = t as Record<string, unknown>;
      for (const k of Object.keys(rest)) problems.push(`unknown key 'telemetry.${k}'`);
      if (interval !== undefined) {
        try {
          telemetryIntervalMs = parseDuration(interval as string);
          if (!(telemetryIntervalMs >= 100)) problems.push("'telemetry.interval' must be at least 100ms");
        } catch {
          problems.push(`'telemetry.interval' ${String(interval)} is not a duration (e.g. 10s, 500ms, 1m)`);
        }
      }
      if (spool !== undefined) {
        const bytes = parseBytes(spool);
        if (bytes === undefined || bytes < 64 * 1024) problems.push(`'telemetry.spool' ${String(spool)} must be a size of at least 64KiB (e.g. 64MiB)`);
        else spoolBytes = bytes;
      }
    }
  }
  let otaWindow = 8;
  let otaBytesPerSecond: number | undefined;
  const ota = o['ota'];
  if (ota !== undefined) {
    if (typeof ota !== 'object' || ota === null || Array.isArray(ota)) problems.push("'ota' must be a mapping { window, rate }");
    else {
      const { window: w, rate, ...rest } = ota as Record<string, unknown>;
      for (const k of Object.keys(rest)) problems.push(`unknown key 'ota.${k}'`);
      if (w !== undefined) {
        if (typeof w !== 'number' || !Number.isInteger(w) || w < 1 || w > 256) problems.push("'ota.window' must be a whole number from 1 to 256 (chunks in flight)");
        else otaWindow = w;
      }
      if (rate !== undefined) {
        const bytes = parseBytes(typeof rate === 'string' ? rate.replace(/\/s$/u, '') : rate);
        if (bytes === undefined || bytes < 1024) problems.push(`'ota.rate' ${String(rate)} must be bytes per second, at least 1KiB/s (e.g. 2MiB/s)`);
        else otaBytesPerSecond = bytes;
      }
    }
  }
  let tpm: string | undefined;
  if (o['attestation'] !== undefined) {
    const a = o['attestation'] as Record<string, unknown> | null;
    if (typeof a !== 'object' || a === null) problems.push("'attestation' must be a mapping { tpm: <TCTI> }");
    else {
      for (const k of Object.keys(a)) if (k !== 'tpm') problems.push(`unknown key 'attestation.${k}'`);
      if (a['tpm'] !== undefined) {
        if (typeof a['tpm'] !== 'string' || !/^(device|swtpm|mssim|tabrmd)(:[^\s]*)?$/u.test(a['tpm'])) problems.push("'attestation.tpm' must be a tpm2-tools TCTI: device:/dev/tpmrm0, swtpm:host=HOST,port=PORT, mssim:… or tabrmd");
        else tpm = a['tpm'];
      }
    }
  }
  const pipelines: string[] = [];
  if (o['pipelines'] !== undefined) {
    if (!Array.isArray(o['pipelines']) || o['pipelines'].some((p) => typeof p !== 'string')) problems.push("'pipelines' must be a list of pipeline file paths");
    else for (const p of o['pipelines'] as string[]) pipelines.push(path.resolve(base, p));
  }
  const state = file_('state', false) ?? '/var/lib/aios/agent';
  const config = {
    file: path.resolve(file),
    fleet: fleet ?? '',
    device: device ?? '',
    broker: broker ?? '',
    ...(controller === undefined ? {} : { controller }),
    ca: file_('ca', true) ?? '',
    ...(o['token'] === undefined ? {} : { token: file_('token', false) as string }),
    state,
    trust: file_('trust', false) ?? '/var/lib/aios/trust',
    models: file_('models', false) ?? '/var/lib/aios/models',
    ...(o['identity'] === undefined ? {} : { identity: file_('identity', false) as string }),
    labels,
    telemetryIntervalMs,
    spoolBytes,
    pipelines,
    otaWindow,
    ...(otaBytesPerSecond === undefined ? {} : { otaBytesPerSecond }),
    ...(tpm === undefined ? {} : { tpm }),
  };
  if (problems.length > 0) {
    throw new FleetError('EAI_AGENT_CONFIG', `${file} has ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n${problems.map((p) => `  - ${p}`).join('\n')}`, { details: { file, problems } });
  }
  return config;
}

/** "64MiB", "512KiB", "1GiB", "1000000" → bytes. */
function parseBytes(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) ? value : undefined;
  if (typeof value !== 'string') return undefined;
  const m = /^([0-9]+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?$/u.exec(value.trim());
  if (m === null) return undefined;
  const unit = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, KB: 1e3, MB: 1e6, GB: 1e9 }[m[2] ?? 'B'] as number;
  return Number(m[1]) * unit;
}
