import { createHash, randomBytes } from 'node:crypto';
import { access, copyFile, mkdir, open, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { inspectBundle } from '../../models/bundle/bundle.js';
import { fileSource } from '../../models/bundle/tar.js';
import { aios } from '../proto/gen/aios.js';
import { FleetError } from '../fleet/errors.js';
import type { X25519Identity } from '../../models/bundle/age/keys.js';
import type { CommandQueue } from './commands.js';
import type { ControllerStore, Sql } from './store.js';
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
  /** The bundle is encrypted to a key released to each device only after a trusted attestation. */
  readonly keyRelease: boolean;
}

export type TargetPhase = 'sent' | 'DOWNLOADING' | 'AWAITING_KEY' | 'VERIFYING' | 'INSTALLING' | 'ACTIVATING' | 'HEALTH_CHECK' | 'COMMITTED' | 'ROLLED_BACK' | 'FAILED';

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
/** Rows a bundle is kept in by a shared store: 1 MiB, whatever the chunk size devices fetch. */
const STORE_PIECE = 1024 * 1024;

export class Deployments {
  readonly #db: ControllerStore;
  readonly #state: string;
  /** Bundles being copied out of a shared store, by digest: one copy however many devices ask. */
  readonly #fetching = new Map<string, Promise<void>>();
  readonly #commands: CommandQueue;
  readonly #now: () => number;
  readonly #listeners: ((deploymentId: string, target: TargetStatus) => void)[] = [];

