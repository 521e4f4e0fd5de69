/**
 * The fleet controller's schema and how its store is opened: SQLite (`controller.db` in the state
 * folder) unless a PostgreSQL URL is given. Migrations only ever get appended, so a controller
 * upgraded in place keeps its fleet; they are written for SQLite and spelled for PostgreSQL by
 * `postgresSchema` (BIGINT integers, BYTEA blobs, identity keys).
 */
import path from 'node:path';
import { openSqlite } from '../../models/sqlite.js';
import { FleetError } from '../fleet/errors.js';
import type { ControllerStore } from './store.js';
import { PostgresStore } from './store-postgres.js';
import { SqliteStore } from './store-sqlite.js';

export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE enrolment_tokens (
    id             TEXT PRIMARY KEY,          -- public half of the token, hex
    secret_sha256  BLOB NOT NULL,             -- the secret half is never stored
    created_ms     INTEGER NOT NULL,
    expires_ms     INTEGER NOT NULL,
    device_id      TEXT,                      -- when set, only this device may enrol with it
    labels         TEXT NOT NULL,             -- JSON object given to the device at enrolment
    used_ms        INTEGER,
    used_by        TEXT
  );
  CREATE TABLE devices (
    device_id          TEXT PRIMARY KEY,
    certificate_pem    TEXT NOT NULL,
    key_sha256         TEXT NOT NULL,         -- SHA-256 of the device key's SPKI
    enrolled_ms        INTEGER NOT NULL,
    labels             TEXT NOT NULL,         -- JSON object: the token's labels, then the birth's
    state              TEXT NOT NULL DEFAULT 'never-seen',  -- online | offline | lost | never-seen
    state_ms           INTEGER,
    last_seen_ms       INTEGER,
    boot_id            TEXT,
    runtime_version    TEXT,
    birth              BLOB,                  -- the last DeviceBirth as received
    telemetry          BLOB,                  -- the last Telemetry as received
    telemetry_seq      INTEGER,
    telemetry_dropped  INTEGER NOT NULL DEFAULT 0,   -- records the device's spool dropped (gaps)
    last_sequence      INTEGER NOT NULL DEFAULT 0    -- highest command sequence issued or reported
  );
  CREATE TABLE commands (
    device_id    TEXT NOT NULL,
    sequence     INTEGER NOT NULL,
    action       TEXT NOT NULL,
    payload      BLOB NOT NULL,               -- the SignedCommand as sent
    created_ms   INTEGER NOT NULL,
    expires_ms   INTEGER NOT NULL,
    status       TEXT NOT NULL,               -- sent | accepted | done | rejected | failed | expired
    code         TEXT,
    message      TEXT,
    updated_ms   INTEGER NOT NULL,
    PRIMARY KEY (device_id, sequence)
  );
  CREATE TABLE deployments (
    id             TEXT PRIMARY KEY,
    model          TEXT NOT NULL,
    version        TEXT NOT NULL,
    bundle_path    TEXT NOT NULL,             -- state/bundles/<sha256>.bundle
    bundle_sha256  TEXT NOT NULL,
    bundle_size    INTEGER NOT NULL,
    chunk_size     INTEGER NOT NULL,
    chunk_sha256   BLOB NOT NULL,             -- the chunk digests, 32 bytes each, in order
    health         TEXT NOT NULL,             -- JSON HealthPolicy
    created_ms     INTEGER NOT NULL
  );
  CREATE TABLE deployment_targets (
    deployment_id  TEXT NOT NULL REFERENCES deployments(id),
    device_id      TEXT NOT NULL,
    sequence       INTEGER NOT NULL,          -- the Deploy command's
    phase          TEXT NOT NULL,             -- sent | DOWNLOADING | ... | COMMITTED | ROLLED_BACK | FAILED
    bytes_done     INTEGER NOT NULL DEFAULT 0,
    code           TEXT,
    reason         TEXT,
    updated_ms     INTEGER NOT NULL,
    PRIMARY KEY (deployment_id, device_id)
  );
  CREATE TABLE rollouts (
    id             TEXT PRIMARY KEY,
    deployment_id  TEXT NOT NULL REFERENCES deployments(id),
    spec           TEXT NOT NULL,             -- JSON RolloutSpec
    state          TEXT NOT NULL,             -- running | paused | completed | stopped | rolled-back
    stage          INTEGER NOT NULL,          -- the stage being rolled out
    reason         TEXT,
    created_ms     INTEGER NOT NULL,
    updated_ms     INTEGER NOT NULL
  );
  CREATE TABLE rollout_devices (
    rollout_id  TEXT NOT NULL REFERENCES rollouts(id),
    device_id   TEXT NOT NULL,
    stage       INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
  );
  CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    device_id   TEXT NOT NULL,
    sequence    INTEGER NOT NULL,
    time_ms     INTEGER NOT NULL,
    severity    TEXT NOT NULL,
    code        TEXT NOT NULL,
    message     TEXT NOT NULL,
    detail      TEXT,                         -- JSON
    UNIQUE (device_id, sequence)
  );
  `,
  // Bundles kept in a shared (PostgreSQL) store, so that any controller replica can serve them.
  `
  CREATE TABLE bundle_chunks (
    bundle_sha256  TEXT NOT NULL,
    idx            INTEGER NOT NULL,
    data           BLOB NOT NULL,
    PRIMARY KEY (bundle_sha256, idx)
  );
  `,
  // Attestation keys registered at enrolment (issue 8), and the credential challenges that prove
  // a TPM's AK lives beside its EK.
  `
  ALTER TABLE devices ADD COLUMN attestation_kind TEXT;   -- tpm2 | software
  ALTER TABLE devices ADD COLUMN ak_public BLOB;          -- TPM2B_PUBLIC (tpm2) or SPKI DER (software: the device key)
  ALTER TABLE devices ADD COLUMN ek_public BLOB;          -- TPM2B_PUBLIC of the EK the AK was proven against
  CREATE TABLE enrolment_challenges (
    id             TEXT PRIMARY KEY,
    token_id       TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    ak_public      BLOB NOT NULL,
    ek_public      BLOB NOT NULL,
    secret_sha256  BLOB NOT NULL,
    expires_ms     INTEGER NOT NULL,
    used_ms        INTEGER
  );
  `,
  // What attestation checks a device's measured models against, and what it found.
  `
  ALTER TABLE deployments ADD COLUMN manifest_sha256 TEXT;  -- the bundle's signed payload, as the device's store measures it
  ALTER TABLE devices ADD COLUMN attestation_status TEXT;   -- trusted | untrusted | stale
  ALTER TABLE devices ADD COLUMN attestation_ms INTEGER;    -- when it was appraised
  ALTER TABLE devices ADD COLUMN attestation_result TEXT;   -- JSON AttestationResult (reasons, claims)
  CREATE TABLE attestation_challenges (
    device_id    TEXT NOT NULL,
    nonce        BLOB NOT NULL,
    issued_ms    INTEGER NOT NULL,
    answered_ms  INTEGER,
    PRIMARY KEY (device_id, nonce)
  );
  `,
  // Key release: the age identity a deployment's bundle is encrypted to, held back until a device's
  // attestation is trusted. A secret: the store is protected like the fleet CA's key.
  `
  ALTER TABLE deployments ADD COLUMN release_key BLOB;
  `,
  // When the rollout's current stage was first sent out: what a stage timeout counts from.
  `
  ALTER TABLE rollouts ADD COLUMN stage_started_ms INTEGER;
  `,
  // Every certificate issued to a device, so that revoking the device revokes all of them (an
  // older one may still be valid after a renewal), and the revocation list they make.
  `
  CREATE TABLE device_certificates (
    serial        TEXT PRIMARY KEY,          -- hex, as X509Certificate.serialNumber writes it
    device_id     TEXT NOT NULL,
    issued_ms     INTEGER NOT NULL,
    not_after_ms  INTEGER NOT NULL,          -- past this it is refused anyway and leaves the CRL
    revoked_ms    INTEGER,
    reason        TEXT                       -- keyCompromise | cessationOfOperation | unspecified
  );
  CREATE INDEX device_certificates_device ON device_certificates (device_id);
  ALTER TABLE devices ADD COLUMN revoked_ms INTEGER;
  ALTER TABLE devices ADD COLUMN revoked_reason TEXT;
  `,
];

const newer = (where: string) => (current: number, known: number): Error =>
  new FleetError('EAI_FLEET_STORE_NEWER', `the controller database ${where} is at schema version ${current}, this aios knows up to ${known}: it was written by a newer aios. Fix: run that version of aios (an older one would misread it).`, { details: { store: where, current, known } });

/**
 * Opens (creating and migrating) the controller's store: `postgres://…` or `postgresql://…` for
 * PostgreSQL, otherwise `controller.db` in `state`.
 */
