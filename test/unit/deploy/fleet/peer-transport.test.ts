import { spawnSync } from 'node:child_process';
import path from 'node:path';
import fc from 'fast-check';
import { connectAsync, type IClientOptions, type MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Feeds, Outputs } from '../../../../drivers/hal/types.js';
import { readNpy } from '../../../../drivers/tensor/npy.js';
import { DTYPES, Tensor, bytesPerElement, type DType } from '../../../../drivers/tensor/tensor.js';
import { MqttPeerTransport, fromWireTensor, requestTopic, toWireTensor, type MqttPeerTransportOptions } from '../../../../deploy/fleet/peer-transport.js';
import { aios } from '../../../../deploy/proto/gen/aios.js';
import { InferenceService } from '../../../../runtime/inference/inference-service.js';
import { PeerError, type PeerHandler } from '../../../../runtime/inference/peers.js';
import { findBinary, startMosquitto, until, type Mosquitto } from '../../../support/wait.js';

/**
 * Two or three "agents" (separate MQTT clients, each with its own transport) on a real Mosquitto
 * (Debian: apt-get install mosquitto), started here on a free port. One serves a real model
 * (BlazeFace through InferenceService), another asks for it.
 */
const repo = path.resolve(import.meta.dirname, '../../../..');
const MODEL = path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx');
const INPUT = path.join(repo, 'test/fixtures/inputs/blazeface128-face.npy');
const wire = aios.fleet.v1;

const mosquitto = findBinary('mosquitto');
const protoc = findBinary('protoc');
if (mosquitto === undefined) console.warn('MQTT peer transport tests skipped: mosquitto is not installed (apt-get install -y mosquitto)');
if (protoc === undefined) console.warn('protoc --decode check skipped: protoc is not installed (apt-get install -y protobuf-compiler)');

