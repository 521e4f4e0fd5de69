import { promises as fs } from 'node:fs';
import path from 'node:path';
import { createBuiltinHal } from '../../drivers/builtin.js';
import { AiosError, DeviceUnavailableError, ModelError, PlacementError } from '../../drivers/errors.js';
import { checkFeeds } from '../../drivers/hal/feeds.js';
import { detectModel } from '../../drivers/hal/model-format.js';
import type { DevicePreference, HalRegistry, Placement } from '../../drivers/hal/registry.js';
import type { DeviceInfo, Feeds, LoadOptions, ModelSource, Outputs, TensorSpec } from '../../drivers/hal/types.js';
import { bytesPerElement, Tensor } from '../../drivers/tensor/tensor.js';
import type { DeviceShare, Reservation } from '../resource-pool.js';
import { AdmissionError, ResourcePool } from '../resource-pool.js';
import { DeadlineError } from '../scheduler/device-scheduler.js';
import { Batcher } from './batcher.js';
import type { BatchLayout } from './batching.js';
import { batchLayout, stack } from './batching.js';
import { LatencyWindow, type LatencySummary } from './latency-window.js';
import { PeerReplica } from './peer-replica.js';
import { PeerError, type PeerSignature, type PeerTarget, type PeerTransport } from './peers.js';
import { Replica, type ReplicaState } from './replica.js';
import { Watchdog } from './watchdog.js';

export { INLINE_BELOW_MS } from './replica.js';

export interface InferenceServiceOptions {
  /** Device kinds or ids, best first (`['jetson', 'cuda', 'cpu']`). Empty: any device, accelerators first. Failover walks this list. */
  readonly devices?: DevicePreference;
  /** The pool to reserve from; share one pool between services. Default: discover this machine. */
  readonly pool?: ResourcePool;
  /** The HAL to place with. Default: every built-in probe and engine. */
  readonly hal?: HalRegistry;
  /** Name in reservations and stats; defaults to the model file name. */
  readonly name?: string;
  /** Scheduling weight on shared devices: under contention, runs are granted in proportion (docs/scheduling.md). Default 1. */
  readonly priority?: number;
  /**
   * Runs per second this service expects to ask for. With it, start() is refused (AdmissionError,
   * EAI_SCHED_ADMISSION) when no listed device can give that rate at this priority, saying by how much.
   */
  readonly rateHz?: number;
  /** Default deadline of a request, ms after `infer` is called. A request not started by then fails with EAI_DEADLINE_MISSED. */
  readonly deadlineMs?: number;
  readonly threads?: LoadOptions['threads'];
  readonly graphOptimization?: LoadOptions['graphOptimization'];
  readonly engineOptions?: LoadOptions['engine'];
  /**
   * Where the model's runs execute (LoadOptions.executor). `auto` (default): on a thread of its
   * own, unless warm-up shows a run takes under {@link INLINE_BELOW_MS}, in which case the
   * hand-over would cost more than the event-loop time it frees and the model runs inline.
   */
  readonly executor?: 'auto' | 'inline' | 'thread';
  /**
   * Inputs for the warm-up runs, by name; inputs not given are zeros in the model's declared shape
   * (dynamic dimensions as 1). Give real-sized inputs where the model has dynamic dimensions.
   */
  readonly warmupFeeds?: Feeds;
  /**
   * Dynamic batching: requests arriving within `maxDelayMs` of each other run as one batch of up to
   * `maxBatch` rows. Needs a model with a dynamic batch dimension (`symbol` names it when the model
   * has several dynamic dimensions in every output).
   */
  readonly batching?: { readonly maxBatch: number; readonly maxDelayMs: number; readonly symbol?: string };
  /** A run taking longer than this marks its device down and moves the request on. Default: max(2 s, 20 × its measured cost). */
  readonly timeoutMs?: number;
  /** Retry of a failed device: first delay and ceiling, ms (doubling). Default 500 ms → 30 s. */
  readonly retry?: { readonly initialMs?: number; readonly maxMs?: number };
  /**
   * Remote candidates: peers or an edge server reached through the fleet's transport. Name each in
   * `devices` as `peer:<target>` where it belongs in the preference (`['peer:edge', 'cpu']`:
   * offload to the edge server, run locally when it does not answer); targets not named there
   * come after the local devices. When a peer comes first, the best local device is loaded too,
   * as a warm standby, so failing over to local execution costs no load.
   */
  readonly peers?: { readonly transport: PeerTransport; readonly targets: readonly PeerTarget[]; readonly signature?: PeerSignature };
}

