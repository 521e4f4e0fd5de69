import { aios } from '../proto/gen/aios.js';
import { FleetError } from '../fleet/errors.js';
import { parseDeviceTopic, type DeviceChannel } from '../fleet/topics.js';
import { decodeMessage, wholeNumber } from '../fleet/wire.js';
import type { Database } from './database.js';

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

export type AckListener = (deviceId: string, ack: aios.fleet.v1.CommandAck) => void;

export class DeviceRegistry {
  readonly counts: IngestCounts = { births: 0, statuses: 0, telemetry: 0, events: 0, acks: 0, dropped: 0 };
  readonly #db: Database;
  readonly #fleet: string;
  readonly #now: () => number;
  readonly #ackListeners: AckListener[] = [];
  readonly #birthListeners: ((deviceId: string, birth: aios.fleet.v1.DeviceBirth) => void)[] = [];
  readonly #eventListeners: ((deviceId: string, event: aios.fleet.v1.Event) => void)[] = [];
  readonly #onDrop: (why: string) => void;
  /** Devices known to be enrolled: a message from another is dropped without a query each time. */
  readonly #enrolled = new Set<string>();
  /** The highest telemetry sequence seen per device (from the database the first time). */
  readonly #lastSeq = new Map<string, number>();
  /**
   * Telemetry waiting to be written: only the latest record per device matters, and writing all
   * of them in one transaction every FLUSH_MS (rather than one fsynced transaction per message) is
   * what lets one controller keep up with thousands of devices reporting every second.
   */
  readonly #pending = new Map<string, { payload: Buffer; seq: number; dropped: number; at: number }>();
  readonly #flusher: NodeJS.Timeout;

  constructor(db: Database, options: { readonly fleet: string; readonly now?: () => number; readonly onDrop?: (why: string) => void }) {
    this.#db = db;
    this.#fleet = options.fleet;
    this.#now = options.now ?? Date.now;
    this.#onDrop = options.onDrop ?? (() => undefined);
    this.#flusher = setInterval(() => this.flush(), FLUSH_MS);
    this.#flusher.unref();
  }

  /** Writes the telemetry received since the last flush (reads flush first, so they see it). */
  flush(): void {
    if (this.#pending.size === 0) return;
    const batch = [...this.#pending];
    this.#pending.clear();
    const update = this.#db.prepare('UPDATE devices SET telemetry = ?, telemetry_seq = ?, telemetry_dropped = telemetry_dropped + ?, last_seen_ms = ? WHERE device_id = ?');
    this.#db.transaction(() => {
      for (const [device, t] of batch) update.run(t.payload, t.seq, t.dropped, t.at, device);
    })();
  }