describe.skipIf(mosquitto === undefined)('MqttPeerTransport against Mosquitto', () => {
  let broker: Mosquitto | undefined;
  let url: string;
  let service: InferenceService;
  let feeds: Feeds;
  let local: Outputs;
  const clients: MqttClient[] = [];
  const transports: MqttPeerTransport[] = [];
  const problems: PeerError[] = [];

  const modelHandler: PeerHandler = async (request) => {
    const t0 = performance.now();
    const outputs = await service.infer(request.feeds);
    return { outputs, device: service.device.id, runMs: performance.now() - t0 };
  };

  async function client(options: IClientOptions = {}): Promise<MqttClient> {
    const c = await connectAsync(url, { protocolVersion: 5, reconnectPeriod: 0, ...options });
    clients.push(c);
    return c;
  }

  async function agent(peerId: string, options: IClientOptions = {}, extra: Partial<MqttPeerTransportOptions> = {}): Promise<MqttPeerTransport> {
    const t = new MqttPeerTransport(await client(options), { fleet: 'lab', peerId, warn: (p) => problems.push(p), ...extra });
    transports.push(t);
    return t;
  }

  beforeAll(async () => {
    broker = await startMosquitto(mosquitto as string);
    url = broker.url;
    service = new InferenceService(MODEL, { devices: ['cpu'], threads: 1 });
    const [input] = await Promise.all([readNpy(INPUT), service.start()]);
    feeds = { [service.inputs[0]?.name as string]: input };
    local = await service.infer(feeds);
  });
  afterAll(async () => {
    await service?.stop();
    broker?.stop();
  });
  afterEach(async () => {
    await Promise.all(transports.splice(0).map((t) => t.close()));
    await Promise.all(clients.splice(0).map((c) => c.endAsync(true)));
    problems.length = 0;
  });

  it('a peer runs a real model for another: outputs bitwise equal to a local run', async () => {
    const server = await agent('edge-1');
    const robot = await agent('robot-7');
    await server.serve('edge', 'blazeface', modelHandler);
    const reply = await robot.request('edge', { model: 'blazeface', feeds, timeoutMs: 5000 });
    expect([reply.peer, reply.device]).toEqual(['edge-1', service.device.id]);
    expect(reply.runMs).toBeGreaterThan(0);
    expectSameOutputs(reply.outputs, local);
    expect(robot.stats()).toMatchObject({ sent: 1, answered: 1, failed: 0, timeouts: 0 });
    expect(server.stats()).toMatchObject({ served: 1, serveErrors: 0, badRequests: 0 });
    expect(problems).toEqual([]);
  });

  it('an InferenceService offloads to the edge agent over the broker, and runs locally once the edge agent is gone', async () => {
    const server = await agent('edge-1');
    const stop = await server.serve('edge', path.basename(MODEL), modelHandler);
    const robot = new InferenceService(MODEL, { devices: ['peer:edge', 'cpu'], threads: 1, name: 'robot', retry: { initialMs: 60_000 }, peers: { transport: await agent('robot-7'), targets: [{ target: 'edge', timeoutMs: 2000 }] } });
    await robot.start();
    try {
      expectSameOutputs(await robot.infer(feeds), local);
      expect(robot.stats()).toMatchObject({ device: 'peer:edge', failovers: 0 });
      expect(server.stats().served).toBe(1);
      await stop();
      // MQTT 5: the broker says nobody serves it any more, so the robot knows at once.
      expectSameOutputs(await robot.infer(feeds), local);
      expect(robot.stats()).toMatchObject({ device: 'cpu:0', failovers: 1 });
      expect(robot.stats().replicas[0]).toMatchObject({ device: 'peer:edge', state: 'down' });
    } finally {
      await robot.stop();
    }
  });

  it('a shared subscription hands each request to one server of the group, and both get some', async () => {
    const answered: string[] = [];
    const servers = await Promise.all(['s1', 's2'].map((id) => agent(id)));
    for (const s of servers) {
      await s.serve('edge', 'echo', async (r) => {
        answered.push(s.peerId);
        return { outputs: r.feeds, device: 'cpu', runMs: 0 };
      });
    }
    const robot = await agent('robot');
    const replies = await Promise.all(Array.from({ length: 16 }, (_, i) => robot.request('edge', { model: 'echo', feeds: { x: new Tensor('int32', [1], Int32Array.of(i)) }, timeoutMs: 5000 })));
    expect(replies.map((r) => r.outputs['x']?.data[0])).toEqual(Array.from({ length: 16 }, (_, i) => i));
    expect(answered).toHaveLength(16);
    expect(new Set(replies.map((r) => r.peer))).toEqual(new Set(['s1', 's2']));
    expect(servers.map((s) => s.stats().served).sort()).not.toContain(0);
  });

  it('times out when the server is too slow, and drops the late reply instead of delivering it', async () => {
    const server = await agent('slow');
    let release: (() => void) | undefined;
    await server.serve('edge', 'slow', async (r) => {
      await new Promise<void>((resolve) => (release = resolve));
      return { outputs: r.feeds, device: 'cpu', runMs: 1 };
    });
    const robot = await agent('robot');
    const t0 = Date.now();
    const error = await robot.request('edge', { model: 'slow', feeds: { x: Tensor.zeros('float32', [2]) }, timeoutMs: 150 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PeerError);
    expect((error as PeerError).code).toBe('EAI_PEER_TIMEOUT');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(140);
    await until(() => release !== undefined);
    release?.();
    await until(() => robot.stats().lateReplies === 1);
    expect(robot.stats()).toMatchObject({ sent: 1, answered: 0, timeouts: 1, lateReplies: 1 });
  });

  it('with no server at all: MQTT 5 fails fast (the broker says no subscriber), 3.1.1 times out', async () => {
    const v5 = await agent('robot5');
    const t0 = Date.now();
    const fast = await v5.request('nobody', { model: 'blazeface', feeds, timeoutMs: 5000 }).catch((e: unknown) => e);
    expect([(fast as PeerError).code, Date.now() - t0 < 2000]).toEqual(['EAI_PEER_UNREACHABLE', true]);
    expect((fast as PeerError).message).toContain('No server is subscribed to aios/lab/infer/nobody/blazeface/request');

    const v4 = await agent('robot4', { protocolVersion: 4 });
    const slow = await v4.request('nobody', { model: 'blazeface', feeds, timeoutMs: 100 }).catch((e: unknown) => e);
    expect((slow as PeerError).code).toBe('EAI_PEER_TIMEOUT');
  });

  it('answers a handler failure with an error: the model refusing bad inputs, and a plain exception', async () => {
    const server = await agent('edge-1');
    await server.serve('edge', 'blazeface', modelHandler);
    await server.serve('edge', 'broken', async () => {
      throw new Error('disk on fire');
    });
    const robot = await agent('robot');
    const wrongShape = { [service.inputs[0]?.name as string]: Tensor.zeros('float32', [1, 3, 64, 64]) };
    const refused = (await robot.request('edge', { model: 'blazeface', feeds: wrongShape, timeoutMs: 5000 }).catch((e: unknown) => e)) as PeerError;
    expect(refused.code).toBe('EAI_PEER_FAILED');
    expect(refused.details['peer']).toBe('edge-1');
    expect(refused.details['peerCode']).toMatch(/^EAI_MODEL_INPUT_/u);
    expect(refused.message).toContain(`edge-1 (edge) answered ${String(refused.details['peerCode'])} for blazeface:`);

    const crashed = (await robot.request('edge', { model: 'broken', feeds, timeoutMs: 5000 }).catch((e: unknown) => e)) as PeerError;
    expect([crashed.code, crashed.details['peerCode'], crashed.details['peerMessage']]).toEqual(['EAI_PEER_FAILED', 'EAI_INTERNAL', 'disk on fire']);
    expect(server.stats()).toMatchObject({ served: 0, serveErrors: 2 });
  });

  it('refuses a request whose deadline has passed without running it', async () => {
    let runs = 0;
    const server = await agent('edge-1');
    await server.serve('edge', 'blazeface', async (r) => {
      runs++;
      return modelHandler(r);
    });
    const robot = await agent('robot');
    const late = (await robot.request('edge', { model: 'blazeface', feeds, timeoutMs: 5000, deadlineUnixMs: Date.now() - 1000 }).catch((e: unknown) => e)) as PeerError;
    expect([late.code, late.details['peerCode']]).toEqual(['EAI_PEER_FAILED', 'EAI_PEER_EXPIRED']);
    expect(late.message).toMatch(/deadline passed \d+ ms before edge-1 got it/u);
    expect([runs, server.stats().expired]).toEqual([0, 1]);
    // A deadline still ahead runs.
    await robot.request('edge', { model: 'blazeface', feeds, timeoutMs: 5000, deadlineUnixMs: Date.now() + 5000 });
    expect(runs).toBe(1);
  });

  it('works over MQTT 3.1.1 (reply topic and correlation id in the payload), and between 3.1.1 and 5 clients', async () => {
    const server4 = await agent('edge-v4', { protocolVersion: 4 });
    await server4.serve('edge4', 'blazeface', modelHandler);
    const robot4 = await agent('robot-v4', { protocolVersion: 4 });
    const robot5 = await agent('robot-v5');
    expectSameOutputs((await robot4.request('edge4', { model: 'blazeface', feeds, timeoutMs: 5000 })).outputs, local);
    // The broker strips MQTT 5 properties on the way to a 3.1.1 server: the payload fields answer.
    expectSameOutputs((await robot5.request('edge4', { model: 'blazeface', feeds, timeoutMs: 5000 })).outputs, local);

    const server5 = await agent('edge-v5');
    await server5.serve('edge5', 'blazeface', modelHandler);
    expect((await robot4.request('edge5', { model: 'blazeface', feeds, timeoutMs: 5000 })).peer).toBe('edge-v5');
  });

  it('survives garbage on its request topic: answers what it can with EAI_PEER_BAD_MESSAGE, then serves the next good request', async () => {
    const server = await agent('edge-1');
    await server.serve('edge', 'blazeface', modelHandler);
    const raw = await client();
    const replies: { reply: aios.fleet.v1.InferReply; correlation?: Buffer }[] = [];
    raw.on('message', (_topic, payload, packet) => replies.push({ reply: wire.InferReply.decode(payload), ...(packet.properties?.correlationData ? { correlation: packet.properties.correlationData } : {}) }));
    await raw.subscribeAsync('aios/lab/peers/raw/replies', { qos: 1 });
    const topic = requestTopic('lab', 'edge', 'blazeface');
    const replyTo = 'aios/lab/peers/raw/replies';
    const send = (payload: Uint8Array, props?: { responseTopic: string; correlationData: Buffer }): Promise<unknown> => raw.publishAsync(topic, Buffer.from(payload), { qos: 1, ...(props ? { properties: props } : {}) });
    const request = (inputs: aios.fleet.v1.Tensor.$Properties[], extra: Partial<aios.fleet.v1.InferRequest.$Properties> = {}): Uint8Array => wire.InferRequest.encode({ model: 'blazeface', inputs, replyTo, correlationId: Buffer.from('c1'), ...extra }).finish();
    const input = toWireTensor(service.inputs[0]?.name as string, feeds[service.inputs[0]?.name as string] as Tensor);

    await send(Buffer.from([0xff, 0xff, 0xff, 0xff]));                                                 // not protobuf, no one to answer
    await send(Buffer.from([0x0a, 0x7f, 0x01]), { responseTopic: replyTo, correlationData: Buffer.from('c0') }); // truncated; MQTT 5 reply topic
    await send(request([{ ...input, data: (input.data as Uint8Array).subarray(4) }]));                 // 4 bytes short
    await send(request([{ ...input, dtype: 99 as aios.fleet.v1.Tensor.DType }]));                                                     // a dtype from the future
    await send(request([input], { replyTo: 'aios/lab/devices/robot-7/commands' }));                  // reply topic outside the peers tree
    await send(request([input], { correlationId: Buffer.from('ok') }));                                // good
    await until(() => replies.length === 4);
    expect(replies.map(({ reply }) => [Buffer.from(reply.correlationId).toString(), reply.error?.code ?? 'outputs'])).toEqual([
      ['c0', 'EAI_PEER_BAD_MESSAGE'],
      ['c1', 'EAI_PEER_BAD_MESSAGE'],
      ['c1', 'EAI_PEER_BAD_MESSAGE'],
      ['ok', 'outputs'],
    ]);
    expect(replies[0]?.correlation?.toString()).toBe('c0');
    expect(replies[1]?.reply.error?.message).toContain(`needs ${128 * 128 * 3 * 4} bytes but carries ${128 * 128 * 3 * 4 - 4}`);
    expect(replies[2]?.reply.error?.message).toContain('has dtype 99, which this aios does not know');
    const outputs = Object.fromEntries((replies[3]?.reply.outputs?.tensors ?? []).map((t) => [t.name, Buffer.from(t.data ?? [])]));
    expect(outputs).toEqual(Object.fromEntries(Object.entries(local).map(([n, t]) => [n, Buffer.from(t.bytes())])));
    expect(problems.map((p) => p.code)).toEqual(['EAI_PEER_BAD_MESSAGE', 'EAI_PEER_BAD_MESSAGE']);
    expect(problems[1]?.message).toContain("names reply topic 'aios/lab/devices/robot-7/commands'");
    expect(server.stats()).toMatchObject({ served: 1, badRequests: 5 });

    // Garbage on a requester's reply topic is reported, and its pending request still completes.
    const robot = await agent('robot');
    const waiting = robot.request('edge', { model: 'blazeface', feeds, timeoutMs: 5000 });
    await raw.publishAsync(robot.replyTopic, Buffer.from([0x0a, 0xff]), { qos: 1 });
    expectSameOutputs((await waiting).outputs, local);
    await until(() => robot.stats().badReplies === 1);
  });

  it('fails with EAI_PEER_UNREACHABLE while offline, and fails waiting requests when the link drops', async () => {
    // A run that never ends: the server's close gives up waiting for it after drainMs.
    const server = await agent('slow', {}, { drainMs: 50 });
    await server.serve('edge', 'slow', () => new Promise(() => undefined));
    const c = await client();
    const robot = new MqttPeerTransport(c, { fleet: 'lab', peerId: 'robot', warn: (p) => problems.push(p) });
    transports.push(robot);
    const waiting = robot.request('edge', { model: 'slow', feeds, timeoutMs: 10_000 }).catch((e: unknown) => e);
    await until(() => server.stats().served === 0 && robot.stats().sent === 1);
    c.stream.destroy();
    const dropped = (await waiting) as PeerError;
    expect([dropped.code, dropped.message]).toEqual(['EAI_PEER_UNREACHABLE', 'The connection to the MQTT broker closed while the request waited; the answer, if any, is lost.']);
    const offline = (await robot.request('edge', { model: 'slow', feeds, timeoutMs: 1000 }).catch((e: unknown) => e)) as PeerError;
    expect(offline.code).toBe('EAI_PEER_UNREACHABLE');
    expect(offline.message).toContain('Not connected to the MQTT broker');
  });

  it('refuses names that cannot be topic levels, and serving one model twice', async () => {
    const c = await client();
    expect(() => new MqttPeerTransport(c, { fleet: 'lab/x', peerId: 'a' })).toThrow(expect.objectContaining({ code: 'EAI_PEER_NAME' }) as Error);
    const t = await agent('a');
    await expect(t.request('edge/+', { model: 'm', feeds, timeoutMs: 10 })).rejects.toMatchObject({ code: 'EAI_PEER_NAME' });
    await expect(t.serve('edge', '#', modelHandler)).rejects.toMatchObject({ code: 'EAI_PEER_NAME' });
    await t.serve('edge', 'm', modelHandler);
    await expect(t.serve('edge', 'm', modelHandler)).rejects.toMatchObject({ code: 'EAI_PEER_NAME' });
  });

  it('stop() unsubscribes: afterwards requests find no server', async () => {
    const server = await agent('edge-1');
    const stop = await server.serve('edge', 'echo', async (r) => ({ outputs: r.feeds, device: 'cpu', runMs: 0 }));
    const robot = await agent('robot');
    const x = { x: Tensor.zeros('uint8', [3]) };
    expect((await robot.request('edge', { model: 'echo', feeds: x, timeoutMs: 5000 })).peer).toBe('edge-1');
    await stop();
    await expect(robot.request('edge', { model: 'echo', feeds: x, timeoutMs: 5000 })).rejects.toMatchObject({ code: 'EAI_PEER_UNREACHABLE' });
  });
});

describe('tensors on the wire', () => {
  it('round-trips every dtype bitwise through an encoded message, into aligned memory it owns', () => {
    const dtype = fc.constantFrom<DType>(...DTYPES);
    const shape = fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 });
    fc.assert(
      fc.property(dtype, shape, fc.integer({ min: 0, max: 7 }), (d, s, pad) => {
        const size = s.reduce((a, b) => a * b, 1) * bytesPerElement(d);
        // The tensor sits at an offset inside a larger buffer, as a view of a frame would.
        const backing = new Uint8Array(size + 8 * (pad + 1));
        for (let i = 0; i < backing.length; i++) backing[i] = (i * 37 + pad) & 0xff;
        const t = Tensor.fromBytes(d, s, backing.buffer, 8 * pad);
        const bytes = wire.Tensor.encode(toWireTensor('x', t)).finish();
        const back = fromWireTensor(wire.Tensor.decode(bytes));
        expect([back.name, back.tensor.dtype, back.tensor.shape]).toEqual(['x', d, s]);
        expect(Buffer.from(back.tensor.bytes()).equals(Buffer.from(t.bytes()))).toBe(true);
        expect(back.tensor.data.buffer).not.toBe(bytes.buffer);
        expect(back.tensor.data.byteOffset % bytesPerElement(d)).toBe(0);
      }),
    );
  });

  it('sends a view of the tensor memory, not a copy', () => {
    const t = new Tensor('float64', [3], Float64Array.of(1, 2, 3));
    const w = toWireTensor('x', t);
    expect([w.data?.buffer === t.data.buffer, w.data?.byteLength, w.dtype, w.shape]).toEqual([true, 24, wire.Tensor.DType.FLOAT64, [3]]);
  });

  it('copies bytes that sit at an unaligned offset of the payload', () => {
    const payload = Buffer.alloc(1 + 8);
    payload.writeFloatLE(1.5, 1);
    payload.writeFloatLE(-3, 5);
    const { tensor } = fromWireTensor({ name: 'x', dtype: wire.Tensor.DType.FLOAT32, shape: [2], data: payload.subarray(1) });
    expect(tensor.toNumbers()).toEqual([1.5, -3]);
  });

  it.each([
    ['an unset dtype', { dtype: 0, shape: [1], data: new Uint8Array(4) }, 'has dtype 0, which this aios does not know'],
    ['too few bytes', { dtype: 1, shape: [2, 2], data: new Uint8Array(15) }, 'needs 16 bytes but carries 15'],
    ['too many bytes', { dtype: 11, shape: [], data: new Uint8Array(9) }, 'needs 8 bytes but carries 9'],
    ['a dimension beyond 2^53', { dtype: 5, shape: [2 ** 53 + 2], data: new Uint8Array(0) }, 'beyond 2^53'],
  ])('refuses %s with EAI_PEER_BAD_MESSAGE', (_what, message, text) => {
    const decoded = wire.Tensor.decode(wire.Tensor.encode({ name: 'x', ...message }).finish());
    expect(() => fromWireTensor(decoded)).toThrow(expect.objectContaining({ code: 'EAI_PEER_BAD_MESSAGE', message: expect.stringContaining(text) as string }) as Error);
  });
});

