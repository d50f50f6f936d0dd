// `charflow validate <workflow.json>`: every problem, one per line; exit 2 if there is any.
import type { Command } from 'commander';
import { validateWorkflow } from '../engine/workflow/validate.ts';
import { commandAction, EXIT, pathsFor, withDataOption, type CliContext } from './context.ts';
import { toJsonLine } from './format.ts';
import { readWorkflowFile } from '../engine/workflow/load.ts';
import { printErrors, resolveWorkflowPath } from './load.ts';

interface ValidateOptions {
  data?: string;
  json?: boolean;
}

export async function validateCommand(ctx: CliContext, file: string, opts: ValidateOptions): Promise<number> {
  const paths = pathsFor(ctx, opts);
  const full = resolveWorkflowPath(ctx, file, paths);
  const read = await readWorkflowFile(full);
  const result = read.ok ? validateWorkflow(read.value, await ctx.registry()) : { ok: false, errors: [read.error] };
  if (opts.json) {
    ctx.stdout.write(`${toJsonLine({ ok: result.ok, errors: result.errors })}\n`);
  } else if (result.ok) {
    const count = Object.keys(result.workflow?.nodes ?? {}).length;
    ctx.stdout.write(`ok: ${file} (${count} node${count === 1 ? '' : 's'})\n`);
  } else {
    printErrors(ctx.stdout, result.errors);
    const n = result.errors.length;
    ctx.stderr.write(`${file}: ${n} problem${n === 1 ? '' : 's'}\n`);
  }
  return result.ok ? EXIT.ok : EXIT.invalid;
}

export function registerValidate(program: Command, ctx: CliContext): void {
  withDataOption(
    program
      .command('validate')
      .description('check a workflow file and list every problem, one per line')
      .argument('<workflow>', 'workflow file (.json)')
      .option('--json', 'print {"ok", "errors"} as JSON'),
  ).action(commandAction(ctx, (file: string, opts: ValidateOptions) => validateCommand(ctx, file, opts)));
}
