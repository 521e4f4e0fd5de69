import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Command, Option } from 'commander';
import { UsageError } from '../../../drivers/errors.js';
import { privateKeyFromPem } from '../../../models/keys.js';
import type { VersionDiff } from '../../../models/registry/diff.js';
import { Registry, type ChannelInfo } from '../../../models/registry/registry.js';
import { positiveInt } from '../args.js';
import { formatBytes, table } from '../format.js';
import { signingPolicy } from '../signing-policy.js';

interface Common {
  registry?: string;
  json?: boolean;
}

/**
 * `aios model`: the model registry (docs/registry.md): push verified bundles, list and log
 * versions, diff them down to ONNX initializers, and point channels at versions with signed
 * records (`channel`, `rollback`). The registry folder is --registry, else $AIOS_REGISTRY, else
 * ./registry.
 */
export function modelCommand(): Command {
  const model = new Command('model').description('the model registry: push, list, log, diff, channels and signed rollback (docs/registry.md)');
  const registryOption = (c: Command): Command => c.option('--registry <dir>', 'the registry folder (default $AIOS_REGISTRY or ./registry)');

  registryOption(model.command('push'))
    .description('verify a bundle and store it as a new version (nothing is stored if it does not verify)')
    .argument('<bundle>')
    .addOption(new Option('--trust <dir>', 'verify against the models role of this trust folder'))
    .option('--root <root.json>', "verify against this trust root's models role")
    .option('--signer <key.pub>', 'verify against this public key; repeat', (v: string, p: string[]) => [...p, v], [])
    .addOption(new Option('--threshold <n>', 'signatures needed with --signer').argParser(positiveInt('--threshold')))
    .option('--json', 'print the result as JSON')
    .action(async (bundle: string, o: Common & { trust?: string; root?: string; signer: string[]; threshold?: number }) => {
      const policy = await signingPolicy(o);
      await withRegistry(o, async (reg) => {
        const r = await reg.push(bundle, policy);
        if (o.json === true) return print(r);
        const v = r.version;
        process.stdout.write(r.status === 'unchanged' ? `${v.model} ${v.version} is already in the registry (identical bundle); nothing written\n` : `pushed ${v.model} ${v.version}${v.parent === undefined ? '' : ` (parent ${v.parent})`}: ${r.newBlobs} new blob(s), ${r.sharedBlobs} shared with other versions; signed by ${v.signedBy.map((k) => k.slice(0, 12)).join(', ')}\n`);
      });
    });

  registryOption(model.command('list'))
    .description('list the models in the registry')
    .option('--json', 'print JSON')
    .action(async (o: Common) =>
      withRegistry(o, async (reg) => {
        const models = reg.list();
        if (o.json === true) return print(models);
        process.stdout.write(table(['MODEL', 'VERSIONS', 'LATEST', 'CHANNELS'], models.map((m) => [m.name, String(m.versions), m.latest, Object.entries(m.channels).map(([c, v]) => `${c}=${v}`).join(' ') || '-'])));
      }),
    );

  registryOption(model.command('log'))
    .description("a model's versions, newest first, with parents, branches, authors and notes")
    .argument('<model>')
    .option('--branch <name>', 'only this branch')
    .option('--json', 'print JSON')
    .action(async (name: string, o: Common & { branch?: string }) =>
      withRegistry(o, async (reg) => {
        const log = reg.log(name, o.branch === undefined ? {} : { branch: o.branch });
        if (o.json === true) return print(log);
        for (const v of log) {
          const metrics = Object.entries(v.metrics).map(([k, x]) => `${k}=${x}`).join(' ');
          process.stdout.write(`version ${v.version}${v.channels.length > 0 ? ` (${v.channels.join(', ')})` : ''}\n  parent  ${v.parent ?? '-'}   branch ${v.branch ?? '-'}\n  author  ${v.author}   created ${v.created}   pushed ${v.pushed}\n  bundle  ${v.bundleSha256.slice(0, 16)}…  ${formatBytes(v.bundleSize)}${metrics === '' ? '' : `\n  metrics ${metrics}`}${v.notes === undefined ? '' : `\n  notes   ${v.notes.split('\n')[0]}`}\n\n`);
        }
      }),
    );

  registryOption(model.command('diff'))
    .description('what changed between two versions: files, metadata, ONNX initializers')
    .argument('<model>')
    .argument('<v1>')
    .argument('<v2>')
    .option('--json', 'print JSON')
    .action(async (name: string, v1: string, v2: string, o: Common) =>
      withRegistry(o, async (reg) => {
        const d = await reg.diff(name, v1, v2);
        if (o.json === true) return print(d);
        process.stdout.write(describeDiff(d));
      }),
    );

  registryOption(model.command('channel'))
    .description('show all channels of a model, one channel, or point a channel at a version (a new signed record; needs --key)')
    .argument('<model>')
    .argument('[channel]')
    .argument('[version]')
    .option('--key <key.pem>', 'a models-role signing key (to set a channel); repeat for more signatures', (v: string, p: string[]) => [...p, v], [])
    .option('--expires <time>', 'the record expires at this RFC 3339 time (devices refuse it after)')
    .option('--json', 'print JSON')
    .action(async (name: string, channel: string | undefined, version: string | undefined, o: Common & { key: string[]; expires?: string }) =>
      withRegistry(o, async (reg) => {
        if (version !== undefined && channel !== undefined) {
          const keys = await readKeys(o.key, 'setting a channel');
          const change = await reg.setChannel(name, channel, version, keys, expiresOption(o.expires));
          if (o.json === true) return print(change);
          process.stdout.write(`${name}/${channel} -> ${version} (metadata version ${change.metadataVersion}${change.from === undefined ? ', new channel' : `, was ${change.from}`}), signed by ${keys.map((k) => k.keyid.slice(0, 12)).join(', ')}\n`);
          return;
        }
        const channels = channel === undefined ? reg.channels(name) : [reg.channel(name, channel)];
        if (o.json === true) return print(channel === undefined ? channels : channels[0]);
        process.stdout.write(channelTable(channels));
      }),
    );

  registryOption(model.command('rollback'))
    .description('re-point a channel to an earlier version as a NEW signed record (higher metadata version; devices refuse replays of old ones)')
    .argument('<model>')
    .argument('<channel>')
    .option('--key <key.pem>', 'a models-role signing key; repeat', (v: string, p: string[]) => [...p, v], [])
    .option('--to <version>', 'the version to go back to (default: the one before the current)')
    .option('--expires <time>', 'the record expires at this RFC 3339 time')
    .option('--json', 'print JSON')
    .action(async (name: string, channel: string, o: Common & { key: string[]; to?: string; expires?: string }) =>
      withRegistry(o, async (reg) => {
        const keys = await readKeys(o.key, 'a rollback');
        const change = await reg.rollback(name, channel, keys, { ...(o.to === undefined ? {} : { to: o.to }), ...expiresOption(o.expires) });
        if (o.json === true) return print(change);
        process.stdout.write(`rolled back ${name}/${channel}: ${change.from ?? '?'} -> ${change.version} (new record, metadata version ${change.metadataVersion})\n`);
      }),
    );

  registryOption(model.command('export'))
    .description('write a version\'s bundle, byte-identical to the one pushed')
    .argument('<model>')
    .argument('<version>')
    .requiredOption('--out <file>', 'the bundle to write')
    .action(async (name: string, version: string, o: Common & { out: string }) =>
      withRegistry(o, async (reg) => {
        const r = await reg.exportBundle(name, version, o.out);
        process.stdout.write(`wrote ${o.out}: ${name} ${version}, ${formatBytes(r.size)}, sha256 ${r.sha256}\n`);
      }),
    );

  registryOption(model.command('gc'))
    .description('remove blobs no version references (older than --grace)')
    .addOption(new Option('--grace <seconds>', 'spare blobs younger than this (a push in flight)').argParser(positiveInt('--grace')).default(3600))
    .option('--json', 'print JSON')
    .action(async (o: Common & { grace: number }) =>
      withRegistry(o, async (reg) => {
        const r = await reg.gc({ graceMs: o.grace * 1000 });
        if (o.json === true) return print(r);
        process.stdout.write(`removed ${r.removed.length} blob(s), ${formatBytes(r.bytes)}; ${r.temps} leftover temp file(s)\n`);
      }),
    );
  return model;
}

