import { createWriteStream, existsSync } from 'node:fs';
import { mkdtemp, readFile, rename, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Command, Option } from 'commander';
import { parse as parseYaml } from 'yaml';
import { UsageError } from '../../../drivers/errors.js';
import { parseIdentityFile, X25519Recipient, type X25519Identity } from '../../../models/bundle/age/keys.js';
import { createDecryption, createEncryptStream } from '../../../models/bundle/age/stream.js';
import { extractBundle, inspectBundle, packBundle, signBundle, verifyBundle, type DecryptFactory, type VerifiedBundle } from '../../../models/bundle/bundle.js';
import type { ModelMetadata } from '../../../models/bundle/manifest.js';
import { fileSource, REUSES_BUFFERS, type ReusingSource } from '../../../models/bundle/tar.js';
import { privateKeyFromPem } from '../../../models/keys.js';
import { positiveInt } from '../args.js';
import { table } from '../format.js';
import { signingPolicy } from '../signing-policy.js';

const DEFAULT_TRUST = process.env['AIOS_TRUST_DIR'] ?? '/var/lib/aios/trust';

/** Who may sign: the trust root's `models` role (a device's trust folder, or a root.json), or keys given by hand. */
interface PolicyOptions {
  trust?: string;
  root?: string;
  signer: string[];
  threshold?: number;
}

/**
 * `aios bundle`: make, sign, encrypt, check and unpack model bundles (docs/bundles.md). Every
 * command that reads a bundle verifies it as a device would before showing or writing anything,
 * except `inspect`, which says plainly that it has checked nothing.
 */
