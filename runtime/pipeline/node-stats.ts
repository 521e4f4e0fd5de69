import { LatencyWindow, type LatencySummary } from '../inference/latency-window.js';

/** A node's counters and latencies, as `aios run --stats` and `pipeline.stats()` report them. */
export interface NodeStatsSnapshot {
  readonly node: string;
  readonly use: string;
  readonly in: number;
  readonly out: number;
  /** Dropped by a full queue in front of this node. */
  readonly dropped: number;
  /** Arrived past this node's deadline and skipped. */
  readonly late: number;
  readonly errors: number;
  /** Messages waiting in this node's input queues now. */
  readonly queued: number;
  /** From the source's arrival to the end of this node's processing, ms. */
  readonly latencyMs: LatencySummary;
  /** Time spent inside this node's process(), ms. */
  readonly serviceMs: LatencySummary;
  /** For nodes that run work on a shared device (`infer`): how the device's scheduler treats it. */
  readonly scheduling?: TaskScheduling;
}

/**
 * One node's place on a shared device (docs/scheduling.md): what the policy entitles it to and
 * what it received over the scheduler's window, how long its requests queued, how many missed
 * their deadline, how it was batched, and how often it failed over to another device.
 */
export interface TaskScheduling {
  readonly device: string;
  readonly priority: number;
  /** The rate it declared (params.rate), Hz. */
  readonly rateHz?: number;
  readonly entitledRateHz: number;
  readonly receivedRateHz: number;
  /** Fractions of the device's time. */
  readonly entitledShare: number;
  readonly receivedShare: number;
  readonly queueMs: LatencySummary;
  /** Requests not run because their deadline passed while queued. */
  readonly expired: number;
  /** Requests answered after their deadline. */
  readonly deadlineMisses: number;
  readonly failovers: number;
  readonly batches?: { readonly count: number; readonly meanRows: number };
}

/** Always-on counters for one node: constant memory, cheap enough for every message. */
export class NodeStats {
  in = 0;
  out = 0;
  dropped = 0;
  late = 0;
  errors = 0;
  private readonly latency = new LatencyWindow(1024);
  private readonly service = new LatencyWindow(1024);

  constructor(
    readonly node: string,
    readonly use: string,
  ) {}

  processed(latencyMs: number, serviceMs: number): void {
    this.latency.add(latencyMs);
    this.service.add(serviceMs);
  }

  snapshot(queued: number): NodeStatsSnapshot {
    return { node: this.node, use: this.use, in: this.in, out: this.out, dropped: this.dropped, late: this.late, errors: this.errors, queued, latencyMs: this.latency.summary(), serviceMs: this.service.summary() };
  }
}
