import { EventEmitter } from 'node:events';
import type { SigningKey } from '../../models/keys.js';
import { aios } from '../proto/gen/aios.js';
import { signCommand, type CommandAction, type CommandSpec } from '../fleet/command.js';
import { FleetError } from '../fleet/errors.js';
import { deviceTopic } from '../fleet/topics.js';
import { wholeNumber } from '../fleet/wire.js';
import type { ControllerStore, Sql } from './store.js';

/**
 * Commands from the controller to devices: each gets the device's next sequence number (one
 * above the highest the controller issued or the device reported in its birth), is signed with
 * the controller's deploy keys, recorded, and published at QoS 1 to the device's commands topic.
 * Acks move it along (sent → accepted → done, or rejected / failed). A device's birth re-sends
 * what it has not acknowledged and is not expired, in order: after a broker restart the queued
 * copies are gone, and the device refuses duplicates by sequence anyway.
 */
export type CommandStatus = 'sent' | 'accepted' | 'done' | 'rejected' | 'failed';

export interface CommandRecord {
  readonly deviceId: string;
  readonly sequence: number;
  readonly action: CommandAction;
  readonly status: CommandStatus;
  readonly code?: string;
  readonly message?: string;
  readonly createdUnixMs: number;
  readonly expiresUnixMs: number;
  readonly updatedUnixMs: number;
}

/** One action: exactly one of Command's oneof members. */
export type CommandBody = Omit<CommandSpec, 'fleet' | 'deviceId' | 'sequence' | 'issuedUnixMs' | 'expiresUnixMs'>;

export interface CommandQueueOptions {
  readonly fleet: string;
  /** A threshold of the trust root's deploy keys. */
  readonly keys: readonly SigningKey[];
  readonly publish: (topic: string, payload: Uint8Array) => Promise<void>;
  /** How long a command stays valid; default one hour. */
  readonly ttlMs?: number;
  readonly now?: () => number;
}

/** Commands signed and recorded in one transaction, at most. */
const SEND_BATCH = 1000;

interface WaitingSend {
  readonly deviceId: string;
  readonly body: CommandBody;
  readonly ttlMs: number;
  readonly resolve: (record: CommandRecord) => void;
  readonly reject: (error: unknown) => void;
}

export class CommandQueue extends EventEmitter<{ update: [CommandRecord] }> {
  readonly #db: ControllerStore;
  readonly #waiting: WaitingSend[] = [];
  #sending: Promise<void> = Promise.resolve();
  readonly #options: CommandQueueOptions;
  readonly #now: () => number;

