import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { Command, Option } from 'commander';
import { connectAsync, type IClientOptions, type MqttClient } from 'mqtt';
import { UsageError } from '../../../drivers/errors.js';
import { InferenceService } from '../../../runtime/inference/inference-service.js';
import { LatencyWindow } from '../../../runtime/inference/latency-window.js';
import { PeerError, type PeerHandler } from '../../../runtime/inference/peers.js';
import { MqttPeerTransport, replyTopic, requestTopic } from '../../fleet/peer-transport.js';
import { collectList, duration, positiveInt } from '../args.js';

export interface ServeCommandOptions {
  /** Stops serving when aborted, as SIGINT and SIGTERM do; tests pass their own. */
  readonly signal?: AbortSignal;
  /** Called once requests are being served (tests wait for it). */
  readonly onReady?: (transport: MqttPeerTransport) => void;
}

interface ServeOptions {
  broker: string;
  fleet: string;
  group: string;
  peerId?: string;
  name?: string;
  device: string[];
  threads?: number;
  username?: string;
  passwordFile?: string;
  every: number;
  json?: boolean;
}

/**
 * `aios serve MODEL`: serves a model to the fleet's peers over MQTT (docs/protocol.md) until
 * SIGINT or SIGTERM: requests to aios/<fleet>/infer/<group>/<name>/request run on this machine's
 * InferenceService and are answered on the requester's reply topic. Prints one line per
 * `--every` (default a minute): requests served, errors, median run time. The password is read
 * from a file and never printed; a broker URL with credentials in it is printed without them.
 */
