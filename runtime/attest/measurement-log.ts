import { mkdir, open, readFile } from 'node:fs/promises';
import path from 'node:path';
import { SerialQueue } from '../../drivers/hal/serial-queue.js';
import { writeFileAtomic } from '../../models/atomic-write.js';
import { AttestError } from './errors.js';
import { checkMeasurement, checkPcrIndex, eventDigest, measurementProblem, replayLog, type MeasurementEvent, type MeasurementType } from './measurement.js';

/**
 * The runtime's measurement log: every event extended into the application PCR since it was last
 * reset, kept in a file in the agent's state folder so it outlives agent restarts within a boot.
 *
 * The file is JSON Lines: a header line `{"format":"aios-measurement-log/1","pcr":23,"bank":"sha256"}`
 * and one `MeasurementEvent` per line. It is only ever appended to (one write per event, then
 * fsync), and replaced as a whole (atomic rename) only when it starts over.
 *
 * Write-ahead: an event is appended and made durable *before* its digest is extended. A crash can
 * then leave the log one event ahead of the PCR (never behind, which could not be repaired: the
 * PCR would hold an extend nobody can name). On open, the log is reconciled with the register:
 * * a last line without its newline is a torn write: dropped (its extend never happened);
 * * PCR all zeros: the TPM was reset (a reboot), so the log starts over;
 * * the log replays to the PCR: kept;
 * * all but the last event replay to the PCR: the crash came between append and extend; the last
 *   event is dropped (the item is measured again when it is next loaded);
 * * anything else: something other than this log extended the PCR, or the file was edited. That
 *   is `EAI_ATTEST_PCR_MISMATCH`: the device cannot produce evidence anyone should trust until the
 *   PCR is reset (a reboot, or `tpm2_pcrreset 23` followed by an agent restart).
 *
 * One `MeasurementLog` per file and register; appends run one at a time in call order, so calls may overlap.
 */

/** The PCR the log mirrors: a TPM PCR, or a software stand-in (software-pcr.ts). */
export interface MeasurementRegister {
  /** The PCR index (the application PCR). */
  readonly pcr: number;
  /** Its current SHA-256 bank value. */
  read(): Promise<Buffer>;
  /** Extends a 32-byte digest into it. */
  extend(digest: Buffer): Promise<void>;
}

export interface MeasurementLogOptions {
  /** The log file (its folder is created, mode 0700). */
  readonly file: string;
  readonly register: MeasurementRegister;
  /** Event times; default the system clock. */
  readonly clock?: () => Date;
}

/** What opening the log found and repaired. */
export interface LogRecovery {
  /** The register was at zero while the file held events: a reboot; the old events were discarded. */
  readonly reset: boolean;
  /** A torn last line (a crash mid-append) was dropped. */
  readonly tornLine: boolean;
  /** A complete last event that was never extended (a crash between append and extend) was dropped. */
  readonly unextendedDropped: MeasurementEvent | undefined;
}

export const LOG_FORMAT = 'aios-measurement-log/1';

export class MeasurementLog {
  readonly file: string;
  readonly register: MeasurementRegister;
  readonly recovery: LogRecovery;
  private readonly clock: () => Date;
  private readonly queue = new SerialQueue();
  private readonly entries: MeasurementEvent[];
  private current: Buffer;
  private size: number;

  private constructor(options: MeasurementLogOptions, entries: MeasurementEvent[], size: number, recovery: LogRecovery) {
    this.file = options.file;
    this.register = options.register;
    this.clock = options.clock ?? (() => new Date());
    this.entries = entries;
    this.current = replayLog(entries);
    this.size = size;
    this.recovery = recovery;
  }

  /** Reads, reconciles (see the file comment) and returns the log. Throws `EAI_ATTEST_LOG_CORRUPT` or `EAI_ATTEST_PCR_MISMATCH`. */
  static async open(options: MeasurementLogOptions): Promise<MeasurementLog> {
    checkPcrIndex(options.register.pcr);
    await mkdir(path.dirname(options.file), { recursive: true, mode: 0o700 });
    const stored = await readLog(options.file, options.register.pcr);
    const pcrValue = await options.register.read();
    let events = stored.events;
    let unextendedDropped: MeasurementEvent | undefined;
    let reset = false;
    if (pcrValue.every((b) => b === 0)) {
      reset = events.length > 0;
      events = [];
    } else if (!replayLog(events).equals(pcrValue)) {
      const last = events.at(-1);
      if (last !== undefined && replayLog(events.slice(0, -1)).equals(pcrValue)) {
        unextendedDropped = last;
        events = events.slice(0, -1);
      } else {
        throw new AttestError(
          'EAI_ATTEST_PCR_MISMATCH',
          `PCR ${options.register.pcr} holds ${pcrValue.toString('hex')}, but the measurement log ${options.file} (${events.length} events) replays to ${replayLog(events).toString('hex')}: something other than this runtime extended PCR ${options.register.pcr}, or the log was edited. Evidence from this device cannot be trusted until the PCR starts over: reboot, or run \`tpm2_pcrreset ${options.register.pcr}\` and restart the agent`,
          { details: { pcr: options.register.pcr, value: pcrValue.toString('hex'), replayed: replayLog(events).toString('hex'), events: events.length } },
        );
      }
    }
    // Rewrite when anything was dropped or the file is not a clean log yet; otherwise append to it as it is.
    let size = stored.size;
    if (!stored.clean || reset || unextendedDropped !== undefined) {
      const text = serialise(options.register.pcr, events);
      await writeFileAtomic(options.file, text);
      size = Buffer.byteLength(text);
    }
    return new MeasurementLog(options, events, size, { reset, tornLine: stored.torn, unextendedDropped });
  }

