import { randomBytes } from 'node:crypto';
import { endianness } from 'node:os';
import type { IPublishPacket, MqttClient, Packet } from 'mqtt';
import type { Feeds, Outputs } from '../../drivers/hal/types.js';
import { Tensor, bytesPerElement, shapeSize, type DType } from '../../drivers/tensor/tensor.js';
import { PeerError, type PeerHandler, type PeerReply, type PeerRequest, type PeerTransport } from '../../runtime/inference/peers.js';
import { wholeNumber } from './wire.js';
import { aios } from '../proto/gen/aios.js';

const wire = aios.fleet.v1;
type WireTensor = aios.fleet.v1.Tensor.$Properties;

export interface MqttPeerTransportOptions {
  /** The fleet's name: the second level of every topic. */
  readonly fleet: string;
  /** This machine's id in the fleet: replies to its requests come to aios/<fleet>/peers/<peerId>/replies. */
  readonly peerId: string;
  /**
   * Serve through MQTT shared subscriptions (`$share/<target>/...`), so the broker hands each
   * request to one server of the group. Default: on for MQTT 5 connections, off for 3.1.1 (where
   * every server subscribed to a target gets every request, so run one server per target there).
   * Mosquitto also accepts `$share` from 3.1.1 clients: set `true` to use it; aedes does not.
   */
  readonly sharedSubscriptions?: boolean;
  /**
   * Problems no caller sees, as PeerErrors: malformed requests or replies, requests that cannot
   * be answered, replies that could not be published. Default: one line on stderr each.
   */
  readonly warn?: (problem: PeerError) => void;
  /** Wall clock (ms since the epoch) for deadlines; tests inject one. Default `Date.now`. */
  readonly now?: () => number;
  /**
   * How long a serve's stop function (and `close`) waits for requests already running to be
   * answered, ms. A run that takes longer still answers when it ends, if the client is connected.
   * Default 5000.
   */
  readonly drainMs?: number;
}

/** Counters since the transport was made; `stats()` returns a copy. */
export interface PeerTransportStats {
  /** Requests published. */
  readonly sent: number;
  /** Requests answered with outputs. */
  readonly answered: number;
  /** Requests the peer answered with an error (EAI_PEER_FAILED). */
  readonly failed: number;
  readonly timeouts: number;
  readonly unreachable: number;
  /** Replies that were not valid messages. */
  readonly badReplies: number;
  /** Replies that came after their request timed out (or twice), dropped. */
  readonly lateReplies: number;
  /** Requests this transport served with outputs. */
  readonly served: number;
  /**
   * Requests received and not served with outputs: the handler threw, the deadline had passed,
   * or the message was malformed (answered with an error where it named a valid reply topic,
   * dropped otherwise). `served + serveErrors` is every request received.
   */
  readonly serveErrors: number;
  /** Requests refused because their deadline had passed (in serveErrors too). */
  readonly expired: number;
  /** Requests that were not valid messages (in serveErrors too). */
  readonly badRequests: number;
}

/**
 * `aios/<fleet>/infer/<target>/<model>/request`: where requests for `model` under `target` go.
 * Throws PeerError EAI_PEER_NAME for a name that cannot be one topic level.
 */
export function requestTopic(fleet: string, target: string, model: string): string {
  return `aios/${topicLevel('fleet', fleet)}/infer/${topicLevel('target', target)}/${topicLevel('model', model)}/request`;
}

/** `aios/<fleet>/peers/<peerId>/replies`: where a peer's answers come. Throws like requestTopic. */
export function replyTopic(fleet: string, peerId: string): string {
  return `aios/${topicLevel('fleet', fleet)}/peers/${topicLevel('peer id', peerId)}/replies`;
}

/**
 * PeerTransport over MQTT with aios.fleet.v1 protobuf messages (deploy/proto/aios/fleet/v1/
 * inference.proto, topic tree in docs/protocol.md), on an `mqtt` client the caller connected and
 * keeps owning: the transport never ends it, and `close()` only removes what the transport added.
 *
 * Requests and replies go at QoS 1. On MQTT 5 the reply topic and correlation id travel as the
 * PUBLISH response-topic and correlation-data properties; they are also written into the
 * InferRequest, so servers on 3.1.1 connections (where the broker strips properties) can answer.
 * Each request waits at most `timeoutMs` and is settled exactly once: a reply after the timeout,
 * or a duplicate, is dropped. Requests carry a deadline (the caller's, or now + timeoutMs,
 * whichever is first), so a server that gets a request late (a queued session) skips the run.
 *
 * Bad input never throws out of the message handler: malformed messages are answered with an
 * EAI_PEER_BAD_MESSAGE error where there is someone to answer, and reported through `warn`.
 * `request` and `serve` may be called concurrently; handlers may overlap.
 */
