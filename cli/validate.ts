// `charflow validate <workflow.json>`: every problem, one per line; exit 2 if there is any.
import type { Command } from 'commander';
import { validateMigrated } from '../engine/workflow/validate.ts';
import type { ValidationResult } from '../engine/workflow/types.ts';
import { commandAction, EXIT, pathsFor, withDataOption, type CliContext } from './context.ts';
import { toJsonLine } from './format.ts';
import { printErrors, readAndMigrate, resolveWorkflowPath } from './load.ts';
import { fileChecks, workflowChecks } from './checks.ts';

interface ValidateOptions {
  data?: string;
  json?: boolean;
}

export async function validateCommand(ctx: CliContext, file: string, opts: ValidateOptions): Promise<number> {
  const paths = pathsFor(ctx, opts);
  const full = resolveWorkflowPath(ctx, file, paths);
  const registry = await ctx.registry();
  const read = await readAndMigrate(full, registry, paths);
  let result: ValidationResult = read.ok ? validateMigrated(read.raw, registry) : { ok: false, errors: read.errors };
  // What a run would only find later, where the workflow alone tells (sizes that cannot match, ...).
  if (result.ok && result.workflow) {
    const files = fileChecks(result.workflow, registry, paths);
    for (const w of files.warnings) ctx.stderr.write(`warning: ${w}\n`);
    const later = [...workflowChecks(result.workflow), ...files.errors];
    if (later.length) result = { ok: false, errors: later };
  }
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
      .argument('<workflow>', 'workflow: a file (.json, ComfyUI API prompt, or PNG carrying one) or a saved/bundled name')
      .option('--json', 'print {"ok", "errors"} as JSON'),
  ).action(commandAction(ctx, (file: string, opts: ValidateOptions) => validateCommand(ctx, file, opts)));
}
