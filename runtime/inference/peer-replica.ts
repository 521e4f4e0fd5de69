import { CostModel } from '../scheduler/cost-model.js';
import type { PeerTarget, PeerTransport } from './peers.js';
import type { ReplicaState } from './replica.js';

/**
 * A remote candidate of an InferenceService: a peer robot or an edge server reached through the
 * fleet's transport. It has nothing to load; it is `up` until requests to it time out or find
 * the link down, then `down` for a back-off, after which it is tried again (a circuit breaker:
 * the next request is the health check). Its cost model holds the measured round trip.
 */
export class PeerReplica {
  readonly id: string;
  readonly cost = new CostModel();
  state: ReplicaState = 'idle';
  downReason: string | undefined;
  failures = 0;
  retryDelayMs: number;
  retryTimer: NodeJS.Timeout | undefined;
  readonly warmupMs = undefined;

  constructor(
    readonly transport: PeerTransport,
    readonly target: PeerTarget,
    /** The model's name on the servers. */
    readonly model: string,
    initialRetryMs: number,
  ) {
    this.id = `peer:${target.target}`;
    this.retryDelayMs = initialRetryMs;
  }

  get timeoutMs(): number {
    return this.target.timeoutMs ?? 1000;
  }
}
