import { mkdtempSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { mosquittoConfig } from '../../deploy/fleet/mosquitto-config.js';
import { startMosquitto, type Mosquitto } from './wait.js';

/**
 * A real Mosquitto configured as `aios controller broker-config --mosquitto` would configure it
 * (TLS with client certificates, the fleet ACL), on a free loopback port, its files in a fresh
 * folder under `parent`.
 */
export async function startFleetMosquitto(binary: string, parent: string, options: { readonly fleet: string; readonly caPem: string; readonly certPem: string; readonly keyPem: string; readonly controllers?: readonly string[]; readonly crlfile?: string }): Promise<Mosquitto & { readonly tlsUrl: string }> {
  const dir = mkdtempSync(path.join(parent, 'mosquitto-'));
  const files = { cafile: path.join(dir, 'ca.pem'), certfile: path.join(dir, 'broker.pem'), keyfile: path.join(dir, 'broker.key'), aclFile: path.join(dir, 'fleet.acl') };
  writeFileSync(files.cafile, options.caPem);
  writeFileSync(files.certfile, options.certPem);
  writeFileSync(files.keyfile, options.keyPem, { mode: 0o600 });
  const broker = await startMosquitto(binary, {
    dir,
    config: (port) => {
      const { conf, acl } = mosquittoConfig({ fleet: options.fleet, port, bind: '127.0.0.1', persistenceLocation: null, ...(options.controllers === undefined ? {} : { controllers: options.controllers }), ...(options.crlfile === undefined ? {} : { crlfile: options.crlfile }), ...files });
      writeFileSync(files.aclFile, acl);
      return conf;
    },
  });
  return { ...broker, tlsUrl: `mqtts://127.0.0.1:${broker.port}` };
}
