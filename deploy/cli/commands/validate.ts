import { Command } from 'commander';
import { ConfigError, formatIssue } from '../../../runtime/pipeline/config-error.js';
import { Pipeline } from '../../../runtime/pipeline/pipeline.js';

/** `aios validate FILE...`: every problem of every file, at file:line:column, before anything runs. */
export function validateCommand(): Command {
  return new Command('validate')
    .description('check pipeline files completely (kinds, params, flows, cycles, port types, models, recordings) without running them')
    .argument('<files...>', 'pipeline YAML files')
    .option('--json', 'print [{ file, ok, issues: [{ file, line, column, path, message }] }]')
    .addHelpText('after', `
Examples:
  aios validate examples/pipelines/*.yaml
  aios validate my-robot.yaml --json | jq '.[].issues[] | "\\(.line): \\(.message)"'`)
    .action(async (files: string[], options: { json?: boolean }) => {
      const results: { file: string; ok: boolean; nodes?: number; issues: ConfigError['issues'] }[] = [];
      for (const file of files) {
        try {
          const graph = await Pipeline.validate(file);
          results.push({ file, ok: true, nodes: graph.nodes.length, issues: [] });
        } catch (error) {
          if (!(error instanceof ConfigError)) throw error;
          results.push({ file, ok: false, issues: error.issues });
        }
      }
      if (options.json) {
        process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
      } else {
        for (const r of results) {
          if (r.ok) process.stdout.write(`${r.file}: ok (${r.nodes} nodes)\n`);
          else for (const issue of r.issues) process.stderr.write(`${formatIssue(issue)}\n`);
        }
        const bad = results.filter((r) => !r.ok);
        if (bad.length > 0) process.stderr.write(`${bad.reduce((n, r) => n + r.issues.length, 0)} problem(s) in ${bad.length} file(s)\n`);
      }
      if (results.some((r) => !r.ok)) process.exitCode = 1;
    });
}
