import { Command, Option } from 'commander';
import { UsageError } from '../../../drivers/errors.js';
import type { NodeWarning } from '../../../runtime/pipeline/executor.js';
import type { PipelineStats } from '../../../runtime/pipeline/pipeline.js';
import { Pipeline } from '../../../runtime/pipeline/pipeline.js';
import { ResourcePool } from '../../../runtime/resource-pool.js';
import { table } from '../format.js';
import { duration } from '../args.js';

interface RunOptions {
  for?: number;
  stats?: boolean;
  json?: boolean;
  interval: number;
  lanes: { device: string; lanes: number }[];
}

/**
 * `aios run FILE...`: runs one or more pipelines in one process until their inputs end, `--for`
 * elapses, or Ctrl-C. Pipelines in one process share its devices: each device's scheduler divides
 * it between their `infer` stages by priority (docs/scheduling.md), and `--stats` shows how.
 */
export function runCommand(): Command {
  return new Command('run')
    .description('run pipeline files (several share the devices by priority); Ctrl-C (SIGINT) or SIGTERM stops them cleanly: sources closed, queues drained, sinks flushed')
    .argument('<files...>', 'pipeline YAML files')
    .addOption(new Option('--for <duration>', "stop after this long (e.g. '30s', '2m')").argParser(duration('--for')))
    .option('--stats', 'show a live per-stage table and device shares (on a terminal) and a final summary')
    .option('--json', 'print the final summary (and with --stats, every stats report) as JSON lines')
    .addOption(new Option('--interval <duration>', 'how often stats refresh').default(1000, '1s').argParser(duration('--interval')))
    .addOption(new Option('--lanes <device=n>', 'runs a device takes at once, its capacity in the share formula (default 1; docs/scheduling.md); repeat per device, e.g. --lanes cpu=2').argParser(lanesArg).default([]))
    .addHelpText('after', `
Examples:
  aios run examples/pipelines/face-detection.yaml --for 10s --stats
  aios run examples/pipelines/shared-cpu/obstacles.yaml examples/pipelines/shared-cpu/scene.yaml --for 20s --stats
  aios run robot.yaml --json > run.ndjson`)
    .action(async (files: string[], options: RunOptions) => {
      if (options.lanes.length > 0) {
        const pool = await ResourcePool.shared();
        for (const { device, lanes } of options.lanes) {
          const ids = pool.devices.filter((d) => d.id === device || d.kind === device).map((d) => d.id);
          if (ids.length === 0) throw new UsageError('EAI_CLI_USAGE', `--lanes ${device}=${lanes}: no device '${device}' on this machine; devices: ${pool.devices.map((d) => d.id).join(', ')}.`);
          for (const id of ids) pool.configure(id, { lanes });
        }
      }
      // Validate every file before starting any, so one bad file does not leave the others running.
      const pipelines: Pipeline[] = [];
      for (const file of files) pipelines.push(await Pipeline.fromFile(file, { statsIntervalMs: 0 }));
      const names = pipelines.map((p) => p.name);
      const twice = names.find((n, i) => names.indexOf(n) !== i);
      if (twice !== undefined) throw new UsageError('EAI_CLI_USAGE', `two pipelines are named '${twice}'; give each file its own name so their stats and device shares can be told apart.`);
      const tty = process.stdout.isTTY === true && !options.json;
      for (const pipeline of pipelines) {
        pipeline.on('warning', (w: NodeWarning) => process.stderr.write(`warning ${pipelines.length > 1 ? `${pipeline.name}/` : ''}${w.node}: ${w.message}${w.suppressed > 0 ? ` (${w.suppressed} more since the last report)` : ''}\n`));
      }
      const report = (): void => {
        const all = pipelines.map((p) => p.stats());
        if (options.json) for (const s of all) process.stdout.write(`${JSON.stringify({ type: 'stats', ...s })}\n`);
        else if (tty) process.stdout.write(`\x1b[2J\x1b[H${render(all)}`);
      };
      const stopped = new Promise<string>((resolve) => {
        let done = 0;
        for (const pipeline of pipelines) pipeline.once('done', () => ++done === pipelines.length && resolve('inputs ended'));
        process.once('SIGINT', () => resolve('SIGINT'));
        process.once('SIGTERM', () => resolve('SIGTERM'));
        if (options.for !== undefined) setTimeout(() => resolve(`--for ${options.for} ms`), options.for).unref();
      });
      const started: Pipeline[] = [];
      let timer: NodeJS.Timeout | undefined;
      try {
        for (const pipeline of pipelines) {
          await pipeline.start();
          started.push(pipeline);
        }
        if (options.stats) timer = setInterval(report, options.interval);
        const why = await stopped;
        clearInterval(timer);
        // Device shares are read while the models are still loaded; the counters after the drain.
        const running = pipelines.map((p) => p.stats());
        await Promise.all(started.map((p) => p.stop()));
        const final = pipelines.map((p, i) => withShares(p.stats(), running[i]));
        if (options.json) for (const s of final) process.stdout.write(`${JSON.stringify({ type: 'summary', stoppedBy: why, ...s })}\n`);
        else process.stdout.write(`${tty && options.stats ? '\x1b[2J\x1b[H' : ''}${render(final)}stopped: ${why}\n`);
      } finally {
        clearInterval(timer);
        // A pipeline refused at start (admission, a missing device) stops the ones already running.
        await Promise.all(started.map((p) => p.stop()));
      }
    });
}