export class MqttPeerTransport implements PeerTransport {
  readonly fleet: string;
  readonly peerId: string;
  /** Where this transport's replies arrive. */
  readonly replyTopic: string;
  private readonly client: MqttClient;
  private readonly mqtt5: boolean;
  private readonly shared: boolean;
  private readonly warn: (problem: PeerError) => void;
  private readonly now: () => number;
  private readonly drainMs: number;
  private readonly pending = new Map<string, Pending>();
  private readonly serving = new Map<string, Served>();
  private readonly noSubscribers = new Set<number>();
  private replySubscription: Promise<void> | undefined;
  private closed = false;
  private readonly counts = { sent: 0, answered: 0, failed: 0, timeouts: 0, unreachable: 0, badReplies: 0, lateReplies: 0, served: 0, serveErrors: 0, expired: 0, badRequests: 0 };

  constructor(client: MqttClient, options: MqttPeerTransportOptions) {
    this.replyTopic = replyTopic(options.fleet, options.peerId);
    this.fleet = options.fleet;
    this.peerId = options.peerId;
    this.client = client;
    this.mqtt5 = client.options.protocolVersion === 5;
    this.shared = options.sharedSubscriptions ?? this.mqtt5;
    this.warn = options.warn ?? ((p) => process.stderr.write(`aios peers: ${p.code}: ${p.message}\n`));
    this.now = options.now ?? Date.now;
    this.drainMs = options.drainMs ?? 5000;
    client.on('message', this.onMessage);
    client.on('packetreceive', this.onPacket);
    client.on('close', this.onClose);
  }

