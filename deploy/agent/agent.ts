import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { writeFileAtomic } from '../../models/atomic-write.js';
import path from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { AiosError } from '../../drivers/errors.js';
import { ModelStore } from '../../models/store/model-store.js';
import { TrustStore } from '../../models/trust/trust-store.js';
import { createBuiltinHal } from '../../drivers/builtin.js';
import type { HalRegistry } from '../../drivers/hal/registry.js';
import { SysRoot } from '../../drivers/hal/sysroot.js';
import type { DeviceInfo } from '../../drivers/hal/types.js';
import { ModelCatalog } from '../../runtime/model-catalog.js';
import { Pipeline } from '../../runtime/pipeline/pipeline.js';
import { parseIdentityFile } from '../../models/bundle/age/keys.js';
import { createDecryption } from '../../models/bundle/age/stream.js';
import type { DecryptFactory } from '../../models/bundle/bundle.js';
import { VERSION } from '../../runtime/version.js';
import { aios } from '../proto/gen/aios.js';
import { CommandGate, rejection, type AdmittedCommand } from '../fleet/command.js';
import { FleetError } from '../fleet/errors.js';
import { Spool } from '../fleet/spool.js';
import { deviceTopic } from '../fleet/topics.js';
import type { AgentConfig } from './config.js';
import { ensureEnrolled, type DeviceIdentity } from './enrol.js';
import { CommandJournal } from './command-journal.js';
import { beginDeployment, deployModel, markReported, resumeDeployments, type DeploymentContext } from './deployment.js';
import { describeHardware } from './hardware.js';
import { noDelay } from '../fleet/no-delay.js';
import { Publisher } from './publisher.js';
import { TelemetrySampler } from './telemetry.js';
import { Tpm } from '../../drivers/tpm/tpm.js';
import type { Attester } from '../../runtime/attest/attester.js';
import { EVIDENCE_FORMAT, encodeEvidence } from '../../runtime/attest/evidence.js';
import { measureDevice, measureModels, measurePipeline, openAttester, openReleasedKey } from './attestation.js';
import { ReleasedKeys } from './released-keys.js';
import type { X25519Identity } from '../../models/bundle/age/keys.js';

/** How often a running agent checks whether its certificate is due for renewal. */
const RENEW_CHECK_MS = 12 * 3_600_000;


/**
 * `aios agent`: a device's side of the fleet. It enrols on first boot, connects to the broker
 * with its certificate (a persistent session, a last will saying LOST), publishes its birth and
 * ONLINE status on every connect, runs its pipelines, sends telemetry at the configured rate,
 * and obeys commands the CommandGate admits, answering each with acks. Telemetry, events and
 * acks all go through the on-disk spool (deploy/fleet/spool.ts), so a broker outage or a reboot
 * delays them but loses nothing within the spool's byte budget.
 *
 * Nothing a message from outside carries can stop the agent: a refused command is answered and
 * logged, a failing pipeline is reported, a lost connection is retried.
 */
export interface AgentOptions {
  /** The machine the HAL probes: `/` (default), or a captured system root (tests, demos). */
  readonly sysroot?: string;
  readonly log?: (line: Record<string, unknown>) => void;
  readonly now?: () => number;
  /** Called when the agent is up and on each telemetry tick: systemd's notify and watchdog hooks. */
  readonly onAlive?: (what: 'ready' | 'watchdog') => void;
  /** How often a running agent checks its certificate (default 12 h), and how long before expiry it renews (default 30 days). */
  readonly renewal?: { readonly everyMs?: number; readonly beforeMs?: number };
}

interface RunningPipeline {
  file: string;
  /** A configuration sent with setConfig, kept in the agent's state and used instead of `file` (paths still resolve against `file`'s folder). */
  override?: string;
  pipeline: Pipeline | undefined;
  running: boolean;
  error?: string;
  /** The error's code: EAI_MODEL_NOT_IN_STORE means waiting for a deployment, not broken. */
  errorCode?: string;
}

