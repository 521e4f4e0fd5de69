import { Command } from 'commander';
import { UsageError } from '../../../drivers/errors.js';
import { builtinNodeKinds } from '../../../runtime/pipeline/nodes/builtin.js';
import { pipelineJsonSchema } from '../../../runtime/pipeline/schema.js';

/** `aios schema pipeline`: the JSON Schema editors use to complete and check pipeline files. */
export function schemaCommand(): Command {
  return new Command('schema')
    .description('print a JSON Schema (pipeline) for editors: save it and reference it from your YAML files')
    .argument('<what>', 'which schema: pipeline')
    .addHelpText('after', `
Example:
  aios schema pipeline > pipeline.schema.json
  # then, first line of a pipeline file:  # yaml-language-server: $schema=./pipeline.schema.json`)
    .action((what: string) => {
      if (what !== 'pipeline') throw new UsageError('EAI_CLI_USAGE', `Unknown schema '${what}'. Available: pipeline.`);
      process.stdout.write(`${JSON.stringify(pipelineJsonSchema(builtinNodeKinds().list()), null, 2)}\n`);
    });
}