  async request(target: string, request: PeerRequest): Promise<PeerReply> {
    const topic = requestTopic(this.fleet, target, request.model);
    if (this.closed) throw this.unreachable(`The peer transport of ${this.peerId} is closed; make a new one.`);
    if (!this.client.connected) throw this.unreachable(`Not connected to the MQTT broker, so the request for ${request.model} cannot go to ${target}. The client reconnects by itself; run locally meanwhile.`);
    await this.subscribeReplies();
    const timeoutMs = Math.min(Math.max(Number.isFinite(request.timeoutMs) ? request.timeoutMs : 0, 0), 2 ** 31 - 1);
    const deadline = Math.min(request.deadlineUnixMs ?? Number.POSITIVE_INFINITY, this.now() + timeoutMs);
    const correlation = randomBytes(16);
    const payload = wire.InferRequest.encode({
      model: request.model,
      inputs: Object.entries(request.feeds).map(([name, t]) => toWireTensor(name, t)),
      deadlineUnixMs: Math.floor(deadline),
      replyTo: this.replyTopic,
      correlationId: correlation,
    }).finish();
    const key = correlation.toString('hex');
    return new Promise<PeerReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.settle(key) === undefined) return;
        this.counts.timeouts++;
        reject(new PeerError('EAI_PEER_TIMEOUT', `No answer from ${target} for ${request.model} within ${timeoutMs} ms. Check that a server runs (aios serve ... --fleet ${this.fleet} --group ${target}), or raise the timeout for a slow link.`, { details: { target, model: request.model, timeoutMs } }));
      }, timeoutMs);
      this.pending.set(key, { target, model: request.model, resolve, reject, timer });
      this.counts.sent++;
      const properties = this.mqtt5 ? { properties: { responseTopic: this.replyTopic, correlationData: correlation } } : {};
      this.client.publish(topic, Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength), { qos: 1, ...properties }, (error, packet) => {
        const id = (packet as IPublishPacket | undefined)?.messageId;
        const nobody = error === undefined || error === null ? id !== undefined && this.noSubscribers.delete(id) : false;
        if ((error === undefined || error === null) && !nobody) return;
        const p = this.settle(key);
        if (p === undefined) return;
        if (nobody) {
          p.reject(this.unreachable(`No server is subscribed to ${topic} (the broker said so). Start one: aios serve ${request.model} --fleet ${this.fleet} --group ${target}.`));
        } else if (typeof (error as { code?: unknown }).code === 'number') {
          p.reject(new PeerError('EAI_PEER_REFUSED', `The broker refused the request to ${topic}: ${error?.message}. Check this client's ACL allows publishing to aios/${this.fleet}/infer/#.`, { cause: error }));
        } else {
          p.reject(this.unreachable(`The request to ${topic} could not be sent: ${error?.message}.`, error));
        }
      });
    });
  }

  async serve(target: string, model: string, handler: PeerHandler): Promise<() => Promise<void>> {
    const topic = requestTopic(this.fleet, target, model);
    if (this.closed) throw this.unreachable(`The peer transport of ${this.peerId} is closed; make a new one.`);
    if (this.serving.has(topic)) throw new PeerError('EAI_PEER_NAME', `${model} under ${target} is already served by this transport; call the stop function serve() returned first.`);
    const filter = this.shared ? `$share/${target}/${topic}` : topic;
    const served: Served = { target, model, filter, handler, inFlight: 0, idle: undefined };
    this.serving.set(topic, served);
    try {
      await this.client.subscribeAsync(filter, { qos: 1 });
    } catch (error) {
      this.serving.delete(topic);
      throw this.subscribeError(filter, error);
    }
    let stopped = false;
    return async () => {
      if (stopped) return;
      stopped = true;
      this.serving.delete(topic);
      // Offline, the subscription goes with the session (or the broker keeps delivering to a
      // persistent one, and those requests are dropped here): nothing more to do either way.
      if (this.client.connected) await this.client.unsubscribeAsync(filter).catch(() => undefined);
      await this.drain([served]);
    };
  }

  /** Counters since construction. */
  stats(): PeerTransportStats {
    return { ...this.counts };
  }

  /**
   * Stops serving, fails waiting requests with EAI_PEER_UNREACHABLE and removes the transport's
   * subscriptions and listeners from the client. The client stays connected: its owner ends it.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const filters = [...this.serving.values()].map((s) => s.filter);
    const running = this.drain([...this.serving.values()]);
    this.serving.clear();
    this.failPending(`The peer transport of ${this.peerId} was closed while the request waited.`);
    if (this.replySubscription !== undefined) filters.push(this.replyTopic);
    if (this.client.connected && filters.length > 0) await this.client.unsubscribeAsync(filters).catch(() => undefined);
    await running;
    this.client.off('message', this.onMessage);
    this.client.off('packetreceive', this.onPacket);
    this.client.off('close', this.onClose);
  }

  /** Resolves when every one of `served` has no request running, or after drainMs. */
  private async drain(served: readonly Served[]): Promise<void> {
    const busy = served.filter((s) => s.inFlight > 0);
    if (busy.length === 0) return;
    let timer: NodeJS.Timeout | undefined;
    const idle = Promise.all(busy.map((s) => new Promise<void>((resolve) => (s.idle = resolve))));
    await Promise.race([idle, new Promise<void>((resolve) => (timer = setTimeout(resolve, this.drainMs)))]);
    clearTimeout(timer);
  }

  private subscribeReplies(): Promise<void> {
    this.replySubscription ??= this.client.subscribeAsync(this.replyTopic, { qos: 1 }).then(
      () => undefined,
      (error: unknown) => {
        this.replySubscription = undefined;
        throw this.subscribeError(this.replyTopic, error);
      },
    );
    return this.replySubscription;
  }

  private readonly onMessage = (topic: string, payload: Buffer, packet: IPublishPacket): void => {
    try {
      if (topic === this.replyTopic) this.onReply(payload, packet);
      else {
        const served = this.serving.get(topic);
        if (served !== undefined) {
          this.onRequest(served, topic, payload, packet).catch((error: unknown) => this.warn(new PeerError('EAI_PEER_BAD_MESSAGE', `A request on ${topic} could not be answered: ${text(error)}`, { cause: error })));
        }
      }
    } catch (error) {
      // Nothing a peer sends may crash the process; this is the last net.
      this.warn(new PeerError('EAI_PEER_BAD_MESSAGE', `A message on ${topic} could not be handled: ${text(error)}`, { cause: error }));
    }
  };

  /** MQTT 5 PUBACK reason 16, "no matching subscribers": read by the publish callback right after. */
  private readonly onPacket = (packet: Packet): void => {
    if (packet.cmd !== 'puback' || packet.reasonCode !== 16 || packet.messageId === undefined) return;
    const id = packet.messageId;
    this.noSubscribers.add(id);
    // The callback runs in this same turn; a PUBACK of someone else's publish must not linger.
    setImmediate(() => this.noSubscribers.delete(id));
  };

  private readonly onClose = (): void => {
    this.failPending('The connection to the MQTT broker closed while the request waited; the answer, if any, is lost.');
  };

  private onReply(payload: Buffer, packet: IPublishPacket): void {
    const property = packet.properties?.correlationData;
    let reply: aios.fleet.v1.InferReply;
    try {
      reply = wire.InferReply.decode(payload);
    } catch (error) {
      this.counts.badReplies++;
      const problem = new PeerError('EAI_PEER_BAD_MESSAGE', `A reply on ${this.replyTopic} is not an aios.fleet.v1.InferReply (${text(error)}); check both sides run the same protocol version.`, { cause: error });
      const p = property === undefined ? undefined : this.settle(property.toString('hex'));
      if (p === undefined) this.warn(problem);
      else p.reject(problem);
      return;
    }
    const key = Buffer.from(property ?? reply.correlationId).toString('hex');
    const p = this.settle(key);
    if (p === undefined) {
      this.counts.lateReplies++;
      return;
    }
    const peer = reply.peer || 'a peer';
    if (reply.error) {
      this.counts.failed++;
      const { code, message } = reply.error;
      p.reject(new PeerError('EAI_PEER_FAILED', `${peer} (${p.target}) answered ${code || 'an error'} for ${p.model}: ${message ?? ''}`, { details: { target: p.target, model: p.model, peer: reply.peer, peerCode: code ?? '', peerMessage: message ?? '' } }));
      return;
    }
    try {
      if (!reply.outputs) throw new Error('it holds neither outputs nor an error');
      const outputs = fromWireTensors(reply.outputs.tensors ?? []);
      this.counts.answered++;
      p.resolve({ outputs, peer: reply.peer, device: reply.device, runMs: reply.runMs });
    } catch (error) {
      this.counts.badReplies++;
      p.reject(badMessage(`The reply of ${peer} (${p.target}) for ${p.model}`, error));
    }
  }

  private async onRequest(served: Served, topic: string, payload: Buffer, packet: IPublishPacket): Promise<void> {
    const props = packet.properties;
    let request: aios.fleet.v1.InferRequest;
    try {
      request = wire.InferRequest.decode(payload);
    } catch (error) {
      this.counts.badRequests++;
      const problem = badMessage(`A request on ${topic}`, error, 'not an aios.fleet.v1.InferRequest');
      if (props?.responseTopic !== undefined && this.validReplyTopic(props.responseTopic)) this.answerError(props.responseTopic, props.correlationData ?? Buffer.alloc(0), problem);
      else {
        this.counts.serveErrors++;
        this.warn(problem);
      }
      return;
    }
    const replyTo = props?.responseTopic ?? request.replyTo;
    const correlation = props?.correlationData ?? Buffer.from(request.correlationId);
    if (!this.validReplyTopic(replyTo)) {
      this.counts.badRequests++;
      this.counts.serveErrors++;
      this.warn(new PeerError('EAI_PEER_BAD_MESSAGE', `A request on ${topic} names reply topic '${replyTo}'; servers answer only on ${replyTopic(this.fleet, '<peer id>')}. Dropped.`));
      return;
    }
    let feeds: Feeds;
    let deadline: number;
    try {
      if (request.model !== served.model) throw new Error(`it asks for model '${request.model}' on the topic of '${served.model}'`);
      feeds = fromWireTensors(request.inputs ?? []);
      deadline = wholeNumber(request.deadlineUnixMs, 'deadline_unix_ms');
    } catch (error) {
      this.counts.badRequests++;
      this.answerError(replyTo, correlation, badMessage(`A request on ${topic}`, error));
      return;
    }
    const now = this.now();
    if (deadline > 0 && now > deadline) {
      this.counts.expired++;
      this.answerError(replyTo, correlation, new PeerError('EAI_PEER_EXPIRED', `The request's deadline passed ${now - deadline} ms before ${this.peerId} got it (by ${this.peerId}'s clock), so it did not run. Keep clocks in sync (NTP, chrony) and allow for the link's delay.`));
      return;
    }
    served.inFlight++;
    try {
      const result = await served.handler({ model: served.model, feeds });
      const outputs = { tensors: Object.entries(result.outputs).map(([name, t]) => toWireTensor(name, t)) };
      this.publishReply(replyTo, correlation, { outputs, device: result.device, runMs: result.runMs });
      this.counts.served++;
    } catch (error) {
      this.answerError(replyTo, correlation, error);
    } finally {
      served.inFlight--;
      if (served.inFlight === 0) served.idle?.();
    }
  }

  private answerError(replyTo: string, correlation: Uint8Array, error: unknown): void {
    this.counts.serveErrors++;
    // The handler's own code (EAI_MODEL_INPUT_SHAPE, ...) travels as it is; anything else is a bug there.
    const code = (error as { code?: unknown } | null)?.code;
    this.publishReply(replyTo, correlation, { error: { code: typeof code === 'string' && code.startsWith('EAI_') ? code : 'EAI_INTERNAL', message: text(error) } });
  }

  private publishReply(replyTo: string, correlation: Uint8Array, result: { outputs: aios.fleet.v1.Outputs.$Properties; device: string; runMs: number } | { error: aios.fleet.v1.Error.$Properties }): void {
    const bytes = wire.InferReply.encode({ correlationId: correlation, peer: this.peerId, ...result }).finish();
    const options = this.mqtt5 && correlation.byteLength > 0 ? { qos: 1 as const, properties: { correlationData: Buffer.from(correlation) } } : { qos: 1 as const };
    this.client.publish(replyTo, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), options, (error) => {
      if (error !== undefined && error !== null) this.warn(new PeerError('EAI_PEER_UNREACHABLE', `The reply to ${replyTo} could not be published: ${error.message}`, { cause: error }));
    });
  }

  /** Servers answer only on reply topics of their own fleet, never on arbitrary topics a request names. */
  private validReplyTopic(topic: string): boolean {
    const prefix = `aios/${this.fleet}/peers/`;
    if (!topic.startsWith(prefix) || !topic.endsWith('/replies')) return false;
    const peer = topic.slice(prefix.length, -'/replies'.length);
    return peer !== '' && !/[/+#\0]/u.test(peer);
  }

  private settle(key: string): Pending | undefined {
    const p = this.pending.get(key);
    if (p === undefined) return undefined;
    this.pending.delete(key);
    clearTimeout(p.timer);
    return p;
  }

  private failPending(why: string): void {
    for (const key of [...this.pending.keys()]) this.settle(key)?.reject(this.unreachable(why));
  }

  private unreachable(message: string, cause?: unknown): PeerError {
    this.counts.unreachable++;
    return new PeerError('EAI_PEER_UNREACHABLE', message, cause === undefined ? {} : { cause });
  }

  private subscribeError(filter: string, error: unknown): PeerError {
    // mqtt.js puts the SUBACK reason code (>= 0x80) on the error: the broker said no.
    if (typeof (error as { code?: unknown } | null)?.code === 'number') {
      return new PeerError('EAI_PEER_REFUSED', `The broker refused the subscription to ${filter}: ${text(error)}. Check this client's ACL${filter.startsWith('$share/') ? ' and that the broker supports shared subscriptions (else pass sharedSubscriptions: false)' : ''}.`, { cause: error });
    }
    return this.unreachable(`Could not subscribe to ${filter}: ${text(error)}.`, error);
  }
}

