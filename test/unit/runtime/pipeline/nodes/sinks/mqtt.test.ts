import { spawn } from 'node:child_process';
import net from 'node:net';
import { connectAsync, type MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Tensor } from '../../../../../../drivers/tensor/tensor.js';
import { mqttSink } from '../../../../../../runtime/pipeline/nodes/sinks/mqtt.js';
import { T0, envelope, startSink } from './sink-context.js';
import { findBinary, freePort, startMosquitto, until, type Mosquitto } from '../../../../../support/wait.js';

/**
 * Against a real Mosquitto (Debian: apt-get install mosquitto mosquitto-clients), started here on
 * a free port. Broker outages are made with a TCP proxy between the sink and the broker, so the
 * subscriber that checks what arrived stays connected throughout.
 */
const mosquitto = findBinary('mosquitto');
const mosquittoSub = findBinary('mosquitto_sub');
if (mosquitto === undefined) console.warn('mqtt sink tests skipped: mosquitto is not installed (apt-get install -y mosquitto mosquitto-clients)');

describe.skipIf(mosquitto === undefined)('mqtt sink against Mosquitto', () => {
  let broker: Mosquitto | undefined;
  let port: number;
  let subscriber: MqttClient;
  const received: { topic: string; payload: { time: string; origin: string; seq: number; port: string; value: unknown } }[] = [];

  beforeAll(async () => {
    broker = await startMosquitto(mosquitto as string);
    port = broker.port;
    subscriber = await connectAsync(`mqtt://127.0.0.1:${port}`);
    subscriber.on('message', (topic, payload) => received.push({ topic, payload: JSON.parse(payload.toString()) as (typeof received)[number]['payload'] }));
    await subscriber.subscribeAsync('aios/#', { qos: 1 });
  });
  afterAll(async () => {
    await subscriber?.endAsync();
    broker?.stop();
  });
  afterEach(() => {
    received.length = 0;
  });

  it('publishes each message as JSON to the topic pattern, QoS 1 acknowledged', async () => {
    const sink = await startSink(mqttSink, { url: `mqtt://127.0.0.1:${port}`, topic: 'aios/{node}/{flow}', qos: 1 }, { name: 'up' });
    await until(() => sink.state.client.connected);
    await sink.send('detect.boxes', envelope({ boxes: [{ x: 1, y: 2, width: 3, height: 4, score: 0.75, label: 'face' }], imageWidth: 8, imageHeight: 8 }, { seq: 1 }));
    await sink.send('infer.out', envelope(new Tensor('float32', [2], Float32Array.of(0.5, 1.5)), { seq: 2, origin: 'mic' }));
    await until(() => received.length === 2);
    await sink.stop();
    expect(received).toEqual([
      { topic: 'aios/up/detect/boxes', payload: { time: T0.toString(), origin: 'camera', seq: 1, port: 'detect.boxes', value: { boxes: [{ x: 1, y: 2, width: 3, height: 4, score: 0.75, label: 'face' }], imageWidth: 8, imageHeight: 8 } } },
      { topic: 'aios/up/infer/out', payload: { time: T0.toString(), origin: 'mic', seq: 2, port: 'infer.out', value: { dtype: 'float32', shape: [2], data: [0.5, 1.5] } } },
    ]);
    expect([sink.state.published, sink.state.dropped, sink.warnings]).toEqual([2, 0, []]);
  });

  it.skipIf(mosquittoSub === undefined)('what it publishes (retained) reads the same with mosquitto_sub', async () => {
    // Retained, so mosquitto_sub gets them whenever it subscribes (its output is block-buffered,
    // so the test cannot see when it has subscribed).
    const sink = await startSink(mqttSink, { url: `mqtt://127.0.0.1:${port}`, topic: 'aios/cli/{flow}', retain: true, qos: 1 });
    await sink.send('gps.fix', envelope({ latitude: 52.5, longitude: 13.4 }, { origin: 'gps', seq: 7 }));
    await sink.send('imu.fix', envelope({ latitude: 52.6, longitude: 13.5 }, { origin: 'imu', seq: 8 }));
    await until(() => sink.state.published === 2);
    await sink.stop();
    const sub = spawn(mosquittoSub as string, ['-h', '127.0.0.1', '-p', String(port), '-t', 'aios/cli/#', '-v', '-C', '2', '-W', '10']);
    let out = '';
    sub.stdout.on('data', (d: Buffer) => (out += d.toString()));
    expect(await new Promise((resolve) => sub.on('exit', resolve))).toBe(0);
    expect(out.split('\n').filter((l) => l !== '').sort()).toEqual([
      `aios/cli/gps/fix {"time":"${T0}","origin":"gps","seq":7,"port":"gps.fix","value":{"latitude":52.5,"longitude":13.4}}`,
      `aios/cli/imu/fix {"time":"${T0}","origin":"imu","seq":8,"port":"imu.fix","value":{"latitude":52.6,"longitude":13.5}}`,
    ]);
  });

  it('while the broker is unreachable keeps the newest queueSize messages, counts the dropped, and sends the rest on reconnect', async () => {
    const proxy = await tcpProxy(port);
    const sink = await startSink(mqttSink, { url: `mqtt://127.0.0.1:${proxy.port}`, topic: 'aios/outage', qos: 1, queueSize: 5, reconnect: '50ms' }, { name: 'up' });
    await until(() => sink.state.client.connected);
    await sink.send('gps.fix', envelope({ latitude: 0, longitude: 0 }, { seq: 0 }));
    await until(() => received.length === 1);

    await proxy.close();
    await until(() => !sink.state.client.connected);
    for (let seq = 1; seq <= 20; seq++) await sink.send('gps.fix', envelope({ latitude: seq, longitude: 0 }, { seq }));
    expect(sink.state.queue).toHaveLength(5);
    expect(sink.state.dropped).toBe(15);
    expect(sink.warnings.some((w) => w.includes('MQTT queue full (5 messages): dropping the oldest'))).toBe(true);

    await proxy.open();
    await until(() => received.length === 6);
    await sink.stop();
    await proxy.close();
    expect(received.map((r) => r.payload.seq)).toEqual([0, 16, 17, 18, 19, 20]);
    expect([sink.state.published, sink.state.dropped]).toEqual([6, 15]);
  });

  it('starts with no broker listening, and on stop reports what it could not deliver', async () => {
    const nobody = await freePort();
    const sink = await startSink(mqttSink, { url: `mqtt://127.0.0.1:${nobody}`, reconnect: '50ms', drainTimeout: '100ms' }, { name: 'lost' });
    for (let seq = 0; seq < 3; seq++) await sink.send('a.b', envelope(seq, { seq }));
    await sink.stop();
    expect([sink.state.published, sink.state.dropped]).toEqual([0, 3]);
    expect(sink.warnings).toContain(`lost: 3 message(s) not delivered to mqtt://127.0.0.1:${nobody} before stop`);
  });

  it('counts a payload it cannot encode and publishes the next', async () => {
    const sink = await startSink(mqttSink, { url: `mqtt://127.0.0.1:${port}`, topic: 'aios/enc' });
    const loop: Record<string, unknown> = {};
    loop['x'] = loop;
    await sink.send('a.b', envelope(loop));
    await sink.send('a.b', envelope('fine', { seq: 1 }));
    await until(() => received.length === 1);
    await sink.stop();
    expect(received[0]?.payload.value).toBe('fine');
    expect(sink.state.problems.count('encode')).toBe(1);
  });
});

/** A TCP proxy to the broker on a port of its own, that can be closed (connections cut) and reopened. */
async function tcpProxy(target: number): Promise<{ port: number; open(): Promise<void>; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  let server: net.Server | undefined;
  const port = await freePort();
  const open = async (): Promise<void> => {
    server = net.createServer((client) => {
      const upstream = net.connect(target, '127.0.0.1');
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.on('error', () => undefined);
        s.on('close', () => {
          sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve) => server?.listen(port, '127.0.0.1', resolve));
  };
  const close = async (): Promise<void> => {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => (server === undefined ? resolve(undefined) : server.close(resolve)));
  };
  await open();
  return { port, open, close };
}
