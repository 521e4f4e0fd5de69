import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, rename } from 'node:fs/promises';
import path from 'node:path';
import { inspectBundle } from '../../models/bundle/bundle.js';
import { fileSource } from '../../models/bundle/tar.js';
import { aios } from '../proto/gen/aios.js';
import { FleetError } from '../fleet/errors.js';
import type { CommandQueue } from './commands.js';
import type { Database } from './database.js';
import { chunkDigests, type BundleFile, type BundleQuery } from './ota-server.js';

/**
 * Deployments of a model bundle to devices: the controller keeps the bundle (content-addressed,
 * in its state folder), the digests of its chunks, and the health policy; each target device gets
 * a signed Deploy command, and its progress events move its row (sent → DOWNLOADING → … →
 * COMMITTED, ROLLED_BACK or FAILED). The bundle server hands chunks only to a deployment's
 * targets. Rollouts (rollouts.ts) pick the targets stage by stage.
 */
export interface HealthPolicy {
  /** Seconds the new version must run well before the device commits it. */
  readonly windowS: number;
  /** Largest share of failed runs, 0..1 (0: none). */
  readonly maxErrorRate: number;
  /** Largest p99 latency of the switched stages, ms (0: not checked). */
  readonly maxLatencyP99Ms: number;
}

export interface DeploymentInfo {
  readonly id: string;
  readonly model: string;
  readonly version: string;
  readonly bundleSha256: string;
  readonly bundleSize: number;
  readonly chunkSize: number;
  readonly health: HealthPolicy;
  readonly createdUnixMs: number;
}

export type TargetPhase = 'sent' | 'DOWNLOADING' | 'VERIFYING' | 'INSTALLING' | 'ACTIVATING' | 'HEALTH_CHECK' | 'COMMITTED' | 'ROLLED_BACK' | 'FAILED';

export interface TargetStatus {
  readonly deviceId: string;
  readonly sequence: number;
  readonly phase: TargetPhase;
  readonly bytesDone: number;
  readonly code?: string;
  readonly reason?: string;
  readonly updatedUnixMs: number;
}

/** 256 KiB chunks: small enough to interleave with telemetry, few enough that the Deploy command stays small (a 1 GB bundle: 4,000 digests, 128 KB). */
export const DEFAULT_CHUNK_SIZE = 256 * 1024;
export const DEFAULT_HEALTH: HealthPolicy = { windowS: 30, maxErrorRate: 0.01, maxLatencyP99Ms: 0 };

export class Deployments {
  readonly #db: Database;
  readonly #state: string;
  readonly #commands: CommandQueue;
  readonly #now: () => number;
  readonly #listeners: ((deploymentId: string, target: TargetStatus) => void)[] = [];

  constructor(db: Database, options: { readonly state: string; readonly commands: CommandQueue; readonly now?: () => number }) {
    this.#db = db;
    this.#state = options.state;
    this.#commands = options.commands;
    this.#now = options.now ?? Date.now;
  }

  onTarget(listener: (deploymentId: string, target: TargetStatus) => void): void {
    this.#listeners.push(listener);
  }

