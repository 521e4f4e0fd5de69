import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Command, Option } from 'commander';
import { UsageError } from '../../../drivers/errors.js';
import { privateKeyFromPem, type SigningKey } from '../../../models/keys.js';
import { Controller, prepareControllerState } from '../../controller/controller.js';
import { DEFAULT_CONTROLLER } from '../../fleet/broker-acl.js';
import { mosquittoConfig } from '../../fleet/mosquitto-config.js';
import { collectList, duration, positiveInt } from '../args.js';
import { parseRoot, rootDigest } from '../../../models/trust/root.js';
import { runtimeDigest } from '../../../runtime/attest/file-digest.js';
import type { AttestationOptions } from '../../controller/attestations.js';

interface BrokerConfigOptions {
  mosquitto?: boolean;
  fleet: string;
  out: string;
  port: number;
  bind?: string;
  cafile: string;
  certfile: string;
  keyfile: string;
  crlfile: string | false;
  controller: string[];
  persistence: string;
  force?: boolean;
  json?: boolean;
}

/**
 * `aios controller`: the fleet controller. `broker-config --mosquitto` writes the configuration
 * of a Mosquitto broker that enforces the fleet's rules (mutual TLS with the fleet CA, each device
 * confined to its own topic subtree), for fleets that run their own broker instead of the
 * controller's embedded one.
 */
interface StartOptions {
  fleet: string;
  state: string;
  deployKey: string[];
  hostname: string[];
  broker?: string;
  store?: string;
  name: string;
  ekCa: string[];
  requireTpm?: boolean;
  trustRoot: string[];
  allowRuntime: string[];
  allowPipeline: string[];
  attestEvery: number;
  bind: string;
  brokerPort: number;
  enrolPort: number;
  apiPort: number;
}