/** Per-request options. */
export interface InferOptions {
  /** Deadline, ms from now; overrides the service's `deadlineMs`. */
  readonly deadlineMs?: number;
  /** Deadline as a time on the `performance.now()` clock (a sensor message's arrival + budget); wins over `deadlineMs`. */
  readonly deadline?: number;
}

/** Lifecycle failures of a service: used before start, started twice. */
export class ServiceError extends AiosError {}

/** One candidate device of a service, as stats report it. */
export interface ReplicaStats {
  readonly device: string;
  readonly engine: string;
  readonly state: ReplicaState;
  readonly backend?: string;
  readonly executor?: 'inline' | 'thread' | 'engine';
  readonly reason?: string;
  /** Measured cost per run by batch size, ms. */
  readonly costMs: Readonly<Record<number, number>>;
}

/** Where a started service runs and how it has done so far. */
export interface ServiceStats {
  readonly name: string;
  /** The device new requests go to now. */
  readonly device: string;
  readonly engine: string;
  readonly backend: string;
  /** Where runs execute: `inline` on the caller's thread, `thread` on the model's own. */
  readonly executor: 'inline' | 'thread' | 'engine';
  /** Median of the warm-up runs at start; absent when the model could not run on generated inputs. */
  readonly warmupMs?: number;
  readonly priority: number;
  readonly rateHz?: number;
  readonly requests: number;
  readonly errors: number;
  /** Requests that failed because their deadline passed before they could start. */
  readonly expired: number;
  /** Requests answered after their deadline. */
  readonly deadlineMisses: number;
  /** Times the service moved off a failed device. */
  readonly failovers: number;
  /** End-to-end latency of answered requests (queueing, batching and the run). */
  readonly latencyMs: LatencySummary;
  /** Time requests waited before their run started. */
  readonly queueMs: LatencySummary;
  readonly batches?: { readonly count: number; readonly meanRows: number; readonly sizes: Readonly<Record<number, number>> };
  /** Its share of the device serving now, as the device's scheduler sees it (docs/scheduling.md). */
  readonly share?: Pick<DeviceShare, 'entitledRateHz' | 'receivedRateHz' | 'entitledShare' | 'receivedShare'>;
  readonly replicas: readonly ReplicaStats[];
}

/** A place a service can run its model: a local device, or a peer. */
type Candidate = Replica | PeerReplica;

/** Live runs that decide the executor of a model whose warm-up could not be measured. */
const LIVE_SAMPLES_TO_DECIDE = 16;

/** A device error that moves a request to the next device rather than failing it. */
class MovedOff extends Error {}

/**
 * One model served across the devices of a preference list. `start()` places it on the first
 * device that can run it and admits its declared rate (HAL + pool), loads and measures it;
 * `infer()` runs it through the device's scheduler (priority share, deadlines), batched when
 * asked; when that device errors, hangs past its timeout or disappears from the probes, it is
 * marked down, waiting and new requests move to the next device in the list (loading the model
 * there), and the failed device is retried with backoff and used again once it runs. No request
 * is lost or answered twice: each `infer` settles exactly once, with outputs or an error.
 *
 * `infer` calls may overlap. `start` and `stop` must not overlap each other.
 */
export class InferenceService {
  private readonly modelRef: string | ModelSource;
  private readonly options: InferenceServiceOptions;
  private model: ModelSource | undefined;
  private pool: ResourcePool | undefined;
  private replicas: Candidate[] = [];
  /** Reservation (and so scheduler task) per replica that is up. */
  private readonly reservations = new Map<Candidate, Reservation>();
  private signature: { inputs: readonly TensorSpec[]; outputs: readonly TensorSpec[] } | undefined;
  private batcher: Batcher | undefined;
  private layout: BatchLayout | undefined;
  /** A replica being brought up (failover), shared by the requests that need it. */
  private raising: Promise<Candidate | undefined> | undefined;
  private onPoolEvent: ((device: DeviceInfo) => void) | undefined;
  private readonly watchdog = new Watchdog();
  private readonly window = new LatencyWindow(1024);
  private readonly queueWindow = new LatencyWindow(1024);
  private requests = 0;
  private errors = 0;
  private expired = 0;
  private misses = 0;
  private failovers = 0;
  private stopped = false;

