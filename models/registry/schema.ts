/**
 * The registry's SQLite schema, as an ordered list of migrations that models/sqlite.ts applies on
 * open: a registry made by an older aios is brought up to date, a newer one is refused rather
 * than misread.
 */
import { RegistryError } from './errors.js';

export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE models (
    name     TEXT PRIMARY KEY,
    created  TEXT NOT NULL
  );
  CREATE TABLE versions (
    id              INTEGER PRIMARY KEY,
    model           TEXT NOT NULL REFERENCES models(name),
    version         TEXT NOT NULL,
    parent          TEXT,
    branch          TEXT,
    author          TEXT NOT NULL,
    notes           TEXT,
    metrics         TEXT NOT NULL,           -- JSON object
    format          TEXT NOT NULL,
    created         TEXT NOT NULL,           -- the manifest's created
    pushed          TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,           -- sha256 of the signed payload
    envelope        BLOB NOT NULL,           -- the DSSE envelope as it was in the bundle
    signed_by       TEXT NOT NULL,           -- JSON array of keyids that verified at push
    bundle_sha256   TEXT NOT NULL,
    bundle_size     INTEGER NOT NULL,
    skeleton        TEXT NOT NULL,           -- blob: the bundle minus file bodies (layout.ts)
    gaps            TEXT NOT NULL,           -- JSON array: skeleton bytes around each body
    UNIQUE (model, version)
  );
  CREATE INDEX versions_parent ON versions(model, parent);
  CREATE TABLE files (
    version_id   INTEGER NOT NULL REFERENCES versions(id),
    idx          INTEGER NOT NULL,
    path         TEXT NOT NULL,
    size         INTEGER NOT NULL,           -- plaintext
    sha256       TEXT NOT NULL,              -- plaintext
    blob         TEXT NOT NULL,              -- stored bytes (ciphertext when encrypted)
    stored_size  INTEGER NOT NULL,
    encrypted    INTEGER NOT NULL,
    PRIMARY KEY (version_id, idx),
    UNIQUE (version_id, path)
  );
  CREATE INDEX files_blob ON files(blob);
  CREATE TABLE channels (
    model            TEXT NOT NULL REFERENCES models(name),
    channel          TEXT NOT NULL,
    version          TEXT NOT NULL,
    metadata_version INTEGER NOT NULL CHECK (metadata_version >= 1),
    record           BLOB NOT NULL,          -- the signed DSSE envelope
    updated          TEXT NOT NULL,
    PRIMARY KEY (model, channel),
    FOREIGN KEY (model, version) REFERENCES versions(model, version)
  );
  CREATE TABLE channel_history (
    model            TEXT NOT NULL,
    channel          TEXT NOT NULL,
    metadata_version INTEGER NOT NULL,
    version          TEXT NOT NULL,
    record           BLOB NOT NULL,
    action           TEXT NOT NULL,          -- 'set' | 'rollback'
    at               TEXT NOT NULL,
    PRIMARY KEY (model, channel, metadata_version),
    FOREIGN KEY (model, version) REFERENCES versions(model, version)
  );
  `,
];

/** The registry's error for a database written by a newer aios. */
export function schemaNewer(current: number, known: number): RegistryError {
  return new RegistryError('EAI_REGISTRY_SCHEMA_NEWER', `the registry database is at schema version ${current}, this aios knows up to ${known}; it was written by a newer aios. Fix: use that version of aios (an older one would misread it).`, { details: { current, known } });
}
