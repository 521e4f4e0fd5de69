import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import type { MqttClient } from 'mqtt';
import { AiosError } from '../../drivers/errors.js';
import type { DecryptFactory } from '../../models/bundle/bundle.js';
import { X25519Identity } from '../../models/bundle/age/keys.js';
import { createDecryption } from '../../models/bundle/age/stream.js';
import { fileSource } from '../../models/bundle/tar.js';
import { writeFileAtomic } from '../../models/atomic-write.js';
import { installBundle } from '../../models/store/install-bundle.js';
import type { ModelStore, Slot } from '../../models/store/model-store.js';
import type { TrustStore } from '../../models/trust/trust-store.js';
import type { ModelCatalog } from '../../runtime/model-catalog.js';
import type { PipelineStats } from '../../runtime/pipeline/pipeline.js';
import { aios } from '../proto/gen/aios.js';
import { FleetError } from '../fleet/errors.js';
import { BundleDownload, bundleTransfer } from './ota-download.js';

/**
 * One OTA deployment on the device, from a verified Deploy command to a committed version or a
 * rollback (Mender/RAUC's A/B discipline for models):
 *
 *  1. DOWNLOADING: the bundle in signed chunks over MQTT (ota-download.ts), resumable;
 *  2. VERIFYING + INSTALLING: installBundle checks signatures (the trust root's models role),
 *     manifest and every file, and writes a new slot of the model store, which becomes active
 *     with the old version kept as previous;
 *  3. ACTIVATING: the model catalog points `store:<model>` at the new files and every running
 *     infer stage using it swaps in place;
 *  4. HEALTH_CHECK: for the deployment's window, the switched stages' error rate and p99 latency
 *     must stay within its limits and their pipelines keep running;
 *  5. COMMITTED, or ROLLED_BACK: the store goes back to the previous slot and the stages with it.
 *
 * Each phase is recorded (state/deployments/<id>.json, written atomically) before it starts, so
 * an agent killed at any point resumes: a download or verification continues; a deployment caught
 * installed but not committed is rolled back (it never passed its health window, and may be what
 * brought the device down), unless it is the model's first version, which has nothing to go back
 * to: that one runs its health window again. The store's own A/B switch guarantees the active
 * version is always a complete, verified one.
 *
 * The outcome reaches the controller even across a kill: a finished record is marked `reported`
 * only once its final event and ack are in the spool, and a start finds any finished record not
 * so marked and reports it again (the controller takes repeats). Without that, an agent killed
 * between writing "rolled-back" and spooling the event left its rollout waiting for it forever
 * (found by bench/agent-crash.ts). A start also removes what finished deployments left in
 * downloads/ (their verified bundles; partial downloads except the newest failed one per model,
 * which a new deployment of the same bundle resumes) and all but the newest KEEP_FINISHED
 * finished records.
 */
export type Phase = 'downloading' | 'installing' | 'activating' | 'health-check' | 'committed' | 'rolled-back' | 'failed';

export interface DeploymentRecord {
  readonly format: 'aios-deployment/1';
  readonly deploymentId: string;
  readonly sequence: number;
  readonly model: string;
  readonly version: string;
  /** The version active before, if any: where a rollback returns to. */
  readonly previous?: string;
  readonly phase: Phase;
  readonly reason?: string;
  readonly code?: string;
  /** The Deploy message (protobuf, base64): what a resumed deployment continues with. */
  readonly deploy: string;
  /** A finished deployment's final event and ack are in the spool. */
  readonly reported?: boolean;
}

/** Finished deployment records kept (for `aios` to show, and for the reports above); older ones go. */
const KEEP_FINISHED = 16;

const FINISHED: readonly Phase[] = ['committed', 'rolled-back', 'failed'];

export interface DeploymentContext {
  readonly client: MqttClient;
  readonly fleet: string;
  readonly deviceId: string;
  /** The agent's state folder: deployments/ and downloads/ live here. */
  readonly state: string;
  readonly store: ModelStore;
  readonly trust: TrustStore;
  readonly catalog: ModelCatalog;
  readonly decrypt?: DecryptFactory;
  /** The device's own age identities (a released key is tried with them). */
  readonly identities?: readonly X25519Identity[];
  /** The key of a key-release deployment, once the controller sends it (after a trusted attestation). */
  readonly awaitKey?: (deploymentId: string) => Promise<Uint8Array>;
  readonly window: number;
  /** The most bytes per second a download asks for; absent: no cap. */
  readonly bytesPerSecond?: number;
  /** Stats of the running pipelines, and which of their stages run `store:<model>`. */
  readonly pipelines: () => readonly { readonly stats: PipelineStats; readonly running: boolean; readonly stagesUsing: (model: string) => readonly string[] }[];
  /** After a new version is active: start pipelines that could not start without it, before the health window. */
  readonly activated?: (model: string) => Promise<void>;
  /** Sends a progress event (through the spool). */
  readonly progress: (p: aios.fleet.v1.IDeploymentProgress, severity?: aios.fleet.v1.Event.Severity) => Promise<void>;
  readonly log: (line: Record<string, unknown>) => void;
  readonly now?: () => number;
  /** Aborted when the agent stops: a download in progress is cancelled and resumes on the next start. */
  readonly signal?: AbortSignal;
  /** Overrides the Deploy's health window (tests). */
  readonly sleep?: (ms: number) => Promise<void>;
}

