import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { findBinary, freePort } from '../../bench/local-services.js';

// Shared with the benches, which start their own brokers the same way.
export { findBinary, freePort };

/** Polls `condition` every 10 ms; rejects naming the condition when `timeoutMs` passes first. */
export async function until(condition: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > end) throw new Error(`condition not met within ${timeoutMs} ms: ${condition.toString()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}



/** Resolves once something accepts TCP connections on 127.0.0.1:`port`. */
export async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  await until(
    () =>
      new Promise<boolean>((resolve) => {
        const socket = net.connect(port, '127.0.0.1', () => {
          socket.destroy();
          resolve(true);
        });
        socket.on('error', () => resolve(false));
      }),
    timeoutMs,
  );
}

/** A Mosquitto broker a test started on a free loopback port. */
export interface Mosquitto {
  readonly port: number;
  readonly url: string;
  stop(): void;
  /** SIGHUP: Mosquitto re-reads its configuration's files (the CRL among them). */
  reload(): void;
}

export interface MosquittoOptions {
  /** A configuration for the given port (a listener on it); default: plain MQTT, anonymous, on the port. */
  readonly config?: (port: number) => string;
  /** Where to write the configuration; needed with `config`. */
  readonly dir?: string;
  /** The port the configuration listens on, when it was chosen beforehand (freePort). */
  readonly port?: number;
}

/**
 * Starts `mosquitto` (the binary's path, from findBinary) on a free port and waits until it
 * accepts connections. With `config`, runs it from that configuration (as root, Mosquitto would
 * drop to the `mosquitto` user and lose access to a test's key files, so `user root` is added).
 */
export async function startMosquitto(binary: string, options: MosquittoOptions = {}): Promise<Mosquitto> {
  const port = options.port ?? (await freePort());
  let args = ['-p', String(port)];
  if (options.config !== undefined) {
    if (options.dir === undefined) throw new Error('startMosquitto: a config needs a dir to write it to');
    const file = path.join(options.dir, `mosquitto-${port}.conf`);
    const asRoot = process.getuid?.() === 0 ? 'user root\n' : '';
    writeFileSync(file, `${asRoot}${options.config(port)}`);
    args = ['-c', file];
  }
  const child = spawn(binary, args, { stdio: 'ignore' });
  await waitForPort(port);
  return { port, url: `mqtt://127.0.0.1:${port}`, stop: () => void child.kill('SIGTERM'), reload: () => void child.kill('SIGHUP') };
}
