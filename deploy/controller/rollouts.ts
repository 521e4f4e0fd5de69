import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { FleetError } from '../fleet/errors.js';
import type { CommandQueue } from './commands.js';
import type { ControllerStore } from './store.js';
import type { Deployments, TargetPhase } from './deployments.js';
import type { DeviceRegistry, DeviceSummary } from './devices.js';

/**
 * Staged rollouts of one deployment (hawkBit's cascaded rollout groups): the devices that match
 * the target (labels, accelerator kind, or a list) are cut into stages — a canary of N devices,
 * then percentages, then everyone — and a stage starts only when the one before reached its
 * success threshold. When a stage's failures (devices that rolled back or failed) pass the error
 * threshold, the rollout stops and, unless told otherwise, every device the rollout already
 * committed is sent a Rollback command: one bad model never reaches the whole fleet.
 *
 * Everything is in the controller's database, and `tick` drives it from there: a controller
 * restarted mid-rollout continues where it was (devices keep reporting to the broker meanwhile).
 */
export interface StageSpec {
  readonly name: string;
  /** Devices in this stage: a fixed count, or a percentage of all matching devices (cumulative). */
  readonly count?: number;
  readonly percent?: number;
}

export interface RolloutSpec {
  readonly deploymentId: string;
  /** Which devices: all of these that are given must match. None given: every enrolled device. */
  readonly target: { readonly labels?: Readonly<Record<string, string>>; readonly accelerator?: string; readonly devices?: readonly string[] };
  readonly stages: readonly StageSpec[];
  /** Share of a stage's devices that must commit before the next stage starts. Default 1. */
  readonly successThreshold?: number;
  /** Share of a stage's devices that may fail before the rollout stops. Default 0: the first failure stops it. */
  readonly errorThreshold?: number;
  /** On a stop, send Rollback to the devices this rollout committed. Default true. */
  readonly rollbackOnFailure?: boolean;
  /**
   * Deploy only to devices whose latest attestation is trusted and fresh: the others wait in
   * their stage (counted as not committed) until they are. Needs a controller with attestation.
   */
  readonly requireAttestation?: boolean;
  /**
   * Seconds a stage may take from its first Deploy command: devices that have not committed by
   * then (offline, stuck, waiting for a key) count as failed for the thresholds. Default none: a
   * stage waits for every device however long it is away.
   */
  readonly stageTimeoutS?: number;
}

export type RolloutState = 'running' | 'paused' | 'completed' | 'stopped' | 'rolled-back';

export interface StageStatus {
  readonly name: string;
  readonly devices: readonly string[];
  readonly committed: number;
  readonly failed: number;
  readonly pending: number;
  readonly started: boolean;
}

export interface RolloutStatus {
  readonly id: string;
  readonly deploymentId: string;
  readonly model: string;
  readonly version: string;
  readonly state: RolloutState;
  readonly stage: number;
  readonly reason?: string;
  readonly stages: readonly StageStatus[];
  readonly createdUnixMs: number;
  readonly updatedUnixMs: number;
}

export const DEFAULT_STAGES: readonly StageSpec[] = [
  { name: 'canary', count: 1 },
  { name: 'half', percent: 50 },
  { name: 'all', percent: 100 },
];

const FAILED: readonly TargetPhase[] = ['ROLLED_BACK', 'FAILED'];

export class Rollouts extends EventEmitter<{ update: [RolloutStatus] }> {
  readonly #db: ControllerStore;
  readonly #leads: () => Promise<boolean>;
  readonly #trusted: (deviceId: string) => Promise<boolean>;
  readonly #attesting: boolean;
  readonly #deployments: Deployments;
  readonly #registry: DeviceRegistry;
  readonly #commands: CommandQueue;
  readonly #now: () => number;
  #ticking: Promise<void> = Promise.resolve();

  /**
   * `leads`: whether this controller drives rollouts now (one replica of several does; the others
   * record progress and answer the API, and take over when it goes). Default: always.
   */
  constructor(db: ControllerStore, options: { readonly deployments: Deployments; readonly registry: DeviceRegistry; readonly commands: CommandQueue; readonly leads?: () => Promise<boolean>; readonly trusted?: (deviceId: string) => Promise<boolean>; readonly now?: () => number }) {
    super();
    this.#db = db;
    this.#leads = options.leads ?? (async () => true);
    this.#trusted = options.trusted ?? (async () => false);
    this.#attesting = options.trusted !== undefined;
    this.#deployments = options.deployments;
    this.#registry = options.registry;
    this.#commands = options.commands;
    this.#now = options.now ?? Date.now;
    options.deployments.onTarget(() => void this.tick());
  }