/** Carries out `deploy` (already admitted by the CommandGate); resolves with a message for the DONE ack, rejects for FAILED. */
export async function deployModel(ctx: DeploymentContext, deploy: aios.fleet.v1.Deploy, sequence: number): Promise<string> {
  return continueDeployment(ctx, await writeFirstRecord(ctx, deploy, sequence));
}

/**
 * Writes the first record (phase downloading) of the deployment command `sequence` carries,
 * unless that command's record exists: what `resumeDeployments` continues. For a deploy command
 * accepted by a run that was killed before it got this far (command-journal.ts).
 */
export async function beginDeployment(ctx: DeploymentContext, deploy: aios.fleet.v1.Deploy, sequence: number): Promise<void> {
  if ((await readRecord(ctx.state, deploy.deploymentId))?.sequence !== sequence) await writeFirstRecord(ctx, deploy, sequence);
}

async function writeFirstRecord(ctx: DeploymentContext, deploy: aios.fleet.v1.Deploy, sequence: number): Promise<DeploymentRecord> {
  const previous = (await ctx.store.active(deploy.model).catch(() => undefined))?.version;
  const record: DeploymentRecord = {
    format: 'aios-deployment/1',
    deploymentId: deploy.deploymentId,
    sequence,
    model: deploy.model,
    version: deploy.version,
    ...(previous === undefined ? {} : { previous }),
    phase: 'downloading',
    deploy: Buffer.from(aios.fleet.v1.Deploy.encode(deploy).finish()).toString('base64'),
  };
  await writeRecord(ctx.state, record);
  return record;
}

/** A deployment's record, or undefined when it has none (or it cannot be read). */
async function readRecord(state: string, deploymentId: string): Promise<DeploymentRecord | undefined> {
  return readFile(path.join(state, 'deployments', `${safe(deploymentId)}.json`), 'utf8').then(
    (text) => JSON.parse(text) as DeploymentRecord,
    () => undefined,
  );
}

