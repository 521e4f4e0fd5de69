/**
 * SQLite for aios's stores (the model registry, the fleet controller): better-sqlite3 loaded on
 * first use, so that nothing else needs the native module, opened the one way every store wants
 * it (WAL, foreign keys, full sync, a busy timeout for a second process), and its schema brought
 * up to date by ordered migrations recorded in `schema_migrations`. A database written by a newer
 * aios (more migrations than this one knows) is refused rather than misread.
 */
import type BetterSqlite3 from 'better-sqlite3';
import { AiosError } from '../drivers/errors.js';

export type Database = BetterSqlite3.Database;

export interface SqliteOptions {
  /** Errors name the store: "the model registry", "the fleet controller". */
  readonly what: string;
  /** The schema: each migration's SQL, in order; never edit or remove one that shipped. */
  readonly migrations: readonly string[];
  /** When a migration was applied. Default now. */
  readonly now?: () => Date;
  /** Builds the error for a database newer than `migrations` (the store's own code). */
  readonly newer: (current: number, known: number) => Error;
}

/** Opens (creating) the database in `file` and migrates it. */
export async function openSqlite(file: string, options: SqliteOptions): Promise<Database> {
  const Database = await loadSqlite(options.what);
  const db = new Database(file);
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('foreign_keys = ON');
    db.pragma('synchronous = FULL');
    db.pragma('busy_timeout = 5000');
    migrate(db, options);
    return db;
  } catch (error) {
    db.close();
    throw error;
  }
}

/** Applies the migrations `db` has not had yet, each in its own transaction; returns the schema version. */
export function migrate(db: Database, options: Omit<SqliteOptions, 'what'>): number {
  const { migrations } = options;
  const now = options.now ?? (() => new Date());
  db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied TEXT NOT NULL)');
  const row = db.prepare('SELECT MAX(version) AS v FROM schema_migrations').get() as { v: number | null };
  const current = row.v ?? 0;
  if (current > migrations.length) throw options.newer(current, migrations.length);
  for (let v = current + 1; v <= migrations.length; v++) {
    db.transaction(() => {
      db.exec(migrations[v - 1] as string);
      db.prepare('INSERT INTO schema_migrations (version, applied) VALUES (?, ?)').run(v, now().toISOString());
    })();
  }
  return migrations.length;
}

async function loadSqlite(what: string): Promise<typeof BetterSqlite3> {
  try {
    return (await import('better-sqlite3')).default;
  } catch (cause) {
    throw new AiosError('EAI_SQLITE_UNAVAILABLE', `${what} needs the better-sqlite3 package, which cannot be loaded (${(cause as Error).message.split('\n')[0]}). Fix: \`npm install better-sqlite3@12\` (it builds against this Node's headers; Node 20 needs v12).`, { cause });
  }
}