  /** Plans the stages over the devices matching the target now, and starts the first. */
  async start(spec: RolloutSpec): Promise<RolloutStatus> {
    const stages = spec.stages.length === 0 ? DEFAULT_STAGES : spec.stages;
    const problems = checkSpec({ ...spec, stages });
    if (spec.requireAttestation === true && !this.#attesting) problems.push('requireAttestation needs a controller that appraises attestation (aios controller start --trust-root …)');
    if (problems.length > 0) throw new FleetError('EAI_FLEET_ROLLOUT_INVALID', `the rollout cannot start: ${problems.join('; ')}.`, { details: { problems } });
    await this.#deployments.get(spec.deploymentId); // throws for an unknown deployment
    const devices = (await this.#registry.list()).filter((d) => d.revoked === undefined && matches(d, spec.target)).map((d) => d.deviceId).sort();
    if (devices.length === 0) throw new FleetError('EAI_FLEET_ROLLOUT_INVALID', 'no enrolled device matches the rollout target; check the labels with aios fleet devices.', { details: { target: spec.target } });
    const id = `rollout-${randomBytes(4).toString('hex')}`;
    const now = this.#now();
    const plan = planStages(devices, stages);
    await this.#db.transaction(async (tx) => {
      await tx.run("INSERT INTO rollouts (id, deployment_id, spec, state, stage, created_ms, updated_ms) VALUES (?, ?, ?, 'running', 0, ?, ?)", id, spec.deploymentId, JSON.stringify({ ...spec, stages }), now, now);
      for (const [stage, group] of plan.entries()) {
        for (const device of group) await tx.run('INSERT INTO rollout_devices (rollout_id, device_id, stage) VALUES (?, ?, ?)', id, device, stage);
      }
    });
    await this.tick();
    return this.status(id);
  }

  async pause(id: string): Promise<RolloutStatus> {
    await this.#set(id, 'paused', 'paused by the operator', ['running']);
    return this.status(id);
  }

  async resume(id: string): Promise<RolloutStatus> {
    await this.#set(id, 'running', undefined, ['paused']);
    await this.tick();
    return this.status(id);
  }

  /** Stops the rollout and sends Rollback to every device it committed. */
  async rollback(id: string, reason = 'rolled back by the operator'): Promise<RolloutStatus> {
    const r = await this.#row(id);
    if (r.state === 'rolled-back') return this.status(id);
    await this.#rollBackDevices(id, r.deployment_id, reason);
    await this.#set(id, 'rolled-back', reason);
    return this.status(id);
  }

  /** Advances every running rollout as far as its devices' progress allows. Calls are serialised. */
  tick(): Promise<void> {
    this.#ticking = this.#ticking.then(() => this.#tickAll()).catch(() => undefined);
    return this.#ticking;
  }

