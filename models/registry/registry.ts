/**
 * The model registry: version control for signed model bundles (docs/registry.md).
 *
 * A registry is one folder: `registry.db` (SQLite, WAL, foreign keys on; schema.ts) holds the
 * metadata — models, versions with parent, branch, author, notes and metrics, each version's
 * files, and channels with their signed records — and `blobs/` (blob-store.ts) holds the bytes,
 * content-addressed, so versions share unchanged files. A pushed bundle is kept as its file
 * bodies plus a skeleton (layout.ts), so `exportBundle` gives back exactly the pushed bytes.
 *
 * Nothing unverified is stored: `push` verifies the bundle against the caller's policy while
 * staging its blobs, commits the blobs only after the whole bundle verified, and then records the
 * version in one transaction. A crash or failure before that transaction leaves at most orphan
 * blobs (removed by `gc`), never a half version.
 *
 * Concurrency: one Registry instance serialises its own pushes, channel changes and gc. Several
 * processes may use one folder (SQLite locks the database; blobs are written under unique temp
 * names and renamed); `gc` spares blobs younger than its grace period so that it never removes
 * the blobs of another process's push in flight.
 */
import { createHash } from 'node:crypto';
import { createWriteStream, promises as fs } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type BetterSqlite3 from 'better-sqlite3';
import { verifyBundle } from '../bundle/bundle.js';
import { decodeBase64, parseEnvelope, type DsseEnvelope, type SignaturePolicy } from '../bundle/dsse.js';
import { parseManifest, type ModelStatement } from '../bundle/manifest.js';
import { decodeHeader, fileSource } from '../bundle/tar.js';
import { syncDir, tempName } from '../atomic-write.js';
import type { SigningKey } from '../keys.js';
import { BlobStore, type GcResult, type StagedBlob } from './blob-store.js';
import { checkName, peekChannelRecord, signChannelRecord, type ChannelRecord } from './channel-record.js';
import { diffVersions, type VersionDiff } from './diff.js';
import { RegistryError, registryIo } from './errors.js';
import { LayoutSplitter } from './layout.js';
import { MIGRATIONS, schemaNewer } from './schema.js';
import { openSqlite } from '../sqlite.js';
import { AiosError } from '../../drivers/errors.js';

export const DATABASE_FILE = 'registry.db';

export interface RegistryOptions {
  /** The clock for `pushed` and channel times. Default `() => new Date()`. */
  readonly now?: () => Date;
  /** Test hook: runs after a push's blobs are committed and before its row is written (a crash there must leave no version). */
  readonly beforeRecord?: (model: string, version: string) => void | Promise<void>;
}

export interface FileInfo {
  readonly path: string;
  /** Plaintext size and SHA-256. */
  readonly size: number;
  readonly sha256: string;
  /** The blob holding the stored bytes (ciphertext when encrypted). */
  readonly blob: string;
  readonly storedSize: number;
  readonly encrypted: boolean;
}

export interface VersionInfo {
  readonly model: string;
  readonly version: string;
  readonly parent?: string;
  readonly branch?: string;
  readonly author: string;
  readonly notes?: string;
  readonly metrics: Readonly<Record<string, number>>;
  readonly format: string;
  readonly created: string;
  readonly pushed: string;
  readonly manifestDigest: string;
  readonly bundleSha256: string;
  readonly bundleSize: number;
  readonly signedBy: readonly string[];
  /** Channels now pointing at this version. */
  readonly channels: readonly string[];
}

export interface VersionDetail extends VersionInfo {
  readonly files: readonly FileInfo[];
  readonly statement: ModelStatement;
}

export interface ModelSummary {
  readonly name: string;
  readonly versions: number;
  /** The most recently pushed version. */
  readonly latest: string;
  readonly channels: Readonly<Record<string, string>>;
}

export interface PushResult {
  /** `unchanged`: the identical bundle was there already (nothing written). */
  readonly status: 'added' | 'unchanged';
  readonly version: VersionInfo;
  /** Blobs written by this push, and those it found already stored (shared with other versions). */
  readonly newBlobs: number;
  readonly sharedBlobs: number;
}

