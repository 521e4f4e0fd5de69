import { AiosError } from '../../drivers/errors.js';
import type { Feeds, Outputs, TensorSpec } from '../../drivers/hal/types.js';

/** A request to a peer that got no good answer: timed out, refused, or the link is down. Codes: EAI_PEER_TIMEOUT, EAI_PEER_FAILED, EAI_PEER_UNREACHABLE, EAI_PEER_BAD_MESSAGE. */
export class PeerError extends AiosError {}

/**
 * How an InferenceService reaches models served by other machines: peer robots on the same
 * network, or an edge server. The fleet layer implements it over MQTT (deploy/fleet); runtime/
 * only knows this interface, so it never imports the fleet's code.
 *
 * A `target` names where a request goes: a server group (every server in the group subscribes,
 * and the broker hands each request to one of them: MQTT shared subscriptions) or one peer.
 */
export interface PeerTransport {
  /**
   * Sends one request and resolves with the peer's outputs. Rejects with PeerError:
   * `EAI_PEER_TIMEOUT` when no answer came within `timeoutMs`, `EAI_PEER_FAILED` when the peer
   * answered with an error (its code and message quoted), `EAI_PEER_UNREACHABLE` when the link is
   * down. The transport never retries by itself; the caller decides where to try next.
   */
  request(target: string, request: PeerRequest): Promise<PeerReply>;
  /**
   * Serves requests for `model` under `target` with `handler`, until the returned function is
   * called. Requests whose deadline has passed are answered with an error, not run.
   */
  serve(target: string, model: string, handler: PeerHandler): Promise<() => Promise<void>>;
}

export interface PeerRequest {
  /** The model's name as the server serves it (its bundle name, or file name). */
  readonly model: string;
  readonly feeds: Feeds;
  /** Milliseconds the caller waits for the answer. */
  readonly timeoutMs: number;
  /** Wall-clock time (ms since the epoch) after which the answer is useless; servers skip the run. */
  readonly deadlineUnixMs?: number;
}

export interface PeerReply {
  readonly outputs: Outputs;
  /** Which peer answered, and on which of its devices. */
  readonly peer: string;
  readonly device: string;
  /** The run on the peer, ms (the rest of the round trip is the link). */
  readonly runMs: number;
}

/** What a server does with one request; throws to answer with an error. */
export type PeerHandler = (request: { readonly model: string; readonly feeds: Feeds }) => Promise<{ readonly outputs: Outputs; readonly device: string; readonly runMs: number }>;

/** One remote target in a service's candidate list: where, how long to wait, the model's signature. */
export interface PeerTarget {
  /** Transport target: a server group (`edge`) or a peer id. */
  readonly target: string;
  /** The model's name on the servers; default: the local model's file name. */
  readonly model?: string;
  /** Wait for an answer, ms. Default 1000. */
  readonly timeoutMs?: number;
}

/** The inputs and outputs a remote model has: a peer-only service must be told them. */
export interface PeerSignature {
  readonly inputs: readonly TensorSpec[];
  readonly outputs: readonly TensorSpec[];
}