/**
 * A Tensor as an aios.fleet.v1.Tensor. On little-endian hosts (all that aios runs on in
 * practice) `data` is a view of the tensor's own memory, not a copy; the encoder copies it once,
 * into the message. Big-endian hosts get a byte-swapped copy.
 */
export function toWireTensor(name: string, tensor: Tensor): WireTensor {
  const d = tensor.data;
  let data = Buffer.from(d.buffer, d.byteOffset, d.byteLength);
  if (!LITTLE_ENDIAN) data = swap(Buffer.from(data), bytesPerElement(tensor.dtype));
  return { name, dtype: TO_WIRE[tensor.dtype], shape: [...tensor.shape], data };
}

/**
 * An aios.fleet.v1.Tensor as a Tensor that owns an aligned copy of the bytes (protobuf `bytes`
 * lie at any offset of the payload). Throws PeerError EAI_PEER_BAD_MESSAGE on an unknown dtype,
 * a bad dimension, or data whose length is not product(shape) × the dtype's size.
 */
export function fromWireTensor(message: WireTensor): { name: string; tensor: Tensor } {
  const name = message.name ?? '';
  const label = name === '' ? 'a tensor without a name' : `tensor '${name}'`;
  const dtype = FROM_WIRE.get(message.dtype ?? 0);
  if (dtype === undefined) throw new PeerError('EAI_PEER_BAD_MESSAGE', `${label} has dtype ${message.dtype ?? 0}, which this aios does not know (1 to ${FROM_WIRE.size}); the sender may run a newer protocol.`);
  const shape = (message.shape ?? []).map((d) => {
    const n = BigInt(typeof d === 'number' ? d : d.toString());
    if (n < 0n || n > BigInt(Number.MAX_SAFE_INTEGER)) throw new PeerError('EAI_PEER_BAD_MESSAGE', `${label} has dimension ${n}, beyond 2^53.`);
    return Number(n);
  });
  const data = message.data ?? new Uint8Array(0);
  const expected = shapeSize(shape) * bytesPerElement(dtype);
  if (data.byteLength !== expected) {
    throw new PeerError('EAI_PEER_BAD_MESSAGE', `${label} (${dtype} [${shape.join(', ')}]) needs ${expected} bytes but carries ${data.byteLength}.`);
  }
  const copy = Buffer.alloc(expected);
  copy.set(data);
  if (!LITTLE_ENDIAN) swap(copy, bytesPerElement(dtype));
  // Buffer.alloc of this size is not from the shared pool, so it starts at offset 0 of its own buffer.
  return { name, tensor: Tensor.fromBytes(dtype, shape, copy.buffer, copy.byteOffset) };
}