export function controllerCommand(): Command {
  const controller = new Command('controller').description('the fleet controller: broker, device registry, enrolment, signed commands (docs/fleet.md)');
  controller
    .command('init')
    .description('make the fleet CA and the controller certificates in --state (start does this too); prints where the CA is, to copy into device images')
    .requiredOption('--fleet <name>', 'the fleet name')
    .addOption(new Option('--state <dir>', 'CA, certificates and the database').default('/var/lib/aios/controller'))
    .addOption(new Option('--hostname <name>', 'a name or address devices dial (repeat)').argParser(collectList).default([]))
    .option('--json', 'print { ca, hostnames } as JSON')
    .action(async (options: { fleet: string; state: string; hostname: string[]; json?: boolean }) => {
      const prepared = await prepareControllerState(options.state, options.fleet, options.hostname.length === 0 ? undefined : options.hostname);
      const ca = path.join(path.resolve(options.state), 'ca.pem');
      if (options.json === true) process.stdout.write(`${JSON.stringify({ ca, hostnames: prepared.hostnames }, null, 2)}\n`);
      else process.stdout.write(`fleet CA ${ca} (copy it into device images; ca.key beside it stays on this host, mode 0600)\nserver certificate for ${prepared.hostnames.join(', ')}\n`);
    });
  controller
    .command('start')
    .description('run the fleet controller until SIGTERM/SIGINT: the embedded broker (or --broker), enrolment over HTTPS, the operator API on loopback; makes the fleet CA in --state on first start')
    .requiredOption('--fleet <name>', 'the fleet name')
    .addOption(new Option('--state <dir>', 'CA, certificates and the database').default('/var/lib/aios/controller'))
    .addOption(new Option('--deploy-key <pem>', "a deploy-role private key that signs commands (repeat up to the trust root's deploy threshold)").argParser(collectList).default([]))
    .addOption(new Option('--hostname <name>', 'a name or address devices dial (repeat); goes into the server certificate').argParser(collectList).default([]))
    .option('--broker <url>', 'use this broker (mqtts://host:port) instead of the embedded one')
    .addOption(new Option('--store <url>', 'keep the fleet in PostgreSQL (postgres://user@host:port/db; the password from PGPASSWORD or ~/.pgpass keeps it off the command line) instead of SQLite in --state: what controller replicas share').env('AIOS_CONTROLLER_STORE'))
    .addOption(new Option('--ek-ca <pem>', "a TPM maker's CA certificate (repeat): devices' TPMs must show an EK certificate it issued").argParser(collectList).default([]))
    .option('--require-tpm', 'admit only devices that enrol with TPM keys, and appraise software evidence as untrusted')
    .addOption(new Option('--trust-root <root.json>', "a trust root devices may hold (repeat while rotating); turns on remote attestation (docs/attestation.md)").argParser(collectList).default([]))
    .addOption(new Option('--allow-runtime <sha256>', "an aios build devices may run (its runtime digest, repeat); default: this controller's own").argParser(collectList).default([]))
    .addOption(new Option('--allow-pipeline <sha256>', 'a pipeline configuration digest devices may run (repeat); default: any, reported').argParser(collectList).default([]))
    .addOption(new Option('--attest-every <duration>', 'how often each device is appraised again').default(60_000, '60s').argParser(duration('--attest-every')))
    .addOption(new Option('--name <name>', "this controller's MQTT name: aios-controller, or aios-controller-<suffix> for each further replica (list it in the broker ACL)").default('aios-controller'))
    .addOption(new Option('--bind <address>', 'address of the broker and enrolment listeners').default('0.0.0.0'))
    .addOption(new Option('--broker-port <n>', 'embedded broker (MQTT over TLS)').default(8883).argParser(positiveInt('--broker-port')))
    .addOption(new Option('--enrol-port <n>', 'enrolment (HTTPS)').default(8443).argParser(positiveInt('--enrol-port')))
    .addOption(new Option('--api-port <n>', 'operator API (HTTP on 127.0.0.1 only)').default(8080).argParser(positiveInt('--api-port')))
    .addHelpText('after', `
Example:
  aios controller start --fleet warehouse --state /var/lib/aios/controller \
      --deploy-key /etc/aios/keys/ops-1.pem --deploy-key /etc/aios/keys/ops-2.pem --hostname fleet.example.com

  A second replica (same state folder contents, same PostgreSQL, an external broker):
  PGPASSWORD=... aios controller start --fleet warehouse --state /var/lib/aios/controller \
      --deploy-key ... --broker mqtts://broker.lan:8883 --store postgres://aios@db.lan/fleet --name aios-controller-2`)
    .action(async (options: StartOptions) => {
      if (options.deployKey.length === 0) throw new UsageError('EAI_CLI_USAGE', "--deploy-key is required: commands are signed with the trust root's deploy keys (aios keys generate; list them in the root's deploy role).");
      const keys: SigningKey[] = [];
      for (const file of options.deployKey) keys.push(privateKeyFromPem(await readFile(file), file));
      const log = (line: Record<string, unknown>): void => void process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), ...line })}\n`);
      const running = await Controller.start({
        fleet: options.fleet,
        state: options.state,
        deployKeys: keys,
        ...(options.hostname.length === 0 ? {} : { hostnames: options.hostname }),
        ...(options.broker === undefined ? {} : { broker: options.broker }),
        ...(options.store === undefined ? {} : { store: options.store }),
        ...(options.ekCa.length === 0 ? {} : { ekRoots: await Promise.all(options.ekCa.map((f) => readFile(f, 'utf8'))) }),
        ...(options.requireTpm === true ? { requireTpm: true } : {}),
        ...(options.trustRoot.length === 0 ? {} : { attestation: await attestationOptions(options) }),
        name: options.name,
        brokerHost: options.bind,
        brokerPort: options.brokerPort,
        enrolHost: options.bind,
        enrolPort: options.enrolPort,
        apiPort: options.apiPort,
        log,
      });
      const why = await new Promise<string>((resolve) => {
        process.once('SIGTERM', () => resolve('SIGTERM'));
        process.once('SIGINT', () => resolve('SIGINT'));
      });
      log({ msg: 'stopping', why });
      await running.stop();
    });
  controller
    .command('broker-config')
    .description("write a broker configuration enforcing the fleet's TLS and topic rules (mosquitto.conf and aios-fleet.acl in --out)")
    .option('--mosquitto', 'for Mosquitto 2.x (the only kind for now)')
    .requiredOption('--fleet <name>', 'the fleet name (the second topic level)')
    .addOption(new Option('--out <dir>', 'folder to write the files into').default('.'))
    .addOption(new Option('--port <n>', 'TLS listener port').default(8883).argParser(positiveInt('--port')))
    .option('--bind <address>', 'listen on this address only (default: all)')
    .addOption(new Option('--cafile <path>', 'the fleet CA certificate, as the broker host sees it').default('/etc/aios/fleet-ca.pem'))
    .addOption(new Option('--certfile <path>', "the broker's server certificate").default('/etc/aios/broker.pem'))
    .addOption(new Option('--keyfile <path>', "the broker's private key").default('/etc/aios/broker.key'))
    .addOption(new Option('--crlfile <path>', "the controller's revocation list (crl.pem in its state folder); reload the broker when it changes (deploy/systemd/aios-crl-reload.path)").default('/var/lib/aios/controller/crl.pem'))
    .option('--no-crlfile', 'leave revocation out (a broker on another host without a copy of crl.pem); revoked devices then connect until their certificates expire')
    .addOption(new Option('--controller <name>', 'certificate name of a controller (repeat for replicas)').argParser(collectList).default([]))
    .addOption(new Option('--persistence <dir>', 'where Mosquitto keeps sessions and queued commands').default('/var/lib/mosquitto/'))
    .option('--force', 'overwrite existing files')
    .option('--json', 'print the paths written as JSON')
    .addHelpText('after', `
