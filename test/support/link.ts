import net from 'node:net';

/**
 * A TCP link between a client and a server that a test can cut, the way a network partition
 * cuts it: bytes stop flowing both ways and new connections hang, but nobody sees a close or a
 * reset. On loopback the kernel would answer the server's keepalive probes for a stalled peer, so
 * the server would never notice; `cut({ serverNoticesAfterMs })` plays that part, closing the
 * server's side after the time its keepalive settings would take.
 */
export interface Link {
  /** Where clients connect instead of the server. */
  readonly port: number;
  cut(options?: { readonly serverNoticesAfterMs?: number }): void;
  close(): Promise<void>;
}

export async function startLink(targetPort: number, targetHost = '127.0.0.1'): Promise<Link> {
  const pairs = new Set<{ client: net.Socket; server: net.Socket }>();
  const timers = new Set<NodeJS.Timeout>();
  let cut = false;
  const listener = net.createServer((client) => {
    client.on('error', () => undefined);
    if (cut) {
      client.pause(); // accepted, never answered: a connect through a partition hangs
      return;
    }
    const server = net.connect(targetPort, targetHost);
    server.on('error', () => client.destroy());
    client.on('error', () => server.destroy());
    const pair = { client, server };
    pairs.add(pair);
    client.pipe(server);
    server.pipe(client);
    const forget = (): void => void pairs.delete(pair);
    client.on('close', () => (server.destroy(), forget()));
    server.on('close', () => {
      // After a cut the client must see nothing, not even the close.
      if (!cut) client.destroy();
      forget();
    });
  });
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  const open = new Set<net.Socket>();
  listener.on('connection', (s) => {
    open.add(s);
    s.on('close', () => open.delete(s));
  });
  return {
    port: (listener.address() as net.AddressInfo).port,
    cut(options = {}) {
      cut = true;
      for (const { client, server } of pairs) {
        client.unpipe(server);
        server.unpipe(client);
        client.pause();
        server.pause();
        if (options.serverNoticesAfterMs !== undefined) {
          const timer = setTimeout(() => server.destroy(), options.serverNoticesAfterMs);
          timers.add(timer);
        }
      }
    },
    async close() {
      for (const t of timers) clearTimeout(t);
      for (const { client, server } of pairs) {
        client.destroy();
        server.destroy();
      }
      for (const s of open) s.destroy();
      await new Promise<void>((resolve) => listener.close(() => resolve()));
    },
  };
}