const LITTLE_ENDIAN = endianness() === 'LE';

const TO_WIRE: Record<DType, aios.fleet.v1.Tensor.DType> = {
  float32: wire.Tensor.DType.FLOAT32,
  float16: wire.Tensor.DType.FLOAT16,
  float64: wire.Tensor.DType.FLOAT64,
  int8: wire.Tensor.DType.INT8,
  uint8: wire.Tensor.DType.UINT8,
  int16: wire.Tensor.DType.INT16,
  uint16: wire.Tensor.DType.UINT16,
  int32: wire.Tensor.DType.INT32,
  uint32: wire.Tensor.DType.UINT32,
  int64: wire.Tensor.DType.INT64,
  uint64: wire.Tensor.DType.UINT64,
  bool: wire.Tensor.DType.BOOL,
};
const FROM_WIRE = new Map<number, DType>(Object.entries(TO_WIRE).map(([dtype, n]) => [n, dtype as DType]));

interface Pending {
  readonly target: string;
  readonly model: string;
  readonly resolve: (reply: PeerReply) => void;
  readonly reject: (error: PeerError) => void;
  readonly timer: NodeJS.Timeout;
}

interface Served {
  readonly target: string;
  readonly model: string;
  /** What the server subscribed to: the request topic, under $share/<target>/ when shared. */
  readonly filter: string;
  readonly handler: PeerHandler;
  inFlight: number;
  /** Wakes a stop that waits for running requests to be answered. */
  idle: (() => void) | undefined;
}

