/**
 * Simulated fleet devices for bench/fleet.ts: one child process holds a share of the fleet, one
 * mqtt.js client per device, each with its own certificate (common name = device id = client id),
 * exactly as `aios agent` connects: a persistent session, a last will saying LOST, its commands
 * topic subscribed, then a retained birth and a retained ONLINE status. While telemetry is on,
 * every device publishes one realistic Telemetry record a second (QoS 1) at its own fixed offset
 * into the second, so the fleet's load is spread evenly and no two runs line up. Every command a
 * device receives is answered ACCEPTED then DONE on its acks topic, as the agent answers a
 * stopPipeline; signatures are not checked (the controller's cost is what is measured).
 *
 * What it leaves out of a real agent: the on-disk spool, the HAL and the pipelines. The records
 * are built from counters, not measured.
 *
 * The bench forks this file (`node dist/bench/fleet-device.js`) with an IPC channel and drives it
 * with {@link ToDevices} messages; it answers with {@link FromDevices}. The record builders are
 * exported for the bench's bytes-per-message comparison.
 */
import { createPrivateKey, createPublicKey, randomBytes, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext, type SecureContext } from 'node:tls';
import { pathToFileURL } from 'node:url';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { deviceTopic } from '../deploy/fleet/topics.js';
import { aios } from '../deploy/proto/gen/aios.js';
import { RUNTIME_MEASUREMENT_NAME } from '../runtime/attest/attester.js';
import { encodeEvidence, EVIDENCE_FORMAT } from '../runtime/attest/evidence.js';
import { APPLICATION_PCR, replayLog } from '../runtime/attest/measurement.js';
import { encodeStatement, logDigest, signStatement, softwareKeyId, STATEMENT_TYPE } from '../runtime/attest/software-statement.js';

/** When the simulated agents measured their runtime. */
const STARTED = new Date().toISOString();

/** One simulated device: its id and PEM identity (made by enrolment in the bench). */
export interface DeviceIdentity {
  readonly id: string;
  readonly cert: string;
  readonly key: string;
}

/** What the bench tells a device process. */
export type ToDevices =
  | { readonly kind: 'connect'; readonly url: string; readonly fleet: string; readonly caFile: string; readonly devicesFile: string; readonly concurrency: number; readonly attestRuntime?: string }
  | { readonly kind: 'telemetry'; readonly on: boolean }
  | { readonly kind: 'report' }
  | { readonly kind: 'stop' };

/** Counters since the process started; the bench takes differences between reports. */
export interface DeviceReport {
  readonly kind: 'report';
  readonly sent: number;
  readonly acked: number;
  readonly publishErrors: number;
  readonly commands: number;
  readonly acksSent: number;
  /** AttestationEvidence messages published (--attest). */
  readonly evidenceSent: number;
  /** Each device's last telemetry sequence sent (0: none yet). */
  readonly lastSequence: readonly (readonly [string, number])[];
  /** How late the scheduled publishes ran since the previous report (the load generator keeping up). */
  readonly lateMsMax: number;
  readonly lateMsMean: number;
  readonly disconnects: number;
  readonly cpuUserUs: number;
  readonly cpuSystemUs: number;
  readonly rssBytes: number;
}

export type FromDevices =
  | { readonly kind: 'connected'; readonly devices: number; readonly failures: readonly string[]; readonly connackMs: readonly number[]; readonly announcedMs: readonly number[]; readonly tlsProtocol: string }
  | DeviceReport
  | { readonly kind: 'stopped' }
  | { readonly kind: 'error'; readonly message: string };

/** The pipeline every simulated device runs (and the one the bench's command stops). */
export const PIPELINE = 'front-camera';
const STAGES = ['camera', 'resize', 'normalize', 'detect', 'publish'] as const;
const P50_MS = [0.4, 1.1, 0.6, 12.5, 0.3];
const P99_MS = [0.9, 2.4, 1.3, 21.0, 0.8];

/**
 * A Telemetry record as a Jetson-class robot running one 30 fps camera pipeline would send it:
 * device metrics, one accelerator, five stages. `index` varies the values between devices.
 */
