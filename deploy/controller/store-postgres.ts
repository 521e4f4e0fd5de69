import type pg from 'pg';
import { FleetError } from '../fleet/errors.js';
import type { ControllerStore, Sql } from './store.js';

/**
 * The controller store on PostgreSQL (node-postgres): what several controller replicas share.
 * Statements are written with `?` placeholders (the SQLite spelling) and numbered here; BIGINT
 * and NUMERIC results come back as numbers, as SQLite's integers do. Leads are session advisory
 * locks held on a connection of their own, so a replica that dies or loses the database lets go
 * of them without anyone cleaning up.
 *
 * Cut off from the database (a partition, not a clean close), both ends must notice soon, or
 * the lead stays with a replica that cannot use it: the server drops a lead's session after
 * LEAD_SERVER_TIMEOUT_S without TCP keepalive answers (set per session), which frees the lock for
 * another replica, and the replica itself gives a lead up when a check is not answered within
 * LEAD_CHECK_MS, which is shorter, so two replicas never both believe they lead. Other statements
 * give up after QUERY_TIMEOUT_MS instead of hanging until TCP gives up (about 15 minutes).
 */
/** A statement not answered in this long fails (as `unavailable`) instead of waiting for TCP. */
const QUERY_TIMEOUT_MS = 60_000;
/** A lead check (or a lead's connection) not answered in this long: the lead is given up. */
export const LEAD_CHECK_MS = 5_000;
/** The server ends a lead's session, freeing its lock, after this long without a sign of the replica. */
export const LEAD_SERVER_TIMEOUT_S = 12;

export class PostgresStore implements ControllerStore {
  readonly kind = 'postgres';
  readonly shared = true;
  readonly location: string;
  readonly #pg: typeof pg;
  readonly #config: pg.PoolConfig;
  readonly #pool: pg.Pool;
  readonly #leads = new Map<string, { client: pg.Client; held: boolean }>();
  readonly #texts = new Map<string, string>();
  #closing: Promise<void> | undefined;

  private constructor(driver: typeof pg, config: pg.PoolConfig, location: string) {
    this.#pg = driver;
    this.#config = config;
    this.location = location;
    this.#pool = new driver.Pool(config);
    // An idle connection the server dropped must not become an unhandled 'error' (a crash).
    this.#pool.on('error', () => undefined);
  }

  /** Connects to `url` (postgres://user:password@host:port/database; PG* variables fill the gaps). */
  static async connect(url: string): Promise<PostgresStore> {
    const location = redact(url);
    let driver: typeof pg;
    try {
      driver = (await import('pg')).default;
    } catch (cause) {
      throw new FleetError('EAI_FLEET_STORE', `a PostgreSQL store needs the pg package, which cannot be loaded (${(cause as Error).message.split('\n')[0]}); run npm ci.`, { cause });
    }
    const numbers = (oid: number, format?: string): ((value: string) => unknown) => (oid === 20 || oid === 1700 ? Number : (driver.types.getTypeParser(oid, format as 'text') as (value: string) => unknown));
    const store = new PostgresStore(driver, { connectionString: url, max: 8, connectionTimeoutMillis: 10_000, query_timeout: QUERY_TIMEOUT_MS, keepAlive: true, keepAliveInitialDelayMillis: 10_000, types: { getTypeParser: numbers } as pg.CustomTypesConfig }, location);
    try {
      await store.get('SELECT 1 AS ok');
    } catch (cause) {
      await store.#pool.end().catch(() => undefined);
      throw new FleetError('EAI_FLEET_STORE', `the controller cannot reach its PostgreSQL store at ${location} (${(cause as Error).message}). Fix: check the URL (postgres://user:password@host:port/database), that the server runs and that the role may connect and create tables.`, { cause, details: { store: location } });
    }
    return store;
  }