  constructor(model: string | ModelSource, options: InferenceServiceOptions = {}) {
    this.modelRef = model;
    this.options = options;
  }

  get started(): boolean {
    return this.signature !== undefined && !this.stopped;
  }

  /** The local device new requests go to now (the standby's, while a peer serves). */
  get device(): DeviceInfo {
    const current = this.current();
    if (current instanceof Replica) return current.device;
    const local = this.replicas.find((r): r is Replica => r instanceof Replica && r.state === 'up') ?? this.replicas.find((r): r is Replica => r instanceof Replica);
    if (local === undefined) throw new ServiceError('EAI_SERVICE_REMOTE_ONLY', `${this.name} runs on peers only (${this.current().id}); it has no local device.`);
    return local.device;
  }

  /** Where new requests go now: a device id, or `peer:<target>`. */
  get target(): string {
    return this.current().id;
  }

  get engine(): string {
    const current = this.current();
    return current instanceof Replica ? current.engine.name : 'peer';
  }

  /** What executes underneath: the execution provider or tfjs backend. */
  get backend(): string {
    return this.currentModel().backend;
  }

  /** Better backends the engine passed over for this model, with why (e.g. TensorRT library missing). */
  get skipped(): readonly { readonly backend: string; readonly reason: string }[] {
    return this.currentModel().skipped ?? [];
  }

  /** What the user should know about how the model runs. */
  get warnings(): readonly string[] {
    return this.currentModel().warnings ?? [];
  }

  get inputs(): readonly TensorSpec[] {
    return this.require().inputs;
  }

  get outputs(): readonly TensorSpec[] {
    return this.require().outputs;
  }

  /**
   * Places, admits, loads and measures the model on the first device of the preference list that
   * can run it at the declared rate. Devices that fail to load it, or cannot give the rate, are
   * passed over (and stay candidates for failover); when none can, the error says why for each.
   */
  async start(): Promise<void> {
    if (this.signature !== undefined && !this.stopped) throw new ServiceError('EAI_SERVICE_STARTED', `${this.name} is already started; stop() it before starting again.`);
    this.stopped = false;
    const model = typeof this.modelRef === 'string' ? await detectModel(this.modelRef) : this.modelRef;
    this.model = model;
    const hal = this.options.hal ?? createBuiltinHal();
    this.pool = this.options.pool ?? (await ResourcePool.discover(hal));
    const preference = this.options.devices ?? [];
    const local = preference.filter((d) => !d.startsWith('peer:'));
    const { placements } = await hal.placements(model, this.pool.devices, local);
    const peerTargets = this.options.peers?.targets ?? [];
    // No candidate at all: place() builds the error that lists every refusal.
    if (placements.length === 0 && peerTargets.length === 0) await hal.place(model, this.pool.devices, local);
    this.replicas = this.candidates(placements, preference, model);
    // Peers have nothing to load: each is up until a request to it fails.
    for (const r of this.replicas) if (r instanceof PeerReplica) await this.bringUp(r);
    if (this.replicas[0] instanceof PeerReplica) await this.prepareStandby();
    const refusals: Error[] = [];
    for (const replica of this.replicas) {
      try {
        await this.bringUp(replica);
        break;
      } catch (error) {
        if (error instanceof ModelError) {
          await this.stop();
          throw error; // the model itself is bad: no device will do better
        }
        refusals.push(error instanceof Error ? error : new Error(String(error)));
        replica.state = 'idle';
      }
    }
    if (!this.replicas.some((r) => r.state === 'up')) {
      await this.stop();
      const first = refusals[0];
      if (refusals.length === 1 && first !== undefined) throw first;
      const admission = refusals.find((e) => e instanceof AdmissionError);
      const lines = refusals.map((e) => `  - ${e.message.split('\n').join('\n    ')}`);
      if (admission !== undefined) throw new AdmissionError('EAI_SCHED_ADMISSION', `${this.name} cannot start on any listed device:\n${lines.join('\n')}`, { details: { service: this.name } });
      throw new PlacementError('EAI_HAL_NO_DEVICE', `${this.name} could not be loaded on any listed device:\n${lines.join('\n')}`, { details: { service: this.name } });
    }
    if (this.options.batching !== undefined) {
      const { maxBatch, maxDelayMs } = this.options.batching;
      const layout = this.requireLayout();
      this.batcher = new Batcher({
        maxBatch,
        maxDelayMs,
        layout,
        run: (feeds, rows, deadline) => this.dispatch(feeds, rows, deadline),
        estimateMs: (rows) => this.current().cost.estimateMs(rows) ?? 0,
      });
    }
    this.onPoolEvent = (device) => this.deviceChanged(device);
    this.pool.on('lost', this.onPoolEvent);
    this.pool.on('changed', this.onPoolEvent);
    this.pool.on('found', this.onPoolEvent);
  }

