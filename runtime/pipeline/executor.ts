import { EventEmitter } from 'node:events';
import { BoundedQueue } from './bounded-queue.js';
import type { Envelope, NodeContext, NodeDefinition, PipelineServices } from './definition.js';
import type { Edge, GraphNode, PipelineGraph } from './graph.js';
import { NodeStats, type NodeStatsSnapshot } from './node-stats.js';

/** A warning from a node, already rate-limited: at most one per node per interval. */
export interface NodeWarning {
  readonly node: string;
  readonly message: string;
  readonly cause?: unknown;
  /** Further warnings of this node suppressed since the last one reported. */
  readonly suppressed: number;
}

export interface ExecutorOptions {
  readonly services: PipelineServices;
  /** How long stop() lets queued messages drain before dropping them. Default 5 s. */
  readonly drainMs?: number;
  /** Minimum time between two reported warnings of one node. Default 5 s. */
  readonly warnIntervalMs?: number;
}

interface Inbox {
  readonly edge: Edge;
  readonly queue: BoundedQueue<{ port: string; message: Envelope }>;
}

interface RunningNode {
  readonly node: GraphNode;
  readonly inboxes: Inbox[];
  readonly stats: NodeStats;
  readonly ctx: NodeContext<unknown>;
  state: unknown;
  busy: boolean;
  /** Work the node accepted and finishes after `process` returned (ctx.track), not yet settled. */
  outstanding: number;
  /** Room promises of `block` queues this node filled while processing the current message. */
  pendingRoom: Promise<void>[];
  lastWarn: number;
  suppressed: number;
}

/**
 * Runs a validated pipeline graph. Every edge has its own bounded queue with the declared policy;
 * each stage and sink takes from its queues in turn (round-robin, so one busy input cannot starve
 * another) and processes one message at a time; sources run until their input ends or the
 * pipeline stops, and a source that fails is restarted with backoff while the rest keeps going.
 * Late messages (older than the node's deadline since their source received them) are counted
 * and skipped; a message that makes a stage throw is counted and the stage goes on.
 *
 * Events: 'warning' (NodeWarning), 'done' (every source ended and every queue drained).
 */
export class Executor extends EventEmitter {
  private readonly nodes = new Map<string, RunningNode>();
  private readonly abort = new AbortController();
  private readonly runners: Promise<void>[] = [];
  private sourcesRunning = 0;
  private started = false;
  private stopping: Promise<void> | undefined;
  private queuesClosed = false;

  constructor(
    private readonly graph: PipelineGraph,
    private readonly options: ExecutorOptions,
  ) {
    super();
    for (const node of graph.nodes) {
      const inboxes = graph.edges.filter((e) => e.to.node === node.name).map((edge) => ({ edge, queue: new BoundedQueue<{ port: string; message: Envelope }>(edge.queue.size, edge.queue.full) }));
      const running: RunningNode = { node, inboxes, stats: new NodeStats(node.name, node.definition.use), ctx: undefined as unknown as NodeContext<unknown>, state: undefined, busy: false, outstanding: 0, pendingRoom: [], lastWarn: Number.NEGATIVE_INFINITY, suppressed: 0 };
      (running as { ctx: NodeContext<unknown> }).ctx = this.contextFor(running);
      this.nodes.set(node.name, running);
    }
  }

  get signal(): AbortSignal {
    return this.abort.signal;
  }

  /** Starts every node (sinks first, so nothing is emitted into a node that is not ready), then runs. */
  async start(): Promise<void> {
    if (this.started) throw new Error('the pipeline is already started');
    this.started = true;
    const started: RunningNode[] = [];
    try {
      for (const running of [...this.nodes.values()].reverse()) {
        running.state = await running.node.definition.start?.(running.ctx);
        started.push(running);
      }
    } catch (error) {
      for (const running of started) await running.node.definition.stop?.(running.ctx, running.state).catch(() => undefined);
      throw error;
    }
    for (const running of this.nodes.values()) {
      if (running.node.section === 'sources') {
        this.sourcesRunning++;
        this.runners.push(this.runSource(running));
      } else {
        this.runners.push(this.runNode(running));
      }
    }
  }