export interface ChannelInfo {
  readonly model: string;
  readonly channel: string;
  readonly version: string;
  readonly metadataVersion: number;
  readonly manifestDigest: string;
  readonly expires?: string;
  readonly updated: string;
  /** The signed record devices verify (verifyChannelRecord). */
  readonly record: DsseEnvelope;
}

export interface ChannelChange extends ChannelInfo {
  /** The version the channel pointed at before (absent for a new channel). */
  readonly from?: string;
  readonly action: 'set' | 'rollback';
}

export interface ChannelHistoryEntry {
  readonly metadataVersion: number;
  readonly version: string;
  readonly action: 'set' | 'rollback';
  readonly at: string;
}

interface VersionRow {
  id: number;
  model: string;
  version: string;
  parent: string | null;
  branch: string | null;
  author: string;
  notes: string | null;
  metrics: string;
  format: string;
  created: string;
  pushed: string;
  manifest_digest: string;
  envelope: Buffer;
  signed_by: string;
  bundle_sha256: string;
  bundle_size: number;
  skeleton: string;
  gaps: string;
}

interface ChannelRow {
  model: string;
  channel: string;
  version: string;
  metadata_version: number;
  record: Buffer;
  updated: string;
}

export class Registry {
  readonly dir: string;
  readonly blobs: BlobStore;
  readonly #db: BetterSqlite3.Database;
  readonly #now: () => Date;
  readonly #beforeRecord: RegistryOptions['beforeRecord'];
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(dir: string, db: BetterSqlite3.Database, blobs: BlobStore, options: RegistryOptions) {
    this.dir = dir;
    this.#db = db;
    this.blobs = blobs;
    this.#now = options.now ?? (() => new Date());
    this.#beforeRecord = options.beforeRecord;
  }

  /** Opens the registry in `dir`, making it (and migrating its schema) as needed. Call `close` when done. */
  static async open(dir: string, options: RegistryOptions = {}): Promise<Registry> {
    const blobs = await BlobStore.open(dir);
    let db: BetterSqlite3.Database;
    try {
      db = await openSqlite(path.join(dir, DATABASE_FILE), { what: 'the model registry', migrations: MIGRATIONS, ...(options.now === undefined ? {} : { now: options.now }), newer: schemaNewer });
    } catch (error) {
      if (error instanceof AiosError) throw error;
      throw registryIo(`open the registry database in ${dir}`, error);
    }
    return new Registry(dir, db, blobs, options);
  }

  close(): void {
    this.#db.close();
  }

