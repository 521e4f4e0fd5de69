import { aios } from '../proto/gen/aios.js';
import { FleetError } from '../fleet/errors.js';
import { parseDeviceTopic, type DeviceChannel } from '../fleet/topics.js';
import { decodeMessage, wholeNumber } from '../fleet/wire.js';
import type { ControllerStore, Sql } from './store.js';

/**
 * The controller's picture of its devices, kept in its database from what the devices publish:
 * births (who and what), status (online, offline, lost), telemetry (the latest record, and gaps
 * in its sequence counted as records the device's spool dropped), events and command acks.
 * Messages from a device that is not enrolled, on a topic of another fleet, or that do not decode
 * are dropped and counted, never thrown: one bad device must not stop the controller.
 */
export interface DeviceSummary {
  readonly deviceId: string;
  readonly state: 'online' | 'offline' | 'lost' | 'never-seen';
  readonly stateUnixMs?: number;
  readonly lastSeenUnixMs?: number;
  readonly runtimeVersion?: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly accelerators: readonly string[];
  readonly models: readonly { readonly model: string; readonly active: string; readonly previous: string }[];
  readonly pipelines: readonly { readonly name: string; readonly state: string }[];
  /** The stages the last telemetry record reported, as pipeline/stage, with their message rate. */
  readonly stages: readonly { readonly stage: string; readonly rateHz: number; readonly errors: number }[];
  readonly cpuPercent?: number;
  readonly memoryUsedBytes?: number;
  readonly temperatureC?: number;
  readonly telemetrySequence?: number;
  readonly telemetryDropped: number;
  readonly lastCommandSequence: number;
  /** How the device proves what it runs: with its TPM's attestation key, or (no TPM) its device key. */
  readonly attestation?: 'tpm2' | 'software';
  /** Its latest appraisal (docs/attestation.md), when it has had one. */
  readonly attestationStatus?: 'trusted' | 'untrusted' | 'stale';
  readonly attestedUnixMs?: number;
  /** The first reason of an appraisal that was not `trusted`. */
  readonly attestationReason?: string;
  /** Set when the device was revoked (`aios fleet revoke`): its certificates no longer connect. */
  readonly revoked?: { readonly atUnixMs: number; readonly reason: string };
}

/** The keys a device registered at enrolment, which its attestation evidence must be signed with. */
export interface AttestationIdentity {
  readonly kind: 'tpm2' | 'software';
  /** TPM2B_PUBLIC of the AK (tpm2), or the device key's SPKI DER (software). */
  readonly akPublic: Buffer;
  /** TPM2B_PUBLIC of the EK the AK was proven against (tpm2). */
  readonly ekPublic?: Buffer;
}

export interface IngestCounts {
  births: number;
  statuses: number;
  telemetry: number;
  events: number;
  acks: number;
  /** Messages dropped: unknown device, other fleet, malformed, stale. */
  dropped: number;
}

/** How often received telemetry is written to the database. */
export const FLUSH_MS = 250;
/** Messages taken into one transaction. */
const BATCH = 1000;
/** Past this many waiting messages, `admitted` holds the broker back (its queue is the buffer then). */
const HIGH_WATER = 20_000;

/** Called inside the batch's transaction (write with `tx`); what it returns runs after the commit. */
export type AckListener = (tx: Sql, deviceId: string, ack: aios.fleet.v1.CommandAck) => Promise<(() => void) | undefined | void> | (() => void) | undefined | void;
/** Called inside the batch's transaction (write with `tx`); what it returns runs after the commit. */
export type EventListener = (tx: Sql, deviceId: string, event: aios.fleet.v1.Event) => Promise<(() => void) | undefined | void> | (() => void) | undefined | void;
/** `reconnected`: the birth starts a new connection of the agent (or is the first seen), rather than updating the last one. */
export type BirthListener = (deviceId: string, birth: aios.fleet.v1.DeviceBirth, reconnected: boolean) => void;

interface Received {
  readonly device: string;
  readonly channel: DeviceChannel;
  readonly payload: Uint8Array;
  readonly at: number;
}