  /**
   * Stops: sources are told to stop (abort), queued messages get up to `drainMs` to flow
   * through, then every node's `stop` runs in pipeline order so sinks flush last. Idempotent.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.abort.abort();
      await this.drain(this.options.drainMs ?? 5000);
      this.queuesClosed = true;
      for (const running of this.nodes.values()) for (const inbox of running.inboxes) inbox.queue.close();
      await Promise.allSettled(this.runners);
      for (const running of this.nodes.values()) {
        try {
          await running.node.definition.stop?.(running.ctx, running.state);
        } catch (error) {
          this.warn(running, `stop failed: ${error instanceof Error ? error.message : String(error)}`, error, true);
        }
      }
    })();
    return this.stopping;
  }

  stats(): NodeStatsSnapshot[] {
    return [...this.nodes.values()].map((r) => {
      const snapshot = r.stats.snapshot(r.inboxes.reduce((n, i) => n + i.queue.length, 0));
      let extra: ReturnType<NonNullable<NodeDefinition['stats']>> | undefined;
      try {
        extra = r.state === undefined ? undefined : r.node.definition.stats?.(r.state);
      } catch {
        extra = undefined; // a node's own figures never break the pipeline's report
      }
      return extra?.scheduling === undefined ? snapshot : { ...snapshot, scheduling: extra.scheduling };
    });
  }

  private contextFor(running: RunningNode): NodeContext<unknown> {
    const outgoing = this.graph.edges.filter((e) => e.from.node === running.node.name);
    return {
      name: running.node.name,
      pipeline: this.graph.name,
      params: running.node.params,
      policy: { priority: running.node.priority, ...(running.node.deadlineMs === undefined ? {} : { deadlineMs: running.node.deadlineMs }) },
      baseDir: this.graph.baseDir,
      signal: this.abort.signal,
      services: this.options.services,
      warn: (message, cause) => this.warn(running, message, cause),
      track: (work) => {
        running.outstanding++;
        void work.then(
          () => undefined,
          (error: unknown) => {
            running.stats.errors++;
            this.warn(running, error instanceof Error ? error.message : String(error), error);
          },
        ).finally(() => {
          running.outstanding--;
          this.checkDone();
        });
      },
      emit: (port, value, from) => {
        running.stats.out++;
        let waits: Promise<void>[] | undefined;
        for (const edge of outgoing) {
          if (edge.from.port !== port) continue;
          const target = this.nodes.get(edge.to.node);
          const inbox = target?.inboxes.find((i) => i.edge === edge);
          if (target === undefined || inbox === undefined) continue;
          target.stats.in++;
          const { dropped, room } = inbox.queue.offer({ port: edge.to.port, message: { ...from, value, via: `${edge.from.node}.${edge.from.port}` } });
          if (dropped !== undefined) target.stats.dropped++;
          if (room !== undefined) (waits ??= []).push(room);
        }
        if (waits === undefined) return undefined;
        const room = Promise.all(waits).then(() => undefined);
        // A stage that does not return the promise is still held back: the executor waits for it
        // before handing over the next message, so a `block` queue never grows past its size.
        running.pendingRoom.push(room);
        return room;
      },
    };
  }

  private async runSource(running: RunningNode): Promise<void> {
    let backoff = 500;
    try {
      while (!this.abort.signal.aborted) {
        try {
          await running.node.definition.run?.(running.ctx, running.state);
          return; // the input ended
        } catch (error) {
          if (this.abort.signal.aborted) return;
          running.stats.errors++;
          this.warn(running, `source failed, restarting in ${backoff} ms: ${error instanceof Error ? error.message : String(error)}`, error);
          await sleep(backoff, this.abort.signal);
          backoff = Math.min(backoff * 2, 30_000);
        }
      }
    } finally {
      this.sourcesRunning--;
      this.checkDone();
    }
  }

  private async runNode(running: RunningNode): Promise<void> {
    let next = 0;
    for (;;) {
      const inbox = this.takeTurn(running, next);
      if (inbox === undefined) {
        if (this.queuesClosed) return;
        this.checkDone();
        await Promise.race(running.inboxes.map((i) => i.queue.whenReady()));
        continue;
      }
      next = (running.inboxes.indexOf(inbox) + 1) % running.inboxes.length;
      const item = inbox.queue.poll();
      if (item === undefined) continue;
      const { port, message } = item;
      const deadline = running.node.deadlineMs;
      if (deadline !== undefined && performance.now() - message.arrivalMs > deadline) {
        running.stats.late++;
        continue;
      }
      running.busy = true;
      const t0 = performance.now();
      try {
        const pending = running.node.definition.process?.(port, message, running.ctx, running.state);
        if (pending !== undefined) await pending;
        if (running.pendingRoom.length > 0) {
          const rooms = running.pendingRoom.splice(0);
          await Promise.all(rooms);
        }
        const t1 = performance.now();
        running.stats.processed(t1 - message.arrivalMs, t1 - t0);
      } catch (error) {
        running.stats.errors++;
        this.warn(running, `failed on a message from ${message.origin} #${message.seq}: ${error instanceof Error ? error.message : String(error)}`, error);
      } finally {
        running.busy = false;
      }
    }
  }

  private takeTurn(running: RunningNode, from: number): Inbox | undefined {
    const n = running.inboxes.length;
    for (let k = 0; k < n; k++) {
      const inbox = running.inboxes[(from + k) % n];
      if (inbox !== undefined && inbox.queue.length > 0) return inbox;
    }
    return undefined;
  }

  /** Done when no source runs, nothing is queued and no node is busy. */
  private checkDone(): void {
    if (this.sourcesRunning > 0 || this.stopping !== undefined) return;
    for (const r of this.nodes.values()) if (r.busy || r.outstanding > 0 || r.inboxes.some((i) => i.queue.length > 0)) return;
    // Let any microtask-scheduled emits land before declaring the pipeline finished.
    setImmediate(() => {
      if (this.sourcesRunning > 0 || this.stopping !== undefined) return;
      for (const r of this.nodes.values()) if (r.busy || r.outstanding > 0 || r.inboxes.some((i) => i.queue.length > 0)) return;
      this.emit('done');
    });
  }

  private async drain(limitMs: number): Promise<void> {
    const until = performance.now() + limitMs;
    while (performance.now() < until) {
      const idle = [...this.nodes.values()].every((r) => !r.busy && r.outstanding === 0 && r.inboxes.every((i) => i.queue.length === 0));
      if (idle && this.sourcesRunning === 0) return;
      await new Promise((r) => setTimeout(r, 5));
    }
    for (const running of this.nodes.values()) {
      for (const inbox of running.inboxes) running.stats.dropped += inbox.queue.clear().length;
    }
  }

  private warn(running: RunningNode, message: string, cause?: unknown, always = false): void {
    const now = performance.now();
    if (!always && now - running.lastWarn < (this.options.warnIntervalMs ?? 5000)) {
      running.suppressed++;
      return;
    }
    const warning: NodeWarning = { node: running.node.name, message, ...(cause === undefined ? {} : { cause }), suppressed: running.suppressed };
    running.lastWarn = now;
    running.suppressed = 0;
    this.emit('warning', warning);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}