export function bundleCommand(): Command {
  const bundle = new Command('bundle').description('make, sign, encrypt, verify and unpack signed model bundles (docs/bundles.md)');

  bundle
    .command('pack')
    .description('pack model files and their metadata into a bundle signed with --key (and encrypted to --to devices)')
    .requiredOption('--metadata <file>', 'model metadata, YAML or JSON: name, version, format, entry, inputs, outputs, targets, ... (docs/bundles.md)')
    .requiredOption('--file <path=source>', "a model file: its path in the bundle and where it is now (or just the source: its base name is the path); repeat", collect, [])
    .requiredOption('--key <key.pem>', 'a signing key of the models role; repeat for more signatures', collect, [])
    .option('--to <age1...>', 'encrypt model files to this device public key; repeat', collect, [])
    .option('--to-file <file>', 'a file of device public keys (age1..., one per line)')
    .requiredOption('--out <file>', 'the bundle to write')
    .option('--json', 'print the signed manifest as JSON')
    .addHelpText('after', `
Example:
  aios bundle pack --metadata face.yaml --file face.onnx=models/zoo/blazeface-front-128/face_detection_front_128x128_barracuda.onnx \\
      --key keys/release-1.pem --to age1... --out face-1.2.0.bundle`)
    .action(async (o: { metadata: string; file: string[]; key: string[]; to: string[]; toFile?: string; out: string; json?: boolean }) => {
      const metadata = await readMetadata(o.metadata);
      const files = o.file.map((spec) => {
        const at = spec.indexOf('=');
        return at < 0 ? { path: path.basename(spec), source: spec } : { path: spec.slice(0, at), source: spec.slice(at + 1) };
      });
      const recipients = [...o.to, ...(o.toFile === undefined ? [] : await recipientLines(o.toFile))].map((r) => X25519Recipient.parse(r));
      const keys = await Promise.all(o.key.map(async (k) => privateKeyFromPem(await readFile(k), k)));
      const encryptTo = recipients.length === 0 ? {} : { encryptTo: { recipients: recipients.length, createEncryptStream: () => createEncryptStream(recipients) } };
      const statement = await writeAtomically(o.out, (out) => packBundle({ metadata, files: files.map((f) => ({ ...f, encrypt: recipients.length > 0 })), keys, ...encryptTo }, out), await totalSize(files));
      if (o.json === true) process.stdout.write(`${JSON.stringify(statement)}\n`);
      else process.stdout.write(`wrote ${o.out}: ${statement.predicate.name} ${statement.predicate.version}, ${statement.predicate.files.length} file(s)${recipients.length > 0 ? `, encrypted to ${recipients.length} device(s)` : ''}, signed by ${keys.map((k) => k.keyid.slice(0, 12)).join(', ')}\n`);
    });

  bundle
    .command('sign')
    .description('add a signature to a bundle in place (for roles needing several signers); the result is verified before it replaces the file')
    .argument('<bundle>')
    .requiredOption('--key <key.pem>', 'the signing key')
    .action(async (file: string, o: { key: string }) => {
      if (!existsSync(file)) throw new UsageError('EAI_CLI_USAGE', `no bundle at ${file}; check the path.`);
      const result = await signBundle(file, privateKeyFromPem(await readFile(o.key), o.key));
      process.stdout.write(result.added ? `signed ${file}; signers now ${result.keyids.map((k) => k.slice(0, 12)).join(', ')}\n` : `${file} already carries this key's signature\n`);
    });

  bundle
    .command('encrypt')
    .description('re-pack a plain bundle with its model files encrypted to devices, signed again with --key (the manifest records the encryption)')
    .argument('<bundle>')
    .requiredOption('--to <age1...>', 'a device public key; repeat', collect, [])
    .requiredOption('--key <key.pem>', 'a signing key of the models role; repeat', collect, [])
    .requiredOption('--out <file>', 'the encrypted bundle to write')
    .addOption(new Option('--trust <dir>', 'verify the input against this device trust folder').conflicts('root'))
    .option('--root <root.json>', "verify the input against this trust root's models role")
    .option('--signer <key.pub>', 'verify the input against this public key instead; repeat', collect, [])
    .action(async (file: string, o: PolicyOptions & { to: string[]; key: string[]; out: string }) => {
      const policy = await signingPolicy(o, DEFAULT_TRUST);
      const recipients = o.to.map((r) => X25519Recipient.parse(r));
      const keys = await Promise.all(o.key.map(async (k) => privateKeyFromPem(await readFile(k), k)));
      const work = await mkdtemp(path.join(os.tmpdir(), 'aios-encrypt-'));
      try {
        const dir = path.join(work, 'files');
        const verified = await extractBundle(progress(file), policy, dir);
        const { files: entries, ...rest } = verified.statement.predicate;
        const metadata = rest as ModelMetadata;
        const sources = entries.map((f) => ({ path: f.path, source: path.join(dir, f.path), encrypt: true }));
        await writeAtomically(o.out, (out) => packBundle({ metadata, files: sources, keys, encryptTo: { recipients: recipients.length, createEncryptStream: () => createEncryptStream(recipients) } }, out), await totalSize(sources));
      } finally {
        await rm(work, { recursive: true, force: true });
      }
      process.stdout.write(`wrote ${o.out}: encrypted to ${recipients.length} device(s)\n`);
    });

  const withPolicy = (c: Command): Command =>
    c
      .addOption(new Option('--trust <dir>', 'the device trust folder whose models role says who may sign').default(undefined))
      .option('--root <root.json>', "a trust root file: its models role says who may sign (the root must be validly signed)")
      .option('--signer <key.pub>', 'a public key allowed to sign instead of a trust root; repeat', collect, [])
      .addOption(new Option('--threshold <n>', 'signatures needed with --signer').argParser(positiveInt('--threshold')))
      .option('--identity <file>', "this device's age identity (AGE-SECRET-KEY-1..., as age-keygen writes) for encrypted files");

  withPolicy(bundle.command('verify'))
    .description('verify a bundle as a device does: signatures and threshold, then the manifest, then every file (decrypted with --identity)')
    .argument('<bundle>')
    .option('--json', 'print { statement, signedBy } as JSON')
    .action(async (file: string, o: PolicyOptions & { identity?: string; json?: boolean }) => {
      const verified = await verifyBundle(progress(file), await signingPolicy(o, DEFAULT_TRUST), { ...(await decryptFrom(o.identity)), onFile: (_f, content) => void content.resume() });
      if (o.json === true) process.stdout.write(`${JSON.stringify({ statement: verified.statement, signedBy: verified.signedBy })}\n`);
      else process.stdout.write(describe(verified, file, 'verified'));
    });

  withPolicy(bundle.command('extract'))
    .description('verify a bundle and write its model files into a new folder (decrypted with --identity: mode 0600 in a 0700 folder)')
    .argument('<bundle>')
    .argument('<dir>', 'a folder that does not exist yet')
    .action(async (file: string, dir: string, o: PolicyOptions & { identity?: string }) => {
      const verified = await extractBundle(progress(file), await signingPolicy(o, DEFAULT_TRUST), dir, await decryptFrom(o.identity));
      process.stdout.write(describe(verified, file, `verified and extracted to ${dir}`));
    });

  bundle
    .command('inspect')
    .description('show what a bundle claims, WITHOUT verifying anything (use verify before trusting it)')
    .argument('<bundle>')
    .option('--json', 'print the inspection as JSON')
    .action(async (file: string, o: { json?: boolean }) => {
      const inspection = await inspectBundle(progress(file));
      if (o.json === true) {
        process.stdout.write(`${JSON.stringify(inspection)}\n`);
        return;
      }
      const p = inspection.statement?.predicate;
      process.stdout.write(`NOT VERIFIED: this shows what ${file} claims; run aios bundle verify before trusting it.\n`);
      if (p !== undefined) process.stdout.write(`${p.name} ${p.version} (${p.format}, entry ${p.entry}) by ${p.author ?? 'unknown'}; claimed signers ${inspection.keyids.map((k) => k.slice(0, 12)).join(', ')}\n${filesTable(p.files)}`);
      for (const issue of inspection.issues) process.stdout.write(`issue: ${issue}\n`);
    });
  return bundle;
}

