import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { connectAsync, type MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { serveCommand } from '../../../../deploy/cli/commands/serve.js';
import { MqttPeerTransport } from '../../../../deploy/fleet/peer-transport.js';
import { AiosError } from '../../../../drivers/errors.js';
import { readNpy } from '../../../../drivers/tensor/npy.js';
import { Tensor } from '../../../../drivers/tensor/tensor.js';
import type { PeerError } from '../../../../runtime/inference/peers.js';
import { findBinary, freePort, startMosquitto, until, type Mosquitto } from '../../../support/wait.js';

const repo = path.resolve(import.meta.dirname, '../../../..');
const MODEL = path.join(repo, 'models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx');
const NAME = path.basename(MODEL);
const SECRET = 's3cret-Pa55word';

const mosquitto = findBinary('mosquitto');
if (mosquitto === undefined) console.warn('aios serve tests skipped: mosquitto is not installed (apt-get install -y mosquitto)');

/** `aios serve ...` in-process, stopped through `stop`; stdout and stderr are captured. */
function serve(args: string[], stop: AbortController, onReady?: (t: MqttPeerTransport) => void): { done: Promise<unknown>; out: () => string; err: () => string } {
  let stdout = '';
  let stderr = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => ((stdout += String(chunk)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => ((stderr += String(chunk)), true));
  const done = serveCommand({ signal: stop.signal, ...(onReady ? { onReady } : {}) })
    .exitOverride()
    .parseAsync(args, { from: 'user' })
    .then(
      () => undefined,
      (e: unknown) => e,
    );
  return { done, out: () => stdout, err: () => stderr };
}

afterEach(() => vi.restoreAllMocks());

describe.skipIf(mosquitto === undefined)('aios serve', () => {
  let broker: Mosquitto | undefined;
  let port: number;
  let dir: string;
  let requester: MqttClient;

  beforeAll(async () => {
    broker = await startMosquitto(mosquitto as string);
    port = broker.port;
    dir = await mkdtemp(path.join(tmpdir(), 'aios-serve-'));
    await writeFile(path.join(dir, 'password'), `${SECRET}\n`);
    requester = await connectAsync(`mqtt://127.0.0.1:${port}`, { protocolVersion: 5 });
  });
  afterAll(async () => {
    await requester?.endAsync();
    broker?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it('serves the model to a peer, prints a stats line per interval and a summary on stop, and never the password', async () => {
    const stop = new AbortController();
    let ready = false;
    const run = serve(
      [MODEL, '--broker', `mqtt://edge-1:${SECRET}@127.0.0.1:${port}`, '--fleet', 'lab', '--group', 'edge', '--peer-id', 'edge-1', '--device', 'cpu', '--threads', '1', '--username', 'edge-1', '--password-file', path.join(dir, 'password'), '--every', '300ms', '--json'],
      stop,
      () => (ready = true),
    );
    const robot = new MqttPeerTransport(requester, { fleet: 'lab', peerId: 'robot', warn: () => undefined });
    try {
      await until(() => ready || run.out().includes('"stopped"'), 20_000);
      const input = await readNpy(path.join(repo, 'test/fixtures/inputs/blazeface128-face.npy'));
      const reply = await robot.request('edge', { model: NAME, feeds: { 'input:0': input }, timeoutMs: 5000 });
      expect([reply.peer, reply.device, Object.keys(reply.outputs).length]).toEqual(['edge-1', 'cpu:0', 4]);
      const refused = (await robot.request('edge', { model: NAME, feeds: { 'input:0': Tensor.zeros('float32', [1, 3, 8, 8]) }, timeoutMs: 5000 }).catch((e: unknown) => e)) as PeerError;
      expect([refused.code, refused.details['peerCode']]).toEqual(['EAI_PEER_FAILED', 'EAI_MODEL_INPUT_SHAPE']);
      await until(() => run.out().split('\n').some((l) => l.includes('"type":"stats"') && l.includes('"served":1')));
    } finally {
      // Stopped even when an assertion above failed, so no server outlives its test.
      stop.abort('test');
      await robot.close();
    }
    expect(await run.done).toBeUndefined();

    const lines = run.out().trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines[0]).toMatchObject({ type: 'ready', name: NAME, device: 'cpu:0', fleet: 'lab', group: 'edge', peerId: 'edge-1', protocol: 'MQTT 5', topic: `aios/lab/infer/edge/${NAME}/request`, broker: `mqtt://127.0.0.1:${port}` });
    const stats = lines.filter((l) => l['type'] === 'stats');
    expect(stats.reduce((n, l) => n + (l['served'] as number), 0)).toBe(1);
    expect(stats.reduce((n, l) => n + (l['errors'] as number), 0)).toBe(1);
    expect(stats.find((l) => l['served'] === 1)?.['p50Ms']).toBeGreaterThan(0);
    expect(lines.at(-1)).toEqual({ type: 'stopped', reason: 'test', served: 1, errors: 1 });
    expect(run.out() + run.err()).not.toContain(SECRET);
  });

  it('prints human lines without --json', async () => {
    const stop = new AbortController();
    const run = serve([MODEL, '--broker', `mqtt://127.0.0.1:${port}`, '--fleet', 'lab', '--group', 'edge2', '--peer-id', 'edge-2', '--device', 'cpu', '--every', '50ms'], stop);
    try {
      await until(() => /served 0, errors 0, p50 -/u.test(run.out()), 20_000);
    } finally {
      stop.abort('SIGTERM');
      await run.done;
    }
    expect(run.out()).toMatch(new RegExp(`^serving ${NAME.replaceAll('.', '\\.')} on cpu:0 \\(onnxruntime\\) to fleet lab, group edge2, as edge-2 via mqtt://127\\.0\\.0\\.1:${port} \\(MQTT 5, shared subscription\\)\n`, 'u'));
    expect(run.out()).toMatch(/\nstopped \(SIGTERM\): served 0, errors 0\n$/u);
  });

  it('refuses bad arguments before loading the model or dialling the broker', async () => {
    const cases: [string[], string, string][] = [
      [['--group', 'a/b'], 'EAI_PEER_NAME', "The target 'a/b' cannot be an MQTT topic level: use a non-empty name without '/', '+', '#', NUL or a leading '$'."],
      [['--group', 'edge', '--password-file', path.join(dir, 'password')], 'EAI_CLI_USAGE', '--password-file needs --username too.'],
      [['--group', 'edge', '--username', 'u', '--password-file', path.join(dir, 'missing')], 'EAI_CLI_USAGE', `Cannot read --password-file ${path.join(dir, 'missing')}: ENOENT.`],
    ];
    for (const [extra, code, message] of cases) {
      const run = serve(['no-such-model.onnx', '--broker', 'mqtt://127.0.0.1:1', '--fleet', 'lab', ...extra], new AbortController());
      const error = (await run.done) as AiosError;
      expect(error).toBeInstanceOf(AiosError);
      expect([error.code, error.message]).toEqual([code, message]);
      vi.restoreAllMocks();
    }
  });

  it('fails with EAI_PEER_UNREACHABLE when the broker cannot be reached, naming it without credentials', async () => {
    const nobody = await freePort();
    const run = serve([MODEL, '--broker', `mqtt://u:${SECRET}@127.0.0.1:${nobody}`, '--fleet', 'lab', '--group', 'edge'], new AbortController());
    const error = (await run.done) as AiosError;
    expect(error.code).toBe('EAI_PEER_UNREACHABLE');
    expect(error.message).toContain(`Cannot connect to the MQTT broker mqtt://127.0.0.1:${nobody}`);
    expect(error.message).not.toContain(SECRET);
  });
});