export function telemetryRecord(index: number, sequence: number, nowMs: number): aios.fleet.v1.ITelemetry {
  const wobble = ((index * 7919 + sequence * 104_729) % 1000) / 1000;
  const processed = sequence * 30;
  return {
    timeUnixMs: nowMs,
    sequence,
    device: { cpuPercent: 35 + 20 * wobble, memoryUsedBytes: 5_368_709_120 + Math.round(wobble * 1e8), memoryTotalBytes: 16_777_216_000, temperatureC: 48 + 10 * wobble, powerW: 14.5 + 3 * wobble, uptimeS: 3600 + sequence },
    accelerators: [{ id: 'cuda:0', utilizationPercent: 60 + 30 * wobble, memoryUsedBytes: 2_147_483_648 + Math.round(wobble * 1e7), temperatureC: 52 + 8 * wobble, powerW: 9 + 2 * wobble }],
    stages: STAGES.map((stage, i) => ({
      pipeline: PIPELINE,
      stage,
      processed: processed - i,
      dropped: stage === 'detect' ? Math.floor(sequence / 50) : 0,
      errors: 0,
      rateHz: 29.5 + wobble,
      latencyP50Ms: (P50_MS[i] ?? 1) * (1 + wobble / 10),
      latencyP99Ms: (P99_MS[i] ?? 2) * (1 + wobble / 5),
    })),
    spoolDropped: 0,
  };
}

/** The retained birth of device `id`, as the agent writes it (hardware, one model, one pipeline). */
export function birthRecord(id: string, fleet: string, nowMs: number): aios.fleet.v1.IDeviceBirth {
  return {
    deviceId: id,
    fleet,
    runtimeVersion: '0.1.0',
    bootId: randomBytes(16).toString('hex'),
    startedUnixMs: nowMs,
    hardware: { arch: 'arm64', model: 'NVIDIA Jetson Orin NX 16GB', cpuCores: 8, memoryBytes: 16_777_216_000, accelerators: [{ id: 'cuda:0', kind: 'jetson', name: 'Orin (nvgpu)', memoryBytes: 16_777_216_000, properties: { computeCapability: '8.7' } }] },
    models: [{ model: 'face', activeVersion: '1.0.0', previousVersion: '', activeManifestSha256: 'a'.repeat(64) }],
    pipelines: [{ name: PIPELINE, configSha256: 'b'.repeat(64), state: aios.fleet.v1.PipelineInfo.State.RUNNING }],
    labels: { site: 'bench' },
    lastCommandSequence: 0,
    trustRootVersion: 1,
  };
}

// ---------------------------------------------------------------------------------------------

interface Device {
  readonly id: string;
  readonly index: number;
  readonly client: MqttClient;
  readonly telemetryTopic: string;
  readonly acksTopic: string;
  /** Answers RequestAttestation with software evidence, as an agent without a TPM does (--attest). */
  readonly attester: { readonly key: KeyObject; readonly keyid: string; readonly runtime: string; readonly topic: string } | undefined;
  /** Its fixed offset into each second, ms. */
  readonly offsetMs: number;
  sequence: number;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) runChild();