  constructor(db: ControllerStore, options: { readonly state: string; readonly commands: CommandQueue; readonly now?: () => number }) {
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
  async create(bundle: string, options: { readonly health?: Partial<HealthPolicy>; readonly chunkSize?: number; readonly id?: string; readonly releaseKey?: X25519Identity } = {}): Promise<DeploymentInfo> {
    const inspected = await inspectBundle(fileSource(bundle));
    const predicate = inspected.statement?.predicate;
    if (predicate === undefined) throw new FleetError('EAI_FLEET_DEPLOY_BUNDLE', `${bundle} is not a readable model bundle (${inspected.issues.join('; ') || 'no manifest'}); pack it with aios bundle pack.`, { details: { bundle } });
    const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
    const digests = await chunkDigests(bundle, chunkSize);
    const dir = path.join(this.#state, 'bundles');
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const stored = this.#bundlePath(digests.sha256);
    const temp = `${stored}.tmp-${process.pid}`;
    await copyFile(bundle, temp);
    await rename(temp, stored);
    if (this.#db.shared) await this.#keepInStore(stored, digests.sha256);
    const health = { ...DEFAULT_HEALTH, ...options.health };
    const id = options.id ?? `${predicate.name}-${predicate.version}-${randomBytes(3).toString('hex')}`;
    const created = this.#now();
    await this.#db.run(
      'INSERT INTO deployments (id, model, version, bundle_path, bundle_sha256, bundle_size, chunk_size, chunk_sha256, health, created_ms, manifest_sha256, release_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
      id,
      predicate.name,
      predicate.version,
      stored,
      digests.sha256,
      digests.size,
      chunkSize,
      Buffer.concat(digests.chunkSha256.map((d) => Buffer.from(d))),
      JSON.stringify(health),
      created,
      inspected.payloadSha256,
      options.releaseKey?.secretKey() ?? null,
    );
    return { id, model: predicate.name, version: predicate.version, bundleSha256: digests.sha256, bundleSize: digests.size, chunkSize, health, createdUnixMs: created, keyRelease: options.releaseKey !== undefined };
  }

  /** Sends the Deploy command to each device not yet targeted; returns their rows. */
  async target(deploymentId: string, devices: readonly string[], options: { readonly pipelines?: readonly string[]; readonly ttlMs?: number } = {}): Promise<readonly TargetStatus[]> {
    const d = await this.#row(deploymentId);
    const digests = Buffer.from(d.chunk_sha256);
    const chunkSha256: Buffer[] = [];
    for (let at = 0; at < digests.length; at += 32) chunkSha256.push(digests.subarray(at, at + 32));
    const health = JSON.parse(d.health) as HealthPolicy;
    for (const device of devices) {
      // The target row first (sequence 0 until the command has one): the device's first chunk
      // request may reach the bundle server, on any replica, before send() returns.
      const claimed = await this.#db.run("INSERT INTO deployment_targets (deployment_id, device_id, sequence, phase, updated_ms) VALUES (?, ?, 0, 'sent', ?) ON CONFLICT DO NOTHING", deploymentId, device, this.#now());
      if (claimed === 0) continue;
      let command;
      try {
        command = await this.#commands.send(
          device,
          { deploy: { deploymentId, model: d.model, version: d.version, bundleSize: d.bundle_size, bundleSha256: d.bundle_sha256, chunkSize: d.chunk_size, chunkSha256, pipelines: [...(options.pipelines ?? [])], health: { windowS: health.windowS, maxErrorRate: health.maxErrorRate, maxLatencyP99Ms: health.maxLatencyP99Ms }, keyRelease: d.release_key !== null } },
          // A big bundle on a slow link takes a while to start; the command itself only has to arrive.
          { ttlMs: options.ttlMs ?? 24 * 3_600_000 },
        );
      } catch (error) {
        await this.#db.run("DELETE FROM deployment_targets WHERE deployment_id = ? AND device_id = ? AND sequence = 0 AND phase = 'sent'", deploymentId, device);
        throw error;
      }
      await this.#db.run('UPDATE deployment_targets SET sequence = ? WHERE deployment_id = ? AND device_id = ?', command.sequence, deploymentId, device);
    }
    return this.targets(deploymentId);
  }

  /** A device's progress event for one of its deployments. */
  async progress(deviceId: string, p: aios.fleet.v1.IDeploymentProgress): Promise<void> {
    const moved = await this.#db.transaction((tx) => this.record(tx, deviceId, p));
    if (moved !== undefined) this.announce(moved.deploymentId, moved.target);
  }

  /** Writes a progress event with `tx` (the registry's batch); returns the target it moved, to `announce` after the commit. */
  async record(tx: Sql, deviceId: string, p: aios.fleet.v1.IDeploymentProgress): Promise<{ deploymentId: string; target: TargetStatus } | undefined> {
    const phase = aios.fleet.v1.DeploymentProgress.Phase[p.phase ?? 0] as TargetPhase | 'PHASE_UNSPECIFIED' | undefined;
    if (phase === undefined || phase === 'PHASE_UNSPECIFIED' || !p.deploymentId) return undefined;
    // Phases only move forward; a replayed earlier event (the device's spool sends at least once) changes nothing.
    const order: readonly string[] = ['sent', 'DOWNLOADING', 'AWAITING_KEY', 'VERIFYING', 'INSTALLING', 'ACTIVATING', 'HEALTH_CHECK', 'COMMITTED', 'ROLLED_BACK', 'FAILED'];
    const row = await tx.get<{ phase: string }>('SELECT phase FROM deployment_targets WHERE deployment_id = ? AND device_id = ?', p.deploymentId, deviceId);
    if (row === undefined) return undefined;
    const final = ['COMMITTED', 'ROLLED_BACK', 'FAILED'];
    if (final.includes(row.phase) && !(row.phase === 'COMMITTED' && phase === 'ROLLED_BACK')) return undefined;
    if (!final.includes(phase) && order.indexOf(phase) < order.indexOf(row.phase)) return undefined;
    await tx.run('UPDATE deployment_targets SET phase = ?, bytes_done = GREATEST(bytes_done, ?), code = ?, reason = ?, updated_ms = ? WHERE deployment_id = ? AND device_id = ?', phase, Number(p.bytesDone ?? 0), p.code || null, p.reason || null, this.#now(), p.deploymentId, deviceId);
    const t = await tx.get<TargetRow>('SELECT * FROM deployment_targets WHERE deployment_id = ? AND device_id = ?', p.deploymentId, deviceId);
    return t === undefined ? undefined : { deploymentId: p.deploymentId, target: targetStatus(t) };
  }

  /** Tells the rollouts (and other listeners) that a target moved. */
  announce(deploymentId: string, target: TargetStatus): void {
    for (const l of this.#listeners) l(deploymentId, target);
  }

  /** The manifest digests of every bundle deployed to `deviceId` (what its attestation log may show as model-bundle events). */
  async manifestsFor(deviceId: string): Promise<readonly string[]> {
    const rows = await this.#db.all<{ m: string | null }>('SELECT DISTINCT d.manifest_sha256 AS m FROM deployments d JOIN deployment_targets t ON t.deployment_id = d.id WHERE t.device_id = ?', deviceId);
    return rows.flatMap((r) => (r.m === null ? [] : [r.m]));
  }

  /** What the bundle server may send: only a deployment's bundle, only to its targets. */
  async bundleFor(query: BundleQuery): Promise<BundleFile | undefined> {
    const row = await this.#db.get<{ sha256: string; chunkSize: number }>(
      'SELECT d.bundle_sha256 AS sha256, d.chunk_size AS "chunkSize" FROM deployments d JOIN deployment_targets t ON t.deployment_id = d.id WHERE d.id = ? AND t.device_id = ? AND d.bundle_sha256 = ?',
      query.deploymentId,
      query.device,
      query.bundleSha256,
    );
    if (row === undefined) return undefined;
    // The bundle lives in this controller's state folder; another replica may have registered it.
    const file = this.#bundlePath(row.sha256);
    if (this.#db.shared && !(await access(file).then(() => true, () => false))) await this.#fetchFromStore(row.sha256);
    return { path: file, chunkSize: row.chunkSize };
  }

  async get(deploymentId: string): Promise<DeploymentInfo> {
    const d = await this.#row(deploymentId);
    return { id: d.id, model: d.model, version: d.version, bundleSha256: d.bundle_sha256, bundleSize: d.bundle_size, chunkSize: d.chunk_size, health: JSON.parse(d.health) as HealthPolicy, createdUnixMs: d.created_ms, keyRelease: d.release_key !== null };
  }

  /** The key a key-release deployment's bundle is encrypted to (undefined for others). */
  async releaseKey(deploymentId: string): Promise<Buffer | undefined> {
    const d = await this.#row(deploymentId);
    return d.release_key === null ? undefined : Buffer.from(d.release_key);
  }

  async list(): Promise<readonly DeploymentInfo[]> {
    const ids = await this.#db.all<{ id: string }>('SELECT id FROM deployments ORDER BY created_ms DESC');
    return Promise.all(ids.map((r) => this.get(r.id)));
  }

  /** The deployment's targets (or the one named), by device id. */
  async targets(deploymentId: string): Promise<readonly TargetStatus[]> {
    const rows = await this.#db.all<TargetRow>('SELECT * FROM deployment_targets WHERE deployment_id = ? ORDER BY device_id', deploymentId);
    return rows.map(targetStatus);
  }

  #bundlePath(sha256: string): string {
    return path.join(this.#state, 'bundles', `${sha256}.bundle`);
  }

  /** Copies a bundle into the shared store in STORE_PIECE pieces (once per digest). */
  async #keepInStore(file: string, sha256: string): Promise<void> {
    if ((await this.#db.get('SELECT 1 AS one FROM bundle_chunks WHERE bundle_sha256 = ? AND idx = 0', sha256)) !== undefined) return;
    const handle = await open(file, 'r');
    try {
      await this.#db.transaction(async (tx) => {
        await tx.run('DELETE FROM bundle_chunks WHERE bundle_sha256 = ?', sha256);
        for (let idx = 0; ; idx++) {
          const piece = Buffer.allocUnsafe(STORE_PIECE);
          const { bytesRead } = await handle.read(piece, 0, STORE_PIECE, idx * STORE_PIECE);
          if (bytesRead === 0 && idx > 0) break;
          await tx.run('INSERT INTO bundle_chunks (bundle_sha256, idx, data) VALUES (?, ?, ?)', sha256, idx, piece.subarray(0, bytesRead));
          if (bytesRead < STORE_PIECE) break;
        }
      });
    } finally {
      await handle.close();
    }
  }

  /** Writes a bundle out of the shared store into the state folder, checked against its digest. */
  #fetchFromStore(sha256: string): Promise<void> {
    let fetching = this.#fetching.get(sha256);
    if (fetching === undefined) {
      fetching = this.#writeFromStore(sha256).finally(() => this.#fetching.delete(sha256));
      this.#fetching.set(sha256, fetching);
    }
    return fetching;
  }

  async #writeFromStore(sha256: string): Promise<void> {
    const file = this.#bundlePath(sha256);
    await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    const temp = `${file}.tmp-${process.pid}-${randomBytes(3).toString('hex')}`;
    const handle = await open(temp, 'w', 0o600);
    const hash = createHash('sha256');
    try {
      for (let idx = 0; ; idx++) {
        const row = await this.#db.get<{ data: Buffer }>('SELECT data FROM bundle_chunks WHERE bundle_sha256 = ? AND idx = ?', sha256, idx);
        if (row === undefined) break;
        hash.update(row.data);
        await handle.write(row.data);
      }
      await handle.sync();
    } finally {
      await handle.close();
    }
    if (hash.digest('hex') !== sha256) {
      await rm(temp, { force: true });
      throw new FleetError('EAI_FLEET_DEPLOY_BUNDLE', `bundle ${sha256} in the controller store is incomplete or damaged; register it again (aios fleet deploy).`, { details: { sha256 } });
    }
    await rename(temp, file);
  }

  async #row(deploymentId: string): Promise<DeploymentRow> {
    const d = await this.#db.get<DeploymentRow>('SELECT * FROM deployments WHERE id = ?', deploymentId);
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
  release_key: Uint8Array | null;
}

interface TargetRow {
  device_id: string;
  sequence: number;
  phase: TargetPhase;
  bytes_done: number;
  code: string | null;
  reason: string | null;
  updated_ms: number;
}

function targetStatus(r: TargetRow): TargetStatus {
  return { deviceId: r.device_id, sequence: r.sequence, phase: r.phase, bytesDone: r.bytes_done, ...(r.code === null ? {} : { code: r.code }), ...(r.reason === null ? {} : { reason: r.reason }), updatedUnixMs: r.updated_ms };
}