/** Replaces a deployment's record atomically. */
async function writeRecord(state: string, record: DeploymentRecord): Promise<void> {
  await mkdir(path.join(state, 'deployments'), { recursive: true, mode: 0o700 });
  await writeFileAtomic(path.join(state, 'deployments', `${safe(record.deploymentId)}.json`), `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
}

/**
 * After a restart: every deployment not finished is continued (downloading, installing) or rolled
 * back (activating, health-check). Returns what was done, for the log.
 */
export async function resumeDeployments(ctx: DeploymentContext, finished?: (record: DeploymentRecord, outcome: { readonly ok: true; readonly message: string } | { readonly ok: false; readonly error: unknown }) => Promise<void>): Promise<readonly { readonly deploymentId: string; readonly outcome: string }[]> {
  const dir = path.join(ctx.state, 'deployments');
  const names = await readdir(dir).catch(() => [] as string[]);
  const outcomes: { deploymentId: string; outcome: string }[] = [];
  for (const name of names.filter((n) => n.endsWith('.json')).sort()) {
    let record: DeploymentRecord;
    try {
      record = JSON.parse(await readFile(path.join(dir, name), 'utf8')) as DeploymentRecord;
    } catch {
      continue;
    }
    if (FINISHED.includes(record.phase)) {
      if (record.reported === true) continue;
      // Finished, but killed before the outcome was spooled: say it again.
      const P = aios.fleet.v1.DeploymentProgress.Phase;
      const phase = record.phase === 'committed' ? P.COMMITTED : record.phase === 'rolled-back' ? P.ROLLED_BACK : P.FAILED;
      await ctx.progress({ deploymentId: record.deploymentId, model: record.model, version: record.version, phase, ...(record.code === undefined ? {} : { code: record.code }), ...(record.reason === undefined ? {} : { reason: record.reason }) }, record.phase === 'committed' ? aios.fleet.v1.Event.Severity.INFO : aios.fleet.v1.Event.Severity.ERROR);
      await finished?.(record, record.phase === 'committed' ? { ok: true, message: `${record.model} ${record.version} committed after its health window` } : { ok: false, error: new FleetError(record.code ?? 'EAI_INTERNAL', `${record.model} ${record.version}: ${record.reason ?? record.phase}.`) });
      await markReported(ctx.state, record.deploymentId);
      outcomes.push({ deploymentId: record.deploymentId, outcome: `${record.phase}, reported again` });
      continue;
    }
    if ((record.phase === 'activating' || record.phase === 'health-check') && record.previous !== undefined) {
      // The new version may be what brought the device down: back to the one that ran before.
      const reason = 'the agent restarted before the new version passed its health window';
      await rollBack(ctx, record, 'EAI_OTA_INTERRUPTED', reason);
      outcomes.push({ deploymentId: record.deploymentId, outcome: 'rolled back' });
      await finished?.(record, { ok: false, error: new FleetError('EAI_OTA_INTERRUPTED', `${record.model} ${record.version} was rolled back: ${reason}.`) });
      await markReported(ctx.state, record.deploymentId);
      continue;
    }
    try {
      const message = await continueDeployment(ctx, record);
      outcomes.push({ deploymentId: record.deploymentId, outcome: message });
      await finished?.(record, { ok: true, message });
      await markReported(ctx.state, record.deploymentId);
    } catch (error) {
      outcomes.push({ deploymentId: record.deploymentId, outcome: `failed: ${error instanceof Error ? error.message : String(error)}` });
      if (!(error instanceof FleetError && error.code === 'EAI_OTA_CANCELLED')) {
        await finished?.(record, { ok: false, error });
        await markReported(ctx.state, record.deploymentId);
      }
    }
  }
  await tidy(ctx.state);
  return outcomes;
}

/** Marks a finished deployment's outcome as spooled (after its final ack); does nothing for an unfinished or unknown one. */
export async function markReported(state: string, deploymentId: string): Promise<void> {
  const record = await readRecord(state, deploymentId);
  if (record === undefined || !FINISHED.includes(record.phase) || record.reported === true) return;
  await writeRecord(state, { ...record, reported: true });
  await tidy(state);
}

/**
 * What finished deployments leave behind: their records beyond the newest KEEP_FINISHED (reported
 * ones only), and download files no unfinished deployment needs, except the partial download of
 * the newest failed deployment of each model (deploying the same bundle again resumes it).
 */
async function tidy(state: string): Promise<void> {
  const dir = path.join(state, 'deployments');
  const records: DeploymentRecord[] = [];
  for (const name of (await readdir(dir).catch(() => [] as string[])).filter((n) => n.endsWith('.json'))) {
    try {
      records.push(JSON.parse(await readFile(path.join(dir, name), 'utf8')) as DeploymentRecord);
    } catch {
      // Unreadable: left for a person to look at.
    }
  }
  records.sort((a, b) => b.sequence - a.sequence);
  const finished = records.filter((r) => FINISHED.includes(r.phase));
  for (const old of finished.slice(KEEP_FINISHED)) if (old.reported === true) await rm(path.join(dir, `${safe(old.deploymentId)}.json`), { force: true });
  const keep = new Set<string>();
  const resumable = new Set<string>();
  const newestPerModel = new Set<string>();
  for (const r of records) {
    const sha = aios.fleet.v1.Deploy.decode(Buffer.from(r.deploy, 'base64')).bundleSha256;
    if (!FINISHED.includes(r.phase)) keep.add(sha);
    else if (r.phase === 'failed' && !newestPerModel.has(r.model)) resumable.add(sha);
    newestPerModel.add(r.model);
  }
  const downloads = path.join(state, 'downloads');
  for (const name of await readdir(downloads).catch(() => [] as string[])) {
    const sha = /^([0-9a-f]{64})\.(bundle|part|progress)$/u.exec(name);
    if (sha === null || keep.has(sha[1] as string) || (sha[2] !== 'bundle' && resumable.has(sha[1] as string))) continue;
    await rm(path.join(downloads, name), { force: true });
  }
}

async function continueDeployment(ctx: DeploymentContext, start: DeploymentRecord): Promise<string> {
  const deploy = aios.fleet.v1.Deploy.decode(Buffer.from(start.deploy, 'base64'));
  let record = start;
  const save = async (changes: Partial<DeploymentRecord>): Promise<void> => {
    record = { ...record, ...changes };
    await writeRecord(ctx.state, record);
  };
  const progress = (phase: aios.fleet.v1.DeploymentProgress.Phase, extra: Partial<aios.fleet.v1.IDeploymentProgress> = {}): Promise<void> =>
    ctx.progress({ deploymentId: record.deploymentId, model: record.model, version: record.version, phase, ...extra });
  const P = aios.fleet.v1.DeploymentProgress.Phase;
  let installed: Slot | undefined;
  try {
    if (record.phase === 'downloading') {
      const transfer = bundleTransfer(deploy);
      let reported = 0;
      const download = new BundleDownload({
        client: ctx.client,
        fleet: ctx.fleet,
        deviceId: ctx.deviceId,
        transfer,
        dir: path.join(ctx.state, 'downloads'),
        window: ctx.window,
        ...(ctx.bytesPerSecond === undefined ? {} : { bytesPerSecond: ctx.bytesPerSecond }),
        onProgress: (done, total) => {
          // A progress event per tenth of the bundle, not per chunk: the link is for telemetry too.
          if (done === total || done - reported >= total / 10) {
            reported = done;
            void progress(P.DOWNLOADING, { bytesDone: done, bytesTotal: total });
          }
        },
      });
      const cancel = (): void => void download.cancel();
      ctx.signal?.addEventListener('abort', cancel, { once: true });
      try {
        if (ctx.signal?.aborted === true) void download.cancel();
        await download.done();
      } finally {
        ctx.signal?.removeEventListener('abort', cancel);
      }
      await save({ phase: 'installing' });
    }
    const bundle = path.join(ctx.state, 'downloads', `${deploy.bundleSha256}.bundle`);
    let slot: Slot;
    if (record.phase === 'installing') {
      let decrypt = ctx.decrypt;
      if (deploy.keyRelease === true) {
        // The bundle is useless without a key the controller releases only to a device whose
        // attestation it trusts: ask (this event), then wait; the key lives in memory only.
        if (ctx.awaitKey === undefined) throw new FleetError('EAI_OTA_KEY_NOT_RELEASED', `deployment ${record.deploymentId} needs a released key and this agent cannot receive one.`);
        await progress(P.AWAITING_KEY);
        const released = X25519Identity.fromSecretKey(await ctx.awaitKey(record.deploymentId));
        const identities = [...(ctx.identities ?? []), released];
        decrypt = () => createDecryption(identities);
      }
      await progress(P.VERIFYING);
      slot = await installBundle(ctx.store, () => fileSource(bundle), ctx.trust.policy('models'), decrypt === undefined ? {} : { decrypt });
      installed = slot;
      if (slot.model !== record.model || slot.version !== record.version) {
        throw new FleetError('EAI_OTA_BUNDLE_MISMATCH', `the bundle holds ${slot.model} ${slot.version}, the Deploy command announced ${record.model} ${record.version}; the command and the bundle do not belong together.`, { details: { bundle: `${slot.model}@${slot.version}`, command: `${record.model}@${record.version}` } });
      }
    } else {
      // Resumed after the install (a first version, which has nothing to roll back to): the
      // store's active slot is it, checked again before use.
      const lease = await ctx.store.acquire(record.model);
      lease.release();
      slot = lease.slot;
      installed = slot;
      if (slot.version !== record.version) throw new FleetError('EAI_OTA_INTERRUPTED', `${record.model} ${slot.version} is active, not ${record.version}: the deployment cannot be resumed.`);
    }
    await save({ phase: 'activating' });
    await progress(P.ACTIVATING);
    if (slot.entry === undefined) throw new FleetError('EAI_OTA_BUNDLE_MISMATCH', `the bundle of ${record.model} ${record.version} names no entry file; a model bundle must say which file to load.`);
    await ctx.catalog.set(record.model, path.join(slot.dir, slot.entry), record.version);
    await ctx.activated?.(record.model);
    await save({ phase: 'health-check' });
    const health = deploy.health ?? {};
    await progress(P.HEALTH_CHECK);
    const verdict = await watchHealth(ctx, record.model, health);
    if (verdict !== undefined) {
      await rollBack(ctx, record, 'EAI_OTA_UNHEALTHY', verdict);
      throw new FleetError('EAI_OTA_UNHEALTHY', `${record.model} ${record.version} was rolled back: ${verdict}.`, { details: { model: record.model, version: record.version } });
    }
    await save({ phase: 'committed' });
    await progress(P.COMMITTED);
    await rm(bundle, { force: true });
    return `${record.model} ${record.version} committed after its health window`;
  } catch (error) {
    if (error instanceof FleetError && error.code === 'EAI_OTA_UNHEALTHY') throw error;
    // Stopped by the agent's shutdown: the record stays as it is and the next start resumes it.
    if (error instanceof FleetError && error.code === 'EAI_OTA_CANCELLED') throw error;
    const code = error instanceof AiosError ? error.code : 'EAI_INTERNAL';
    const reason = error instanceof Error ? error.message : String(error);
    if (record.phase === 'activating' || record.phase === 'health-check' || installed !== undefined) {
      await rollBack(ctx, record, code, reason);
    } else {
      await save({ phase: 'failed', code, reason });
      await progress(P.FAILED, { code, reason });
    }
    throw error;
  }
}

/** Back to the version before: the store's previous slot, and the catalog (so stages swap back). */
async function rollBack(ctx: DeploymentContext, record: DeploymentRecord, code: string, reason: string): Promise<void> {
  const P = aios.fleet.v1.DeploymentProgress.Phase;
  const active = await ctx.store.active(record.model).catch(() => undefined);
  let now: Slot | undefined = active;
  if (active?.version === record.version && record.previous !== undefined) now = await ctx.store.rollback(record.model);
  if (now?.entry !== undefined) {
    await ctx.catalog.set(record.model, path.join(now.dir, now.entry), now.version).catch((error: unknown) => ctx.log({ msg: 'switching back failed', model: record.model, error: String(error) }));
  }
  const updated: DeploymentRecord = { ...record, phase: record.previous === undefined && active?.version === record.version ? 'failed' : 'rolled-back', code, reason };
  await writeRecord(ctx.state, updated);
  // The verified bundle is not needed any more: its files are in the store's slot, or refused.
  await rm(path.join(ctx.state, 'downloads', `${aios.fleet.v1.Deploy.decode(Buffer.from(record.deploy, 'base64')).bundleSha256}.bundle`), { force: true });
  ctx.log({ msg: 'deployment rolled back', deployment: record.deploymentId, model: record.model, from: record.version, to: now?.version, code, reason });
  await ctx.progress({ deploymentId: record.deploymentId, model: record.model, version: record.version, phase: P.ROLLED_BACK, code, reason }, aios.fleet.v1.Event.Severity.ERROR);
}

/**
 * Watches the stages that run `store:<model>` for the health window. Returns why the version is
 * unhealthy, or undefined when it passed.
 */
async function watchHealth(ctx: DeploymentContext, model: string, health: aios.fleet.v1.IHealthPolicy): Promise<string | undefined> {
  const windowMs = (health.windowS ?? 0) * 1000;
  const sleep = ctx.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const users = (): { name: string; processed: number; errors: number; p99: number; running: boolean }[] =>
    ctx.pipelines().flatMap((p) =>
      p.stagesUsing(model).map((stage) => {
        const n = p.stats.nodes.find((x) => x.node === stage);
        return { name: `${p.stats.name}/${stage}`, processed: n === undefined ? 0 : n.out, errors: n?.errors ?? 0, p99: n?.latencyMs.p99 ?? 0, running: p.running };
      }),
    );
  const before = users();
  await sleep(windowMs);
  const after = users();
  for (const a of after) {
    if (!a.running) return `pipeline of ${a.name} stopped during the health window`;
    const b = before.find((x) => x.name === a.name);
    const runs = a.processed - (b?.processed ?? 0);
    const errors = a.errors - (b?.errors ?? 0);
    const rate = runs + errors === 0 ? 0 : errors / (runs + errors);
    // max_error_rate 0 (the proto default) allows no failed run at all.
    const limit = health.maxErrorRate ?? 0;
    if (rate > limit) return `${a.name} failed ${errors} of ${runs + errors} runs (${(rate * 100).toFixed(1)} %), above the limit of ${(limit * 100).toFixed(1)} %`;
    if (health.maxLatencyP99Ms != null && health.maxLatencyP99Ms > 0 && a.p99 > health.maxLatencyP99Ms) return `${a.name} p99 latency ${a.p99.toFixed(1)} ms, above the limit of ${health.maxLatencyP99Ms} ms`;
    // A stage that was busy before the switch and went silent is broken; one that had no input
    // (a parked robot, a camera off) is not held against the new version.
    if (windowMs > 0 && runs === 0 && errors === 0 && (b?.processed ?? 0) > 0 && a.running) return `${a.name} ran nothing during the ${health.windowS} s health window, though it ran before the switch`;
  }
  return undefined;
}

/** A deployment id as a file name. */
function safe(id: string): string {
  return id.replace(/[^A-Za-z0-9._-]/gu, '_').slice(0, 120) || 'deployment';
}