  async status(id: string): Promise<RolloutStatus> {
    const r = await this.#row(id);
    const spec = JSON.parse(r.spec) as RolloutSpec;
    const deployment = await this.#deployments.get(r.deployment_id);
    const targets = new Map((await this.#deployments.targets(r.deployment_id)).map((t) => [t.deviceId, t.phase]));
    const rows = await this.#db.all<{ device_id: string; stage: number }>('SELECT device_id, stage FROM rollout_devices WHERE rollout_id = ? ORDER BY device_id', id);
    const stages = spec.stages.map((s, i) => {
      const devices = rows.filter((d) => d.stage === i).map((d) => d.device_id);
      const phases = devices.map((d) => targets.get(d));
      return {
        name: s.name,
        devices,
        committed: phases.filter((p) => p === 'COMMITTED').length,
        failed: phases.filter((p) => p !== undefined && FAILED.includes(p)).length,
        pending: phases.filter((p) => p !== undefined && p !== 'COMMITTED' && !FAILED.includes(p)).length,
        started: phases.some((p) => p !== undefined),
      };
    });
    return { id, deploymentId: r.deployment_id, model: deployment.model, version: deployment.version, state: r.state, stage: r.stage, ...(r.reason === null ? {} : { reason: r.reason }), stages, createdUnixMs: r.created_ms, updatedUnixMs: r.updated_ms };
  }

  async list(): Promise<readonly RolloutStatus[]> {
    const ids = await this.#db.all<{ id: string }>('SELECT id FROM rollouts ORDER BY created_ms DESC');
    return Promise.all(ids.map((r) => this.status(r.id)));
  }

  async #tickAll(): Promise<void> {
    if (!(await this.#leads())) return;
    for (const { id } of await this.#db.all<{ id: string }>("SELECT id FROM rollouts WHERE state = 'running'")) await this.#advance(id);
  }

  async #advance(id: string): Promise<void> {
    for (;;) {
      const r = await this.#row(id);
      if (r.state !== 'running') return;
      const spec = JSON.parse(r.spec) as RolloutSpec;
      const status = await this.status(id);
      const stage = status.stages[r.stage] as StageStatus;
      if (!stage.started || stage.committed + stage.failed + stage.pending < stage.devices.length) {
        const targeted = new Set((await this.#deployments.targets(r.deployment_id)).map((t) => t.deviceId));
        const waiting = stage.devices.filter((d) => !targeted.has(d));
        const allowed = spec.requireAttestation === true ? await this.#trustedOf(waiting) : waiting;
        if (allowed.length > 0 || !stage.started) {
          if (r.stage_started_ms === null) await this.#db.run('UPDATE rollouts SET stage_started_ms = ? WHERE id = ? AND stage_started_ms IS NULL', this.#now(), id);
          await this.#deployments.target(r.deployment_id, allowed);
          this.emit('update', await this.status(id));
          return;
        }
        // The rest wait for a trusted appraisal; judge the stage on the devices that got it.
      }
      const total = stage.devices.length;
      const timedOut = spec.stageTimeoutS !== undefined && r.stage_started_ms !== null && this.#now() - r.stage_started_ms > spec.stageTimeoutS * 1000;
      // Past the stage's time, whoever has not committed or failed yet counts as failed.
      const late = timedOut ? total - stage.committed - stage.failed : 0;
      const failed = stage.failed + late;
      if (total > 0 && failed / total > (spec.errorThreshold ?? 0)) {
        const lateNote = late > 0 ? `${stage.failed > 0 ? '; ' : ''}${late} not done within the stage timeout of ${spec.stageTimeoutS} s` : '';
        const reason = `stage '${stage.name}': ${failed} of ${total} devices failed (${await this.#failures(r.deployment_id, stage.devices)}${lateNote}), above the error threshold of ${((spec.errorThreshold ?? 0) * 100).toFixed(0)} %`;
        if (spec.rollbackOnFailure !== false) {
          await this.#rollBackDevices(id, r.deployment_id, reason);
          await this.#set(id, 'rolled-back', reason);
        } else await this.#set(id, 'stopped', reason);
        this.emit('update', await this.status(id));
        return;
      }
      if (total > 0 && stage.committed / total < (spec.successThreshold ?? 1)) {
        if (!timedOut) return; // still waiting
        const reason = `stage '${stage.name}': ${stage.committed} of ${total} devices committed within the stage timeout of ${spec.stageTimeoutS} s, below the success threshold of ${((spec.successThreshold ?? 1) * 100).toFixed(0)} %`;
        await this.#set(id, 'stopped', reason);
        this.emit('update', await this.status(id));
        return;
      }
      if (r.stage + 1 >= spec.stages.length) {
        await this.#set(id, 'completed', undefined);
        this.emit('update', await this.status(id));
        return;
      }
      await this.#db.run('UPDATE rollouts SET stage = stage + 1, stage_started_ms = NULL, updated_ms = ? WHERE id = ?', this.#now(), id);
    }
  }

  async #trustedOf(devices: readonly string[]): Promise<string[]> {
    const trusted: string[] = [];
    for (const d of devices) if (await this.#trusted(d)) trusted.push(d);
    return trusted;
  }

  async #failures(deploymentId: string, devices: readonly string[]): Promise<string> {
    return (await this.#deployments.targets(deploymentId))
      .filter((t) => devices.includes(t.deviceId) && FAILED.includes(t.phase))
      .map((t) => `${t.deviceId}: ${t.code ?? t.phase}`)
      .join(', ');
  }

  async #rollBackDevices(id: string, deploymentId: string, reason: string): Promise<void> {
    const deployment = await this.#deployments.get(deploymentId);
    const mine = new Set((await this.#db.all<{ device_id: string }>('SELECT device_id FROM rollout_devices WHERE rollout_id = ?', id)).map((d) => d.device_id));
    for (const t of await this.#deployments.targets(deploymentId)) {
      if (!mine.has(t.deviceId) || t.phase !== 'COMMITTED') continue;
      await this.#commands.send(t.deviceId, { rollback: { deploymentId, model: deployment.model, reason } });
    }
  }

  async #set(id: string, state: RolloutState, reason: string | undefined, from?: readonly RolloutState[]): Promise<void> {
    const r = await this.#row(id);
    if (from !== undefined && !from.includes(r.state)) throw new FleetError('EAI_FLEET_ROLLOUT_STATE', `rollout ${id} is ${r.state}; it can only be ${state === 'paused' ? 'paused while running' : 'resumed while paused'}.`, { details: { id, state: r.state } });
    await this.#db.run('UPDATE rollouts SET state = ?, reason = ?, updated_ms = ? WHERE id = ?', state, reason ?? null, this.#now(), id);
  }

  async #row(id: string): Promise<RolloutRow> {
    const r = await this.#db.get<RolloutRow>('SELECT * FROM rollouts WHERE id = ?', id);
    if (r === undefined) throw new FleetError('EAI_FLEET_ROLLOUT_UNKNOWN', `there is no rollout '${id}'; list them with aios fleet rollouts.`, { details: { id } });
    return r;
  }
}

interface RolloutRow {
  id: string;
  deployment_id: string;
  spec: string;
  state: RolloutState;
  stage: number;
  reason: string | null;
  created_ms: number;
  updated_ms: number;
  stage_started_ms: number | null;
}

/** Devices of each stage: counts and cumulative percentages of `devices`, in order, each device once. */
export function planStages(devices: readonly string[], stages: readonly StageSpec[]): string[][] {
  const plan: string[][] = [];
  let used = 0;
  for (const [i, s] of stages.entries()) {
    const upTo = i === stages.length - 1 ? devices.length : Math.min(devices.length, s.count !== undefined ? used + s.count : Math.ceil(((s.percent ?? 100) / 100) * devices.length));
    plan.push(devices.slice(used, Math.max(used, upTo)));
    used = Math.max(used, upTo);
  }
  return plan;
}

function matches(device: DeviceSummary, target: RolloutSpec['target']): boolean {
  if (target.devices !== undefined && !target.devices.includes(device.deviceId)) return false;
  for (const [k, v] of Object.entries(target.labels ?? {})) if (device.labels[k] !== v) return false;
  if (target.accelerator !== undefined && !device.accelerators.some((a) => a === target.accelerator || a.startsWith(`${target.accelerator}:`))) return false;
  return true;
}

function checkSpec(spec: RolloutSpec): string[] {
  const problems: string[] = [];
  spec.stages.forEach((s, i) => {
    if ((s.count === undefined) === (s.percent === undefined) && i < spec.stages.length - 1) problems.push(`stage '${s.name}' needs exactly one of count or percent`);
    if (s.count !== undefined && (!Number.isInteger(s.count) || s.count < 1)) problems.push(`stage '${s.name}': count must be a whole number ≥ 1`);
    if (s.percent !== undefined && !(s.percent > 0 && s.percent <= 100)) problems.push(`stage '${s.name}': percent must be in (0, 100]`);
  });
  for (const [name, v] of [['successThreshold', spec.successThreshold], ['errorThreshold', spec.errorThreshold]] as const) {
    if (v !== undefined && !(v >= 0 && v <= 1)) problems.push(`${name} must be between 0 and 1`);
  }
  if (spec.stageTimeoutS !== undefined && !(Number.isFinite(spec.stageTimeoutS) && spec.stageTimeoutS > 0)) problems.push('stageTimeoutS must be a positive number of seconds');
  return problems;
}
