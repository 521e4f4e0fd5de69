import { readFile } from 'node:fs/promises';
import { Command } from 'commander';
import { UsageError } from '../../../drivers/errors.js';
import { inspectBundle } from '../../../models/bundle/bundle.js';
import { fileSource } from '../../../models/bundle/tar.js';
import { parseRoot, rootDigest } from '../../../models/trust/root.js';
import { fileDigest, runtimeDigest } from '../../../runtime/attest/file-digest.js';

/**
 * `aios attest digest`: the reference values a verifier's policy lists (docs/attestation.md), as
 * a device measures them — so an operator computes them from the release, not from a device that
 * may already be tampered with: this aios install's runtime digest (`--allow-runtime`), a trust
 * root's (`--trust-root` takes the file itself), a pipeline file's (`--allow-pipeline`), a
 * bundle's manifest digest (what deployments record and the policy expects).
 */
export function attestCommand(): Command {
  const attest = new Command('attest').description('reference values for remote attestation: the digests devices measure (docs/attestation.md)');
  attest
    .command('digest')
    .description("print the digest a device measures for: this aios install (no argument), or each FILE given — a trust root, a pipeline configuration, a model bundle's signed manifest")
    .argument('[files...]', 'root.json, pipeline .yaml files, .bundle files')
    .option('--json', 'print [{ type, file, sha256 }] as JSON')
    .addHelpText('after', `
Examples:
  aios attest digest                                   # this install: for --allow-runtime
  aios attest digest pipelines/front-camera.yaml       # for --allow-pipeline
  aios attest digest face-2.0.0.bundle root.json`)
    .action(async (files: string[], options: { json?: boolean }) => {
      const rows: { type: string; file: string; sha256: string }[] = [];
      if (files.length === 0) {
        const runtime = await runtimeDigest();
        rows.push({ type: 'runtime', file: runtime.root, sha256: runtime.sha256 });
      }
      for (const file of files) rows.push({ file, ...(await digestOf(file)) });
      if (options.json === true) process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
      else for (const r of rows) process.stdout.write(`${r.sha256}  ${r.type.padEnd(15)} ${r.file}\n`);
    });
  return attest;
}

/** What `file` is, by its content, and its digest as measured. */
async function digestOf(file: string): Promise<{ type: string; sha256: string }> {
  let head: Buffer;
  try {
    head = await readFile(file);
  } catch (cause) {
    throw new UsageError('EAI_CLI_USAGE', `cannot read ${file} (${(cause as Error).message}).`);
  }
  if (file.endsWith('.bundle')) return { type: 'model-bundle', sha256: (await inspectBundle(fileSource(file))).payloadSha256 };
  if (file.endsWith('.json')) {
    try {
      return { type: 'trust-root', sha256: rootDigest(parseRoot(head, file)) };
    } catch {
      // not a root: measured as a file, like any other
    }
  }
  return { type: /\.ya?ml$/u.test(file) ? 'pipeline-config' : 'file', sha256: await fileDigest(file) };
}