export class DeviceRegistry {
  readonly counts: IngestCounts = { births: 0, statuses: 0, telemetry: 0, events: 0, acks: 0, dropped: 0 };
  readonly #db: ControllerStore;
  readonly #fleet: string;
  readonly #now: () => number;
  readonly #ackListeners: AckListener[] = [];
  readonly #birthListeners: BirthListener[] = [];
  readonly #eventListeners: EventListener[] = [];
  readonly #onDrop: (why: string) => void;
  /** Devices known to be enrolled: a message from another is dropped without a query each time. */
  readonly #enrolled = new Set<string>();
  /** The highest telemetry sequence seen per device (from the database the first time). */
  readonly #lastSeq = new Map<string, number>();
  /**
   * Messages waiting for the next transaction: births, statuses, events of many devices are
   * written together (one fsync per batch, not per message), in the order they arrived.
   */
  #queue: Received[] = [];
  #draining: Promise<void> | undefined;
  #waiters: (() => void)[] = [];
  readonly #revoked: (deviceId: string) => boolean;
  /**
   * Telemetry waiting to be written: only the latest record per device matters, and writing all
   * of them in one transaction every FLUSH_MS (rather than one fsynced transaction per message) is
   * what lets one controller keep up with thousands of devices reporting every second.
   */
  readonly #pending = new Map<string, { payload: Buffer; seq: number; dropped: number; at: number }>();
  #flushing: Promise<void> = Promise.resolve();
  readonly #flusher: NodeJS.Timeout;

  constructor(db: ControllerStore, options: { readonly fleet: string; readonly now?: () => number; readonly onDrop?: (why: string) => void; readonly revoked?: (deviceId: string) => boolean }) {
    this.#db = db;
    this.#revoked = options.revoked ?? (() => false);
    this.#fleet = options.fleet;
    this.#now = options.now ?? Date.now;
    this.#onDrop = options.onDrop ?? (() => undefined);
    this.#flusher = setInterval(() => void this.flush().catch((error: unknown) => this.#onDrop(`telemetry not written yet (${String(error)}); retrying`)), FLUSH_MS);
    this.#flusher.unref();
  }

  /** Writes what was received so far (reads call it first, so they see it). */
  async flush(): Promise<void> {
    await this.settled();
    this.#flushing = this.#flushing.then(() => this.#writeTelemetry(), () => this.#writeTelemetry());
    return this.#flushing;
  }

