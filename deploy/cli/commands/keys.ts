import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Command, Option } from 'commander';
import { UsageError } from '../../../drivers/errors.js';
import { X25519Identity } from '../../../models/bundle/age/keys.js';
import { generateSigningKey, privateKeyPem, publicKeyPem } from '../../../models/keys.js';

interface GenerateOptions {
  out: string;
  name: string;
  type: 'ed25519' | 'age';
  json?: boolean;
  force?: boolean;
}

/**
 * `aios keys generate`: a new Ed25519 signing key for bundles, trust roots or fleet commands, or
 * (`--type age`) a device's X25519 key that model files are encrypted to. Private keys are
 * written readable by their owner only; public keys are what trust roots and `--to` take.
 */
export function keysCommand(): Command {
  const keys = new Command('keys').description('make signing keys');
  keys
    .command('generate')
    .description('generate an Ed25519 signing key (NAME.pem private, mode 0600; NAME.pub public), or with --type age a device key for encrypted models (NAME.age.key, as age-keygen writes it, mode 0600; NAME.age.pub with its age1... public key)')
    .addOption(new Option('--type <type>', 'ed25519: signs bundles, roots and commands; age: a device key models are encrypted to').choices(['ed25519', 'age']).default('ed25519'))
    .addOption(new Option('--out <dir>', 'folder to write the key files into').default('.'))
    .addOption(new Option('--name <name>', 'file name stem').default('aios-signing'))
    .option('--force', 'overwrite existing key files')
    .option('--json', 'print { keyid, private, public } as JSON')
    .addHelpText('after', `
Examples:
  aios keys generate --out keys --name release-1      # keys/release-1.pem + keys/release-1.pub
  aios trust init --out root.json --root keys/root-1.pub --models keys/release-1.pub --deploy keys/ops-1.pub --sign keys/root-1.pem`)
    .action(async (options: GenerateOptions) => {
      if (!/^[A-Za-z0-9._-]+$/u.test(options.name)) throw new UsageError('EAI_CLI_USAGE', `--name '${options.name}': use letters, digits, '.', '_' and '-' only.`);
      await mkdir(options.out, { recursive: true });
      const age = options.type === 'age';
      const priv = path.join(options.out, `${options.name}${age ? '.age.key' : '.pem'}`);
      const pub = path.join(options.out, `${options.name}${age ? '.age.pub' : '.pub'}`);
      let id: string;
      let secret: string;
      let shared: string;
      if (age) {
        const identity = X25519Identity.generate();
        id = identity.recipient.toString();
        // The layout age-keygen writes, so `age -d -i` reads it as it is.
        secret = `# created: ${new Date().toISOString().replace(/\.\d{3}Z$/u, 'Z')}\n# public key: ${id}\n${identity.encode()}\n`;
        shared = `${id}\n`;
      } else {
        const key = generateSigningKey();
        id = key.keyid;
        secret = privateKeyPem(key.privateKey);
        shared = publicKeyPem(key.publicKey);
      }
      const flag = options.force === true ? 'w' : 'wx';
      try {
        await writeFile(priv, secret, { mode: 0o600, flag });
        await writeFile(pub, shared, { mode: 0o644, flag });
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new UsageError('EAI_CLI_USAGE', `${priv} or ${pub} already exists; choose another --name, or pass --force to replace it (the old key is lost).`);
        throw error;
      }
      if (options.json === true) process.stdout.write(`${JSON.stringify(age ? { recipient: id, private: priv, public: pub } : { keyid: id, private: priv, public: pub })}\n`);
      else process.stdout.write(`${age ? 'public  ' : 'key id  '}${id}\nprivate ${priv} (keep it secret; mode 0600)\npublic  ${pub}\n`);
    });
  return keys;
}