Example:
  aios controller broker-config --mosquitto --fleet warehouse --out /etc/mosquitto/conf.d \\
      --cafile /etc/aios/fleet-ca.pem --certfile /etc/aios/broker.pem --keyfile /etc/aios/broker.key
  mosquitto -c /etc/mosquitto/conf.d/mosquitto.conf`)
    .action(async (options: BrokerConfigOptions) => {
      if (options.mosquitto !== true) throw new UsageError('EAI_CLI_USAGE', 'say which broker the configuration is for: --mosquitto (the only kind supported so far).');
      const out = path.resolve(options.out);
      const aclFile = path.join(out, 'aios-fleet.acl');
      const confFile = path.join(out, 'mosquitto.conf');
      const { conf, acl } = mosquittoConfig({
        fleet: options.fleet,
        controllers: options.controller.length > 0 ? options.controller : [DEFAULT_CONTROLLER],
        port: options.port,
        ...(options.bind === undefined ? {} : { bind: options.bind }),
        cafile: options.cafile,
        certfile: options.certfile,
        keyfile: options.keyfile,
        ...(options.crlfile === false ? {} : { crlfile: options.crlfile }),
        aclFile,
        persistenceLocation: options.persistence,
      });
      await mkdir(out, { recursive: true });
      const flag = options.force === true ? 'w' : 'wx';
      try {
        await writeFile(confFile, conf, { flag });
        await writeFile(aclFile, acl, { flag });
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new UsageError('EAI_CLI_USAGE', `${(error as NodeJS.ErrnoException).path ?? out} already exists; pass --force to overwrite it.`);
        throw error;
      }
      if (options.json === true) process.stdout.write(`${JSON.stringify({ conf: confFile, acl: aclFile }, null, 2)}\n`);
      else process.stdout.write(`wrote ${confFile}\nwrote ${aclFile}\nstart it with: mosquitto -c ${confFile}\n`);
    });
  return controller;
}

/** The verifier's reference values from the command line: trust roots read and digested, runtimes by digest (default: this build's). */
async function attestationOptions(options: StartOptions): Promise<AttestationOptions> {
  const roots = await Promise.all(options.trustRoot.map(async (file) => rootDigest(parseRoot(await readFile(file), file))));
  const hex = (list: readonly string[], option: string): string[] =>
    list.map((d) => {
      if (!/^[0-9a-f]{64}$/u.test(d)) throw new UsageError('EAI_CLI_USAGE', `${option} takes a lowercase hex SHA-256 (64 digits), got '${d.slice(0, 80)}'.`);
      return d;
    });
  const runtimes = options.allowRuntime.length > 0 ? hex(options.allowRuntime, '--allow-runtime') : [(await runtimeDigest()).sha256];
  return {
    intervalMs: options.attestEvery,
    policy: {
      requireTpm: options.requireTpm === true,
      allowedRuntimeDigests: runtimes,
      allowedTrustRootDigests: roots,
      ...(options.allowPipeline.length === 0 ? {} : { allowedPipelineConfigs: hex(options.allowPipeline, '--allow-pipeline') }),
    },
  };
}