  /** Every event since the PCR was reset, in extend order (a copy). */
  get events(): readonly MeasurementEvent[] {
    return [...this.entries];
  }

  /** The PCR value the log replays to (what the register should hold). */
  get value(): Buffer {
    return Buffer.from(this.current);
  }

  /**
   * Records and extends one measurement: appends the event (fsync), then extends its event digest.
   * When the extend fails, the appended line is cut off again and the error rethrown.
   */
  append(type: MeasurementType, name: string, sha256: string): Promise<MeasurementEvent> {
    checkMeasurement(type, name, sha256);
    return this.queue.push(async () => {
      const event: MeasurementEvent = { pcr: this.register.pcr, type, name, sha256, time: this.clock().toISOString() };
      const line = `${JSON.stringify(event)}\n`;
      const handle = await open(this.file, 'a', 0o600);
      try {
        await handle.write(line);
        await handle.sync();
        const digest = eventDigest(type, name, sha256);
        try {
          await this.register.extend(digest);
        } catch (error) {
          await handle.truncate(this.size).then(() => handle.sync()).catch(() => undefined);
          throw error;
        }
        this.size += Buffer.byteLength(line);
        this.entries.push(event);
        this.current = replayLog(this.entries);
        return event;
      } finally {
        await handle.close();
      }
    });
  }

  /** Runs `fn` with no append in progress or starting until it settles (a quote must see the log and PCR agree). */
  exclusive<T>(fn: (events: readonly MeasurementEvent[], value: Buffer) => Promise<T>): Promise<T> {
    return this.queue.push(() => fn(this.events, this.value));
  }
}

interface StoredLog {
  readonly events: MeasurementEvent[];
  readonly size: number;
  /** The file exists, has our header, and has no torn tail. */
  readonly clean: boolean;
  readonly torn: boolean;
}

async function readLog(file: string, pcr: number): Promise<StoredLog> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { events: [], size: 0, clean: false, torn: false };
    throw new AttestError('EAI_ATTEST_LOG_CORRUPT', `cannot read the measurement log ${file}: ${(error as Error).message}`, { cause: error });
  }
  const lines = text.split('\n');
  // After the last newline comes either nothing or a line whose write was cut short.
  const tail = lines.pop() ?? '';
  const torn = tail.length > 0;
  const corrupt = (lineNo: number, why: string): AttestError =>
    new AttestError('EAI_ATTEST_LOG_CORRUPT', `the measurement log ${file} line ${lineNo} ${why}. A crash only ever tears the last line, so the file was altered: move it aside, reset PCR ${pcr} (reboot, or \`tpm2_pcrreset ${pcr}\`) and restart the agent`, { details: { file, line: lineNo } });
  if (lines.length === 0) return { events: [], size: 0, clean: false, torn };
  const header = parseLine(lines[0] ?? '');
  if (header === undefined || header['format'] !== LOG_FORMAT || header['bank'] !== 'sha256') throw corrupt(1, `is not the header {"format":"${LOG_FORMAT}",...}`);
  if (header['pcr'] !== pcr) throw corrupt(1, `says the log is for PCR ${String(header['pcr'])}, not the PCR ${pcr} it is opened for`);
  const events: MeasurementEvent[] = [];
  for (let i = 1; i < lines.length; i++) {
    const v = parseLine(lines[i] ?? '');
    const problem = v === undefined ? 'is not a JSON object' : eventProblem(v, pcr);
    if (problem !== undefined) throw corrupt(i + 1, problem);
    events.push(v as unknown as MeasurementEvent);
  }
  return { events, size: Buffer.byteLength(text) - Buffer.byteLength(tail), clean: !torn, torn };
}

/** Why a parsed value is not an event of PCR `pcr`, or undefined. Shared with evidence decoding. */
export function eventProblem(v: Record<string, unknown>, pcr: number | undefined): string | undefined {
  const keys = Object.keys(v).sort().join(',');
  if (keys !== 'name,pcr,sha256,time,type') return `has the fields ${keys}, not pcr, type, name, sha256, time`;
  if (typeof v['pcr'] !== 'number' || (pcr !== undefined && v['pcr'] !== pcr)) return `is for PCR ${String(v['pcr'])}${pcr === undefined ? '' : `, not ${pcr}`}`;
  if (typeof v['time'] !== 'string' || Number.isNaN(Date.parse(v['time']))) return 'has no RFC 3339 time';
  return measurementProblem(v['type'], v['name'], v['sha256']);
}

function parseLine(line: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(line);
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function serialise(pcr: number, events: readonly MeasurementEvent[]): string {
  return [JSON.stringify({ format: LOG_FORMAT, pcr, bank: 'sha256' }), ...events.map((e) => JSON.stringify(e))].map((l) => `${l}\n`).join('');
}