  /** Flushes and stops the periodic flush. */
  async close(): Promise<void> {
    clearInterval(this.#flusher);
    await this.flush();
  }

  onAck(listener: AckListener): void {
    this.#ackListeners.push(listener);
  }

  onBirth(listener: BirthListener): void {
    this.#birthListeners.push(listener);
  }

  /** Every event as it arrives (replays included: listeners must be idempotent). */
  onEvent(listener: EventListener): void {
    this.#eventListeners.push(listener);
  }

  /** Takes one MQTT message from the fleet's device tree; it is written with the next batch. */
  ingest(topic: string, payload: Uint8Array): void {
    const parsed = parseDeviceTopic(topic);
    if (parsed === undefined || parsed.fleet !== this.#fleet) return this.#drop(`a message on ${topic.slice(0, 200)}, outside fleet ${this.#fleet}'s device tree`);
    if (parsed.channel === 'ota/request' || parsed.channel === 'attestation') return; // the bundle server's, the verifier's
    // An external broker keeps a revoked device's connection until it reconnects: what it sends meanwhile counts for nothing.
    if (this.#revoked(parsed.device)) return this.#drop(`a message from '${parsed.device}', which is revoked`);
    this.#queue.push({ device: parsed.device, channel: parsed.channel, payload, at: this.#now() });
    this.#draining ??= this.#drain();
  }

  /** Resolves when the queue is short enough to take more (the controller then acknowledges to the broker). */
  admitted(): Promise<void> {
    if (this.#queue.length < HIGH_WATER) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Resolves when every message taken so far has been handled. */
  async settled(): Promise<void> {
    while (this.#draining !== undefined) await this.#draining;
  }

  async list(): Promise<readonly DeviceSummary[]> {
    await this.flush();
    return (await this.#db.all<DeviceRow>('SELECT * FROM devices ORDER BY device_id')).map(summary);
  }

  async get(deviceId: string): Promise<DeviceSummary | undefined> {
    await this.flush();
    const row = await this.#db.get<DeviceRow>('SELECT * FROM devices WHERE device_id = ?', deviceId);
    return row === undefined ? undefined : summary(row);
  }

  /** The attestation key the device registered at enrolment (undefined: unknown device, or enrolled before attestation existed). */
  async attestationIdentity(deviceId: string): Promise<AttestationIdentity | undefined> {
    const row = await this.#db.get<{ attestation_kind: 'tpm2' | 'software' | null; ak_public: Buffer | null; ek_public: Buffer | null }>('SELECT attestation_kind, ak_public, ek_public FROM devices WHERE device_id = ?', deviceId);
    if (row?.attestation_kind == null || row.ak_public === null) return undefined;
    return { kind: row.attestation_kind, akPublic: Buffer.from(row.ak_public), ...(row.ek_public === null ? {} : { ekPublic: Buffer.from(row.ek_public) }) };
  }

  /** The last birth a device sent, decoded. */
  async birth(deviceId: string): Promise<aios.fleet.v1.DeviceBirth | undefined> {
    await this.settled();
    const row = await this.#db.get<{ birth: Uint8Array | null }>('SELECT birth FROM devices WHERE device_id = ?', deviceId);
    return row?.birth == null ? undefined : aios.fleet.v1.DeviceBirth.decode(row.birth);
  }

  async events(deviceId: string, limit = 50): Promise<readonly { sequence: number; timeUnixMs: number; severity: string; code: string; message: string; detail?: unknown }[]> {
    await this.settled();
    const rows = await this.#db.all<{ sequence: number; time_ms: number; severity: string; code: string; message: string; detail: string | null }>('SELECT * FROM events WHERE device_id = ? ORDER BY time_ms DESC, sequence DESC LIMIT ?', deviceId, limit);
    return rows.map((r) => ({ sequence: r.sequence, timeUnixMs: r.time_ms, severity: r.severity, code: r.code, message: r.message, ...(r.detail === null ? {} : { detail: JSON.parse(r.detail) as unknown }) }));
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue.slice(0, BATCH);
        const after: (() => Promise<void> | void)[] = [];
        try {
          await this.#db.transaction(async (tx) => {
            for (const m of batch) await this.#one(tx, m, after);
          });
        } catch (error) {
          if (this.#db.unavailable(error)) {
            // The database is away: keep the batch (and hold the broker back) until it returns.
            this.#onDrop(`the controller store is unavailable (${error instanceof Error ? error.message : String(error)}); retrying in 1 s`);
            await new Promise((resolve) => setTimeout(resolve, 1000));
            continue;
          }
          throw error;
        }
        this.#queue.splice(0, batch.length);
        if (this.#queue.length < HIGH_WATER) for (const wake of this.#waiters.splice(0)) wake();
        // Listeners after the commit, so that what they read includes the batch.
        for (const f of after) {
          try {
            await f();
          } catch (error) {
            this.#onDrop(`a listener failed: ${error instanceof Error ? error.message : String(error)}`);
          }
        }
      }
    } finally {
      this.#draining = undefined;
      for (const wake of this.#waiters.splice(0)) wake();
    }
  }

  async #one(tx: Sql, m: Received, after: (() => Promise<void> | void)[]): Promise<void> {
    if (!this.#enrolled.has(m.device)) {
      if ((await tx.get('SELECT device_id FROM devices WHERE device_id = ?', m.device)) === undefined) return this.#drop(`a message from '${m.device}', which is not enrolled`);
      this.#enrolled.add(m.device);
    }
    let decoded: Decoded;
    try {
      decoded = this.#decode(m);
    } catch (error) {
      return this.#drop(`${m.channel} from ${m.device}: ${error instanceof Error ? error.message : String(error)}`);
    }
    await this.#record(tx, m, decoded, after);
  }

  #decode(m: Received): Decoded {
    const { device, channel, payload } = m;
    switch (channel) {
      case 'birth': {
        const birth = decodeMessage(aios.fleet.v1.DeviceBirth, payload, `the birth of ${device}`);
        if (birth.deviceId !== device || birth.fleet !== this.#fleet) throw new FleetError('EAI_FLEET_MESSAGE_MALFORMED', `the birth names ${birth.deviceId}@${birth.fleet}, but came on ${device}'s topic`);
        return { birth };
      }
      case 'status': {
        // An empty retained payload clears the topic (a deleted device); nothing to record.
        if (payload.length === 0) return {};
        const status = decodeMessage(aios.fleet.v1.DeviceStatus, payload, `the status of ${device}`);
        const S = aios.fleet.v1.DeviceStatus.State;
        const state = status.state === S.ONLINE ? 'online' : status.state === S.OFFLINE ? 'offline' : status.state === S.LOST ? 'lost' : undefined;
        if (state === undefined) throw new FleetError('EAI_FLEET_MESSAGE_MALFORMED', `status ${String(status.state)} is not one aios writes`);
        return { state };
      }
      case 'telemetry':
        return { telemetry: decodeMessage(aios.fleet.v1.Telemetry, payload, `telemetry of ${device}`) };
      case 'events':
        return { event: decodeMessage(aios.fleet.v1.Event, payload, `an event of ${device}`) };
      case 'acks':
        return { ack: decodeMessage(aios.fleet.v1.CommandAck, payload, `a command ack of ${device}`) };
      default:
        return {};
    }
  }

  async #record(tx: Sql, m: Received, d: Decoded, after: (() => Promise<void> | void)[]): Promise<void> {
    const { device, at } = m;
    if (d.birth !== undefined) {
      const birth = d.birth;
      const row = await tx.get<{ labels: string; birth: Uint8Array | null }>('SELECT labels, birth FROM devices WHERE device_id = ?', device);
      const labels = { ...(JSON.parse(row?.labels ?? '{}') as Record<string, string>), ...birth.labels };
      // Births are retained: a controller (re)subscribing gets the last one again, which is no reconnect.
      const last = row?.birth == null ? undefined : aios.fleet.v1.DeviceBirth.decode(row.birth);
      const reconnected = last === undefined || last.bootId !== birth.bootId || wholeNumber(last.startedUnixMs) !== wholeNumber(birth.startedUnixMs) || last.connection !== birth.connection;
      await tx.run('UPDATE devices SET birth = ?, boot_id = ?, runtime_version = ?, labels = ?, last_seen_ms = ?, last_sequence = GREATEST(last_sequence, ?) WHERE device_id = ?', Buffer.from(m.payload), birth.bootId, birth.runtimeVersion, JSON.stringify(labels), at, wholeNumber(birth.lastCommandSequence), device);
      this.counts.births++;
      after.push(() => {
        for (const l of this.#birthListeners) l(device, birth, reconnected);
      });
    } else if (d.state !== undefined) {
      await tx.run("UPDATE devices SET state = ?, state_ms = ?, last_seen_ms = CASE WHEN ? = 'online' THEN ? ELSE last_seen_ms END WHERE device_id = ?", d.state, at, d.state, at, device);
      this.counts.statuses++;
    } else if (d.telemetry !== undefined) {
      const t = d.telemetry;
      const seq = wholeNumber(t.sequence);
      let last = this.#lastSeq.get(device);
      if (last === undefined) {
        const row = await tx.get<{ telemetry_seq: number | null }>('SELECT telemetry_seq FROM devices WHERE device_id = ?', device);
        last = row?.telemetry_seq ?? -1;
      }
      this.counts.telemetry++;
      // A replayed or late record (the spool sends at least once) updates nothing.
      if (seq <= last) return;
      this.#lastSeq.set(device, seq);
      const waiting = this.#pending.get(device);
      this.#pending.set(device, { payload: Buffer.from(m.payload), seq, dropped: (waiting?.dropped ?? 0) + wholeNumber(t.spoolDropped), at });
    } else if (d.event !== undefined) {
      const e = d.event;
      const detail = e.deployment === null || e.deployment === undefined ? null : JSON.stringify(aios.fleet.v1.DeploymentProgress.toObject(e.deployment as aios.fleet.v1.DeploymentProgress, { enums: String, longs: Number }));
      await tx.run('INSERT INTO events (device_id, sequence, time_ms, severity, code, message, detail) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING', device, wholeNumber(e.sequence), wholeNumber(e.timeUnixMs), aios.fleet.v1.Event.Severity[e.severity] ?? 'SEVERITY_UNSPECIFIED', e.code, e.message.slice(0, 4000), detail);
      this.counts.events++;
      for (const l of this.#eventListeners) {
        const then = await l(tx, device, e);
        if (typeof then === 'function') after.push(then);
      }
    } else if (d.ack !== undefined) {
      this.counts.acks++;
      // In the batch: 20,000 acks of a fleet-wide command cost a few transactions, not 20,000.
      for (const l of this.#ackListeners) {
        const then = await l(tx, device, d.ack);
        if (typeof then === 'function') after.push(then);
      }
    }
  }

  async #writeTelemetry(): Promise<void> {
    if (this.#pending.size === 0) return;
    const batch = [...this.#pending];
    this.#pending.clear();
    try {
      await this.#db.transaction(async (tx) => {
        // Conditional: another controller replica may have written a later record meanwhile.
        for (const [device, t] of batch) {
          await tx.run(
            'UPDATE devices SET telemetry = CASE WHEN telemetry_seq IS NULL OR telemetry_seq < ? THEN ? ELSE telemetry END, telemetry_seq = GREATEST(telemetry_seq, ?), telemetry_dropped = telemetry_dropped + ?, last_seen_ms = GREATEST(last_seen_ms, ?) WHERE device_id = ?',
            t.seq,
            t.payload,
            t.seq,
            t.dropped,
            t.at,
            device,
          );
        }
      });
    } catch (error) {
      // Not written: put back what no newer record replaced, to go with the next flush.
      for (const [device, t] of batch) {
        const newer = this.#pending.get(device);
        this.#pending.set(device, newer === undefined ? t : { ...newer, dropped: newer.dropped + t.dropped });
      }
      throw error;
    }
  }

  #drop(why: string): void {
    this.counts.dropped++;
    this.#onDrop(why);
  }
}

interface Decoded {
  readonly birth?: aios.fleet.v1.DeviceBirth;
  readonly state?: 'online' | 'offline' | 'lost';
  readonly telemetry?: aios.fleet.v1.Telemetry;
  readonly event?: aios.fleet.v1.Event;
  readonly ack?: aios.fleet.v1.CommandAck;
}

interface DeviceRow {
  device_id: string;
  labels: string;
  state: DeviceSummary['state'];
  state_ms: number | null;
  last_seen_ms: number | null;
  runtime_version: string | null;
  birth: Uint8Array | null;
  telemetry: Uint8Array | null;
  telemetry_seq: number | null;
  telemetry_dropped: number;
  last_sequence: number;
  attestation_kind: 'tpm2' | 'software' | null;
  attestation_status: 'trusted' | 'untrusted' | 'stale' | null;
  attestation_ms: number | null;
  attestation_result: string | null;
  revoked_ms: number | null;
  revoked_reason: string | null;
}

function summary(row: DeviceRow): DeviceSummary {
  const birth = row.birth === null ? undefined : aios.fleet.v1.DeviceBirth.decode(row.birth);
  const t = row.telemetry === null ? undefined : aios.fleet.v1.Telemetry.decode(row.telemetry);
  return {
    deviceId: row.device_id,
    state: row.state,
    ...(row.state_ms === null ? {} : { stateUnixMs: row.state_ms }),
    ...(row.last_seen_ms === null ? {} : { lastSeenUnixMs: row.last_seen_ms }),
    ...(row.runtime_version === null ? {} : { runtimeVersion: row.runtime_version }),
    labels: JSON.parse(row.labels) as Record<string, string>,
    accelerators: birth?.hardware?.accelerators?.map((a) => a.id ?? '') ?? [],
    models: birth?.models.map((m) => ({ model: m.model ?? '', active: m.activeVersion ?? '', previous: m.previousVersion ?? '' })) ?? [],
    pipelines: birth?.pipelines.map((p) => ({ name: p.name ?? '', state: String(aios.fleet.v1.PipelineInfo.State[p.state ?? 0] ?? 'STATE_UNSPECIFIED') })) ?? [],
    stages: (t?.stages ?? []).map((st) => ({ stage: `${st.pipeline ?? ''}/${st.stage ?? ''}`, rateHz: finite(st.rateHz) ? (st.rateHz as number) : 0, errors: wholeNumber(st.errors) })),
    ...(finite(t?.device?.cpuPercent) ? { cpuPercent: t?.device?.cpuPercent as number } : {}),
    ...(t?.device?.memoryUsedBytes == null ? {} : { memoryUsedBytes: wholeNumber(t.device.memoryUsedBytes) }),
    ...(finite(t?.device?.temperatureC) ? { temperatureC: t?.device?.temperatureC as number } : {}),
    ...(row.telemetry_seq === null ? {} : { telemetrySequence: row.telemetry_seq }),
    telemetryDropped: row.telemetry_dropped,
    lastCommandSequence: row.last_sequence,
    ...(row.attestation_kind === null ? {} : { attestation: row.attestation_kind }),
    ...(row.attestation_status === null ? {} : { attestationStatus: row.attestation_status }),
    ...(row.attestation_ms === null ? {} : { attestedUnixMs: row.attestation_ms }),
    ...(firstReason(row.attestation_result) ?? {}),
    ...(row.revoked_ms == null ? {} : { revoked: { atUnixMs: row.revoked_ms, reason: row.revoked_reason ?? 'unspecified' } }),
  };
}

function firstReason(result: string | null): { attestationReason: string } | undefined {
  if (result === null) return undefined;
  const reason = (JSON.parse(result) as { reasons?: { code?: string; message?: string }[] }).reasons?.[0];
  return reason === undefined ? undefined : { attestationReason: `${reason.code ?? ''}: ${reason.message ?? ''}` };
}

/** A measured value (telemetry uses NaN for "unknown", which JSON would turn into null). */
function finite(value: number | null | undefined): boolean {
  return typeof value === 'number' && Number.isFinite(value);
}
