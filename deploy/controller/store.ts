/**
 * Where the fleet controller keeps its state: one SQL database, SQLite in the state folder by
 * default or PostgreSQL (`--store postgres://…`), which several controller replicas can share.
 * The controller's modules speak one SQL through this interface: `?` placeholders, `ON CONFLICT`
 * upserts, `GREATEST(a, b)`, `RETURNING`, quoted camelCase aliases (PostgreSQL folds bare ones to
 * lower case). Integers come back as numbers (every one aios stores — ms timestamps, sequences,
 * byte counts — is below 2^53) and blobs as Buffers, from both databases.
 *
 * A transaction's callback may await only its own statements: on SQLite every other statement
 * waits for it, so a publish or a download inside one would stall the whole controller.
 */
export interface Sql {
  all<T>(sql: string, ...params: unknown[]): Promise<T[]>;
  get<T>(sql: string, ...params: unknown[]): Promise<T | undefined>;
  /** Runs a statement; resolves to the number of rows it changed. */
  run(sql: string, ...params: unknown[]): Promise<number>;
}

export interface ControllerStore extends Sql {
  readonly kind: 'sqlite' | 'postgres';
  /** Whether other controllers may be using the same database (PostgreSQL): bundles are then kept in it too. */
  readonly shared: boolean;
  /** Where it is, for logs: a file, or the PostgreSQL URL without its password. */
  readonly location: string;
  /** Runs `fn` in one transaction: committed when it resolves, rolled back when it throws. */
  transaction<T>(fn: (tx: Sql) => Promise<T>): Promise<T>;
  /**
   * Whether this controller holds the lead called `name` (taking it when free): only one replica
   * at a time drives rollouts. A replica that dies loses it with its connection, and the next
   * call on another replica takes it. Always true on SQLite (one controller per file).
   */
  lead(name: string): Promise<boolean>;
  /** Whether `error` means the database is away for now (retry later) rather than a bad statement. */
  unavailable(error: unknown): boolean;
  close(): Promise<void>;
}

/** The lead that drives rollouts: held by one controller replica at a time. */
export const ROLLOUT_LEAD = 'aios-controller-rollouts';