function describe(verified: VerifiedBundle, file: string, what: string): string {
  const p = verified.statement.predicate;
  return `${file}: ${what}\n${p.name} ${p.version} (${p.format}, entry ${p.entry}), signed by ${verified.signedBy.map((k) => k.slice(0, 12)).join(', ')}\n${filesTable(p.files)}`;
}

function filesTable(files: readonly { path: string; size: number; sha256: string; encrypted?: { recipients: number } }[]): string {
  return table(['FILE', 'SIZE', 'SHA-256', 'ENCRYPTED'], files.map((f) => [f.path, String(f.size), `${f.sha256.slice(0, 16)}…`, f.encrypted === undefined ? '-' : `${f.encrypted.recipients} device(s)`]));
}

async function decryptFrom(identityFile: string | undefined): Promise<{ decrypt?: DecryptFactory }> {
  if (identityFile === undefined) return {};
  const identities: X25519Identity[] = parseIdentityFile(await readFile(identityFile, 'utf8'));
  return { decrypt: () => createDecryption(identities) };
}

async function readMetadata(file: string): Promise<ModelMetadata> {
  const text = await readFile(file, 'utf8');
  try {
    return (file.endsWith('.json') ? JSON.parse(text) : parseYaml(text)) as ModelMetadata;
  } catch (error) {
    throw new UsageError('EAI_CLI_USAGE', `--metadata ${file} is not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${(error as Error).message.split('\n')[0]}`);
  }
}

async function recipientLines(file: string): Promise<string[]> {
  return (await readFile(file, 'utf8')).split(/\r?\n/u).map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
}

/**
 * Writes through a temp file renamed into place, so a failed pack leaves no half bundle. On a
 * terminal, for inputs over 64 MB (`expectBytes`: the model files' total size), a progress line
 * follows the bytes written.
 */
async function writeAtomically<T>(file: string, write: (out: NodeJS.WritableStream & import('node:stream').Writable) => Promise<T>, expectBytes = 0): Promise<T> {
  const temp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  const out = createWriteStream(temp, { mode: 0o644 });
  const closed = new Promise<void>((resolve, reject) => {
    out.once('close', resolve);
    out.once('error', reject);
  });
  const show = process.stderr.isTTY === true && expectBytes > 64 * 1024 * 1024;
  const ticker = show ? setInterval(() => process.stderr.write(`\r${path.basename(file)}: ${Math.min(100, (100 * out.bytesWritten) / expectBytes).toFixed(0)} % of ${(expectBytes / 1e6).toFixed(0)} MB`), 250) : undefined;
  try {
    const result = await write(out);
    await closed;
    await rename(temp, file);
    return result;
  } catch (error) {
    out.destroy();
    await rm(temp, { force: true });
    throw error;
  } finally {
    clearInterval(ticker);
    if (show) process.stderr.write('\n');
  }
}

/** Total size of the files a pack reads, for its progress line. */
async function totalSize(files: readonly { source: string }[]): Promise<number> {
  const sizes = await Promise.all(files.map(async (f) => (await stat(f.source).catch(() => ({ size: 0 }))).size));
  return sizes.reduce((a, b) => a + b, 0);
}

/** A bundle file's bytes, with a progress line on a terminal for big bundles. */
function progress(file: string): ReusingSource {
  if (!existsSync(file)) throw new UsageError('EAI_CLI_USAGE', `no bundle at ${file}; check the path.`);
  const inner = fileSource(file);
  if (process.stderr.isTTY !== true) return inner;
  return {
    [REUSES_BUFFERS]: true,
    async *[Symbol.asyncIterator]() {
      const total = (await stat(file)).size;
      let done = 0;
      let shown = 0;
      for await (const chunk of inner) {
        done += chunk.length;
        if (total > 64 * 1024 * 1024 && (done - shown > total / 100 || done === total)) {
          shown = done;
          process.stderr.write(`\r${path.basename(file)}: ${((100 * done) / total).toFixed(0)} % of ${(total / 1e6).toFixed(0)} MB`);
        }
        yield chunk;
      }
      if (shown > 0) process.stderr.write('\n');
    },
  };
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}