export function serveCommand(options: ServeCommandOptions = {}): Command {
  return new Command('serve')
    .description('serve a model to other machines of the fleet over MQTT (distributed inference) until Ctrl-C or SIGTERM')
    .argument('<model>', 'model file (.onnx, .tflite) or TF.js model folder')
    .requiredOption('--broker <url>', 'MQTT broker: mqtt://host:1883, mqtts://host:8883, ws://...')
    .requiredOption('--fleet <name>', 'the fleet: the second level of every topic')
    .requiredOption('--group <target>', 'the server group requesters name as their target; servers of one group share its requests')
    .option('--peer-id <id>', "this server's id in replies (default: the host name)")
    .option('--name <model>', "the model's name on the wire (default: the model's file name)")
    .option('-d, --device <kind|id>', 'device kind or id to run on, best first; repeat or comma-separate (default: accelerators first, then cpu)', collectList, [])
    .addOption(new Option('-t, --threads <n>', 'intra-op threads (default: engine choice)').argParser(positiveInt('--threads')))
    .option('--username <user>', 'MQTT user name')
    .option('--password-file <file>', 'file holding the MQTT password (one line); never printed')
    .addOption(new Option('--every <duration>', 'how often to print a stats line').default(60_000, '1m').argParser(duration('--every')))
    .option('--json', 'print JSON lines: { type: "ready" | "stats" | "stopped", ... }')
    .addHelpText('after', `
Examples:
  aios serve models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx \\
      --broker mqtt://broker.lan:1883 --fleet lab --group edge --peer-id edge-1 --device cuda,cpu
  aios serve model.onnx --broker mqtts://broker:8883 --fleet lab --group edge \\
      --username edge-1 --password-file /etc/aios/mqtt-password`)
    .action(async (model: string, o: ServeOptions) => {
      const peerId = o.peerId ?? hostname().replace(/[/+#\0]/gu, '_');
      const name = o.name ?? path.basename(path.resolve(model));
      // Names are checked before the model loads or the broker is dialled.
      requestTopic(o.fleet, o.group, name);
      replyTopic(o.fleet, peerId);
      const auth = await credentials(o);
      const stop = new AbortController();
      const onSignal = (signal: string): void => stop.abort(signal);
      const sigint = (): void => onSignal('SIGINT');
      const sigterm = (): void => onSignal('SIGTERM');
      process.once('SIGINT', sigint);
      process.once('SIGTERM', sigterm);
      if (options.signal?.aborted) stop.abort(String(options.signal.reason ?? 'stopped'));
      options.signal?.addEventListener('abort', () => stop.abort(String(options.signal?.reason ?? 'stopped')), { once: true });
      const service = new InferenceService(model, { devices: o.device, ...(o.threads === undefined ? {} : { threads: o.threads }) });
      let client: MqttClient | undefined;
      let transport: MqttPeerTransport | undefined;
      let timer: NodeJS.Timeout | undefined;
      try {
        // The broker first: a wrong URL or password is found before the model takes its time to load.
        client = await connectBroker(o.broker, auth, peerId);
        await service.start();
        const version = client.options.protocolVersion === 5 ? 'MQTT 5' : 'MQTT 3.1.1';
        const warn = rateLimited((line) => process.stderr.write(`${line}\n`));
        watchConnection(client, redact(o.broker), warn);
        transport = new MqttPeerTransport(client, { fleet: o.fleet, peerId, warn: (p) => warn(p.code, `warning ${p.code}: ${p.message}`) });

        let window = new LatencyWindow(4096);
        const handler: PeerHandler = async ({ feeds }) => {
          const t0 = performance.now();
          const outputs = await service.infer(feeds);
          const runMs = performance.now() - t0;
          window.add(runMs);
          return { outputs, device: service.device.id, runMs };
        };
        const stopServing = await transport.serve(o.group, name, handler);
        const ready = { model, name, device: service.device.id, engine: service.engine, fleet: o.fleet, group: o.group, peerId, broker: redact(o.broker), protocol: version, topic: requestTopic(o.fleet, o.group, name) };
        print(o.json, { type: 'ready', ...ready }, `serving ${name} on ${ready.device} (${ready.engine}) to fleet ${o.fleet}, group ${o.group}, as ${peerId} via ${ready.broker} (${version}${client.options.protocolVersion === 5 ? ', shared subscription' : ', one server per group'})`);

        const t = transport;
        let last = t.stats();
        timer = setInterval(() => {
          const now = t.stats();
          const p50 = window.summary();
          window = new LatencyWindow(4096);
          const line = { served: now.served - last.served, errors: now.serveErrors - last.serveErrors, p50Ms: p50.count === 0 ? null : Number(p50.p50.toFixed(2)) };
          last = now;
          print(o.json, { type: 'stats', time: new Date().toISOString(), intervalMs: o.every, ...line }, `${new Date().toISOString()} served ${line.served}, errors ${line.errors}, p50 ${line.p50Ms === null ? '-' : `${line.p50Ms} ms`}`);
        }, o.every);
        options.onReady?.(transport);

        const why = stop.signal.aborted ? String(stop.signal.reason) : await new Promise<string>((resolve) => stop.signal.addEventListener('abort', () => resolve(String(stop.signal.reason)), { once: true }));
        clearInterval(timer);
        await stopServing();
        const total = t.stats();
        print(o.json, { type: 'stopped', reason: why, served: total.served, errors: total.serveErrors }, `stopped (${why}): served ${total.served}, errors ${total.serveErrors}`);
      } finally {
        clearInterval(timer);
        process.removeListener('SIGINT', sigint);
        process.removeListener('SIGTERM', sigterm);
        await transport?.close();
        await client?.endAsync().catch(() => undefined);
        await service.stop();
      }
    });
}

/** The user name and the password from --password-file (its first line, without the newline). */
async function credentials(o: ServeOptions): Promise<{ username?: string; password?: string }> {
  if (o.passwordFile === undefined) return o.username === undefined ? {} : { username: o.username };
  if (o.username === undefined) throw new UsageError('EAI_CLI_USAGE', '--password-file needs --username too.');
  let text: string;
  try {
    text = await readFile(o.passwordFile, 'utf8');
  } catch (error) {
    // The error names the file, never its contents.
    throw new UsageError('EAI_CLI_USAGE', `Cannot read --password-file ${o.passwordFile}: ${(error as NodeJS.ErrnoException).code ?? 'unreadable'}.`);
  }
  return { username: o.username, password: text.split(/\r?\n/u)[0] ?? '' };
}

/**
 * Connects with MQTT 5, and again with 3.1.1 if the broker refuses the protocol version (aedes).
 * The first connection must succeed; after that the client reconnects by itself.
 */
async function connectBroker(url: string, auth: { username?: string; password?: string }, peerId: string): Promise<MqttClient> {
  const base: IClientOptions = { ...auth, clientId: `aios-serve-${peerId}-${randomBytes(4).toString('hex')}`, reconnectPeriod: 1000, connectTimeout: 10_000 };
  try {
    return await connectAsync(url, { ...base, protocolVersion: 5 }, false);
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (code === 1 || code === 132) {
      try {
        return await connectAsync(url, { ...base, protocolVersion: 4 }, false);
      } catch (again) {
        error = again;
      }
    }
    const message = error instanceof Error ? error.message : String(error);
    throw new PeerError('EAI_PEER_UNREACHABLE', `Cannot connect to the MQTT broker ${redact(url)}: ${message}. Check the URL, that the broker runs, and the credentials.`, { cause: error });
  }
}

/** Reports the broker going away and coming back, once per change. */
function watchConnection(client: MqttClient, url: string, warn: (key: string, line: string) => void): void {
  let offline = false;
  client.on('offline', () => {
    if (offline) return;
    offline = true;
    warn('offline', `warning: lost the MQTT broker ${url}; reconnecting every 1 s (requests sent meanwhile are lost to this server)`);
  });
  client.on('connect', () => {
    if (!offline) return;
    offline = false;
    process.stderr.write(`reconnected to ${url}\n`);
  });
  client.on('error', (error) => warn('error', `warning: MQTT broker ${url}: ${error.message}`));
}

/** At most one line per key per 10 s, with a count of what was held back. */
function rateLimited(write: (line: string) => void): (key: string, line: string) => void {
  const last = new Map<string, { at: number; held: number }>();
  return (key, line) => {
    const now = Date.now();
    const seen = last.get(key);
    if (seen !== undefined && now - seen.at < 10_000) {
      seen.held++;
      return;
    }
    write(seen !== undefined && seen.held > 0 ? `${line} (${seen.held} more like it in the last ${((now - seen.at) / 1000).toFixed(0)} s)` : line);
    last.set(key, { at: now, held: 0 });
  };
}

function print(json: boolean | undefined, data: Record<string, unknown>, text: string): void {
  process.stdout.write(`${json ? JSON.stringify(data) : text}\n`);
}

/** The URL without user name or password, for printing. */
function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.username === '' && u.password === '') return url;
    u.username = '';
    u.password = '';
    return u.toString();
  } catch {
    return url.replace(/\/\/[^@/]*@/u, '//');
  }
}



