import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Command, Option } from 'commander';
import { UsageError } from '../../../drivers/errors.js';
import { privateKeyFromPem, publicKeyFromPem, type PublicKey, type SigningKey } from '../../../models/keys.js';
import { addKey, bumpVersion, checkRoleSignatures, createRoot, expiresAt, isExpired, parseRoot, removeKey, ROLE_NAMES, rootSigningBytes, serializeRoot, signRoot, type Root, type RoleName } from '../../../models/trust/root.js';
import { TrustStore } from '../../../models/trust/trust-store.js';
import { positiveInt } from '../args.js';
import { table } from '../format.js';

/** Where a device keeps its trust state unless told otherwise. */
const DEFAULT_DIR = process.env['AIOS_TRUST_DIR'] ?? '/var/lib/aios/trust';

interface InitOptions {
  out: string;
  root: string[];
  models: string[];
  deploy: string[];
  threshold: Partial<Record<RoleName, number>>;
  expires: string;
  version: number;
  sign: string[];
  force?: boolean;
}

/**
 * `aios trust`: the signed root listing who may sign what (docs/trust.md). Authoring: `init`
 * writes a new root, `add-key` / `remove-key` write its successor, `sign` adds signatures.
 * On a device: `install` trusts the first root, `rotate` moves to successors, `show` prints
 * either.
 */
