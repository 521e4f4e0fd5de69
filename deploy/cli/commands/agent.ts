import { Command } from 'commander';
import { AiosError } from '../../../drivers/errors.js';
import { Agent } from '../../agent/agent.js';
import { loadAgentConfig } from '../../agent/config.js';
import { systemdNotifier } from '../../agent/systemd-notify.js';

interface AgentOptions {
  config: string;
  sysroot?: string;
}

/**
 * `aios agent --config agent.yaml`: the device agent as a daemon. Logs one JSON object per line
 * on stdout (journald keeps them), tells systemd when it is ready and, while its telemetry loop
 * makes progress, feeds the watchdog; stops cleanly on SIGTERM/SIGINT. An unreachable controller
 * at first boot is retried with backoff rather than failing the unit.
 */
export function agentCommand(): Command {
  return new Command('agent')
    .description('run the device agent: enrol, connect to the fleet, run pipelines, report telemetry, obey signed commands (docs/fleet.md)')
    .requiredOption('--config <file>', 'agent.yaml')
    .option('--sysroot <dir>', 'probe this captured system root instead of / (demos, tests)')
    .addHelpText('after', `
Example:
  aios agent --config /etc/aios/agent.yaml
  (as a service: deploy/systemd/aios-agent.service)`)
    .action(async (options: AgentOptions) => {
      const config = await loadAgentConfig(options.config);
      const log = (line: Record<string, unknown>): void => void process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), device: config.device, ...line })}\n`);
      const systemd = systemdNotifier();
      let stopping = false;
      const stop = new Promise<string>((resolve) => {
        process.once('SIGTERM', () => resolve('SIGTERM'));
        process.once('SIGINT', () => resolve('SIGINT'));
      }).then((why) => {
        stopping = true;
        return why;
      });
      let agent: Agent | undefined;
      for (let delay = 1000; agent === undefined && !stopping; delay = Math.min(delay * 2, 60_000)) {
        try {
          agent = await Agent.start(config, { ...(options.sysroot === undefined ? {} : { sysroot: options.sysroot }), log, onAlive: (what) => what === 'ready' && systemd.notify('READY=1') });
        } catch (error) {
          if (!(error instanceof AiosError) || error.details['retryable'] !== true) throw error;
          log({ msg: 'start failed; retrying', code: error.code, error: error.message, retryInMs: delay });
          await Promise.race([new Promise((r) => setTimeout(r, delay)), stop]);
        }
      }
      if (agent === undefined) return;
      // Fed only while the telemetry loop completes records: a hung agent is restarted by systemd.
      const watchdog =
        systemd.watchdogMs === undefined
          ? undefined
          : setInterval(() => {
              const stale = Date.now() - (agent as Agent).lastTickUnixMs > Math.max(3 * config.telemetryIntervalMs, systemd.watchdogMs as number);
              if (!stale || (agent as Agent).lastTickUnixMs === 0) systemd.notify('WATCHDOG=1');
            }, systemd.watchdogMs / 2);
      const why = await stop;
      log({ msg: 'stopping', why });
      systemd.notify('STOPPING=1');
      clearInterval(watchdog);
      await agent.stop();
    });
}
