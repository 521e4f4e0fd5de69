import type { PeerHandler, PeerReply, PeerRequest, PeerTransport } from '../../runtime/inference/peers.js';
import { PeerError } from '../../runtime/inference/peers.js';

/**
 * Peers in one process: servers register handlers under a target, requests go round-robin to
 * the target's servers, as an MQTT shared subscription spreads them. Timeouts and unreachable
 * targets behave as the MQTT transport's do, so the InferenceService's peer logic is tested here
 * and the wire in deploy/fleet's own tests.
 */
export class LoopbackTransport implements PeerTransport {
  private readonly servers = new Map<string, { peer: string; model: string; handler: PeerHandler }[]>();
  private next = 0;
  /** Targets whose link is down: requests fail with EAI_PEER_UNREACHABLE. */
  readonly unreachable = new Set<string>();
  readonly sent: { target: string; peer?: string }[] = [];

  constructor(private readonly peerId = 'server') {}

  async request(target: string, request: PeerRequest): Promise<PeerReply> {
    if (this.unreachable.has(target)) throw new PeerError('EAI_PEER_UNREACHABLE', `the link to ${target} is down`);
    const group = (this.servers.get(target) ?? []).filter((s) => s.model === request.model);
    const server = group[this.next++ % Math.max(1, group.length)];
    this.sent.push({ target, ...(server === undefined ? {} : { peer: server.peer }) });
    if (server === undefined) return new Promise((_, reject) => setTimeout(() => reject(new PeerError('EAI_PEER_TIMEOUT', `no answer from ${target} within ${request.timeoutMs} ms`)), request.timeoutMs));
    const answer = server.handler({ model: request.model, feeds: request.feeds }).then(
      (r): PeerReply => ({ outputs: r.outputs, device: r.device, runMs: r.runMs, peer: server.peer }),
      (error: unknown) => {
        throw new PeerError('EAI_PEER_FAILED', `${server.peer} answered: ${error instanceof Error ? error.message : String(error)}`);
      },
    );
    const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new PeerError('EAI_PEER_TIMEOUT', `no answer from ${target} within ${request.timeoutMs} ms`)), request.timeoutMs).unref());
    return Promise.race([answer, timeout]);
  }

  async serve(target: string, model: string, handler: PeerHandler, peer = this.peerId): Promise<() => Promise<void>> {
    const entry = { peer, model, handler };
    this.servers.set(target, [...(this.servers.get(target) ?? []), entry]);
    return async () => {
      this.servers.set(target, (this.servers.get(target) ?? []).filter((e) => e !== entry));
    };
  }
}
