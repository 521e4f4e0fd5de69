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
    labels             TEXT NOT NULL          -- JSON object
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
