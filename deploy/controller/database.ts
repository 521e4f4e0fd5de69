/**
 * The fleet controller's SQLite database: enrolment tokens and the device registry for now (the
 * rollouts and their stages join it). Migrations only ever get appended, so a controller upgraded
 * in place keeps its fleet.
 */
import { openSqlite, type Database } from '../../models/sqlite.js';
import { FleetError } from '../fleet/errors.js';

export type { Database };

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
];

/** Opens (creating) the controller database in `file`. */
export async function openControllerDatabase(file: string, now?: () => Date): Promise<Database> {
  return openSqlite(file, {
    what: 'the fleet controller',
    migrations: MIGRATIONS,
    ...(now === undefined ? {} : { now }),
    newer: (current, known) =>
      new FleetError('EAI_FLEET_STORE_NEWER', `the controller database ${file} is at schema version ${current}, this aios knows up to ${known}: it was written by a newer aios. Fix: run that version of aios (an older one would misread it).`, { details: { file, current, known } }),
  });
}
