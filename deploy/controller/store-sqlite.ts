import type { Database } from '../../models/sqlite.js';
import type { ControllerStore, Sql } from './store.js';

interface Statement {
  all(...params: unknown[]): unknown[];
  get(...params: unknown[]): unknown;
  run(...params: unknown[]): { changes: number };
}

/**
 * The controller store on SQLite (better-sqlite3): one file in the state folder, one controller.
 * better-sqlite3 is synchronous, so a statement runs at once, except while a transaction's
 * callback is awaiting: then it queues behind the transaction, which would otherwise swallow it
 * (SQLite has one transaction per connection). Prepared statements are cached by their text.
 */
export class SqliteStore implements ControllerStore {
  readonly kind = 'sqlite';
  readonly shared = false;
  readonly location: string;
  readonly #db: Database;
  readonly #statements = new Map<string, Statement>();
  /** Settles when the transactions queued so far have finished. */
  #tail: Promise<void> = Promise.resolve();
  #inTransaction = false;
  readonly #direct: Sql;

  constructor(db: Database, file: string) {
    this.#db = db;
    this.location = file;
    // PostgreSQL's two-argument maximum, so one SQL text serves both databases.
    db.function('greatest', { deterministic: true }, (a: unknown, b: unknown) => (a === null ? b : b === null ? a : (a as number) > (b as number) ? a : b));
    this.#direct = {
      all: async <T>(sql: string, ...params: unknown[]) => this.#statement(sql).all(...params) as T[],
      get: async <T>(sql: string, ...params: unknown[]) => this.#statement(sql).get(...params) as T | undefined,
      run: async (sql: string, ...params: unknown[]) => this.#statement(sql).run(...params).changes,
    };
  }

  async all<T>(sql: string, ...params: unknown[]): Promise<T[]> {
    while (this.#inTransaction) await this.#tail;
    return this.#direct.all<T>(sql, ...params);
  }

  async get<T>(sql: string, ...params: unknown[]): Promise<T | undefined> {
    while (this.#inTransaction) await this.#tail;
    return this.#direct.get<T>(sql, ...params);
  }

  async run(sql: string, ...params: unknown[]): Promise<number> {
    while (this.#inTransaction) await this.#tail;
    return this.#direct.run(sql, ...params);
  }

  transaction<T>(fn: (tx: Sql) => Promise<T>): Promise<T> {
    const result = this.#tail.then(async () => {
      this.#inTransaction = true;
      this.#db.exec('BEGIN IMMEDIATE');
      try {
        const value = await fn(this.#direct);
        this.#db.exec('COMMIT');
        return value;
      } catch (error) {
        if (this.#db.inTransaction) this.#db.exec('ROLLBACK');
        throw error;
      } finally {
        this.#inTransaction = false;
      }
    });
    this.#tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  async lead(): Promise<boolean> {
    return true;
  }

  unavailable(error: unknown): boolean {
    const code = (error as { code?: unknown } | null)?.code;
    return code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED';
  }

  async close(): Promise<void> {
    await this.#tail;
    this.#statements.clear();
    this.#db.close();
  }

  #statement(sql: string): Statement {
    let s = this.#statements.get(sql);
    if (s === undefined) {
      s = this.#db.prepare(sql) as unknown as Statement;
      this.#statements.set(sql, s);
    }
    return s;
  }
}