function describeDiff(d: VersionDiff): string {
  const sign = (n: number): string => (n > 0 ? `+${n}` : String(n));
  let out = `${d.model} ${d.from} -> ${d.to}\n\nfiles\n`;
  out += table(['STATUS', 'FILE', 'OLD', 'NEW', 'DELTA'], d.files.map((f) => [f.status, f.path, f.oldSize === undefined ? '-' : String(f.oldSize), f.newSize === undefined ? '-' : String(f.newSize), sign(f.delta)]));
  out += '\nmetadata\n';
  out += d.metadata.length === 0 ? '(no changes)\n' : d.metadata.map((m) => `  ${m.field}: ${JSON.stringify(m.old) ?? '(none)'} -> ${JSON.stringify(m.new) ?? '(none)'}\n`).join('');
  for (const o of d.onnx) {
    out += `\ninitializers of ${o.path}`;
    if (o.skipped !== undefined) {
      out += `: not compared (${o.skipped})\n`;
      continue;
    }
    out += `: ${o.oldInitializers} -> ${o.newInitializers}, ${o.unchanged} unchanged\n`;
    out += o.changes.length === 0 ? '(none changed)\n' : table(['STATUS', 'INITIALIZER', 'SHAPE', 'BYTES', 'BYTES CHANGED'], o.changes.map((c) => [c.status, c.name, c.status === 'reshaped' ? `${(c.oldDims ?? []).join('x')} -> ${(c.newDims ?? []).join('x')}` : (c.newDims ?? c.oldDims ?? []).join('x'), c.oldBytes === c.newBytes || c.oldBytes === undefined || c.newBytes === undefined ? String(c.newBytes ?? c.oldBytes) : `${c.oldBytes} -> ${c.newBytes}`, c.changedBytes === undefined ? '-' : String(c.changedBytes)]));
  }
  return out;
}