/** `after` with each node's device share taken from `before` (a stopped model has none to report). */
function withShares(after: PipelineStats, before: PipelineStats | undefined): PipelineStats {
  const shares = new Map((before?.nodes ?? []).flatMap((n) => (n.scheduling === undefined ? [] : [[n.node, n.scheduling] as const])));
  return { ...after, nodes: after.nodes.map((n) => (n.scheduling === undefined && shares.has(n.node) ? { ...n, scheduling: shares.get(n.node) } : n)) };
}

function render(all: readonly PipelineStats[]): string {
  const ms = (v: number): string => (v >= 100 ? v.toFixed(0) : v.toFixed(2));
  const parts = all.map((s) => {
    const rows = s.nodes.map((n) => [n.node, n.use, String(n.in), String(n.out), String(n.dropped), String(n.late), String(n.errors), String(n.queued), n.latencyMs.count === 0 ? '-' : ms(n.latencyMs.p50), n.latencyMs.count === 0 ? '-' : ms(n.latencyMs.p99), n.serviceMs.count === 0 ? '-' : ms(n.serviceMs.p50)]);
    return `pipeline ${s.name}, up ${(s.uptimeMs / 1000).toFixed(1)} s\n${table(['NODE', 'USE', 'IN', 'OUT', 'DROPPED', 'LATE', 'ERRORS', 'QUEUED', 'LAT P50 ms', 'LAT P99 ms', 'SERVICE P50 ms'], rows)}`;
  });
  const shares = all.flatMap((s) => s.nodes.flatMap((n) => (n.scheduling === undefined ? [] : [{ task: `${s.name}/${n.node}`, ...n.scheduling }])));
  if (shares.length > 0) {
    const pct = (v: number): string => `${(v * 100).toFixed(1)} %`;
    const rows = shares.map((t) => [t.task, t.device, String(t.priority), t.rateHz === undefined ? '-' : t.rateHz.toFixed(1), t.entitledRateHz.toFixed(1), t.receivedRateHz.toFixed(1), pct(t.entitledShare), pct(t.receivedShare), t.queueMs.count === 0 ? '-' : ms(t.queueMs.p99), String(t.deadlineMisses), String(t.expired), t.batches === undefined ? '-' : t.batches.meanRows.toFixed(1), String(t.failovers)]);
    parts.push(`device shares (entitled by priority, received over the last 5 s)\n${table(['TASK', 'DEVICE', 'PRIO', 'RATE/s', 'ENTITLED/s', 'GOT/s', 'ENTITLED', 'GOT', 'QUEUE P99 ms', 'MISSED', 'EXPIRED', 'BATCH', 'FAILOVERS'], rows)}`);
  }
  return parts.join('\n');
}

function lanesArg(value: string, previous: { device: string; lanes: number }[]): { device: string; lanes: number }[] {
  const m = /^([^=]+)=([0-9]+)$/u.exec(value);
  const lanes = Number(m?.[2]);
  if (m === null || !(lanes >= 1)) throw new UsageError('EAI_CLI_USAGE', `--lanes '${value}': write DEVICE=N with a device kind or id and a whole number ≥ 1, e.g. --lanes cpu=2.`);
  return [...previous, { device: m[1] as string, lanes }];
}