export function trustCommand(): Command {
  const trust = new Command('trust').description('create, sign, rotate and inspect the trust root (docs/trust.md)');

  trust
    .command('init')
    .description('write a new trust root (version 1 unless --version) listing the keys of each role; signed with --sign keys')
    .requiredOption('--out <file>', 'where to write root.json')
    .option('--root <key.pub>', 'a public key of the root role (signs roots); repeat', collect, [])
    .option('--models <key.pub>', 'a public key of the models role (signs bundles); repeat', collect, [])
    .option('--deploy <key.pub>', 'a public key of the deploy role (signs fleet commands); repeat', collect, [])
    .addOption(new Option('--threshold <role=n>', 'signatures a role needs (default 1 each); repeat').argParser(thresholdArg).default({}))
    .addOption(new Option('--expires <when>', "expiry: '365d', '2y' or an RFC 3339 time").default('365d'))
    .addOption(new Option('--version <n>', 'the root version').argParser(positiveInt('--version')).default(1))
    .option('--sign <key.pem>', 'a private key to sign with (root role keys); repeat', collect, [])
    .option('--force', 'overwrite --out')
    .addHelpText('after', `
Example:
  aios trust init --out root.json --root keys/root-1.pub --root keys/root-2.pub --threshold root=2 \\
      --models keys/release-1.pub --deploy keys/ops-1.pub --sign keys/root-1.pem --sign keys/root-2.pem`)
    .action(async (o: InitOptions) => {
      const roles = {} as Record<RoleName, { keys: PublicKey[]; threshold: number }>;
      for (const role of ROLE_NAMES) {
        const keys = await Promise.all(o[role].map(readPublic));
        if (keys.length === 0) throw new UsageError('EAI_CLI_USAGE', `no --${role} key given; every role needs at least one (make one with \`aios keys generate\`).`);
        roles[role] = { keys, threshold: o.threshold[role] ?? 1 };
      }
      let root = createRoot({ roles, expires: expiry(o.expires), version: o.version });
      root = signRoot(root, await Promise.all(o.sign.map(readPrivate)));
      await writeRoot(o.out, root, o.force === true);
      process.stdout.write(summary(root, o.out));
    });

  trust
    .command('add-key')
    .description("write the root's successor (version + 1, unsigned) with a key added to a role; then `aios trust sign` it with the old and new root keys")
    .argument('<root>', 'the current root.json')
    .requiredOption('--role <role>', `${ROLE_NAMES.join(' | ')}`)
    .requiredOption('--key <key.pub>', 'the public key to add')
    .option('--out <file>', 'where to write the successor (default: <version>.root.json beside the root)')
    .option('--expires <when>', "new expiry: '365d', '2y' or an RFC 3339 time")
    .action(async (file: string, o: { role: string; key: string; out?: string; expires?: string }) => {
      const root = await readRoot(file);
      const next = bumpVersion(addKey(root, roleArg(o.role), await readPublic(o.key)), o.expires === undefined ? {} : { expires: expiry(o.expires) });
      await writeSuccessor(file, next, o.out);
    });

  trust
    .command('remove-key')
    .description("write the root's successor (version + 1, unsigned) without a key (a revocation); then sign it")
    .argument('<root>', 'the current root.json')
    .requiredOption('--role <role>', `${ROLE_NAMES.join(' | ')}`)
    .requiredOption('--key <key.pub|keyid>', 'the public key file, or its key id')
    .option('--out <file>', 'where to write the successor (default: <version>.root.json beside the root)')
    .option('--expires <when>', "new expiry: '365d', '2y' or an RFC 3339 time")
    .action(async (file: string, o: { role: string; key: string; out?: string; expires?: string }) => {
      const root = await readRoot(file);
      const key = /^[0-9a-f]{64}$/u.test(o.key) ? o.key : await readPublic(o.key);
      const next = bumpVersion(removeKey(root, roleArg(o.role), key), o.expires === undefined ? {} : { expires: expiry(o.expires) });
      await writeSuccessor(file, next, o.out);
    });

  trust
    .command('sign')
    .description('add signatures to a root.json in place (each holder signs in turn; a rotation needs the old and the new root keys)')
    .argument('<root>', 'root.json to sign')
    .requiredOption('--key <key.pem>', 'private key; repeat', collect, [])
    .action(async (file: string, o: { key: string[] }) => {
      const root = signRoot(await readRoot(file), await Promise.all(o.key.map(readPrivate)));
      await writeRoot(file, root, true);
      process.stdout.write(summary(root, file));
    });

  trust
    .command('install')
    .description('on a device: trust a first root (trust on first use); it must be signed by its own root threshold')
    .argument('<root>', 'root.json shipped with the device image')
    .addOption(new Option('--dir <dir>', 'the trust state folder').default(DEFAULT_DIR))
    .action(async (file: string, o: { dir: string }) => {
      const store = await TrustStore.init(o.dir, await readFile(file));
      process.stdout.write(`trusting root v${store.root.signed.version} in ${o.dir}\n`);
    });

  trust
    .command('rotate')
    .description("on a device: move to successor roots, in order; each must be signed by the previous root's threshold and its own. Also the way back for a device whose root expired while offline")
    .argument('<roots...>', 'N.root.json files (any order; ones already trusted are skipped)')
    .addOption(new Option('--dir <dir>', 'the trust state folder').default(DEFAULT_DIR))
    .option('--json', 'print the outcome as JSON')
    .action(async (files: string[], o: { dir: string; json?: boolean }) => {
      const store = await TrustStore.open(o.dir);
      const update = await store.updateRoots(await Promise.all(files.map((f) => readFile(f))));
      if (o.json === true) process.stdout.write(`${JSON.stringify(update)}\n`);
      else process.stdout.write(update.changed ? `root v${update.from} -> v${update.to}${update.expired ? ' (the new root is already expired: install its successor too)' : ''}\n` : `already at root v${update.to}\n`);
    });

  trust
    .command('show')
    .description("print a root: version, expiry, each role's keys and threshold, and whose signatures verify")
    .argument('[root]', 'a root.json (default: the device trust state in --dir)')
    .addOption(new Option('--dir <dir>', 'the trust state folder').default(DEFAULT_DIR))
    .option('--json', 'print the root JSON and the check as JSON')
    .action(async (file: string | undefined, o: { dir: string; json?: boolean }) => {
      const root = file !== undefined ? await readRoot(file) : (await TrustStore.open(o.dir)).root;
      const where = file ?? path.join(o.dir, 'state.json');
      const message = rootSigningBytes(root.signed);
      const checks = ROLE_NAMES.map((role) => checkRoleSignatures(root.signed, role, message, root.signatures));
      if (o.json === true) {
        process.stdout.write(`${JSON.stringify({ root, expired: isExpired(root.signed, new Date()), signedBy: Object.fromEntries(checks.map((c) => [c.role, c.keyids])) })}\n`);
        return;
      }
      process.stdout.write(summary(root, where));
    });
  return trust;
}