  /**
   * Registers a bundle for deployment: copied into the controller's state (so the source may go
   * away), its model and version read from its manifest, its chunks hashed. Devices verify the
   * bundle's signatures themselves before installing; the controller only ships it.
   */
  async create(bundle: string, options: { readonly health?: Partial<HealthPolicy>; readonly chunkSize?: number; readonly id?: string } = {}): Promise<DeploymentInfo> {
    const inspected = await inspectBundle(fileSource(bundle));
    const predicate = inspected.statement?.predicate;
    if (predicate === undefined) throw new FleetError('EAI_FLEET_DEPLOY_BUNDLE', `${bundle} is not a readable model bundle (${inspected.issues.join('; ') || 'no manifest'}); pack it with aios bundle pack.`, { details: { bundle } });
    const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
    const digests = await chunkDigests(bundle, chunkSize);
    const dir = path.join(this.#state, 'bundles');
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const stored = path.join(dir, `${digests.sha256}.bundle`);
    const temp = `${stored}.tmp-${process.pid}`;
    await copyFile(bundle, temp);
    await rename(temp, stored);
    const health = { ...DEFAULT_HEALTH, ...options.health };
    const id = options.id ?? `${predicate.name}-${predicate.version}-${randomBytes(3).toString('hex')}`;
    const created = this.#now();
    this.#db
      .prepare('INSERT INTO deployments (id, model, version, bundle_path, bundle_sha256, bundle_size, chunk_size, chunk_sha256, health, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)')
      .run(id, predicate.name, predicate.version, stored, digests.sha256, digests.size, chunkSize, Buffer.concat(digests.chunkSha256.map((d) => Buffer.from(d))), JSON.stringify(health), created);
    return { id, model: predicate.name, version: predicate.version, bundleSha256: digests.sha256, bundleSize: digests.size, chunkSize, health, createdUnixMs: created };
  }

  /** Sends the Deploy command to each device not yet targeted; returns their rows. */
  async target(deploymentId: string, devices: readonly string[], options: { readonly pipelines?: readonly string[]; readonly ttlMs?: number } = {}): Promise<readonly TargetStatus[]> {
    const d = this.#row(deploymentId);
    const digests = Buffer.from(d.chunk_sha256);
    const chunkSha256: Buffer[] = [];
    for (let at = 0; at < digests.length; at += 32) chunkSha256.push(digests.subarray(at, at + 32));
    const health = JSON.parse(d.health) as HealthPolicy;
    for (const device of devices) {
      if (this.#db.prepare('SELECT 1 FROM deployment_targets WHERE deployment_id = ? AND device_id = ?').get(deploymentId, device) !== undefined) continue;
      const command = await this.#commands.send(
        device,
        { deploy: { deploymentId, model: d.model, version: d.version, bundleSize: d.bundle_size, bundleSha256: d.bundle_sha256, chunkSize: d.chunk_size, chunkSha256, pipelines: [...(options.pipelines ?? [])], health: { windowS: health.windowS, maxErrorRate: health.maxErrorRate, maxLatencyP99Ms: health.maxLatencyP99Ms } } },
        // A big bundle on a slow link takes a while to start; the command itself only has to arrive.
        { ttlMs: options.ttlMs ?? 24 * 3_600_000 },
      );
      this.#db.prepare("INSERT INTO deployment_targets (deployment_id, device_id, sequence, phase, updated_ms) VALUES (?, ?, ?, 'sent', ?)").run(deploymentId, device, command.sequence, this.#now());
    }
    return this.targets(deploymentId);
  }

  /** A device's progress event for one of its deployments. */
  progress(deviceId: string, p: aios.fleet.v1.IDeploymentProgress): void {
    const phase = aios.fleet.v1.DeploymentProgress.Phase[p.phase ?? 0] as TargetPhase | 'PHASE_UNSPECIFIED' | undefined;
    if (phase === undefined || phase === 'PHASE_UNSPECIFIED' || !p.deploymentId) return;
    // Phases only move forward; a replayed earlier event (the device's spool sends at least once) changes nothing.
    const order: readonly string[] = ['sent', 'DOWNLOADING', 'VERIFYING', 'INSTALLING', 'ACTIVATING', 'HEALTH_CHECK', 'COMMITTED', 'ROLLED_BACK', 'FAILED'];
    const row = this.#db.prepare('SELECT phase FROM deployment_targets WHERE deployment_id = ? AND device_id = ?').get(p.deploymentId, deviceId) as { phase: string } | undefined;
    if (row === undefined) return;
    const final = ['COMMITTED', 'ROLLED_BACK', 'FAILED'];
    if (final.includes(row.phase) && !(row.phase === 'COMMITTED' && phase === 'ROLLED_BACK')) return;
    if (!final.includes(phase) && order.indexOf(phase) < order.indexOf(row.phase)) return;
    this.#db
      .prepare('UPDATE deployment_targets SET phase = ?, bytes_done = MAX(bytes_done, ?), code = ?, reason = ?, updated_ms = ? WHERE deployment_id = ? AND device_id = ?')
      .run(phase, Number(p.bytesDone ?? 0), p.code || null, p.reason || null, this.#now(), p.deploymentId, deviceId);
    const target = this.targets(p.deploymentId).find((t) => t.deviceId === deviceId) as TargetStatus;
    for (const l of this.#listeners) l(p.deploymentId, target);
  }

  /** What the bundle server may send: only a deployment's bundle, only to its targets. */
  bundleFor(query: BundleQuery): BundleFile | undefined {
    const row = this.#db
      .prepare('SELECT d.bundle_path AS path, d.chunk_size AS chunkSize FROM deployments d JOIN deployment_targets t ON t.deployment_id = d.id WHERE d.id = ? AND t.device_id = ? AND d.bundle_sha256 = ?')
      .get(query.deploymentId, query.device, query.bundleSha256) as BundleFile | undefined;
    return row;
  }

  get(deploymentId: string): DeploymentInfo {
    const d = this.#row(deploymentId);
    return { id: d.id, model: d.model, version: d.version, bundleSha256: d.bundle_sha256, bundleSize: d.bundle_size, chunkSize: d.chunk_size, health: JSON.parse(d.health) as HealthPolicy, createdUnixMs: d.created_ms };
  }

  list(): readonly DeploymentInfo[] {
    return (this.#db.prepare('SELECT id FROM deployments ORDER BY created_ms DESC').all() as { id: string }[]).map((r) => this.get(r.id));
  }

  targets(deploymentId: string): readonly TargetStatus[] {
    const rows = this.#db.prepare('SELECT * FROM deployment_targets WHERE deployment_id = ? ORDER BY device_id').all(deploymentId) as { device_id: string; sequence: number; phase: TargetPhase; bytes_done: number; code: string | null; reason: string | null; updated_ms: number }[];
    return rows.map((r) => ({ deviceId: r.device_id, sequence: r.sequence, phase: r.phase, bytesDone: r.bytes_done, ...(r.code === null ? {} : { code: r.code }), ...(r.reason === null ? {} : { reason: r.reason }), updatedUnixMs: r.updated_ms }));
  }

  #row(deploymentId: string): DeploymentRow {
    const d = this.#db.prepare('SELECT * FROM deployments WHERE id = ?').get(deploymentId) as DeploymentRow | undefined;
    if (d === undefined) throw new FleetError('EAI_FLEET_DEPLOYMENT_UNKNOWN', `there is no deployment '${deploymentId}'; list them with aios fleet rollouts.`, { details: { deploymentId } });
    return d;
  }
}

interface DeploymentRow {
  id: string;
  model: string;
  version: string;
  bundle_path: string;
  bundle_sha256: string;
  bundle_size: number;
  chunk_size: number;
  chunk_sha256: Uint8Array;
  health: string;
  created_ms: number;
}