  /** Flushes and stops the periodic flush. */
  close(): void {
    clearInterval(this.#flusher);
    this.flush();
  }

  onAck(listener: AckListener): void {
    this.#ackListeners.push(listener);
  }

  onBirth(listener: (deviceId: string, birth: aios.fleet.v1.DeviceBirth) => void): void {
    this.#birthListeners.push(listener);
  }

  /** Every event as it arrives (replays included: listeners must be idempotent). */
  onEvent(listener: (deviceId: string, event: aios.fleet.v1.Event) => void): void {
    this.#eventListeners.push(listener);
  }

  /** Takes one MQTT message from the fleet's device tree. */
  ingest(topic: string, payload: Uint8Array): void {
    const parsed = parseDeviceTopic(topic);
    if (parsed === undefined || parsed.fleet !== this.#fleet) return this.#drop(`a message on ${topic.slice(0, 200)}, outside fleet ${this.#fleet}'s device tree`);
    if (!this.#enrolled.has(parsed.device)) {
      if (this.#db.prepare('SELECT device_id FROM devices WHERE device_id = ?').get(parsed.device) === undefined) return this.#drop(`a message from '${parsed.device}', which is not enrolled`);
      this.#enrolled.add(parsed.device);
    }
    try {
      this.#handle(parsed.device, parsed.channel, payload);
    } catch (error) {
      this.#drop(`${parsed.channel} from ${parsed.device}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  list(): readonly DeviceSummary[] {
    this.flush();
    return (this.#db.prepare('SELECT * FROM devices ORDER BY device_id').all() as DeviceRow[]).map(summary);
  }

  get(deviceId: string): DeviceSummary | undefined {
    this.flush();
    const row = this.#db.prepare('SELECT * FROM devices WHERE device_id = ?').get(deviceId) as DeviceRow | undefined;
    return row === undefined ? undefined : summary(row);
  }

  /** The last birth a device sent, decoded. */
  birth(deviceId: string): aios.fleet.v1.DeviceBirth | undefined {
    const row = this.#db.prepare('SELECT birth FROM devices WHERE device_id = ?').get(deviceId) as { birth: Uint8Array | null } | undefined;
    return row?.birth == null ? undefined : aios.fleet.v1.DeviceBirth.decode(row.birth);
  }

  events(deviceId: string, limit = 50): readonly { sequence: number; timeUnixMs: number; severity: string; code: string; message: string; detail?: unknown }[] {
    const rows = this.#db.prepare('SELECT * FROM events WHERE device_id = ? ORDER BY time_ms DESC, sequence DESC LIMIT ?').all(deviceId, limit) as { sequence: number; time_ms: number; severity: string; code: string; message: string; detail: string | null }[];
    return rows.map((r) => ({ sequence: r.sequence, timeUnixMs: r.time_ms, severity: r.severity, code: r.code, message: r.message, ...(r.detail === null ? {} : { detail: JSON.parse(r.detail) as unknown }) }));
  }

  #handle(device: string, channel: DeviceChannel, payload: Uint8Array): void {
    const now = this.#now();
    switch (channel) {
      case 'birth': {
        const birth = decodeMessage(aios.fleet.v1.DeviceBirth, payload, `the birth of ${device}`);
        if (birth.deviceId !== device || birth.fleet !== this.#fleet) throw new FleetError('EAI_FLEET_MESSAGE_MALFORMED', `the birth names ${birth.deviceId}@${birth.fleet}, but came on ${device}'s topic`);
        const labels = { ...this.#labels(device), ...birth.labels };
        this.#db
          .prepare('UPDATE devices SET birth = ?, boot_id = ?, runtime_version = ?, labels = ?, last_seen_ms = ?, last_sequence = MAX(last_sequence, ?) WHERE device_id = ?')
          .run(Buffer.from(payload), birth.bootId, birth.runtimeVersion, JSON.stringify(labels), now, wholeNumber(birth.lastCommandSequence), device);
        this.counts.births++;
        for (const l of this.#birthListeners) l(device, birth);
        return;
      }
      case 'status': {
        // An empty retained payload clears the topic (a deleted device); nothing to record.
        if (payload.length === 0) return;
        const status = decodeMessage(aios.fleet.v1.DeviceStatus, payload, `the status of ${device}`);
        const state = status.state === aios.fleet.v1.DeviceStatus.State.ONLINE ? 'online' : status.state === aios.fleet.v1.DeviceStatus.State.OFFLINE ? 'offline' : status.state === aios.fleet.v1.DeviceStatus.State.LOST ? 'lost' : undefined;
        if (state === undefined) throw new FleetError('EAI_FLEET_MESSAGE_MALFORMED', `status ${String(status.state)} is not one aios writes`);
        this.#db.prepare('UPDATE devices SET state = ?, state_ms = ?, last_seen_ms = CASE WHEN ? = \'online\' THEN ? ELSE last_seen_ms END WHERE device_id = ?').run(state, now, state, now, device);
        this.counts.statuses++;
        return;
      }
      case 'telemetry': {
        const t = decodeMessage(aios.fleet.v1.Telemetry, payload, `telemetry of ${device}`);
        const seq = wholeNumber(t.sequence);
        let last = this.#lastSeq.get(device);
        if (last === undefined) {
          const row = this.#db.prepare('SELECT telemetry_seq FROM devices WHERE device_id = ?').get(device) as { telemetry_seq: number | null };
          last = row.telemetry_seq ?? -1;
        }
        this.counts.telemetry++;
        // A replayed or late record (the spool sends at least once) updates nothing.
        if (seq <= last) return;
        this.#lastSeq.set(device, seq);
        const waiting = this.#pending.get(device);
        this.#pending.set(device, { payload: Buffer.from(payload), seq, dropped: (waiting?.dropped ?? 0) + wholeNumber(t.spoolDropped), at: now });
        return;
      }
      case 'events': {
        const e = decodeMessage(aios.fleet.v1.Event, payload, `an event of ${device}`);
        const detail = e.deployment === null || e.deployment === undefined ? null : JSON.stringify(aios.fleet.v1.DeploymentProgress.toObject(e.deployment as aios.fleet.v1.DeploymentProgress, { enums: String, longs: Number }));
        this.#db
          .prepare('INSERT OR IGNORE INTO events (device_id, sequence, time_ms, severity, code, message, detail) VALUES (?, ?, ?, ?, ?, ?, ?)')
          .run(device, wholeNumber(e.sequence), wholeNumber(e.timeUnixMs), aios.fleet.v1.Event.Severity[e.severity] ?? 'SEVERITY_UNSPECIFIED', e.code, e.message.slice(0, 4000), detail);
        this.counts.events++;
        for (const l of this.#eventListeners) l(device, e);
        return;
      }
      case 'acks': {
        const ack = decodeMessage(aios.fleet.v1.CommandAck, payload, `a command ack of ${device}`);
        this.counts.acks++;
        for (const l of this.#ackListeners) l(device, ack);
        return;
      }
      default:
        return; // ota/request is the bundle server's; attestation the verifier's
    }
  }

  #labels(device: string): Record<string, string> {
    const row = this.#db.prepare('SELECT labels FROM devices WHERE device_id = ?').get(device) as { labels: string };
    return JSON.parse(row.labels) as Record<string, string>;
  }

  #drop(why: string): void {
    this.counts.dropped++;
    this.#onDrop(why);
  }
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
  };
}

/** A measured value (telemetry uses NaN for "unknown", which JSON would turn into null). */
function finite(value: number | null | undefined): boolean {
  return typeof value === 'number' && Number.isFinite(value);
}