export async function openControllerStore(state: string, url?: string, now: () => Date = () => new Date()): Promise<ControllerStore> {
  if (url === undefined) {
    const file = path.join(state, 'controller.db');
    const db = await openSqlite(file, { what: 'the fleet controller', migrations: MIGRATIONS, now, newer: newer(file) });
    return new SqliteStore(db, file);
  }
  if (!/^postgres(ql)?:\/\//u.test(url)) {
    throw new FleetError('EAI_FLEET_STORE', `--store takes a PostgreSQL URL (postgres://user:password@host:port/database), got '${url.slice(0, 80)}'; leave it out to keep the fleet in SQLite in the state folder.`, { details: { store: url.slice(0, 80) } });
  }
  const store = await PostgresStore.connect(url);
  try {
    await migratePostgres(store, now);
    return store;
  } catch (error) {
    await store.close();
    throw error;
  }
}

/** Applies what the database has not had yet; replicas starting together take turns (a transaction lock). */
async function migratePostgres(store: ControllerStore, now: () => Date): Promise<void> {
  await store.transaction(async (tx) => {
    await tx.get("SELECT pg_advisory_xact_lock(hashtextextended('aios-controller-migrations', 0)) AS locked");
    await tx.run('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied TEXT NOT NULL)');
    const row = await tx.get<{ v: number | null }>('SELECT MAX(version) AS v FROM schema_migrations');
    const current = row?.v ?? 0;
    if (current > MIGRATIONS.length) throw newer(store.location)(current, MIGRATIONS.length);
    for (let v = current + 1; v <= MIGRATIONS.length; v++) {
      for (const statement of postgresSchema(MIGRATIONS[v - 1] as string)) await tx.run(statement);
      await tx.run('INSERT INTO schema_migrations (version, applied) VALUES (?, ?)', v, now().toISOString());
    }
  });
}

/** A migration in PostgreSQL's spelling, one statement per entry. */
export function postgresSchema(sqlite: string): string[] {
  return sqlite
    .replace(/--[^\n]*/gu, '')
    .replace(/\bid\s+INTEGER PRIMARY KEY\b/gu, 'id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY')
    .replace(/\bINTEGER\b/gu, 'BIGINT')
    .replace(/\bBLOB\b/gu, 'BYTEA')
    .split(';')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}