export class Agent {
  readonly config: AgentConfig;
  readonly #options: AgentOptions;
  readonly #log: (line: Record<string, unknown>) => void;
  readonly #now: () => number;
  readonly #identity: DeviceIdentity;
  readonly #hardware: aios.fleet.v1.IHardware;
  readonly #sampler: TelemetrySampler;
  readonly #store: ModelStore;
  readonly #decrypt: DecryptFactory | undefined;
  #resumed = false;
  readonly #journal: CommandJournal;
  /** Connections to the broker so far: tells the controller a reconnect (re-send what is unacknowledged) from an updated birth. */
  #connections = 0;
  readonly #abort = new AbortController();
  readonly #trust: TrustStore;
  readonly #attester: Attester;
  readonly #identities: readonly X25519Identity[];
  readonly #releasedKeys: ReleasedKeys;
  /** Model slots whose files were last found to match their manifest, with their stat fingerprint. */
  readonly #checkedSlots = new Map<string, string>();
  /** RequestAttestation sequences already answered (ahead of the queue). */
  readonly #attested = new Set<number>();
  readonly #gate: CommandGate;
  readonly #spool: Spool;
  readonly #client: MqttClient;
  readonly #publisher: Publisher;
  readonly #pipelines: Map<string, RunningPipeline>;
  readonly #bootId: string;
  readonly #startedAt: number;
  #timer: NodeJS.Timeout | undefined;
  #renewer: NodeJS.Timeout | undefined;
  /** The certificate the MQTT connection presents (replaced by a renewal). */
  #certificateInUse = '';
  #commandQueue: Promise<unknown> = Promise.resolve();
  #droppedReported = 0;
  #lastTick = 0;
  #stopped = false;