function channelTable(channels: readonly ChannelInfo[]): string {
  return table(['CHANNEL', 'VERSION', 'METADATA VERSION', 'EXPIRES', 'UPDATED'], channels.map((c) => [c.channel, c.version, String(c.metadataVersion), c.expires ?? '-', c.updated]));
}

async function withRegistry(o: Common, work: (reg: Registry) => Promise<void>): Promise<void> {
  const reg = await Registry.open(path.resolve(o.registry ?? process.env['AIOS_REGISTRY'] ?? 'registry'));
  try {
    await work(reg);
  } finally {
    reg.close();
  }
}

function print(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

async function readKeys(files: readonly string[], what: string): Promise<ReturnType<typeof privateKeyFromPem>[]> {
  if (files.length === 0) throw new UsageError('EAI_CLI_USAGE', `${what} is a signed release: give a models-role signing key with --key K.pem.`);
  return Promise.all(files.map(async (k) => privateKeyFromPem(await readFile(k), k)));
}

function expiresOption(value: string | undefined): { expires?: Date } {
  if (value === undefined) return {};
  const t = Date.parse(value);
  if (Number.isNaN(t)) throw new UsageError('EAI_CLI_USAGE', `--expires '${value}' is not a time; write e.g. 2026-12-31T00:00:00Z.`);
  return { expires: new Date(t) };
}