  all<T>(sql: string, ...params: unknown[]): Promise<T[]> {
    return query<T>(this.#pool, this.#text(sql), params);
  }

  async get<T>(sql: string, ...params: unknown[]): Promise<T | undefined> {
    return (await this.all<T>(sql, ...params))[0];
  }

  async run(sql: string, ...params: unknown[]): Promise<number> {
    return (await this.#pool.query(this.#text(sql), params)).rowCount ?? 0;
  }

  async transaction<T>(fn: (tx: Sql) => Promise<T>): Promise<T> {
    const client = await this.#pool.connect();
    const tx: Sql = {
      all: <R>(sql: string, ...params: unknown[]) => query<R>(client, this.#text(sql), params),
      get: async <R>(sql: string, ...params: unknown[]) => (await query<R>(client, this.#text(sql), params))[0],
      run: async (sql: string, ...params: unknown[]) => (await client.query(this.#text(sql), params)).rowCount ?? 0,
    };
    let broken = false;
    try {
      await client.query('BEGIN');
      const value = await fn(tx);
      await client.query('COMMIT');
      return value;
    } catch (error) {
      try {
        await client.query('ROLLBACK');
      } catch {
        broken = true;
      }
      throw error;
    } finally {
      client.release(broken);
    }
  }

  async lead(name: string): Promise<boolean> {
    let lead = this.#leads.get(name);
    if (lead === undefined) {
      const client = new this.#pg.Client({ ...this.#config, connectionTimeoutMillis: LEAD_CHECK_MS, query_timeout: LEAD_CHECK_MS });
      client.on('error', () => undefined);
      lead = { client, held: false };
      this.#leads.set(name, lead);
      try {
        await client.connect();
        // Silent for 6 s, then 3 probes 2 s apart: LEAD_SERVER_TIMEOUT_S (ignored on a Unix socket).
        await client.query('SET tcp_keepalives_idle = 6; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3');
      } catch {
        return this.#drop(name, lead);
      }
    }
    try {
      // Held: the session still being there is what keeps the lock; asking shows it is.
      const r = await lead.client.query<{ ok: boolean }>(lead.held ? 'SELECT true AS ok' : 'SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS ok', lead.held ? [] : [name]);
      lead.held = r.rows[0]?.ok === true;
      return lead.held;
    } catch {
      // The connection is gone (or not answering), and the lock with it: start over next time.
      return this.#drop(name, lead);
    }
  }

  #drop(name: string, lead: { client: pg.Client; held: boolean }): false {
    lead.held = false;
    if (this.#leads.get(name) === lead) this.#leads.delete(name);
    // Not awaited to the end: ending a connection nobody answers on would wait for TCP.
    void lead.client.end().catch(() => undefined);
    return false;
  }

  unavailable(error: unknown): boolean {
    const code = String((error as { code?: unknown } | null)?.code ?? '');
    // Connection exceptions (08), shutdowns (57P0x), out of resources (53), serialisation and
    // deadlock (40001, 40P01): the same statement can succeed later. And the socket's own failures.
    if (/^(08|57P0|53|40001$|40P01$)/u.test(code) || /^E(CONNREFUSED|CONNRESET|PIPE|TIMEDOUT|HOSTUNREACH|NETUNREACH)$/u.test(code)) return true;
    return /Connection terminated|timeout exceeded when trying to connect/u.test(error instanceof Error ? error.message : '');
  }

  /** Ends every connection; waits at most LEAD_CHECK_MS for a server that does not answer. Once only. */
  async close(): Promise<void> {
    if (this.#closing === undefined) {
      const ends = [...this.#leads.values()].map(({ client }) => client.end().catch(() => undefined));
      this.#leads.clear();
      ends.push(this.#pool.end().catch(() => undefined));
      let timer: NodeJS.Timeout | undefined;
      this.#closing = Promise.race([Promise.all(ends), new Promise((resolve) => (timer = setTimeout(resolve, LEAD_CHECK_MS)))]).then(() => clearTimeout(timer));
    }
    await this.#closing;
  }

  /** `?` → `$1, $2, …`, outside quoted strings and identifiers. */
  #text(sql: string): string {
    let text = this.#texts.get(sql);
    if (text !== undefined) return text;
    let n = 0;
    let out = '';
    let quote: string | undefined;
    for (const c of sql) {
      if (quote !== undefined) {
        if (c === quote) quote = undefined;
        out += c;
      } else if (c === "'" || c === '"') {
        quote = c;
        out += c;
      } else out += c === '?' ? `$${++n}` : c;
    }
    text = out;
    this.#texts.set(sql, text);
    return text;
  }
}

async function query<T>(on: pg.Pool | pg.PoolClient, text: string, params: unknown[]): Promise<T[]> {
  return (await on.query(text, params)).rows as T[];
}

/** The URL without its password, for logs and errors. */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== '') u.password = '***';
    return u.toString();
  } catch {
    return '(a malformed PostgreSQL URL)';
  }
}
