import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Command, Option } from 'commander';
import { UsageError } from '../../../drivers/errors.js';
import { DEFAULT_CONTROLLER } from '../../fleet/broker-acl.js';
import { mosquittoConfig } from '../../fleet/mosquitto-config.js';
import { collectList, positiveInt } from '../args.js';

interface BrokerConfigOptions {
  mosquitto?: boolean;
  fleet: string;
  out: string;
  port: number;
  bind?: string;
  cafile: string;
  certfile: string;
  keyfile: string;
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
export function controllerCommand(): Command {
  const controller = new Command('controller').description('the fleet controller');
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