describe.skipIf(protoc === undefined)('inference.proto with protoc', () => {
  it('protoc decodes an InferRequest aios encoded, field by field', () => {
    const tensor = new Tensor('float32', [1, 2], Float32Array.of(1, -2));
    const bytes = wire.InferRequest.encode({ model: 'blazeface', inputs: [toWireTensor('input:0', tensor)], deadlineUnixMs: 1_700_000_000_123, replyTo: 'aios/lab/peers/robot-7/replies', correlationId: Buffer.from([1, 2]) }).finish();
    const out = spawnSync(protoc as string, ['--proto_path=deploy/proto', '--decode=aios.fleet.v1.InferRequest', 'aios/fleet/v1/inference.proto'], { cwd: repo, input: bytes, encoding: 'utf8' });
    expect(out.stderr).toBe('');
    expect(out.stdout).toBe(
      [
        'model: "blazeface"',
        'inputs {',
        '  name: "input:0"',
        '  dtype: FLOAT32',
        '  shape: 1',
        '  shape: 2',
        '  data: "\\000\\000\\200?\\000\\000\\000\\300"',
        '}',
        'deadline_unix_ms: 1700000000123',
        'reply_to: "aios/lab/peers/robot-7/replies"',
        'correlation_id: "\\001\\002"',
        '',
      ].join('\n'),
    );
  });

  it('aios decodes an InferReply protoc encoded from text', () => {
    const text = 'correlation_id: "ab" error { code: "EAI_PEER_EXPIRED" message: "too late" } peer: "edge-1" run_ms: 1.5';
    const out = spawnSync(protoc as string, ['--proto_path=deploy/proto', '--encode=aios.fleet.v1.InferReply', 'aios/fleet/v1/inference.proto'], { cwd: repo, input: text });
    expect(out.stderr.toString()).toBe('');
    const reply = wire.InferReply.decode(out.stdout);
    expect([Buffer.from(reply.correlationId).toString(), reply.result, reply.error?.code, reply.error?.message, reply.peer, reply.runMs]).toEqual(['ab', 'error', 'EAI_PEER_EXPIRED', 'too late', 'edge-1', 1.5]);
  });
});

function expectSameOutputs(got: Outputs, want: Outputs): void {
  expect(Object.keys(got).sort()).toEqual(Object.keys(want).sort());
  for (const [name, t] of Object.entries(want)) {
    const g = got[name] as Tensor;
    expect([g.dtype, g.shape]).toEqual([t.dtype, t.shape]);
    expect(Buffer.from(g.bytes()).equals(Buffer.from(t.bytes()))).toBe(true);
  }
}