function fromWireTensors(tensors: readonly WireTensor[]): Outputs {
  const out: Outputs = {};
  for (const t of tensors) {
    const { name, tensor } = fromWireTensor(t);
    if (Object.hasOwn(out, name)) throw new PeerError('EAI_PEER_BAD_MESSAGE', `tensor '${name}' appears twice.`);
    out[name] = tensor;
  }
  return out;
}

/** One MQTT topic level: not empty, and no separator, wildcard or NUL. */
function topicLevel(what: string, value: string): string {
  if (typeof value !== 'string' || value === '' || /[/+#\0]/u.test(value) || value.startsWith('$')) {
    throw new PeerError('EAI_PEER_NAME', `The ${what} '${String(value)}' cannot be an MQTT topic level: use a non-empty name without '/', '+', '#', NUL or a leading '$'.`);
  }
  return value;
}

function badMessage(what: string, error: unknown, kind = 'malformed'): PeerError {
  if (error instanceof PeerError && error.code === 'EAI_PEER_BAD_MESSAGE') return new PeerError(error.code, `${what} is malformed: ${error.message}`, { cause: error });
  return new PeerError('EAI_PEER_BAD_MESSAGE', `${what} is ${kind}: ${text(error)}. Check both sides run the same protocol version (docs/protocol.md).`, { cause: error });
}

function swap(bytes: Buffer, size: number): Buffer {
  if (size === 2) bytes.swap16();
  else if (size === 4) bytes.swap32();
  else if (size === 8) bytes.swap64();
  return bytes;
}

function text(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
