import type { Envelope } from '../../definition.js';
import { toJsonValue } from '../../encode.js';

/**
 * What the sinks share: how a message's flow is named, how problems are counted and reported
 * without flooding the log, and the wall-clock time of a message.
 */

/** The one input every sink declares. Any number of flows may end in it. */
export const SINK_INPUT = 'in';

/**
 * The name a sink files a message under: its flow's upstream end, `node.port` (`detect.boxes`).
 *
 * Sinks declare the single input `in`; the executor stamps every delivered message with `via`,
 * the upstream `node.port` of its flow, so one recorder keeps `camera.frames` and `detect.out`
 * apart. A message without `via` (a sink driven directly, as in unit tests) is filed under the
 * `port` it was given, or under its origin when that is just `in`.
 */
export function flowName(port: string, message: Pick<Envelope, 'origin' | 'via'>): string {
  if (message.via !== undefined) return message.via;
  return port === SINK_INPUT || port === '' ? message.origin : port;
}

/**
 * The JSON object one message becomes in a JSON-lines file, on stdout and on MQTT:
 * `{ time: "<sensor time, ns since the epoch, as a decimal string>", origin, seq, port: "<flow>",
 * value }` with the value in the shared JSON encoding. The time is a string because JSON numbers
 * lose nanoseconds past 2^53.
 * @throws EncodeError `EAI_SINK_ENCODE` when the value cannot be encoded.
 */
export function messageJson(flow: string, message: Envelope): { time: string; origin: string; seq: number; port: string; value: unknown } {
  return { time: message.sensorTimeNs.toString(), origin: message.origin, seq: message.seq, port: flow, value: toJsonValue(message.value) ?? null };
}

/**
 * Counts a sink's problems by kind (`encode`, `write`, `dropped`...) and passes them to `warn`
 * at most once per interval per kind, saying how many happened since the last report: a sink fed
 * 30 bad frames a second logs one line every ten seconds, and never stops the pipeline.
 */
export class ProblemLog {
  private readonly counts = new Map<string, number>();
  private readonly unreported = new Map<string, number>();
  private readonly lastReport = new Map<string, number>();

  constructor(
    private readonly warn: (message: string, cause?: unknown) => void,
    private readonly intervalMs = 10_000,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Counts one problem of `kind`; reports it now unless `kind` was reported within the interval. */
  report(kind: string, message: string, cause?: unknown): void {
    this.counts.set(kind, (this.counts.get(kind) ?? 0) + 1);
    const pending = (this.unreported.get(kind) ?? 0) + 1;
    const last = this.lastReport.get(kind);
    const t = this.now();
    if (last !== undefined && t - last < this.intervalMs) {
      this.unreported.set(kind, pending);
      return;
    }
    this.lastReport.set(kind, t);
    this.unreported.set(kind, 0);
    this.warn(pending > 1 ? `${message} (${pending} times since the last report)` : message, cause);
  }

  /** How many problems of `kind` (all kinds when omitted) were counted. */
  count(kind?: string): number {
    if (kind !== undefined) return this.counts.get(kind) ?? 0;
    let n = 0;
    for (const c of this.counts.values()) n += c;
    return n;
  }
}

/**
 * When a message reached this process, as wall-clock ns since the Unix epoch: `arrivalMs` is
 * `performance.now()` time, which `performance.timeOrigin` anchors to the epoch.
 */
export function arrivalWallNs(arrivalMs: number): bigint {
  return BigInt(Math.round((performance.timeOrigin + arrivalMs) * 1000)) * 1000n;
}

/** Milliseconds of a pipeline-file duration: a number of ms, or `250us`, `50ms`, `1.5s`, `2m`. */
export function durationMs(value: number | string): number {
  if (typeof value === 'number') return value;
  const m = /^([0-9]+(?:\.[0-9]+)?)(us|ms|s|m)$/u.exec(value.trim());
  if (m === null) throw new Error(`'${value}' is not a duration: write milliseconds, or e.g. '50ms', '1.5s', '2m'`);
  const scale = { us: 0.001, ms: 1, s: 1000, m: 60_000 }[m[2] as 'us' | 'ms' | 's' | 'm'];
  return Number(m[1]) * scale;
}

/** The error's message, for a warning line (non-Errors included). */
export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