  private constructor(config: AgentConfig, options: AgentOptions, parts: { identity: DeviceIdentity; store: ModelStore; decrypt: DecryptFactory | undefined; hardware: aios.fleet.v1.IHardware; sys: SysRoot; devices: readonly DeviceInfo[]; hal: HalRegistry; trust: TrustStore; attester: Attester; identities: readonly X25519Identity[]; gate: CommandGate; spool: Spool; client: MqttClient; pipelines: Map<string, RunningPipeline>; bootId: string }) {
    this.config = config;
    this.#options = options;
    this.#log = options.log ?? (() => undefined);
    this.#now = options.now ?? Date.now;
    this.#identity = parts.identity;
    this.#hardware = parts.hardware;
    this.#store = parts.store;
    this.#decrypt = parts.decrypt;
    this.#sampler = new TelemetrySampler({
      sys: parts.sys,
      devices: parts.devices,
      hal: parts.hal,
      pipelines: () => [...this.#pipelines.values()].flatMap((p) => (p.pipeline === undefined ? [] : [p.pipeline.stats()])),
      onProblem: (problem) => this.#log({ msg: 'telemetry source failed', source: problem.source, error: problem.message }),
    });
    this.#trust = parts.trust;
    this.#attester = parts.attester;
    this.#identities = parts.identities;
    this.#releasedKeys = new ReleasedKeys({ device: config.device, signal: this.#abort.signal });
    this.#gate = parts.gate;
    this.#spool = parts.spool;
    this.#client = parts.client;
    this.#pipelines = parts.pipelines;
    this.#bootId = parts.bootId;
    this.#journal = new CommandJournal(config.state);
    this.#startedAt = this.#now();
    this.#publisher = new Publisher(parts.spool, parts.client, { window: 16, log: this.#log });
  }

  static async start(config: AgentConfig, options: AgentOptions): Promise<Agent> {
    const log = options.log ?? (() => undefined);
    const identity = await ensureEnrolled({ log, ...(options.renewal?.beforeMs === undefined ? {} : { renewBeforeMs: options.renewal.beforeMs }), device: config.device, state: config.state, ca: config.ca, ...(config.controller === undefined ? {} : { controller: config.controller }), ...(config.token === undefined ? {} : { token: config.token }), ...(config.tpm === undefined ? {} : { tpm: new Tpm({ tcti: config.tpm }) }) });
    let trust: TrustStore;
    try {
      trust = await TrustStore.open(config.trust);
    } catch (cause) {
      throw new FleetError('EAI_AGENT_TRUST', `the agent needs this device's trust store at ${config.trust} (${(cause as Error).message}). Install the fleet's trust root first: aios trust install root.json --dir ${config.trust}.`, { cause });
    }
    const store = await ModelStore.open(config.models);
    ModelCatalog.shared().useStore(store.root);
    let decrypt: DecryptFactory | undefined;
    let identities: X25519Identity[] = [];
    if (config.identity !== undefined) {
      try {
        identities = parseIdentityFile(await readFile(config.identity, 'utf8'));
      } catch (cause) {
        throw new FleetError('EAI_AGENT_CONFIG', `cannot read the device's age identity ${config.identity} (${(cause as Error).message}); it decrypts models encrypted to this device (aios keys generate --type age).`, { cause });
      }
      decrypt = () => createDecryption(identities);
    }
    const sys = await SysRoot.open(options.sysroot ?? '/');
    const hal = createBuiltinHal({ sys });
    const devices = await hal.discover(sys);
    const hardware = await describeHardware(sys, devices).catch((error: unknown) => {
      log({ msg: 'hardware description failed', error: String(error) });
      return {};
    });
    const gate = new CommandGate(trust, { fleet: config.fleet, deviceId: config.device }, options.now === undefined ? {} : { now: options.now });
    const spool = await Spool.open(path.join(config.state, 'spool'), { maxBytes: config.spoolBytes, warn: (problem) => log({ msg: 'spool', code: problem.code, problem: problem.message }) });
    const pipelines = new Map<string, RunningPipeline>();
    for (const file of config.pipelines) {
      const running: RunningPipeline = { file, pipeline: undefined, running: false };
      const name = await pipelineName(file);
      const override = path.join(config.state, 'pipelines', `${name}.yaml`);
      if (name !== undefined && (await readFile(override, 'utf8').then(() => true, () => false))) running.override = override;
      try {
        await startPipeline(running);
      } catch (error) {
        running.error = error instanceof Error ? error.message : String(error);
        running.errorCode = modelMissing(error) ? 'EAI_MODEL_NOT_IN_STORE' : error instanceof AiosError ? error.code : 'EAI_INTERNAL';
        log({ msg: running.errorCode === 'EAI_MODEL_NOT_IN_STORE' ? 'pipeline waits for its model' : 'pipeline failed to start', file, error: running.error });
      }
      pipelines.set(running.pipeline?.name ?? path.basename(file, path.extname(file)), running);
    }
    const attester = await openAttester({ state: config.state, keyPem: identity.keyPem, ...(config.tpm === undefined ? {} : { tpm: config.tpm }) });
    await measureDevice(attester, { trust, store, pipelineFiles: [...pipelines.values()].map((p) => p.override ?? p.file) });
    const bootId = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => randomUUID())).trim();
    const statusTopic = deviceTopic(config.fleet, config.device, 'status');
    const lost = aios.fleet.v1.DeviceStatus.encode({ state: aios.fleet.v1.DeviceStatus.State.LOST, bootId }).finish();
    const client = mqtt.connect(config.broker, {
      clientId: config.device,
      protocolVersion: 4,
      clean: false,
      reconnectPeriod: 2000,
      connectTimeout: 15_000,
      ca: identity.caPem,
      cert: identity.certificatePem,
      key: identity.keyPem,
      will: { topic: statusTopic, payload: Buffer.from(lost), qos: 1, retain: true },
    });
    const agent = new Agent(config, options, { identity, store, decrypt, hardware, sys, devices, hal, trust, attester, identities, gate, spool, client, pipelines, bootId });
    agent.#wire();
    return agent;
  }

  /** The identity the agent connected with (no key material). */
  get deviceId(): string {
    return this.config.device;
  }

  get connected(): boolean {
    return this.#client.connected;
  }

  /** When the telemetry loop last completed a record (0 before the first): a watchdog's evidence of progress. */
  get lastTickUnixMs(): number {
    return this.#lastTick;
  }

  spoolStats(): ReturnType<Spool['stats']> {
    return this.#spool.stats();
  }

  /** Renews the certificate when it nears its end, and reconnects with the new one. */
  async #renewIfDue(): Promise<void> {
    const { device, state, ca, controller } = this.config;
    const beforeMs = this.#options.renewal?.beforeMs;
    const identity = await ensureEnrolled({ log: (l) => this.#log(l), device, state, ca, ...(controller === undefined ? {} : { controller }), ...(beforeMs === undefined ? {} : { renewBeforeMs: beforeMs }) });
    if (identity.certificatePem === this.#certificateInUse) return;
    Object.assign(this.#client.options, { cert: identity.certificatePem, key: identity.keyPem });
    this.#certificateInUse = identity.certificatePem;
    // Drop the connection: mqtt.js reconnects (session and spool intact) presenting the new one.
    this.#client.stream?.destroy();
  }

  /** Publishes OFFLINE, stops pipelines, flushes the spool and disconnects. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    clearInterval(this.#timer);
    clearInterval(this.#renewer);
    this.#abort.abort();
    await this.#commandQueue.catch(() => undefined);
    if (this.#client.connected) {
      const offline = aios.fleet.v1.DeviceStatus.encode({ state: aios.fleet.v1.DeviceStatus.State.OFFLINE, sinceUnixMs: this.#now(), bootId: this.#bootId }).finish();
      await this.#client.publishAsync(deviceTopic(this.config.fleet, this.config.device, 'status'), Buffer.from(offline), { qos: 1, retain: true }).catch(() => undefined);
    }
    await this.#publisher.stop();
    for (const p of this.#pipelines.values()) await p.pipeline?.stop().catch(() => undefined);
    await this.#client.endAsync().catch(() => undefined);
    await this.#spool.close();
  }

  #wire(): void {
    const { fleet, device } = this.config;
    this.#client.on('connect', () => {
      this.#connections++;
      noDelay(this.#client);
      this.#log({ msg: 'connected', broker: this.config.broker });
      void this.#announce().catch((error: unknown) => this.#log({ msg: 'announce failed', error: String(error) }));
      if (!this.#resumed) {
        this.#resumed = true;
        // In the command queue: a resumed deployment and new commands never run at once.
        this.#commandQueue = this.#commandQueue
          .then(async () => {
            await this.#answerInterrupted();
            const outcomes = await resumeDeployments(this.#deployment(), async (record, outcome) => {
              // The Deploy command was accepted before the restart: its final ack comes now.
              const R = aios.fleet.v1.CommandAck.Result;
              await this.#ack(outcome.ok ? { sequence: record.sequence, result: R.DONE, message: outcome.message, timeUnixMs: this.#now() } : { sequence: record.sequence, result: R.FAILED, code: outcome.error instanceof AiosError ? outcome.error.code : 'EAI_INTERNAL', message: outcome.error instanceof Error ? outcome.error.message : String(outcome.error), timeUnixMs: this.#now() });
              await this.#republishBirth();
            });
            for (const r of outcomes) this.#log({ msg: 'deployment resumed', ...r });
          })
          .catch((error: unknown) => this.#log({ msg: 'resuming deployments failed', error: String(error) }));
      }
    });
    this.#client.on('error', (error) => this.#log({ msg: 'connection problem', error: error.message }));
    this.#client.on('close', () => this.#log({ msg: 'disconnected' }));
    this.#client.on('message', (topic, payload) => {
      if (topic !== deviceTopic(fleet, device, 'commands')) return;
      // Attestation and released keys do not wait behind a deployment, which may be waiting for them.
      this.#actAhead(payload);
      // One command at a time, in arrival order: sequences must be admitted in order.
      this.#commandQueue = this.#commandQueue.then(() => this.#command(payload)).catch((error: unknown) => this.#log({ msg: 'command handling failed', error: String(error) }));
    });
    this.#publisher.start();
    this.#timer = setInterval(() => void this.#tick(), this.config.telemetryIntervalMs);
    // A device may run for months: twice a day (by default) it renews its certificate when due.
    this.#certificateInUse = this.#identity.certificatePem;
    this.#renewer = setInterval(() => void this.#renewIfDue().catch((error: unknown) => this.#log({ msg: 'certificate renewal failed', error: String(error) })), this.#options.renewal?.everyMs ?? RENEW_CHECK_MS);
    this.#renewer.unref();
    this.#options.onAlive?.('ready');
  }

  async #announce(): Promise<void> {
    const { fleet, device } = this.config;
    await this.#client.subscribeAsync(deviceTopic(fleet, device, 'commands'), { qos: 1 });
    const online = aios.fleet.v1.DeviceStatus.encode({ state: aios.fleet.v1.DeviceStatus.State.ONLINE, sinceUnixMs: this.#now(), bootId: this.#bootId }).finish();
    await this.#client.publishAsync(deviceTopic(fleet, device, 'birth'), Buffer.from(await this.#birth()), { qos: 1, retain: true });
    await this.#client.publishAsync(deviceTopic(fleet, device, 'status'), Buffer.from(online), { qos: 1, retain: true });
  }

  async #birth(): Promise<Uint8Array> {
    const models = await ModelStore.open(this.config.models)
      .then((store) => store.list())
      .catch(() => []);
    return aios.fleet.v1.DeviceBirth.encode({
      deviceId: this.config.device,
      fleet: this.config.fleet,
      runtimeVersion: VERSION,
      bootId: this.#bootId,
      startedUnixMs: this.#startedAt,
      hardware: this.#hardware,
      models: models.map((m) => ({ model: m.model, activeVersion: m.active?.version ?? '', previousVersion: m.previous?.version ?? '', activeManifestSha256: m.active?.manifestDigest ?? '' })),
      pipelines: [...this.#pipelines.entries()].map(([name, p]) => ({
        name,
        state: p.error !== undefined ? (p.errorCode === 'EAI_MODEL_NOT_IN_STORE' ? aios.fleet.v1.PipelineInfo.State.WAITING_FOR_MODEL : aios.fleet.v1.PipelineInfo.State.FAILED) : p.running ? aios.fleet.v1.PipelineInfo.State.RUNNING : aios.fleet.v1.PipelineInfo.State.STOPPED,
        error: p.error ?? '',
      })),
      labels: { ...this.#identity.labels, ...this.config.labels },
      lastCommandSequence: this.#gate.lastSequence,
      connection: this.#connections,
      trustRootVersion: this.#trust.root.signed.version,
    }).finish();
  }

  async #tick(): Promise<void> {
    if (this.#stopped) return;
    try {
      const sample = await this.#sampler.sample(this.#now());
      const spool = this.#spool.stats();
      const record = aios.fleet.v1.Telemetry.encode({ ...sample, timeUnixMs: sample.timeUnixMs ?? this.#now(), sequence: spool.nextSeq, spoolDropped: spool.dropped - this.#droppedReported }).finish();
      this.#droppedReported = spool.dropped;
      await this.#spool.append(record, { topic: deviceTopic(this.config.fleet, this.config.device, 'telemetry'), qos: 1 });
      this.#lastTick = this.#now();
      this.#options.onAlive?.('watchdog');
    } catch (error) {
      this.#log({ msg: 'telemetry failed', error: error instanceof Error ? error.message : String(error) });
    }
  }

  async #command(payload: Buffer): Promise<void> {
    let admitted: AdmittedCommand;
    let journaled: number | undefined;
    try {
      // In the journal before its sequence is recorded as seen: once the device has taken a
      // command, a kill at any moment leaves a trace the next start answers for.
      // (A replay is not: it is refused below, and must not touch the entry of the command it copies.)
      const verified = this.#gate.verify(payload);
      if (verified.sequence > this.#gate.lastSequence) {
        const deploy = verified.action === 'deploy' && verified.command.deploy != null ? Buffer.from(aios.fleet.v1.Deploy.encode(verified.command.deploy).finish()).toString('base64') : undefined;
        await this.#journal.begin({ sequence: verified.sequence, action: verified.action, startedUnixMs: this.#now(), ...(deploy === undefined ? {} : { deploy }) });
        journaled = verified.sequence;
      }
      admitted = await this.#gate.admit(payload);
    } catch (error) {
      if (journaled !== undefined) await this.#journal.end(journaled);
      this.#log({ msg: 'command refused', code: (error as { code?: string }).code, error: error instanceof Error ? error.message : String(error) });
      await this.#ack(rejection(error, sequenceOf(payload), this.#now()));
      return;
    }
    this.#log({ msg: 'command accepted', sequence: admitted.sequence, action: admitted.action });
    await this.#ack({ sequence: admitted.sequence, result: aios.fleet.v1.CommandAck.Result.ACCEPTED, timeUnixMs: this.#now() });
    try {
      const message = await this.#execute(admitted);
      await this.#ack({ sequence: admitted.sequence, result: aios.fleet.v1.CommandAck.Result.DONE, message, timeUnixMs: this.#now() });
    } catch (error) {
      const code = error instanceof AiosError ? error.code : 'EAI_INTERNAL';
      // Interrupted by shutdown: no final ack now; a deployment resumes and acks on the next start.
      if (this.#stopped && code === 'EAI_OTA_CANCELLED') return;
      this.#log({ msg: 'command failed', sequence: admitted.sequence, code, error: error instanceof Error ? error.message : String(error) });
      await this.#ack({ sequence: admitted.sequence, result: aios.fleet.v1.CommandAck.Result.FAILED, code, message: error instanceof Error ? error.message : String(error), timeUnixMs: this.#now() });
    }
    // The outcome is spooled: a restart need not report this command or deployment again.
    await this.#journal.end(admitted.sequence);
    const deploymentId = admitted.action === 'deploy' ? admitted.command.deploy?.deploymentId : undefined;
    if (deploymentId) await markReported(this.config.state, deploymentId).catch((error: unknown) => this.#log({ msg: 'deployment record not updated', deploymentId, error: String(error) }));
  }

  async #execute(admitted: AdmittedCommand): Promise<string> {
    const c = admitted.command;
    switch (admitted.action) {
      case 'stopPipeline': {
        const p = this.#pipeline(c.stopPipeline?.name ?? '');
        p.running = false;
        await p.pipeline?.stop();
        await this.#republishBirth();
        return `pipeline ${c.stopPipeline?.name} stopped`;
      }
      case 'startPipeline': {
        const name = c.startPipeline?.name ?? '';
        const p = this.#pipeline(name);
        if (!p.running) await startPipeline(p);
        await this.#republishBirth();
        return `pipeline ${name} running`;
      }
      case 'setConfig': {
        const name = c.setConfig?.pipeline ?? '';
        const p = this.#pipeline(name);
        const yaml = c.setConfig?.configYaml ?? '';
        // Checked whole before anything stops: a configuration that does not validate changes nothing.
        const parsed = parsePipelineYaml(yaml, name);
        await Pipeline.fromConfig(parsed, { baseDir: path.dirname(p.file), statsIntervalMs: 0 });
        const dir = path.join(this.config.state, 'pipelines');
        await mkdir(dir, { recursive: true, mode: 0o700 });
        const file = path.join(dir, `${name}.yaml`);
        const before = p.override;
        const previous = before === undefined ? undefined : await readFile(before, 'utf8');
        await writeFileAtomic(file, yaml, { mode: 0o600 });
        p.running = false;
        await p.pipeline?.stop();
        p.override = file;
        try {
          await startPipeline(p);
        } catch (error) {
          // Back to what ran before: its configuration, restarted.
          if (previous === undefined) {
            await rm(file, { force: true });
            delete p.override;
          } else await writeFileAtomic(file, previous, { mode: 0o600 });
          await startPipeline(p).catch((again: unknown) => void (p.error = again instanceof Error ? again.message : String(again)));
          await this.#republishBirth();
          throw error;
        }
        await this.#republishBirth();
        return `pipeline ${name} restarted with the new configuration`;
      }
      case 'deploy': {
        const message = await deployModel(this.#deployment(), c.deploy as aios.fleet.v1.Deploy, admitted.sequence);
        await this.#republishBirth();
        return message;
      }
      case 'rollback': {
        const model = c.rollback?.model ?? '';
        const slot = await this.#store.rollback(model);
        if (slot.entry !== undefined) await ModelCatalog.shared().set(model, path.join(slot.dir, slot.entry), slot.version);
        await this.#event(aios.fleet.v1.Event.Severity.WARNING, 'EAI_OTA_ROLLED_BACK', `${model} rolled back to ${slot.version} by the operator${c.rollback?.reason ? `: ${c.rollback.reason}` : ''}`, {
          deploymentId: c.rollback?.deploymentId ?? '',
          model,
          version: slot.version,
          phase: aios.fleet.v1.DeploymentProgress.Phase.ROLLED_BACK,
          reason: c.rollback?.reason ?? '',
        });
        await this.#republishBirth();
        return `${model} is back at ${slot.version}`;
      }
      case 'releaseKey': {
        const id = c.releaseKey?.deploymentId ?? '';
        if (!this.#releasedKeys.has(id)) await this.#takeKey(c.releaseKey ?? {});
        return `key for deployment ${id} received`;
      }
      case 'requestAttestation': {
        if (this.#attested.has(admitted.sequence)) return 'evidence sent when the command arrived';
        this.#attested.add(admitted.sequence);
        return this.#attest(c, admitted.sequence);
      }
      default:
        throw new FleetError('EAI_AGENT_UNSUPPORTED', `this agent (${VERSION}) does not carry out '${admitted.action}' commands yet; the command was verified and not acted on.`, { details: { action: admitted.action } });
    }
  }

  /**
   * Commands that act ahead of the queue, verified (signature, device, expiry) but not yet
   * admitted: a ReleaseKey (what it carries only this device can open) and a RequestAttestation
   * (evidence over a verifier's nonce; the verifier refuses a second answer). Both are what a
   * key-release deployment, which holds the queue, is waiting for. The queue admits them in turn
   * and acks them then.
   */
  #actAhead(payload: Buffer): void {
    let verified;
    try {
      verified = this.#gate.verify(payload);
    } catch {
      return; // the queue refuses it in turn, with the reason
    }
    const failed = (error: unknown): void => this.#log({ msg: `${verified.action} ahead of the queue failed`, error: error instanceof Error ? error.message : String(error) });
    if (verified.action === 'releaseKey') void this.#takeKey(verified.command.releaseKey ?? {}).catch(failed);
    if (verified.action === 'requestAttestation' && !this.#attested.has(verified.sequence)) {
      this.#attested.add(verified.sequence);
      void this.#attest(verified.command, verified.sequence).catch(failed);
    }
  }

  /** Measures what runs now and publishes evidence over the command's nonce. */
  async #attest(c: aios.fleet.v1.ICommand, sequence: number): Promise<string> {
    // A deployment or rollback since the last evidence switched models, a setConfig replaced a
    // pipeline's configuration.
    await measureModels(this.#attester, this.#store, this.#checkedSlots);
    for (const p of this.#pipelines.values()) await measurePipeline(this.#attester, p.override ?? p.file);
    const evidence = await this.#attester.evidence(c.requestAttestation?.nonce ?? new Uint8Array(0));
    const payload = aios.fleet.v1.AttestationEvidence.encode({ commandSequence: sequence, format: EVIDENCE_FORMAT, evidence: Buffer.from(encodeEvidence(evidence)) }).finish();
    await this.#client.publishAsync(deviceTopic(this.config.fleet, this.config.device, 'attestation'), Buffer.from(payload), { qos: 1 });
    return `${evidence.kind} evidence over ${evidence.log.length} measurements sent`;
  }

  async #takeKey(release: aios.fleet.v1.IReleaseKey): Promise<void> {
    const id = release.deploymentId ?? '';
    const key = await openReleasedKey(release, { keyPem: this.#identity.keyPem, ...(this.config.tpm === undefined ? {} : { tpm: this.config.tpm }) });
    this.#releasedKeys.put(id, key);
    this.#log({ msg: 'key released', deploymentId: id });
  }

  #deployment(): DeploymentContext {
    return {
      client: this.#client,
      fleet: this.config.fleet,
      deviceId: this.config.device,
      state: this.config.state,
      store: this.#store,
      trust: this.#trust,
      catalog: ModelCatalog.shared(),
      ...(this.#decrypt === undefined ? {} : { decrypt: this.#decrypt }),
      identities: this.#identities,
      awaitKey: (deploymentId) => this.#releasedKeys.wait(deploymentId),
      window: this.config.otaWindow,
      ...(this.config.otaBytesPerSecond === undefined ? {} : { bytesPerSecond: this.config.otaBytesPerSecond }),
      pipelines: () =>
        [...this.#pipelines.values()].flatMap((p) =>
          p.pipeline === undefined
            ? []
            : [
                {
                  stats: p.pipeline.stats(),
                  running: p.running,
                  stagesUsing: (model: string) => (p.pipeline as Pipeline).graph.nodes.filter((n) => n.definition.use === 'infer' && (n.params as { model?: unknown }).model === `store:${model}`).map((n) => n.name),
                },
              ],
        ),
      activated: async () => {
        for (const [name, p] of this.#pipelines) {
          if (p.running || p.error === undefined) continue;
          try {
            await startPipeline(p);
            this.#log({ msg: 'pipeline started', name });
          } catch (error) {
            p.error = error instanceof Error ? error.message : String(error);
            p.errorCode = modelMissing(error) ? 'EAI_MODEL_NOT_IN_STORE' : error instanceof AiosError ? error.code : 'EAI_INTERNAL';
          }
        }
      },
      progress: (detail, severity) => this.#event(severity ?? aios.fleet.v1.Event.Severity.INFO, detail.code ?? '', `${detail.model ?? ''} ${detail.version ?? ''}: ${aios.fleet.v1.DeploymentProgress.Phase[detail.phase ?? 0] ?? ''}${detail.reason ? ` (${detail.reason})` : ''}`, detail),
      log: this.#log,
      now: this.#now,
      signal: this.#abort.signal,
    };
  }

  async #event(severity: aios.fleet.v1.Event.Severity, code: string, message: string, deployment?: aios.fleet.v1.IDeploymentProgress): Promise<void> {
    const seq = this.#spool.stats().nextSeq;
    const bytes = aios.fleet.v1.Event.encode({ timeUnixMs: this.#now(), sequence: seq, severity, code, message, ...(deployment === undefined ? {} : { deployment }) }).finish();
    await this.#spool.append(bytes, { topic: deviceTopic(this.config.fleet, this.config.device, 'events'), qos: 1 });
  }

  #pipeline(name: string): RunningPipeline {
    const p = this.#pipelines.get(name);
    if (p === undefined) throw new FleetError('EAI_AGENT_PIPELINE_UNKNOWN', `this device runs no pipeline named '${name}'; it runs ${[...this.#pipelines.keys()].join(', ') || 'none'}.`, { details: { name } });
    return p;
  }

  async #republishBirth(): Promise<void> {
    if (!this.#client.connected) return;
    await this.#client.publishAsync(deviceTopic(this.config.fleet, this.config.device, 'birth'), Buffer.from(await this.#birth()), { qos: 1, retain: true });
  }

  /** Commands an earlier run accepted and never finished (command-journal.ts): answered FAILED now; a deployment is resumed instead. */
  async #answerInterrupted(): Promise<void> {
    for (const entry of await this.#journal.unfinished()) {
      if (entry.sequence > this.#gate.lastSequence) {
        // Killed before the sequence was recorded: the device never took it, and the controller sends it again.
      } else if (entry.action === 'deploy' && entry.deploy !== undefined) {
        // Killed before its record existed: begun now, and resumeDeployments carries it out.
        await beginDeployment(this.#deployment(), aios.fleet.v1.Deploy.decode(Buffer.from(entry.deploy, 'base64')), entry.sequence);
      } else if (entry.action !== 'deploy') {
        const message = `the agent stopped (crash, power cut or kill) while carrying out ${entry.action} (command ${entry.sequence}, started ${new Date(entry.startedUnixMs).toISOString()}); whether it took effect is unknown. Pipelines restart from their configuration; send the command again if it is still wanted.`;
        this.#log({ msg: 'command interrupted', sequence: entry.sequence, action: entry.action });
        await this.#ack({ sequence: entry.sequence, result: aios.fleet.v1.CommandAck.Result.FAILED, code: 'EAI_AGENT_INTERRUPTED', message, timeUnixMs: this.#now() });
      }
      // A deployment answers for itself when it resumes (deployment.ts).
      await this.#journal.end(entry.sequence);
    }
  }

  async #ack(ack: aios.fleet.v1.ICommandAck): Promise<void> {
    await this.#spool.append(aios.fleet.v1.CommandAck.encode(ack).finish(), { topic: deviceTopic(this.config.fleet, this.config.device, 'acks'), qos: 1 });
  }
}

/** Whether a pipeline could not start only because a store model is not on the device yet. */
function modelMissing(error: unknown): boolean {
  if (error instanceof AiosError && error.code === 'EAI_MODEL_NOT_IN_STORE') return true;
  // Validation reports it as one of the pipeline file's problems.
  return error instanceof AiosError && error.code === 'EAI_CFG_INVALID' && /EAI_MODEL_NOT_IN_STORE|has no active version in the model store/u.test(error.message);
}

/** A fresh Pipeline from the file (a stopped one does not start again), started. */
async function startPipeline(p: RunningPipeline): Promise<void> {
  delete p.error;
  delete p.errorCode;
  const pipeline =
    p.override === undefined
      ? await Pipeline.fromFile(p.file, { statsIntervalMs: 0 })
      : await Pipeline.fromConfig(parsePipelineYaml(await readFile(p.override, 'utf8'), path.basename(p.override, '.yaml')), { baseDir: path.dirname(p.file), statsIntervalMs: 0 });
  pipeline.once('done', () => {
    if (p.pipeline === pipeline) p.running = false;
  });
  p.pipeline = pipeline;
  await pipeline.start();
  p.running = true;
}

/** A pipeline configuration sent by setConfig: YAML of the pipeline named `name`. */
function parsePipelineYaml(text: string, name: string): unknown {
  let parsed: unknown;
  try {
    parsed = parseYaml(text);
  } catch (cause) {
    throw new FleetError('EAI_AGENT_CONFIG', `the configuration sent for pipeline ${name} is not valid YAML: ${(cause as Error).message}`, { cause });
  }
  const given = (parsed as { name?: unknown } | null)?.name;
  if (given !== name) throw new FleetError('EAI_AGENT_CONFIG', `the configuration sent for pipeline ${name} names pipeline '${String(given)}'; a setConfig replaces the configuration of the pipeline it names, so the names must match.`);
  return parsed;
}

/** The `name:` of a pipeline file, or undefined when it cannot be read. */
async function pipelineName(file: string): Promise<string | undefined> {
  try {
    const name = (parseYaml(await readFile(file, 'utf8')) as { name?: unknown } | null)?.name;
    return typeof name === 'string' ? name : undefined;
  } catch {
    return undefined;
  }
}

/** The sequence of a command that was refused, when it can be read at all (for the ack). */
function sequenceOf(payload: Uint8Array): number {
  try {
    const command = aios.fleet.v1.Command.decode(aios.fleet.v1.SignedCommand.decode(payload).payload);
    const n = Number(command.sequence);
    return Number.isSafeInteger(n) ? n : 0;
  } catch {
    return 0;
  }
}
