import { Command, Option } from 'commander';
import { UsageError } from '../../../drivers/errors.js';
import type { NodeWarning } from '../../../runtime/pipeline/executor.js';
import { parseDuration } from '../../../runtime/pipeline/graph.js';
import type { PipelineStats } from '../../../runtime/pipeline/pipeline.js';
import { Pipeline } from '../../../runtime/pipeline/pipeline.js';
import { table } from '../format.js';

interface RunOptions {
  for?: number;
  stats?: boolean;
  json?: boolean;
  interval: number;
}

/** `aios run FILE`: runs a pipeline until its inputs end, `--for` elapses, or Ctrl-C. */
export function runCommand(): Command {
  return new Command('run')
    .description('run a pipeline file; Ctrl-C (SIGINT) or SIGTERM stops it cleanly: sources closed, queues drained, sinks flushed')
    .argument('<file>', 'pipeline YAML file')
    .addOption(new Option('--for <duration>', "stop after this long (e.g. '30s', '2m')").argParser(durationArg))
    .option('--stats', 'show a live per-stage table (on a terminal) and a final summary')
    .option('--json', 'print the final summary (and with --stats, every stats report) as JSON lines')
    .addOption(new Option('--interval <duration>', 'how often stats refresh').default(1000, '1s').argParser(durationArg))
    .addHelpText('after', `
Examples:
  aios run examples/pipelines/face-detection.yaml --for 10s --stats
  aios run robot.yaml --json > run.ndjson`)
    .action(async (file: string, options: RunOptions) => {
      const pipeline = await Pipeline.fromFile(file, { statsIntervalMs: options.stats ? options.interval : 0 });
      const tty = process.stdout.isTTY === true && !options.json;
      pipeline.on('warning', (w: NodeWarning) => process.stderr.write(`warning ${w.node}: ${w.message}${w.suppressed > 0 ? ` (${w.suppressed} more since the last report)` : ''}\n`));
      pipeline.on('stats', (s: PipelineStats) => {
        if (options.json) process.stdout.write(`${JSON.stringify({ type: 'stats', ...s })}\n`);
        else if (tty) process.stdout.write(`\x1b[2J\x1b[H${render(s)}`);
      });
      const stopped = new Promise<string>((resolve) => {
        pipeline.once('done', () => resolve('inputs ended'));
        process.once('SIGINT', () => resolve('SIGINT'));
        process.once('SIGTERM', () => resolve('SIGTERM'));
        if (options.for !== undefined) setTimeout(() => resolve(`--for ${options.for} ms`), options.for).unref();
      });
      await pipeline.start();
      const why = await stopped;
      await pipeline.stop();
      const final = pipeline.stats();
      if (options.json) process.stdout.write(`${JSON.stringify({ type: 'summary', stoppedBy: why, ...final })}\n`);
      else process.stdout.write(`${tty && options.stats ? '\x1b[2J\x1b[H' : ''}${render(final)}stopped: ${why}\n`);
    });
}

function render(s: PipelineStats): string {
  const ms = (v: number): string => (v >= 100 ? v.toFixed(0) : v.toFixed(2));
  const rows = s.nodes.map((n) => [n.node, n.use, String(n.in), String(n.out), String(n.dropped), String(n.late), String(n.errors), String(n.queued), n.latencyMs.count === 0 ? '-' : ms(n.latencyMs.p50), n.latencyMs.count === 0 ? '-' : ms(n.latencyMs.p99), n.serviceMs.count === 0 ? '-' : ms(n.serviceMs.p50)]);
  return `pipeline ${s.name}, up ${(s.uptimeMs / 1000).toFixed(1)} s\n${table(['NODE', 'USE', 'IN', 'OUT', 'DROPPED', 'LATE', 'ERRORS', 'QUEUED', 'LAT P50 ms', 'LAT P99 ms', 'SERVICE P50 ms'], rows)}`;
}

function durationArg(value: string): number {
  try {
    return parseDuration(/^[0-9.]+$/u.test(value) ? `${value}s` : value);
  } catch {
    throw new UsageError('EAI_CLI_USAGE', `'${value}' is not a duration: write e.g. 30s, 500ms, 2m.`);
  }
}