  constructor(db: ControllerStore, options: CommandQueueOptions) {
    super();
    this.#db = db;
    this.#options = options;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Signs, records and publishes `body` for `deviceId`; resolves once the broker has it. Sends
   * made together (a rollout stage, an operator's fleet-wide command) share one transaction:
   * 10,000 of them cost a few fsyncs, not 10,000, and the registry's writes are not stuck behind
   * them meanwhile.
   */
  send(deviceId: string, body: CommandBody, options: { readonly ttlMs?: number } = {}): Promise<CommandRecord> {
    return new Promise((resolve, reject) => {
      this.#waiting.push({ deviceId, body, ttlMs: options.ttlMs ?? this.#options.ttlMs ?? 3_600_000, resolve, reject });
      if (this.#waiting.length === 1) setImmediate(() => void (this.#sending = this.#sending.then(() => this.#sendWaiting())));
    });
  }

  async #sendWaiting(): Promise<void> {
    while (this.#waiting.length > 0) {
      const batch = this.#waiting.splice(0, SEND_BATCH);
      const now = this.#now();
      const sent: { item: WaitingSend; record: CommandRecord; payload: Uint8Array; published?: Promise<void> }[] = [];
      const publish = (s: (typeof sent)[number]): Promise<void> => this.#options.publish(deviceTopic(this.#options.fleet, s.item.deviceId, 'commands'), s.payload);
      try {
        await this.#db.transaction(async (tx) => {
          sent.length = 0;
          for (const item of batch) {
            // The row lock of this UPDATE is what keeps two controller replicas from issuing one number twice.
            const row = await tx.get<{ last_sequence: number }>('UPDATE devices SET last_sequence = last_sequence + 1 WHERE device_id = ? AND revoked_ms IS NULL RETURNING last_sequence', item.deviceId);
            if (row === undefined) {
              const revoked = (await tx.get('SELECT device_id FROM devices WHERE device_id = ?', item.deviceId)) !== undefined;
              item.reject(
                revoked
                  ? new FleetError('EAI_FLEET_DEVICE_REVOKED', `device '${item.deviceId}' is revoked: it gets no commands. Enrol it again with a token made for it to bring it back (\`aios fleet token --device ${item.deviceId}\`).`, { details: { deviceId: item.deviceId } })
                  : new FleetError('EAI_FLEET_DEVICE_UNKNOWN', `device '${item.deviceId}' is not enrolled in fleet ${this.#options.fleet}; list devices with \`aios fleet devices\`.`, { details: { deviceId: item.deviceId } }),
              );
              continue;
            }
            const sequence = row.last_sequence;
            const expires = now + item.ttlMs;
            const payload = signCommand({ ...item.body, fleet: this.#options.fleet, deviceId: item.deviceId, sequence, issuedUnixMs: now, expiresUnixMs: expires }, this.#options.keys);
            const action = aios.fleet.v1.Command.decode(aios.fleet.v1.SignedCommand.decode(payload).payload).action as CommandAction;
            await tx.run("INSERT INTO commands (device_id, sequence, action, payload, created_ms, expires_ms, status, updated_ms) VALUES (?, ?, ?, ?, ?, ?, 'sent', ?)", item.deviceId, sequence, action, Buffer.from(payload), now, expires, now);
            sent.push({ item, payload, record: { deviceId: item.deviceId, sequence, action, status: 'sent', createdUnixMs: now, expiresUnixMs: expires, updatedUnixMs: now } });
          }
          // Shared by replicas: the devices' rows stay locked until the broker has the commands, so
          // another replica's next command to one of them is published after (a device refuses a
          // lower sequence that arrives after a higher one). One controller publishes in order anyway.
          if (this.#db.shared) await Promise.all(sent.map(publish));
        });
      } catch (error) {
        for (const item of batch) item.reject(error);
        continue;
      }
      // Published in sequence order (mqtt.js sends in call order) before the next batch begins.
      for (const s of sent) s.published = this.#db.shared ? Promise.resolve() : publish(s);
      for (const s of sent) {
        void (s.published as Promise<void>).then(
          () => {
            this.emit('update', s.record);
            s.item.resolve(s.record);
          },
          (error: unknown) => s.item.reject(error),
        );
      }
    }
  }

  /** A device's ack for one of its commands. */
  async acknowledge(deviceId: string, ack: aios.fleet.v1.CommandAck): Promise<void> {
    const moved = await this.#db.transaction((tx) => this.record(tx, deviceId, ack));
    if (moved !== undefined) this.announce(moved);
  }

  /**
   * Writes a device's ack with `tx` (the registry writes a batch of them in one transaction);
   * returns the command it moved, to `announce` once that transaction committed.
   */
  async record(tx: Sql, deviceId: string, ack: aios.fleet.v1.CommandAck): Promise<CommandRecord | undefined> {
    const R = aios.fleet.v1.CommandAck.Result;
    const status: CommandStatus | undefined = ack.result === R.ACCEPTED ? 'accepted' : ack.result === R.DONE ? 'done' : ack.result === R.REJECTED ? 'rejected' : ack.result === R.FAILED ? 'failed' : undefined;
    const sequence = wholeNumber(ack.sequence);
    if (status === undefined || sequence === 0) return undefined;
    // An ACCEPTED arriving after the DONE (replayed by the device's spool) must not move it back.
    // Forward only: sent → accepted → done | failed, or sent → rejected. Acks come at least once
    // and copies of a command can arrive after it ran (a birth re-sends what is not yet
    // acknowledged): the REJECTED of such a copy, or a replayed ACCEPTED, must not undo a result.
    const update = (sql: Sql): Promise<number> =>
      sql.run(
        "UPDATE commands SET status = ?, code = ?, message = ?, updated_ms = ? WHERE device_id = ? AND sequence = ? AND (status = 'sent' OR (status = 'accepted' AND ? IN ('done', 'failed')))",
        status,
        ack.code || null,
        ack.message.slice(0, 4000) || null,
        this.#now(),
        deviceId,
        sequence,
        status,
      );
    // Shared: the ack can come back before the sender's transaction commits; FOR SHARE waits for it.
    if (this.#db.shared) await tx.get('SELECT device_id FROM devices WHERE device_id = ? FOR SHARE', deviceId);
    if ((await update(tx)) !== 1) return undefined;
    const row = await tx.get<CommandRow>('SELECT * FROM commands WHERE device_id = ? AND sequence = ?', deviceId, sequence);
    return row === undefined ? undefined : record(row);
  }

  /** Tells `until` and other listeners that a command moved. */
  announce(moved: CommandRecord): void {
    this.emit('update', moved);
  }

  /** On a device's birth: its reported sequence, and what it has not acknowledged re-sent in order. */
  async resend(deviceId: string, lastAccepted: number): Promise<number> {
    const now = this.#now();
    const pending = await this.#db.all<{ sequence: number; payload: Uint8Array }>("SELECT sequence, payload FROM commands WHERE device_id = ? AND status = 'sent' AND sequence > ? AND expires_ms > ? ORDER BY sequence", deviceId, lastAccepted, now);
    for (const p of pending) await this.#options.publish(deviceTopic(this.#options.fleet, deviceId, 'commands'), p.payload);
    return pending.length;
  }

  async get(deviceId: string, sequence: number): Promise<CommandRecord | undefined> {
    const row = await this.#db.get<CommandRow>('SELECT * FROM commands WHERE device_id = ? AND sequence = ?', deviceId, sequence);
    return row === undefined ? undefined : record(row);
  }

  async list(deviceId?: string, limit = 100): Promise<readonly CommandRecord[]> {
    const rows = deviceId === undefined ? await this.#db.all<CommandRow>('SELECT * FROM commands ORDER BY created_ms DESC LIMIT ?', limit) : await this.#db.all<CommandRow>('SELECT * FROM commands WHERE device_id = ? ORDER BY sequence DESC LIMIT ?', deviceId, limit);
    return rows.map(record);
  }

  /** Resolves when the command reaches one of `statuses`, or rejects after `timeoutMs`. */
  async until(deviceId: string, sequence: number, statuses: readonly CommandStatus[], timeoutMs: number): Promise<CommandRecord> {
    const deadline = Date.now() + timeoutMs;
    let woken: (() => void) | undefined;
    const listener = (r: CommandRecord): void => {
      if (r.deviceId === deviceId && r.sequence === sequence) woken?.();
    };
    this.on('update', listener);
    try {
      for (;;) {
        const current = await this.get(deviceId, sequence);
        if (current !== undefined && statuses.includes(current.status)) return current;
        const left = deadline - Date.now();
        if (left <= 0) throw new FleetError('EAI_FLEET_COMMAND_TIMEOUT', `command ${sequence} to ${deviceId} did not reach ${statuses.join(' or ')} within ${timeoutMs} ms (it is ${current?.status ?? 'unknown'}); the device may be offline, and gets it when it reconnects unless it expires first.`, { details: { deviceId, sequence } });
        // Woken by this controller's acks; the poll finds those another replica recorded.
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(left, 500));
          woken = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
    } finally {
      this.off('update', listener);
    }
  }
}

interface CommandRow {
  device_id: string;
  sequence: number;
  action: CommandAction;
  status: CommandStatus;
  code: string | null;
  message: string | null;
  created_ms: number;
  expires_ms: number;
  updated_ms: number;
}

function record(row: CommandRow): CommandRecord {
  return {
    deviceId: row.device_id,
    sequence: row.sequence,
    action: row.action,
    status: row.status,
    ...(row.code === null ? {} : { code: row.code }),
    ...(row.message === null ? {} : { message: row.message }),
    createdUnixMs: row.created_ms,
    expiresUnixMs: row.expires_ms,
    updatedUnixMs: row.updated_ms,
  };
}