  /** Local placements and peer targets in the order of the preference list. */
  private candidates(placements: readonly Placement[], preference: DevicePreference, model: ModelSource): Candidate[] {
    const retryMs = this.options.retry?.initialMs ?? 500;
    const peers = (this.options.peers?.targets ?? []).map((t) => new PeerReplica(this.options.peers?.transport as PeerTransport, t, t.model ?? path.basename(model.path), retryMs));
    const locals = placements.map((p) => new Replica(p, retryMs));
    // Devices one entry ranks equal (a kind with several devices) go least loaded first.
    const byLoad = (rs: Replica[]): Replica[] => {
      const load = new Map(rs.map((r) => [r, this.pool?.load(r.id) ?? 0]));
      return [...rs].sort((a, b) => (load.get(a) ?? 0) - (load.get(b) ?? 0));
    };
    if (preference.length === 0) {
      const kinds = [...new Set(locals.map((r) => r.device.kind))];
      return [...kinds.flatMap((k) => byLoad(locals.filter((r) => r.device.kind === k))), ...peers];
    }
    const out: Candidate[] = [];
    for (const entry of preference) {
      if (entry.startsWith('peer:')) {
        const peer = peers.find((p) => p.id === entry);
        if (peer === undefined) throw new ServiceError('EAI_SERVICE_BAD_PEER', `${this.name}: '${entry}' in devices names no peer target; targets: ${peers.map((p) => p.id).join(', ') || 'none (pass peers: { transport, targets })'}.`);
        if (!out.includes(peer)) out.push(peer);
        continue;
      }
      for (const r of byLoad(locals.filter((r) => !out.includes(r) && (r.device.kind === entry || r.device.id === entry)))) out.push(r);
    }
    for (const p of peers) if (!out.includes(p)) out.push(p);
    return out;
  }

  /**
   * A peer-first service still needs the model's signature (to check inputs, to batch) and
   * somewhere to fail over to: the best local candidate is loaded now as the standby. With no
   * local candidate the signature must be given (`peers.signature`).
   */
  private async prepareStandby(): Promise<void> {
    const local = this.replicas.find((r): r is Replica => r instanceof Replica);
    if (local !== undefined) {
      try {
        await this.bringUp(local);
        return;
      } catch {
        local.state = 'idle';
      }
    }
    const given = this.options.peers?.signature;
    if (given === undefined) throw new ServiceError('EAI_SERVICE_BAD_PEER', `${this.name} runs on peers only and no local device could load it to learn its inputs; pass peers.signature ({ inputs, outputs }).`);
    this.signature = { inputs: given.inputs, outputs: given.outputs };
  }