  /**
   * Verifies the bundle at `bundlePath` against `policy` and records it as a new version. Encrypted
   * files are verified and stored as ciphertext. Re-pushing the identical bundle resolves
   * `unchanged`; another bundle with the same model and version is EAI_REGISTRY_VERSION_CONFLICT.
   * Verification failures keep their EAI_BUNDLE_* codes, and nothing is stored then.
   */
  async push(bundlePath: string, policy: SignaturePolicy): Promise<PushResult> {
    return this.#serial(async () => {
      const splitter = new LayoutSplitter();
      const staged: StagedBlob[] = [];
      // Stages still writing when verification fails must finish (and remove their temp files)
      // before push() answers, or a failed push would leave files behind it.
      const staging: Promise<unknown>[] = [];
      try {
        const verified = await verifyBundle(splitter.wrap(fileSource(bundlePath)), policy, {
          onFile: async (file, content) => {
            const stage = this.blobs.stage(content, (file.encrypted ?? file).sha256);
            staging.push(stage);
            staged.push(await stage);
          },
          now: this.#now(),
        });
        const layout = splitter.result();
        if (layout === undefined) throw new RegistryError('EAI_REGISTRY_LAYOUT', `${bundlePath} verified but its tar layout could not be followed; it is not stored. This is a bug in aios: report it with the bundle.`, { details: { bundlePath } });
        const p = verified.statement.predicate;
        const existing = this.#db.prepare('SELECT * FROM versions WHERE model = ? AND version = ?').get(p.name, p.version) as VersionRow | undefined;
        if (existing !== undefined) {
          if (existing.bundle_sha256 === layout.sha256) return { status: 'unchanged', version: this.#info(existing), newBlobs: 0, sharedBlobs: 0 };
          throw new RegistryError('EAI_REGISTRY_VERSION_CONFLICT', `${p.name} ${p.version} is already in the registry with different content (bundle ${existing.bundle_sha256.slice(0, 16)}…, this one ${layout.sha256.slice(0, 16)}…); a version is immutable once pushed. Fix: publish it as a new version (bump the semver, set parentVersion: ${p.version}).`, { details: { model: p.name, version: p.version, stored: existing.bundle_sha256, offered: layout.sha256 } });
        }
        const skeleton = await this.blobs.stage(layout.skeleton);
        staged.push(skeleton);
        let shared = 0;
        const seen = new Set<string>();
        for (const s of staged) {
          if (seen.has(s.digest)) continue;
          seen.add(s.digest);
          if (await this.blobs.has(s.digest)) shared++;
          await s.commit();
        }
        await this.#beforeRecord?.(p.name, p.version);
        const header = decodeHeader(layout.skeleton.subarray(0, 512), 0);
        const envelopeBytes = layout.skeleton.subarray(512, 512 + (header?.size ?? 0));
        const pushed = this.#now().toISOString();
        const files = p.files.map((f, i) => ({ f, blob: staged[i] as StagedBlob }));
        this.#tx(() => {
          this.#db.prepare('INSERT OR IGNORE INTO models (name, created) VALUES (?, ?)').run(p.name, pushed);
          const { lastInsertRowid } = this.#db
            .prepare('INSERT INTO versions (model, version, parent, branch, author, notes, metrics, format, created, pushed, manifest_digest, envelope, signed_by, bundle_sha256, bundle_size, skeleton, gaps) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)')
            .run(p.name, p.version, p.parentVersion ?? null, p.branch ?? null, p.author, p.notes ?? null, JSON.stringify(p.metrics ?? {}), p.format, p.created, pushed, sha256(verified.payload), envelopeBytes, JSON.stringify(verified.signedBy), layout.sha256, layout.size, skeleton.digest, JSON.stringify(layout.gaps));
          const insert = this.#db.prepare('INSERT INTO files (version_id, idx, path, size, sha256, blob, stored_size, encrypted) VALUES (?, ?, ?, ?, ?, ?, ?, ?)');
          files.forEach(({ f, blob }, i) => insert.run(lastInsertRowid, i, f.path, f.size, f.sha256, blob.digest, blob.size, f.encrypted === undefined ? 0 : 1));
        }, `record ${p.name} ${p.version}`);
        return { status: 'added', version: this.#info(this.#row(p.name, p.version)), newBlobs: seen.size - shared, sharedBlobs: shared };
      } finally {
        await Promise.allSettled(staging);
        await Promise.all(staged.map((s) => s.discard()));
      }
    });
  }

  /** Every model, by name. */
  list(): ModelSummary[] {
    const models = this.#db.prepare('SELECT name FROM models ORDER BY name').all() as { name: string }[];
    return models.map(({ name }) => {
      const stats = this.#db.prepare('SELECT COUNT(*) AS n, (SELECT version FROM versions WHERE model = ? ORDER BY id DESC LIMIT 1) AS latest FROM versions WHERE model = ?').get(name, name) as { n: number; latest: string };
      const channels = Object.fromEntries(this.channels(name).map((c) => [c.channel, c.version]));
      return { name, versions: stats.n, latest: stats.latest, channels };
    });
  }

  /** The model's versions, newest push first, each with its parent; only `branch` when given. */
  log(model: string, options: { readonly branch?: string } = {}): VersionInfo[] {
    this.#model(model);
    const rows = (options.branch === undefined ? this.#db.prepare('SELECT * FROM versions WHERE model = ? ORDER BY id DESC').all(model) : this.#db.prepare('SELECT * FROM versions WHERE model = ? AND branch IS ? ORDER BY id DESC').all(model, options.branch)) as VersionRow[];
    return rows.map((r) => this.#info(r));
  }

  /** One version with its files and its verified manifest. */
  show(model: string, version: string): VersionDetail {
    const row = this.#row(model, version);
    const files = (this.#db.prepare('SELECT * FROM files WHERE version_id = ? ORDER BY idx').all(row.id) as { path: string; size: number; sha256: string; blob: string; stored_size: number; encrypted: number }[]).map((f) => ({ path: f.path, size: f.size, sha256: f.sha256, blob: f.blob, storedSize: f.stored_size, encrypted: f.encrypted === 1 }));
    const envelope = parseEnvelope(row.envelope);
    return { ...this.#info(row), files, statement: parseManifest(decodeBase64(envelope.payload, 'payload')) };
  }

  /** What changed from `from` to `to`: files, metadata, and ONNX initializers (diff.ts). */
  async diff(model: string, from: string, to: string): Promise<VersionDiff> {
    return diffVersions(this.show(model, from), this.show(model, to), this.blobs);
  }

  /**
   * Points `channel` at `version` as a new signed release: its metadataVersion is one above the
   * channel's last, and the record is signed by `keys` (the models role; devices check which).
   */
  async setChannel(model: string, channel: string, version: string, keys: SigningKey | readonly SigningKey[], options: { readonly expires?: Date } = {}): Promise<ChannelChange> {
    return this.#serial(async () => this.#release(model, channel, version, keys, 'set', options.expires));
  }

  /**
   * Re-points `channel` at an earlier version — `to`, or by default the version it pointed at
   * before its current one — as a NEW signed record with a higher metadataVersion (the old record
   * is never re-used, so devices' anti-rollback accepts it and refuses replays).
   */
  async rollback(model: string, channel: string, keys: SigningKey | readonly SigningKey[], options: { readonly to?: string; readonly expires?: Date } = {}): Promise<ChannelChange> {
    return this.#serial(async () => {
      const current = this.channel(model, channel);
      let target = options.to;
      if (target === undefined) {
        const previous = this.#db.prepare('SELECT version FROM channel_history WHERE model = ? AND channel = ? AND version != ? ORDER BY metadata_version DESC LIMIT 1').get(model, channel, current.version) as { version: string } | undefined;
        if (previous === undefined) throw new RegistryError('EAI_REGISTRY_ROLLBACK_NO_PREVIOUS', `${model}/${channel} has only ever pointed at ${current.version}; there is nothing to roll back to. Fix: name the version with --to.`, { details: { model, channel, version: current.version } });
        target = previous.version;
      }
      if (target === current.version) throw new RegistryError('EAI_REGISTRY_ROLLBACK_SAME', `${model}/${channel} already points at ${target}; a rollback must change the version. Fix: pick another with --to (see \`aios model log ${model}\`).`, { details: { model, channel, version: target } });
      return this.#release(model, channel, target, keys, 'rollback', options.expires);
    });
  }

  /** The channel's current record; EAI_REGISTRY_CHANNEL_UNKNOWN when it was never set. */
  channel(model: string, channel: string): ChannelInfo {
    this.#model(model);
    const row = this.#db.prepare('SELECT * FROM channels WHERE model = ? AND channel = ?').get(model, channel) as ChannelRow | undefined;
    if (row === undefined) throw new RegistryError('EAI_REGISTRY_CHANNEL_UNKNOWN', `${model} has no channel '${channel}'${this.channels(model).length > 0 ? ` (it has ${this.channels(model).map((c) => c.channel).join(', ')})` : ''}. Fix: set it with \`aios model channel ${model} ${channel} VERSION --key K.pem\`.`, { details: { model, channel } });
    return channelInfo(row);
  }

  /** All of a model's channels, by name. */
  channels(model: string): ChannelInfo[] {
    return (this.#db.prepare('SELECT * FROM channels WHERE model = ? ORDER BY channel').all(model) as ChannelRow[]).map(channelInfo);
  }

  /** Every record a channel has had, newest first. */
  channelHistory(model: string, channel: string): ChannelHistoryEntry[] {
    return (this.#db.prepare('SELECT metadata_version, version, action, at FROM channel_history WHERE model = ? AND channel = ? ORDER BY metadata_version DESC').all(model, channel) as { metadata_version: number; version: string; action: 'set' | 'rollback'; at: string }[]).map((r) => ({ metadataVersion: r.metadata_version, version: r.version, action: r.action, at: r.at }));
  }

  /**
   * Writes the bundle of `model` `version` to `out` exactly as it was pushed (checked against the
   * pushed bundle's SHA-256 while it is written; EAI_REGISTRY_EXPORT_MISMATCH otherwise). Written
   * to a temp file beside `out` and renamed, so `out` never holds a partial bundle.
   */
  async exportBundle(model: string, version: string, out: string): Promise<{ readonly sha256: string; readonly size: number }> {
    const row = this.#row(model, version);
    const files = this.#db.prepare('SELECT blob FROM files WHERE version_id = ? ORDER BY idx').all(row.id) as { blob: string }[];
    const gaps = JSON.parse(row.gaps) as number[];
    const blobs = this.blobs;
    async function* bytes(): AsyncGenerator<Buffer> {
      let at = 0;
      for (const [i, gap] of gaps.entries()) {
        if (gap > 0) yield* (await blobs.open(row.skeleton, { start: at, length: gap })) as AsyncIterable<Buffer>;
        at += gap;
        const file = files[i];
        if (file !== undefined) yield* (await blobs.open(file.blob)) as AsyncIterable<Buffer>;
      }
    }
    const hash = createHash('sha256');
    let size = 0;
    async function* hashed(): AsyncGenerator<Buffer> {
      for await (const chunk of bytes()) {
        hash.update(chunk);
        size += chunk.length;
        yield chunk;
      }
    }
    const temp = tempName(path.resolve(out));
    try {
      await pipeline(Readable.from(hashed()), createWriteStream(temp, { flags: 'wx', mode: 0o644 }));
      const digest = hash.digest('hex');
      if (digest !== row.bundle_sha256 || size !== row.bundle_size) {
        throw new RegistryError('EAI_REGISTRY_EXPORT_MISMATCH', `the reassembled ${model} ${version} bundle has SHA-256 ${digest} (${size} bytes), the pushed one had ${row.bundle_sha256} (${row.bundle_size} bytes): a blob was changed at rest. Nothing was written. Fix: push the original bundle again after \`aios model gc\`, or restore the registry from backup.`, { details: { model, version, expected: row.bundle_sha256, actual: digest } });
      }
      const handle = await fs.open(temp, 'r');
      await handle.sync().finally(() => handle.close());
      await fs.rename(temp, out);
      await syncDir(path.dirname(path.resolve(out)));
      return { sha256: digest, size };
    } catch (error) {
      await fs.rm(temp, { force: true });
      throw registryIo(`export ${model} ${version} to ${out}`, error);
    }
  }

  /** Removes blobs no version references (spares those younger than `graceMs`, default one hour). */
  async gc(options: { readonly graceMs?: number } = {}): Promise<GcResult> {
    return this.#serial(async () => {
      const referenced = new Set<string>();
      for (const r of this.#db.prepare('SELECT blob FROM files UNION SELECT skeleton FROM versions').all() as { blob: string }[]) referenced.add(r.blob);
      return this.blobs.gc(referenced, options);
    });
  }

  #release(model: string, channel: string, version: string, keys: SigningKey | readonly SigningKey[], action: 'set' | 'rollback', expires: Date | undefined): ChannelChange {
    checkName('channel', channel);
    const row = this.#row(model, version);
    const signers = Array.isArray(keys) ? (keys as readonly SigningKey[]) : [keys as SigningKey];
    if (signers.length === 0) throw new RegistryError('EAI_REGISTRY_CHANNEL_INVALID', 'a channel record needs at least one signing key of the models role.');
    return this.#tx(() => {
      const current = this.#db.prepare('SELECT * FROM channels WHERE model = ? AND channel = ?').get(model, channel) as ChannelRow | undefined;
      const last = this.#db.prepare('SELECT MAX(metadata_version) AS m FROM channel_history WHERE model = ? AND channel = ?').get(model, channel) as { m: number | null };
      const metadataVersion = Math.max(current?.metadata_version ?? 0, last.m ?? 0) + 1;
      const record: ChannelRecord = { _type: 'aios-channel', model, channel, version, manifestDigest: row.manifest_digest, metadataVersion, ...(expires === undefined ? {} : { expires: expires.toISOString().replace(/\.\d+Z$/u, 'Z') }) };
      const envelope = Buffer.from(JSON.stringify(signChannelRecord(record, signers)), 'utf8');
      const at = this.#now().toISOString();
      this.#db.prepare('INSERT INTO channels (model, channel, version, metadata_version, record, updated) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (model, channel) DO UPDATE SET version = excluded.version, metadata_version = excluded.metadata_version, record = excluded.record, updated = excluded.updated').run(model, channel, version, metadataVersion, envelope, at);
      this.#db.prepare('INSERT INTO channel_history (model, channel, metadata_version, version, record, action, at) VALUES (?, ?, ?, ?, ?, ?, ?)').run(model, channel, metadataVersion, version, envelope, action, at);
      const info = channelInfo({ model, channel, version, metadata_version: metadataVersion, record: envelope, updated: at });
      return { ...info, action, ...(current === undefined ? {} : { from: current.version }) };
    }, `set ${model}/${channel}`);
  }

  #model(model: string): void {
    if (this.#db.prepare('SELECT 1 FROM models WHERE name = ?').get(model) === undefined) {
      throw new RegistryError('EAI_REGISTRY_MODEL_UNKNOWN', `no model '${model}' in the registry at ${this.dir}. Fix: push a bundle of it (\`aios model push BUNDLE\`), or check the name with \`aios model list\`.`, { details: { model, dir: this.dir } });
    }
  }

  #row(model: string, version: string): VersionRow {
    this.#model(model);
    const row = this.#db.prepare('SELECT * FROM versions WHERE model = ? AND version = ?').get(model, version) as VersionRow | undefined;
    if (row === undefined) throw new RegistryError('EAI_REGISTRY_VERSION_UNKNOWN', `${model} has no version ${version}. Fix: see its versions with \`aios model log ${model}\`.`, { details: { model, version } });
    return row;
  }

  #info(r: VersionRow): VersionInfo {
    const channels = (this.#db.prepare('SELECT channel FROM channels WHERE model = ? AND version = ? ORDER BY channel').all(r.model, r.version) as { channel: string }[]).map((c) => c.channel);
    return {
      model: r.model,
      version: r.version,
      ...(r.parent === null ? {} : { parent: r.parent }),
      ...(r.branch === null ? {} : { branch: r.branch }),
      author: r.author,
      ...(r.notes === null ? {} : { notes: r.notes }),
      metrics: JSON.parse(r.metrics) as Record<string, number>,
      format: r.format,
      created: r.created,
      pushed: r.pushed,
      manifestDigest: r.manifest_digest,
      bundleSha256: r.bundle_sha256,
      bundleSize: r.bundle_size,
      signedBy: JSON.parse(r.signed_by) as string[],
      channels,
    };
  }

  #tx<T>(work: () => T, doing: string): T {
    try {
      return this.#db.transaction(work).immediate();
    } catch (error) {
      throw registryIo(doing, error);
    }
  }

  #serial<T>(task: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(task, task);
    this.#queue = run.catch(() => undefined);
    return run;
  }
}

function channelInfo(row: ChannelRow): ChannelInfo {
  const record = parseEnvelope(row.record);
  const payload = peekChannelRecord(record);
  return { model: row.model, channel: row.channel, version: row.version, metadataVersion: row.metadata_version, manifestDigest: payload.manifestDigest, ...(payload.expires === undefined ? {} : { expires: payload.expires }), updated: row.updated, record };
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

