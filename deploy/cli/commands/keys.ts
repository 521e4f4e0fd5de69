import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Command, Option } from 'commander';
import { UsageError } from '../../../drivers/errors.js';
import { generateSigningKey, privateKeyPem, publicKeyPem } from '../../../models/keys.js';

interface GenerateOptions {
  out: string;
  name: string;
  json?: boolean;
  force?: boolean;
}

/**
 * `aios keys generate`: a new Ed25519 signing key for bundles, trust roots or fleet commands.
 * The private key is written readable by its owner only; the public key is what trust roots list.
 */
export function keysCommand(): Command {
  const keys = new Command('keys').description('make signing keys');
  keys
    .command('generate')
    .description('generate an Ed25519 signing key: NAME.pem (private, mode 0600) and NAME.pub (public); prints its key id')
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
      const key = generateSigningKey();
      await mkdir(options.out, { recursive: true });
      const priv = path.join(options.out, `${options.name}.pem`);
      const pub = path.join(options.out, `${options.name}.pub`);
      const flag = options.force === true ? 'w' : 'wx';
      try {
        await writeFile(priv, privateKeyPem(key.privateKey), { mode: 0o600, flag });
        await writeFile(pub, publicKeyPem(key.publicKey), { mode: 0o644, flag });
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new UsageError('EAI_CLI_USAGE', `${priv} or ${pub} already exists; choose another --name, or pass --force to replace it (the old key is lost).`);
        throw error;
      }
      if (options.json === true) process.stdout.write(`${JSON.stringify({ keyid: key.keyid, private: priv, public: pub })}\n`);
      else process.stdout.write(`key id  ${key.keyid}\nprivate ${priv} (keep it secret; mode 0600)\npublic  ${pub}\n`);
    });
  return keys;
}