  /**
   * Runs the model once. Inputs are checked against the model first (a wrong name, dtype or shape
   * fails at once, on no device). With batching, the request may share a run with others.
   */
  async infer(inputs: Feeds, options: InferOptions = {}): Promise<Outputs> {
    const signature = this.require();
    const t0 = performance.now();
    this.requests++;
    try {
      // Without batching the engine checks the inputs itself (a bad one is not a device fault, so
      // it is not retried elsewhere); a batch must not be spoilt by one bad request, so check first.
      if (this.batcher !== undefined) checkFeeds(signature.inputs, inputs, this.name);
      const after = options.deadlineMs ?? this.options.deadlineMs;
      const deadline = options.deadline ?? (after === undefined ? undefined : t0 + after);
      const outputs = this.batcher !== undefined ? await this.batcher.submit(inputs, deadline === undefined ? {} : { deadline }) : await this.dispatch(inputs, 1, deadline);
      const t1 = performance.now();
      this.window.add(t1 - t0);
      if (deadline !== undefined && t1 > deadline) this.misses++;
      return outputs;
    } catch (error) {
      this.errors++;
      if (error instanceof DeadlineError) this.expired++;
      throw error;
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.batcher?.close(new ServiceError('EAI_SERVICE_STOPPED', `${this.name} was stopped before this request ran.`));
    this.batcher = undefined;
    if (this.onPoolEvent !== undefined && this.pool !== undefined) {
      this.pool.off('lost', this.onPoolEvent);
      this.pool.off('changed', this.onPoolEvent);
      this.pool.off('found', this.onPoolEvent);
    }
    this.onPoolEvent = undefined;
    this.watchdog.stop();
    for (const replica of this.replicas) {
      clearTimeout(replica.retryTimer);
      this.release(replica, new ServiceError('EAI_SERVICE_STOPPED', `${this.name} was stopped before this request ran.`));
      replica.state = 'stopped';
      if (replica instanceof Replica) await replica.unload();
    }
  }

  stats(): ServiceStats {
    const replica = this.current();
    const model = replica instanceof Replica ? replica.loaded : undefined;
    const batches = this.batcher?.stats();
    const task = this.reservations.get(replica)?.task;
    const share = task === undefined ? undefined : this.pool?.shares(replica.id).find((s) => s.task === task);
    return {
      name: this.name,
      device: replica.id,
      engine: replica instanceof Replica ? replica.engine.name : 'peer',
      backend: model?.backend ?? (replica instanceof PeerReplica ? 'remote' : 'none'),
      executor: model?.executor ?? 'engine',
      ...(replica.warmupMs === undefined ? {} : { warmupMs: replica.warmupMs }),
      priority: this.priority,
      ...(this.options.rateHz === undefined ? {} : { rateHz: this.options.rateHz }),
      requests: this.requests,
      errors: this.errors,
      expired: this.expired,
      deadlineMisses: this.misses,
      failovers: this.failovers,
      latencyMs: this.window.summary(),
      queueMs: this.queueWindow.summary(),
      ...(batches === undefined ? {} : { batches: { count: batches.batches, meanRows: batches.meanBatch, sizes: batches.sizes } }),
      ...(share === undefined ? {} : { share: { entitledRateHz: share.entitledRateHz, receivedRateHz: share.receivedRateHz, entitledShare: share.entitledShare, receivedShare: share.receivedShare } }),
      replicas: this.replicas.map((r) => ({
        device: r.id,
        engine: r instanceof Replica ? r.engine.name : 'peer',
        state: r.state,
        ...(r instanceof Replica && r.loaded !== undefined ? { backend: r.loaded.backend, executor: r.loaded.executor ?? 'engine' } : {}),
        ...(r.downReason === undefined ? {} : { reason: r.downReason }),
        costMs: Object.fromEntries(Object.entries(r.cost.snapshot()).map(([rows, c]) => [rows, Number(c.ms.toFixed(3))])),
      })),
    };
  }

  /** The reservation (scheduler task) on the device serving now: what `pool.shares()` reports it under. */
  get reservation(): Reservation | undefined {
    const replica = this.replicas.find((r) => r.state === 'up');
    return replica === undefined ? undefined : this.reservations.get(replica);
  }

  /**
   * Sends one run (a request or a batch of `rows`) to the best device that is up, and on a device
   * fault moves it to the next, until one answers or every candidate has failed it.
   */
  private async dispatch(feeds: Feeds, rows: number, deadline: number | undefined): Promise<Outputs> {
    const failedOn = new Set<Candidate>();
    let lastFault: Error | undefined;
    for (;;) {
      if (this.stopped) throw new ServiceError('EAI_SERVICE_STOPPED', `${this.name} was stopped before this request ran.`);
      const replica = this.replicas.find((r) => r.state === 'up' && !failedOn.has(r)) ?? (await this.failOver(failedOn));
      if (replica === undefined) {
        throw new DeviceUnavailableError('EAI_SERVICE_NO_DEVICE', `no device can run ${this.name} now${lastFault === undefined ? '' : ` (last failure: ${lastFault.message})`}; down: ${this.replicas.filter((r) => r.state === 'down').map((r) => `${r.id} (${r.downReason ?? 'failed'})`).join(', ') || 'none'}`, 'check the devices with `aios devices`; the service retries failed devices with backoff and resumes by itself', { ...(lastFault === undefined ? {} : { cause: lastFault }), details: { service: this.name } });
      }
      try {
        return await this.runOn(replica, feeds, rows, deadline);
      } catch (error) {
        if (error instanceof MovedOff) continue; // its device went down while it waited: try again
        if (!this.isFault(error)) throw error;
        lastFault = error as Error;
        failedOn.add(replica);
        this.fault(replica, error as Error);
      }
    }
  }

  private async runOn(replica: Candidate, feeds: Feeds, rows: number, deadline: number | undefined): Promise<Outputs> {
    if (replica instanceof PeerReplica) return this.runOnPeer(replica, feeds, rows, deadline);
    const reservation = this.reservations.get(replica);
    const model = replica.loaded;
    if (reservation === undefined || model === undefined || this.pool === undefined) throw new MovedOff();
    const queued = performance.now();
    const timeoutMs = this.options.timeoutMs ?? Math.max(2000, 20 * (replica.cost.estimateMs(rows) ?? 100));
    const outputs = await this.pool.scheduler(replica.device.id).submit(reservation.task, {
      costMs: replica.cost.estimateMs(rows) ?? 0,
      ...(deadline === undefined ? {} : { deadline }),
      run: async () => {
        const t0 = performance.now();
        this.queueWindow.add(t0 - queued);
        const result = await this.watchdog.watch(model.run(feeds), timeoutMs, () => new DeviceUnavailableError('EAI_DEVICE_TIMEOUT', `${replica.device.id} did not finish a run of ${this.name} within ${timeoutMs} ms`, 'check the device (aios devices --watch); the service moved the request to the next device'));
        replica.cost.observe(rows, performance.now() - t0);
        if (replica.executorUndecided && (replica.cost.snapshot()[1]?.samples ?? 0) >= LIVE_SAMPLES_TO_DECIDE) void replica.decideExecutor().catch(() => undefined);
        return result;
      },
    });
    replica.failures = 0;
    return outputs;
  }

  private async runOnPeer(peer: PeerReplica, feeds: Feeds, rows: number, deadline: number | undefined): Promise<Outputs> {
    const now = performance.now();
    if (deadline !== undefined && deadline <= now) throw new DeadlineError('EAI_DEADLINE_EXPIRED', `a request to ${this.name} reached its deadline before it could be sent to ${peer.id}.`, { details: { target: peer.id } });
    const t0 = performance.now();
    const reply = await peer.transport.request(peer.target.target, {
      model: peer.model,
      feeds,
      timeoutMs: peer.timeoutMs,
      ...(deadline === undefined ? {} : { deadlineUnixMs: Date.now() + (deadline - now) }),
    });
    peer.cost.observe(rows, performance.now() - t0);
    peer.failures = 0;
    return reply.outputs;
  }

  /** Device trouble (moves the request on) rather than a problem with the request itself. */
  private isFault(error: unknown): boolean {
    if (error instanceof DeviceUnavailableError || error instanceof PeerError) return true;
    return error instanceof ModelError && error.code === 'EAI_MODEL_RUN_FAILED';
  }

  /**
   * Counts a failure against a replica. A device that is gone, hung or crashed is down at once;
   * a run that merely failed marks it down after three in a row (one bad run may be the input's).
   */
  private fault(replica: Candidate, error: Error): void {
    replica.failures++;
    if (replica.state !== 'up') return;
    const gone = error instanceof DeviceUnavailableError || (error instanceof PeerError && (error.code === 'EAI_PEER_TIMEOUT' || error.code === 'EAI_PEER_UNREACHABLE'));
    if (gone || replica.failures >= 3) this.markDown(replica, error.message);
  }

  private markDown(replica: Candidate, reason: string): void {
    if (replica.state !== 'up') return;
    replica.state = 'down';
    replica.downReason = reason;
    this.failovers++;
    // Requests still queued for it go back to dispatch, which finds them another device.
    this.release(replica, new MovedOff());
    if (replica instanceof Replica) void replica.unload();
    this.scheduleRetry(replica);
  }

  /** Brings up the next candidate not yet failed for this run; one attempt shared by every waiting request. */
  private failOver(failedOn: ReadonlySet<Candidate>): Promise<Candidate | undefined> {
    this.raising ??= (async (): Promise<Candidate | undefined> => {
      try {
        for (const replica of this.replicas) {
          if (replica.state !== 'idle' || failedOn.has(replica)) continue;
          try {
            await this.bringUp(replica);
            return replica;
          } catch (error) {
            replica.state = 'down';
            replica.downReason = error instanceof Error ? error.message : String(error);
            this.scheduleRetry(replica);
          }
        }
        return undefined;
      } finally {
        this.raising = undefined;
      }
    })();
    return this.raising.then((r) => (r !== undefined && !failedOn.has(r) && r.state === 'up' ? r : this.replicas.find((x) => x.state === 'up' && !failedOn.has(x))));
  }

  /** Reserves, admits, loads and measures the model on one replica's device. */
  private async bringUp(replica: Candidate): Promise<void> {
    if (replica instanceof PeerReplica) {
      // Nothing to load: the next request is its test.
      replica.state = 'up';
      replica.downReason = undefined;
      replica.failures = 0;
      return;
    }
    const pool = this.pool;
    const model = this.model;
    if (pool === undefined || model === undefined) throw new ServiceError('EAI_SERVICE_NOT_STARTED', `${this.name} is not started; call start() first.`);
    let reservation = pool.reserve(replica.id, {
      owner: this.name,
      memoryBytes: await weightBytes(model.path),
      priority: this.priority,
      ...(this.options.rateHz === undefined ? {} : { rateHz: this.options.rateHz }),
      costMs: () => replica.cost.estimateMs(1),
      admitLater: true,
    });
    try {
      const loaded = await replica.load(model, {
        executor: this.options.executor ?? 'auto',
        load: {
          ...(this.options.threads === undefined ? {} : { threads: this.options.threads }),
          ...(this.options.graphOptimization === undefined ? {} : { graphOptimization: this.options.graphOptimization }),
          ...(this.options.engineOptions === undefined ? {} : { engine: this.options.engineOptions }),
        },
        warmupFeeds: this.options.warmupFeeds ?? {},
        ...(this.options.batching === undefined ? {} : { warmupBatch: (rows: number) => this.batchOfZeros(rows) }),
      });
      if (this.signature === undefined) this.signature = { inputs: loaded.inputs, outputs: loaded.outputs };
      // What is known of the activations: the inputs and outputs of its largest batch live on
      // the device beside the weights. (Intermediate buffers are the engine's and not visible.)
      const rows = this.options.batching?.maxBatch ?? 1;
      reservation = pool.resize(reservation, reservation.memoryBytes + rows * (tensorBytes(loaded.inputs) + tensorBytes(loaded.outputs)));
      // Admission needs the measured cost, so it comes after the warm-up.
      pool.admit(reservation);
      replica.state = 'up';
      replica.downReason = undefined;
      replica.failures = 0;
      replica.retryDelayMs = this.options.retry?.initialMs ?? 500;
      this.reservations.set(replica, reservation);
    } catch (error) {
      pool.release(reservation);
      await replica.unload();
      throw error;
    }
  }

  /** Once a better device serves again, the ones below it that took over are unloaded, freeing their memory. */
  private dropStandbys(): void {
    const best = this.replicas.findIndex((r) => r.state === 'up');
    // A peer serving keeps the local standby loaded: failing over to local must be instant.
    if (this.replicas[best] instanceof PeerReplica) return;
    this.replicas.forEach((replica, i) => {
      if (i <= best || replica.state !== 'up') return;
      replica.state = 'idle';
      this.release(replica, new MovedOff());
      if (replica instanceof Replica) void replica.unload();
    });
  }

  private scheduleRetry(replica: Candidate): void {
    if (this.stopped) return;
    clearTimeout(replica.retryTimer);
    const delay = replica.retryDelayMs;
    replica.retryDelayMs = Math.min(delay * 2, this.options.retry?.maxMs ?? 30_000);
    replica.retryTimer = setTimeout(() => void this.retry(replica), delay);
    replica.retryTimer.unref();
  }

  private async retry(replica: Candidate): Promise<void> {
    if (this.stopped || replica.state !== 'down') return;
    const device = replica instanceof Replica ? this.pool?.device(replica.id) : undefined;
    if (replica instanceof Replica && (device === undefined || device.status.state !== 'ready')) {
      this.scheduleRetry(replica);
      return;
    }
    // Only worth loading if it would serve: above the device serving now.
    const serving = this.replicas.findIndex((r) => r.state === 'up');
    const index = this.replicas.indexOf(replica);
    if (serving !== -1 && serving < index) {
      replica.state = 'idle';
      return;
    }
    // It stays `down` while it is tried, so no request is sent to it half-loaded.
    try {
      await this.bringUp(replica);
      this.dropStandbys();
    } catch (error) {
      replica.state = 'down';
      replica.downReason = `retry failed: ${error instanceof Error ? error.message : String(error)}`;
      this.scheduleRetry(replica);
    }
  }

  /** The pool re-probed: a device gone takes its replica down; one back is retried now. */
  private deviceChanged(device: DeviceInfo): void {
    const replica = this.replicas.find((r) => r instanceof Replica && r.id === device.id);
    if (replica === undefined) return;
    if (device.status.state !== 'ready') {
      this.markDown(replica, device.status.reason);
      return;
    }
    if (replica.state === 'down') {
      clearTimeout(replica.retryTimer);
      void this.retry(replica);
    }
  }

  /** Gives up a replica's reservation; its queued requests are rejected with `reason`. */
  private release(replica: Candidate, reason: Error): void {
    const reservation = this.reservations.get(replica);
    if (reservation === undefined || this.pool === undefined) return;
    this.reservations.delete(replica);
    this.pool.release(reservation, reason);
  }

  private requireLayout(): BatchLayout {
    const signature = this.require();
    this.layout ??= batchLayout(signature.inputs, signature.outputs, this.name, this.options.batching?.symbol);
    return this.layout;
  }

  /** Warm-up input for a batch of `rows`: the warm-up feeds stacked, or undefined if they cannot be. */
  private batchOfZeros(rows: number): Feeds | undefined {
    if (this.signature === undefined || this.options.batching === undefined || rows > this.options.batching.maxBatch) return undefined;
    try {
      const one = warmupFeedsFor(this.signature.inputs, this.options.warmupFeeds ?? {});
      return stack(Array.from({ length: rows }, () => one), this.requireLayout()).feeds;
    } catch {
      return undefined;
    }
  }

  private get priority(): number {
    return this.options.priority ?? 1;
  }

  private get name(): string {
    if (this.options.name !== undefined) return this.options.name;
    return path.basename(typeof this.modelRef === 'string' ? this.modelRef : this.modelRef.path);
  }

  private require(): { inputs: readonly TensorSpec[]; outputs: readonly TensorSpec[] } {
    if (this.signature === undefined || this.stopped) throw new ServiceError('EAI_SERVICE_NOT_STARTED', `${this.name} is not started; call start() first.`);
    return this.signature;
  }

  /** The candidate new requests go to: the best one up, else the best candidate. */
  private current(): Candidate {
    this.require();
    const replica = this.replicas.find((r) => r.state === 'up') ?? this.replicas[0];
    if (replica === undefined) throw new ServiceError('EAI_SERVICE_NOT_STARTED', `${this.name} is not started; call start() first.`);
    return replica;
  }

  private currentModel(): NonNullable<Replica['loaded']> {
    const current = this.current();
    const local = current instanceof Replica ? current : this.replicas.find((r): r is Replica => r instanceof Replica && r.loaded !== undefined);
    const model = local?.loaded;
    if (model === undefined) throw new DeviceUnavailableError('EAI_SERVICE_NO_DEVICE', `no device serves ${this.name} now`, 'wait for the service to fail over or its device to recover');
    return model;
  }
}

/** One request's worth of warm-up input: what was given, zeros (dynamic dimensions as 1) for the rest. */
function warmupFeedsFor(specs: readonly TensorSpec[], given: Feeds): Feeds {
  const feeds: Record<string, Tensor> = {};
  for (const spec of specs) feeds[spec.name] = given[spec.name] ?? Tensor.zeros(spec.dtype, spec.shape.map((d) => d ?? 1));
  return feeds;
}

/** Bytes of one row of each tensor (dynamic dimensions counted as 1). */
function tensorBytes(specs: readonly TensorSpec[]): number {
  return specs.reduce((sum, s) => sum + bytesPerElement(s.dtype) * s.shape.reduce<number>((n, d) => n * (d ?? 1), 1), 0);
}

/** Bytes of weights on disk: the file, or every file of a model folder (TF.js shards). */
async function weightBytes(modelPath: string): Promise<number> {
  const stat = await fs.stat(modelPath);
  if (!stat.isDirectory()) return stat.size;
  let total = 0;
  for (const entry of await fs.readdir(modelPath, { withFileTypes: true })) {
    if (entry.isFile()) total += (await fs.stat(path.join(modelPath, entry.name))).size;
  }
  return total;
}
