import { Type } from '@sinclair/typebox';
import { connect, type MqttClient } from 'mqtt';
import { defineNode, type Envelope } from '../../definition.js';
import { Duration } from '../../schema.js';
import { ProblemLog, SINK_INPUT, durationMs, errorText, flowName, messageJson } from './shared.js';

const MqttParams = Type.Object(
  {
    url: Type.String({ default: 'mqtt://localhost:1883', description: 'broker URL: mqtt://host:port, mqtts://, ws://' }),
    topic: Type.String({ minLength: 1, default: 'aios/{node}/{flow}', description: 'topic to publish to: {node} is this sink, {origin} the source node, {flow} the upstream node/port' }),
    qos: Type.Union([Type.Literal(0), Type.Literal(1)], { default: 0, description: '0: at most once; 1: at least once (the broker acknowledges)' }),
    retain: Type.Boolean({ default: false, description: 'ask the broker to keep the last message per topic for new subscribers' }),
    queueSize: Type.Integer({ minimum: 1, default: 1000, description: 'messages held while the broker is unreachable or slow; past this the oldest are dropped' }),
    maxInFlight: Type.Integer({ minimum: 1, default: 100, description: 'messages handed to the connection and not yet sent (QoS 0) or acknowledged (QoS 1)' }),
    clientId: Type.Optional(Type.String({ minLength: 1 })),
    username: Type.Optional(Type.String()),
    password: Type.Optional(Type.String()),
    reconnect: Type.Union([...Duration.anyOf], { default: '1s', description: 'wait between reconnection attempts' }),
    drainTimeout: Type.Union([...Duration.anyOf], { default: '2s', description: 'on stop, how long queued messages may take to go out' }),
  },
  { additionalProperties: false },
);

/** What the mqtt sink holds while it runs. */
export interface MqttSinkState {
  readonly client: MqttClient;
  readonly problems: ProblemLog;
  readonly queue: { topic: string; payload: string }[];
  inFlight: number;
  published: number;
  dropped: number;
  /** Wakes `stop` when the queue and the in-flight set are empty. */
  onIdle: (() => void) | undefined;
}

/**
 * `mqtt`: publishes each message as JSON (`{ time, origin, seq, port, value }`, as the file sink
 * writes it) to a topic built from `topic`, with the `mqtt` client (MQTT 3.1.1 and 5 brokers).
 *
 * Never blocks or crashes the pipeline on the network: `process` only queues. At most
 * `maxInFlight` messages are handed to the connection at once; the rest wait in a queue of
 * `queueSize`, and while the broker is down (the client reconnects every `reconnect`) the oldest
 * are dropped beyond it, counted in `dropped` and reported through `ctx.warn` (once per 10 s).
 * The broker being unreachable at start is not an error: the sink starts, queues and reports.
 * On stop, queued messages get `drainTimeout` to go out; what is left is counted as dropped.
 */
export const mqttSink = defineNode({
  use: 'mqtt',
  role: 'sink',
  description: 'Publishes each message as JSON to an MQTT broker, with a bounded queue that drops the oldest while the broker is unreachable',
  params: MqttParams,
  inputs: [SINK_INPUT],
  outputs: [],
  async start(ctx): Promise<MqttSinkState> {
    const p = ctx.params;
    const problems = new ProblemLog((m, cause) => ctx.warn(m, cause));
    const client = connect(p.url, {
      clientId: p.clientId,
      username: p.username,
      password: p.password,
      reconnectPeriod: Math.max(1, durationMs(p.reconnect)),
      connectTimeout: 10_000,
      // We keep our own bounded queue while offline; the client's offline queue has no bound.
      queueQoSZero: false,
    });
    const state: MqttSinkState = { client, problems, queue: [], inFlight: 0, published: 0, dropped: 0, onIdle: undefined };
    client.on('connect', () => pump(state, ctx.params));
    client.on('error', (err) => problems.report('broker', `${ctx.name}: MQTT broker ${p.url}: ${errorText(err)}; retrying every ${p.reconnect}`, err));
    client.on('offline', () => problems.report('offline', `${ctx.name}: MQTT broker ${p.url} unreachable; queueing up to ${p.queueSize} messages, dropping the oldest beyond`));
    return state;
  },
  process(port, message, ctx, state) {
    const flow = flowName(port, message);
    let payload: string;
    try {
      payload = JSON.stringify(messageJson(flow, message));
    } catch (err) {
      state.problems.report('encode', `${ctx.name}: cannot publish a message from ${flow} as JSON: ${errorText(err)}`, err);
      return;
    }
    state.queue.push({ topic: topicFor(ctx.params.topic, ctx.name, flow, message), payload });
    if (state.queue.length > ctx.params.queueSize) {
      state.queue.shift();
      state.dropped++;
      state.problems.report('dropped', `${ctx.name}: MQTT queue full (${ctx.params.queueSize} messages): dropping the oldest`);
    }
    pump(state, ctx.params);
  },
  async stop(ctx, state) {
    if (state.queue.length > 0 || state.inFlight > 0) {
      const idle = new Promise<void>((resolve) => (state.onIdle = resolve));
      const timeout = new Promise<void>((resolve) => setTimeout(resolve, durationMs(ctx.params.drainTimeout)).unref());
      await Promise.race([idle, timeout]);
    }
    const left = state.queue.length + state.inFlight;
    if (left > 0) {
      state.dropped += left;
      state.queue.length = 0;
      ctx.warn(`${ctx.name}: ${left} message(s) not delivered to ${ctx.params.url} before stop`);
    }
    // A force-end when messages are stuck: a graceful end would wait for a broker that is gone.
    await state.client.endAsync(left > 0);
  },
});

/** Hands queued messages to the client while it is connected and has room in flight. */
function pump(state: MqttSinkState, params: { readonly qos: 0 | 1; readonly retain: boolean; readonly maxInFlight: number }): void {
  while (state.client.connected && state.inFlight < params.maxInFlight) {
    const next = state.queue.shift();
    if (next === undefined) break;
    state.inFlight++;
    state.client.publish(next.topic, next.payload, { qos: params.qos, retain: params.retain }, (err) => {
      state.inFlight--;
      if (err === undefined || err === null) state.published++;
      else {
        state.dropped++;
        state.problems.report('publish', `publishing to ${next.topic} failed: ${errorText(err)}`, err);
      }
      pump(state, params);
      if (state.queue.length === 0 && state.inFlight === 0) state.onIdle?.();
    });
  }
}

function topicFor(pattern: string, node: string, flow: string, message: Envelope): string {
  return pattern.replaceAll('{node}', node).replaceAll('{origin}', message.origin).replaceAll('{flow}', flow.replaceAll('.', '/'));
}