function runChild(): void {
  const send = (m: FromDevices): void => void process.send?.(m);
  const devices: Device[] = [];
  let sent = 0;
  let acked = 0;
  let publishErrors = 0;
  let commands = 0;
  let acksSent = 0;
  let evidenceSent = 0;
  let disconnects = 0;
  let late = { max: 0, sum: 0, n: 0 };
  let telemetry: { readonly startMs: number; second: number; next: number; timer: NodeJS.Timeout | undefined } | undefined;

  // The bench gone (killed, crashed): nothing left to report to.
  process.on('disconnect', () => process.exit(0));
  process.on('message', (m: ToDevices) => {
    switch (m.kind) {
      case 'connect':
        connectAll(m).then(send, (error: unknown) => send({ kind: 'error', message: error instanceof Error ? error.stack ?? error.message : String(error) }));
        return;
      case 'telemetry':
        if (m.on) startTelemetry();
        else stopTelemetry();
        return;
      case 'report': {
        const cpu = process.cpuUsage();
        send({ kind: 'report', sent, acked, publishErrors, commands, acksSent, evidenceSent, lastSequence: devices.map((d) => [d.id, d.sequence] as const), lateMsMax: late.max, lateMsMean: late.n === 0 ? 0 : late.sum / late.n, disconnects, cpuUserUs: cpu.user, cpuSystemUs: cpu.system, rssBytes: process.memoryUsage.rss() });
        late = { max: 0, sum: 0, n: 0 };
        return;
      }
      case 'stop':
        stopTelemetry();
        Promise.all(devices.map((d) => d.client.endAsync(true)))
          .catch(() => undefined)
          .finally(() => {
            send({ kind: 'stopped' });
            process.disconnect?.();
          });
        return;
    }
  });

  async function connectAll(m: Extract<ToDevices, { kind: 'connect' }>): Promise<FromDevices> {
    const ca = readFileSync(m.caFile, 'utf8');
    const identities = JSON.parse(readFileSync(m.devicesFile, 'utf8')) as DeviceIdentity[];
    const failures: string[] = [];
    const connackMs: number[] = [];
    const announcedMs: number[] = [];
    let tlsProtocol = '';
    let next = 0;
    // A bounded number of handshakes in flight: the broker's listen backlog and its one thread
    // would otherwise see thousands at once, and the first ones would time out.
    const worker = async (): Promise<void> => {
      while (next < identities.length) {
        const index = next++;
        const identity = identities[index] as DeviceIdentity;
        try {
          const started = performance.now();
          const device = await connectOne(m, ca, identity, index);
          connackMs.push(performance.now() - started);
          await announce(device, m.fleet);
          announcedMs.push(performance.now() - started);
          if (tlsProtocol === '') tlsProtocol = (device.client.stream as { getProtocol?: () => string | null }).getProtocol?.() ?? '';
          devices.push(device);
        } catch (error) {
          failures.push(`${identity.id}: ${error instanceof Error ? error.message : String(error)}`);
        }
      }
    };
    await Promise.all(Array.from({ length: m.concurrency }, worker));
    return { kind: 'connected', devices: devices.length, failures: failures.slice(0, 20), connackMs, announcedMs, tlsProtocol };
  }

  async function connectOne(m: Extract<ToDevices, { kind: 'connect' }>, ca: string, identity: DeviceIdentity, index: number): Promise<Device> {
    const status = (state: aios.fleet.v1.DeviceStatus.State): Buffer => Buffer.from(aios.fleet.v1.DeviceStatus.encode({ state, sinceUnixMs: state === aios.fleet.v1.DeviceStatus.State.LOST ? 0 : Date.now() }).finish());
    // One context per device (its own certificate); mqtt.js hands it to tls.connect unchanged,
    // though its option type does not list it.
    const options: IClientOptions & { readonly secureContext: SecureContext } = {
      clientId: identity.id,
      protocolVersion: 4,
      clean: false,
      reconnectPeriod: 0,
      connectTimeout: 120_000,
      keepalive: 60,
      secureContext: createSecureContext({ ca, cert: identity.cert, key: identity.key }),
      will: { topic: deviceTopic(m.fleet, identity.id, 'status'), payload: status(aios.fleet.v1.DeviceStatus.State.LOST), qos: 1, retain: true },
    };
    const client = await mqtt.connectAsync(m.url, options);
    const key = m.attestRuntime === undefined ? undefined : createPrivateKey(identity.key);
    const attester = key === undefined ? undefined : { key, keyid: softwareKeyId(createPublicKey(key)), runtime: m.attestRuntime as string, topic: deviceTopic(m.fleet, identity.id, 'attestation') };
    const device: Device = { id: identity.id, index, client, telemetryTopic: deviceTopic(m.fleet, identity.id, 'telemetry'), acksTopic: deviceTopic(m.fleet, identity.id, 'acks'), attester, offsetMs: Math.random() * 1000, sequence: 0 };
    client.on('close', () => disconnects++);
    client.on('error', () => undefined);
    client.on('message', (_topic, payload) => void answer(device, payload));
    return device;
  }

  async function announce(device: Device, fleet: string): Promise<void> {
    const { client, id } = device;
    await client.subscribeAsync(deviceTopic(fleet, id, 'commands'), { qos: 1 });
    await client.publishAsync(deviceTopic(fleet, id, 'birth'), Buffer.from(aios.fleet.v1.DeviceBirth.encode(birthRecord(id, fleet, Date.now())).finish()), { qos: 1, retain: true });
    await client.publishAsync(deviceTopic(fleet, id, 'status'), Buffer.from(aios.fleet.v1.DeviceStatus.encode({ state: aios.fleet.v1.DeviceStatus.State.ONLINE, sinceUnixMs: Date.now() }).finish()), { qos: 1, retain: true });
  }

  /** ACCEPTED, then DONE: what the agent sends for a stopPipeline that succeeded (and, for a RequestAttestation, the evidence first). */
  async function answer(device: Device, payload: Buffer): Promise<void> {
    commands++;
    let sequence: number;
    let command: aios.fleet.v1.Command;
    try {
      command = aios.fleet.v1.Command.decode(aios.fleet.v1.SignedCommand.decode(payload).payload);
      sequence = Number(command.sequence);
    } catch {
      return;
    }
    if (command.requestAttestation != null && device.attester !== undefined) await attest(device, device.attester, command.requestAttestation.nonce ?? new Uint8Array(0), sequence);
    const R = aios.fleet.v1.CommandAck.Result;
    for (const result of [R.ACCEPTED, R.DONE]) {
      await device.client.publishAsync(device.acksTopic, Buffer.from(aios.fleet.v1.CommandAck.encode({ sequence, result, message: result === R.DONE ? `pipeline ${PIPELINE} stopped` : '', timeUnixMs: Date.now() }).finish()), { qos: 1 });
      acksSent++;
    }
  }

  /** What SoftwareAttester.evidence makes for an agent that measured only its runtime. */
  async function attest(device: Device, a: NonNullable<Device['attester']>, nonce: Uint8Array, sequence: number): Promise<void> {
    const log = [{ pcr: APPLICATION_PCR, type: 'runtime' as const, name: RUNTIME_MEASUREMENT_NAME, sha256: a.runtime, time: STARTED }];
    const value = replayLog(log);
    const statement = encodeStatement({ _type: STATEMENT_TYPE, keyid: a.keyid, logDigest: logDigest(log), nonce: Buffer.from(nonce).toString('hex'), pcrs: [{ hash: 'sha256', index: APPLICATION_PCR, value: value.toString('hex') }], time: new Date().toISOString() });
    const evidence = encodeEvidence({ format: EVIDENCE_FORMAT, kind: 'software', nonce: Buffer.from(nonce), pcrs: [{ hash: 'sha256', index: APPLICATION_PCR, value }], log, statement, signature: signStatement(statement, a.key), keyid: a.keyid });
    await device.client.publishAsync(a.topic, Buffer.from(aios.fleet.v1.AttestationEvidence.encode({ commandSequence: sequence, format: EVIDENCE_FORMAT, evidence: Buffer.from(evidence) }).finish()), { qos: 1 });
    evidenceSent++;
  }

  function startTelemetry(): void {
    if (telemetry !== undefined) return;
    devices.sort((a, b) => a.offsetMs - b.offsetMs);
    telemetry = { startMs: Date.now(), second: 0, next: 0, timer: undefined };
    tick();
  }

  function stopTelemetry(): void {
    if (telemetry?.timer !== undefined) clearTimeout(telemetry.timer);
    telemetry = undefined;
  }

  /**
   * Publishes every device whose moment has come, then sleeps until the next one's. Due times
   * are fixed from the start (start + second + offset), so a slow tick makes publishes late
   * (counted) but never fewer.
   */
  function tick(): void {
    const t = telemetry;
    if (t === undefined) return;
    const now = Date.now();
    for (;;) {
      const device = devices[t.next];
      if (device === undefined) {
        t.next = 0;
        t.second++;
        continue;
      }
      const due = t.startMs + t.second * 1000 + device.offsetMs;
      if (due > now) {
        t.timer = setTimeout(tick, Math.max(1, due - now));
        return;
      }
      const lateMs = now - due;
      late.max = Math.max(late.max, lateMs);
      late.sum += lateMs;
      late.n++;
      device.sequence++;
      const bytes = Buffer.from(aios.fleet.v1.Telemetry.encode(telemetryRecord(device.index, device.sequence, now)).finish());
      sent++;
      device.client.publish(device.telemetryTopic, bytes, { qos: 1 }, (error) => {
        if (error) publishErrors++;
        else acked++;
      });
      t.next++;
    }
  }
}