function summary(root: Root, where: string): string {
  const expired = isExpired(root.signed, new Date());
  const message = rootSigningBytes(root.signed);
  const rows = ROLE_NAMES.map((role) => {
    const spec = root.signed.roles[role];
    const ok = checkRoleSignatures(root.signed, role, message, root.signatures).keyids;
    return [role, String(spec.threshold), spec.keyids.map((k) => k.slice(0, 12)).join(' '), role === 'root' ? `${ok.length} (needs ${spec.threshold})` : '-'];
  });
  return `${where}: trust root v${root.signed.version}, expires ${expiresAt(root.signed).toISOString()}${expired ? ' (EXPIRED)' : ''}, ${root.signatures.length} signature(s)\n${table(['ROLE', 'THRESHOLD', 'KEY IDS', 'VALID SIGNATURES'], rows)}`;
}

async function writeSuccessor(file: string, next: Root, out: string | undefined): Promise<void> {
  const target = out ?? path.join(path.dirname(file), `${next.signed.version}.root.json`);
  await writeRoot(target, next, false);
  process.stdout.write(`wrote ${target} (v${next.signed.version}, unsigned). Sign it with a threshold of the old root's keys and of its own: aios trust sign ${target} --key ...\n`);
}

async function writeRoot(file: string, root: Root, overwrite: boolean): Promise<void> {
  try {
    await writeFile(file, serializeRoot(root), { flag: overwrite ? 'w' : 'wx' });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new UsageError('EAI_CLI_USAGE', `${file} already exists; pass --force (init) or --out another file.`);
    throw error;
  }
}

async function readRoot(file: string): Promise<Root> {
  return parseRoot(await readFile(file), file);
}

async function readPublic(file: string): Promise<PublicKey> {
  return publicKeyFromPem(await readFile(file), file);
}

async function readPrivate(file: string): Promise<SigningKey> {
  return privateKeyFromPem(await readFile(file), file);
}

function roleArg(value: string): RoleName {
  if (!(ROLE_NAMES as readonly string[]).includes(value)) throw new UsageError('EAI_CLI_USAGE', `--role '${value}': use one of ${ROLE_NAMES.join(', ')}.`);
  return value as RoleName;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function thresholdArg(value: string, previous: Partial<Record<RoleName, number>>): Partial<Record<RoleName, number>> {
  const m = /^([a-z]+)=([0-9]+)$/u.exec(value);
  if (m === null || !(ROLE_NAMES as readonly string[]).includes(m[1] as string) || Number(m[2]) < 1) throw new UsageError('EAI_CLI_USAGE', `--threshold '${value}': write ROLE=N with a role of ${ROLE_NAMES.join(', ')} and N ≥ 1.`);
  return { ...previous, [m[1] as RoleName]: Number(m[2]) };
}

/** `365d`, `2y`, or an RFC 3339 time. */
function expiry(value: string): string {
  const m = /^([0-9]+)(d|y)$/u.exec(value);
  if (m !== null) {
    const days = Number(m[1]) * (m[2] === 'y' ? 365 : 1);
    return new Date(Date.now() + days * 86_400_000).toISOString().replace(/\.\d{3}Z$/u, 'Z');
  }
  if (Number.isNaN(Date.parse(value))) throw new UsageError('EAI_CLI_USAGE', `--expires '${value}': write a number of days or years ('365d', '2y') or an RFC 3339 time ('2030-01-01T00:00:00Z').`);
  return value;
}
