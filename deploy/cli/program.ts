import { Command, CommanderError } from 'commander';
import { AiosError } from '../../drivers/errors.js';
import { agentCommand } from './commands/agent.js';
import { attestCommand } from './commands/attest.js';
import { bundleCommand } from './commands/bundle.js';
import { controllerCommand } from './commands/controller.js';
import { devicesCommand } from './commands/devices.js';
import { fleetCommand } from './commands/fleet.js';
import { inferCommand } from './commands/infer.js';
import { keysCommand } from './commands/keys.js';
import { modelCommand } from './commands/model.js';
import { powerCommand } from './commands/power.js';
import { runCommand } from './commands/run.js';
import { schemaCommand } from './commands/schema.js';
import { serveCommand } from './commands/serve.js';
import { trustCommand } from './commands/trust.js';
import { validateCommand } from './commands/validate.js';
import { VERSION } from '../../runtime/version.js';

/**
 * The `aios` command line. Every command prints human text by default and JSON with `--json`;
 * failures print one line `error EAI_CODE: message` to stderr and exit non-zero, with the stack
 * only under `--debug`, so scripts can match on the code and users read what to do next.
 */
export function buildProgram(): Command {
  const program = new Command('aios')
    .description('On-device AI runtime for autonomous machines: finds accelerators, runs models, syncs with the fleet.')
    .version(VERSION, '-V, --version', 'print the aios version')
    .option('--debug', 'print stack traces and native errors in full')
    .showHelpAfterError('(run with --help for usage)')
    .configureHelp({ sortSubcommands: true });
  for (const command of [program, devicesCommand(), inferCommand(), powerCommand(), validateCommand(), schemaCommand(), runCommand(), serveCommand(), keysCommand(), trustCommand(), bundleCommand(), modelCommand(), controllerCommand(), agentCommand(), fleetCommand(), attestCommand()]) {
    // Commander's own parse errors (unknown option, missing argument) get the same
    // `error CODE: message` shape as ours, and help goes to stdout.
    for (const c of [command, ...command.commands]) c.exitOverride().configureOutput({ outputError: (text, write) => write(`error EAI_CLI_USAGE: ${text.replace(/^error: /u, '')}`) });
    if (command !== program) program.addCommand(command);
  }
  return program;
}

export async function main(argv: readonly string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return 0;
  } catch (error) {
    return report(error, argv.includes('--debug'));
  }
}

function report(error: unknown, debug: boolean): number {
  if (error instanceof CommanderError) {
    // Help and --version arrive here as "errors" with exit code 0; commander already printed them.
    return error.exitCode === 0 ? 0 : 2;
  }
  if (error instanceof AiosError) {
    process.stderr.write(`error ${error.code}: ${error.message}\n`);
    if (debug) process.stderr.write(`${error.stack ?? ''}\n${error.cause ? `caused by: ${String((error.cause as Error).stack ?? error.cause)}\n` : ''}`);
    return error.code === 'EAI_CLI_USAGE' ? 2 : 1;
  }
  const code = 'EAI_INTERNAL';
  process.stderr.write(`error ${code}: ${error instanceof Error ? error.message : String(error)}\n`);
  process.stderr.write(debug ? `${(error as Error).stack ?? ''}\n` : 'This is a bug in aios; run again with --debug and report the output.\n');
  return 70;
}
